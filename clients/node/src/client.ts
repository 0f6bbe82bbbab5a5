// client.ts - TitanClient: one DEALER socket to one titan-worker, Lazy Pirate retries, protocol 1.
import { randomBytes } from "node:crypto";
import * as zmq from "zeromq";
import { TitanError, TitanTimeoutError, errorFromReply } from "./errors";

export interface TitanClientOptions {
  /** Per-attempt wait for a reply, in ms (default 5000). */
  timeoutMs?: number;
  /** Extra attempts after a timeout (default 2, so 3 attempts). Error replies are never retried. */
  retries?: number;
  /** The worker's CURVE public key (Z85, 40 chars): turns CURVE on. */
  serverKey?: string;
  /** This client's CURVE key pair (Z85). Without them a fresh pair is made (admitted only without --allow-keys). */
  publicKey?: string;
  secretKey?: string;
}

export interface TitanReply {
  /** The parsed reply header (frame 0 of the body). */
  header: any;
  /** Tensor frames after the header (at most one in protocol 1). */
  frames: Buffer[];
}

export interface Tensor<T extends Float32Array | Float64Array> {
  data: T;
  shape: [number, number];
}

const Z85 = /^[0-9a-zA-Z.\-:+=^!/*?&<>()[\]{}@%$#]{40}$/;

/**
 * Parses a reply header. JSON results may hold the bare tokens NaN, Infinity and -Infinity
 * (PROTOCOL.md §4.4), which JSON.parse refuses: they are turned into numbers here.
 */
export function parseReplyHeader(text: string): any {
  try {
    return JSON.parse(text);
  } catch (e) {
    if (!/NaN|Infinity/.test(text)) throw e;
  }
  let out = "";
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      out += c;
      if (c === "\\") out += text[++i] ?? "";
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') {
      inString = true;
      out += c;
    } else if (text.startsWith("NaN", i)) {
      out += '"\\u0000NaN"';
      i += 2;
    } else if (text.startsWith("-Infinity", i)) {
      out += '"\\u0000-Infinity"';
      i += 8;
    } else if (text.startsWith("Infinity", i)) {
      out += '"\\u0000Infinity"';
      i += 7;
    } else {
      out += c;
    }
  }
  return JSON.parse(out, (_k, v) => {
    if (v === "\u0000NaN") return NaN;
    if (v === "\u0000Infinity") return Infinity;
    if (v === "\u0000-Infinity") return -Infinity;
    return v;
  });
}

function isEagain(e: unknown): boolean {
  return typeof e === "object" && e !== null && (e as { code?: string }).code === "EAGAIN";
}

/**
 * A client for one titan-worker. Requests are served one at a time: calls made while one is in
 * flight wait in a FIFO queue (each call's timeout counts from when its turn comes). A request that
 * gets no reply within timeoutMs is resent on a fresh socket (Lazy Pirate), up to `retries` times;
 * replies are matched by the "id" this client puts in each request, so a stale reply is never
 * taken for a later one. close() leaves nothing that keeps the process alive.
 */
export class TitanClient {
  readonly endpoint: string;
  readonly timeoutMs: number;
  readonly retries: number;
  private readonly serverKey?: string;
  private readonly publicKey?: string;
  private readonly secretKey?: string;
  private socket: zmq.Dealer | null = null;
  private closed = false;
  private tail: Promise<unknown> = Promise.resolve();
  private readonly tag = randomBytes(4).toString("hex");
  private seq = 0;

  constructor(endpoint: string, opts: TitanClientOptions = {}) {
    this.endpoint = endpoint;
    this.timeoutMs = opts.timeoutMs ?? 5000;
    this.retries = opts.retries ?? 2;
    if (!(this.timeoutMs > 0)) throw new RangeError("timeoutMs must be > 0");
    if (!Number.isInteger(this.retries) || this.retries < 0) throw new RangeError("retries must be an integer >= 0");
    if ((opts.publicKey === undefined) !== (opts.secretKey === undefined))
      throw new TypeError("publicKey and secretKey go together");
    if (opts.publicKey !== undefined && opts.serverKey === undefined)
      throw new TypeError("publicKey/secretKey need serverKey (the worker's public key)");
    for (const [name, key] of [["serverKey", opts.serverKey], ["publicKey", opts.publicKey], ["secretKey", opts.secretKey]])
      if (key !== undefined && !Z85.test(key)) throw new TypeError(`${name} must be a 40-character Z85 key`);
    if (opts.serverKey !== undefined) {
      if (opts.publicKey !== undefined) {
        this.publicKey = opts.publicKey;
        this.secretKey = opts.secretKey;
      } else {
        const pair = zmq.curveKeyPair();
        this.publicKey = pair.publicKey;
        this.secretKey = pair.secretKey;
      }
      this.serverKey = opts.serverKey;
    }
  }

