// helpers.ts - starts real titan-worker processes for the tests (readiness from --endpoint-file).
import { spawn, ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";

/** The package root (dist/test/.. /..). */
export const PKG_ROOT = path.resolve(__dirname, "..", "..");
export const WORKER = process.env.TITAN_WORKER
  ? path.resolve(process.env.TITAN_WORKER)
  : path.resolve(PKG_ROOT, "..", "..", "build", "titan-worker");
export const CLI = path.join(path.dirname(WORKER), "titan");

export class Worker {
  readonly proc: ChildProcess;
  readonly dir: string;
  endpoint = "";
  private log = "";

  private constructor(args: string[], bind: string) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "titan-node-"));
    this.proc = spawn(
      WORKER,
      ["--bind", bind, "--endpoint-file", path.join(this.dir, "endpoint"), "--log-level", "warn", ...args],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    this.proc.stdout!.on("data", (d) => (this.log += d));
    this.proc.stderr!.on("data", (d) => (this.log += d));
  }

  /** Starts a worker (on a free loopback port unless bind is given) and waits for its endpoint file. */
  static async start(args: string[] = [], bind = "tcp://127.0.0.1:*"): Promise<Worker> {
    const w = new Worker(args, bind);
    const file = path.join(w.dir, "endpoint");
    const deadline = Date.now() + 20000;
    for (;;) {
      if (w.proc.exitCode !== null) throw new Error(`worker exited early (${w.proc.exitCode}): ${w.log}`);
      if (fs.existsSync(file)) {
        const first = fs.readFileSync(file, "utf8").split("\n")[0].trim();
        if (first) {
          w.endpoint = first;
          return w;
        }
      }
      if (Date.now() > deadline) throw new Error(`worker not ready after 20 s: ${w.log}`);
      await sleep(10);
    }
  }

  get output(): string {
    return this.log;
  }

  /** Stops it (SIGTERM, SIGKILL after 10 s) and resolves with its exit code or signal. */
  stop(signal: NodeJS.Signals = "SIGTERM"): Promise<number | string> {
    return new Promise((resolve) => {
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
        resolve(this.proc.exitCode ?? this.proc.signalCode!);
        return;
      }
      const t = setTimeout(() => this.proc.kill("SIGKILL"), 10000);
      this.proc.once("exit", (code, sig) => {
        clearTimeout(t);
        fs.rmSync(this.dir, { recursive: true, force: true });
        resolve(code ?? sig!);
      });
      this.proc.kill(signal);
    });
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A loopback TCP port that was free a moment ago (nothing listens on it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Row-major m×n integer-valued matrix with small values (products are exact in float32). */
export function intMatrix(m: number, n: number, seed: number): number[] {
  const out: number[] = [];
  let x = seed;
  for (let i = 0; i < m * n; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    out.push((x % 17) - 8);
  }
  return out;
}

/** Reference product in float64 (exact for small integers). */
export function refMatmul(a: ArrayLike<number>, b: ArrayLike<number>, m: number, k: number, n: number): number[] {
  const c = new Array<number>(m * n).fill(0);
  for (let i = 0; i < m; i++)
    for (let p = 0; p < k; p++) {
      const av = a[i * k + p];
      for (let j = 0; j < n; j++) c[i * n + j] += av * b[p * n + j];
    }
  return c;
}