  /** This client's CURVE public key (Z85), or undefined without CURVE. */
  get curvePublicKey(): string | undefined {
    return this.publicKey;
  }

  /** Makes the socket and connects it (ZeroMQ connects in the background: this does not wait for the worker). */
  async connect(): Promise<void> {
    if (this.closed) throw new TitanError("closed", "the client is closed");
    if (!this.socket) this.socket = this.makeSocket();
  }

  /** Closes the socket at once (linger 0); queued and in-flight requests reject. Idempotent. */
  close(): void {
    this.closed = true;
    this.dropSocket();
  }

  /**
   * Sends one request and resolves with the reply. `header` is an object (an "id" is added when it
   * has none, first in the text) or a string sent verbatim (no id matching is then possible).
   * Rejects with TitanError (a worker's error reply), TitanBusyError or TitanTimeoutError.
   */
  request(header: object | string, frames: Buffer[] = []): Promise<TitanReply> {
    const run = this.tail.then(() => this.requestNow(header, frames));
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** `ping`: {status:"ok", gpu, backend, version, protocol}. */
  async ping(): Promise<any> {
    const h = { ...(await this.request({ op: "ping" })).header };
    delete h.id;
    return h;
  }

  /** `gpu_info`: name, total_memory_gb, multi_processor_count, cuda_capability, backend, and live figures. */
  async gpuInfo(): Promise<any> {
    const h = { ...(await this.request({ op: "gpu_info" })).header };
    delete h.id;
    return h;
  }

  /** The design's JSON form: nested arrays in, nested arrays out (float32 arithmetic on the worker). */
  async matrixMultiply(a: number[][], b: number[][], opts: { dtype?: "float32" | "float64" } = {}): Promise<number[][]> {
    const header: Record<string, unknown> = { op: "matrix_multiply", a, b };
    if (opts.dtype) header.dtype = opts.dtype;
    return (await this.request(header)).header.result;
  }

  /** Binary form: row-major a (m×k) times b (k×n), both Float32Array or both Float64Array. */
  async matmul<T extends Float32Array | Float64Array>(a: T, aShape: [number, number], b: T, bShape: [number, number]): Promise<Tensor<T>> {
    const dtype = a instanceof Float64Array ? "float64" : "float32";
    if ((b instanceof Float64Array ? "float64" : "float32") !== dtype) throw new TypeError("a and b must have the same dtype");
    for (const [name, arr, shape] of [["a", a, aShape], ["b", b, bShape]] as const) {
      if (shape.length !== 2 || !shape.every((d) => Number.isInteger(d) && d >= 1))
        throw new TypeError(`${name}Shape must be two positive integers`);
      if (arr.length !== shape[0] * shape[1]) throw new TypeError(`${name} has ${arr.length} elements but its shape needs ${shape[0] * shape[1]}`);
    }
    if (aShape[1] !== bShape[0]) throw new TypeError(`inner dimensions do not match: ${aShape} x ${bShape}`);
    const header = {
      op: "matrix_multiply",
      a: { dtype, shape: aShape, frame: 1 },
      b: { dtype, shape: bShape, frame: 2 },
    };
    const reply = await this.request(header, [toLE(a), toLE(b)]);
    const r = reply.header.result;
    if (!r || typeof r !== "object" || r.dtype !== dtype || !Array.isArray(r.shape) || r.shape.length !== 2)
      throw new TitanError("protocol", `unexpected result descriptor: ${JSON.stringify(r)}`, reply.header);
    const frame = reply.frames[(r.frame ?? 1) - 1];
    const itemsize = dtype === "float64" ? 8 : 4;
    if (!frame || frame.length !== r.shape[0] * r.shape[1] * itemsize)
      throw new TitanError("protocol", "the result frame is missing or has the wrong size", reply.header);
    const copy = new ArrayBuffer(frame.length);
    new Uint8Array(copy).set(frame);
    const data = (dtype === "float64" ? new Float64Array(copy) : new Float32Array(copy)) as T;
    return { data, shape: [r.shape[0], r.shape[1]] };
  }

  private makeSocket(): zmq.Dealer {
    const s = new zmq.Dealer({ linger: 0, sendTimeout: this.timeoutMs, receiveTimeout: this.timeoutMs });
    if (this.serverKey) {
      s.curveServerKey = this.serverKey;
      s.curvePublicKey = this.publicKey!;
      s.curveSecretKey = this.secretKey!;
    }
    s.connect(this.endpoint);
    return s;
  }

  private dropSocket(): void {
    if (this.socket) {
      try {
        this.socket.close();
      } catch {
        /* already closed */
      }
      this.socket = null;
    }
  }

  private async requestNow(header: object | string, frames: Buffer[]): Promise<TitanReply> {
    if (this.closed) throw new TitanError("closed", "the client is closed");
    const attempts = this.retries + 1;
    let lastError = "";
    for (let attempt = 1; attempt <= attempts; attempt++) {
      // A fresh id per attempt: a reply to an earlier attempt can never match a later one.
      let expectId: string | number | undefined;
      let text: string;
      if (typeof header === "string") {
        text = header;
      } else {
        const h = header as Record<string, unknown>;
        const { id, ...rest } = h;
        // "id" goes first, so the worker finds it even in replies sent before it parses a large header.
        expectId = id === undefined || id === null ? `${this.tag}-${++this.seq}` : (id as string | number);
        text = JSON.stringify({ id: expectId, ...rest });
      }
      if (!this.socket) this.socket = this.makeSocket();
      const sock = this.socket;
      const deadline = Date.now() + this.timeoutMs;
      try {
        sock.sendTimeout = this.timeoutMs;
        await sock.send([Buffer.alloc(0), Buffer.from(text, "utf8"), ...frames]);
        for (;;) {
          const left = deadline - Date.now();
          if (left <= 0) throw Object.assign(new Error("timed out"), { code: "EAGAIN" });
          sock.receiveTimeout = left;
          const msg = await sock.receive();
          if (msg.length < 2 || msg[0].length !== 0) continue; // not a reply to a delimited request
          let reply: any;
          try {
            reply = parseReplyHeader(msg[1].toString("utf8"));
          } catch {
            continue; // not ours: the worker always answers JSON
          }
          if (reply === null || typeof reply !== "object" || Array.isArray(reply)) continue;
          // Match by id. A reply without one is taken only when the worker could not have read ours
          // (an error reply, e.g. a header it could not parse) or when we sent a verbatim string.
          if (expectId !== undefined) {
            if ("id" in reply) {
              if (reply.id !== expectId) continue; // stale
            } else if (!("error" in reply)) {
              continue;
            }
          }
          if ("error" in reply) throw errorFromReply(reply);
          return { header: reply, frames: msg.slice(2) };
        }
      } catch (e) {
        if (e instanceof TitanError) throw e;
        if (this.closed) throw new TitanError("closed", "the client was closed during the request");
        // Lazy Pirate: no reply (or a socket error) - drop this socket and its queues, start afresh.
        lastError = isEagain(e) ? `no reply within ${this.timeoutMs} ms` : String((e as Error)?.message ?? e);
        if (this.socket === sock) this.dropSocket();
      }
    }
    throw new TitanTimeoutError(
      `no answer from ${this.endpoint}: ${lastError} (${attempts} attempt${attempts > 1 ? "s" : ""})`,
      undefined,
      attempts,
    );
  }
}

/** The array's bytes, little-endian (the wire order), without copying on little-endian hosts. */
function toLE(a: Float32Array | Float64Array): Buffer {
  const buf = Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] === 1) return buf;
  const out = Buffer.from(buf);
  if (a instanceof Float64Array) out.swap64();
  else out.swap32();
  return out;
}
