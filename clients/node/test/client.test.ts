// client.test.ts - TitanClient against real titan-worker processes.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as zmq from "zeromq";
import { TitanClient, TitanError, TitanBusyError, TitanTimeoutError, parseReplyHeader } from "../src/index";
import { Worker, CLI, PKG_ROOT, freePort, intMatrix, refMatmul, sleep } from "./helpers";

let worker: Worker;
let client: TitanClient;

before(async () => {
  worker = await Worker.start(["--threads", "2"]);
  client = new TitanClient(worker.endpoint, { timeoutMs: 5000 });
  await client.connect();
});

after(async () => {
  client?.close();
  const rc = await worker?.stop();
  assert.equal(rc, 0, "the worker exits 0 on SIGTERM");
});

test("ping answers status ok with the device and protocol 1", async () => {
  const r = await client.ping();
  assert.equal(r.status, "ok");
  assert.equal(r.protocol, 1);
  assert.equal(typeof r.gpu, "string");
  assert.ok(["cpu", "cuda"].includes(r.backend));
});

test("gpuInfo has the design's members", async () => {
  const info = await client.gpuInfo();
  for (const k of ["name", "total_memory_gb", "multi_processor_count", "cuda_capability", "backend"])
    assert.ok(k in info, `gpu_info has ${k}`);
  assert.equal(typeof info.total_memory_gb, "number");
  assert.ok(!("id" in info), "the client's own id is not passed on");
});

test("matrixMultiply (JSON form) gives the exact product", async () => {
  assert.deepEqual(await client.matrixMultiply([[1, 2], [3, 4]], [[5], [6]]), [[17], [39]]);
  const m = 7, k = 5, n = 3;
  const a = intMatrix(m, k, 1), b = intMatrix(k, n, 2);
  const rows = (x: number[], r: number, c: number) => Array.from({ length: r }, (_, i) => x.slice(i * c, i * c + c));
  assert.deepEqual(await client.matrixMultiply(rows(a, m, k), rows(b, k, n)), rows(refMatmul(a, b, m, k, n), m, n));
  assert.deepEqual(await client.matrixMultiply([[0.5]], [[3]], { dtype: "float64" }), [[1.5]]);
});

test("matmul with Float32Array is exact for integer data", async () => {
  const m = 33, k = 17, n = 9;
  const a = Float32Array.from(intMatrix(m, k, 3)), b = Float32Array.from(intMatrix(k, n, 4));
  const r = await client.matmul(a, [m, k], b, [k, n]);
  assert.ok(r.data instanceof Float32Array);
  assert.deepEqual(r.shape, [m, n]);
  assert.deepEqual(Array.from(r.data), refMatmul(a, b, m, k, n));
});

test("matmul with Float64Array is exact for integer data (and a view at an offset)", async () => {
  const m = 4, k = 6, n = 5;
  const backing = new Float64Array(3 + m * k);
  backing.set(intMatrix(m, k, 5), 3);
  const a = backing.subarray(3);
  const b = Float64Array.from(intMatrix(k, n, 6));
  const r = await client.matmul(a, [m, k], b, [k, n]);
  assert.ok(r.data instanceof Float64Array);
  assert.deepEqual(r.shape, [m, n]);
  assert.deepEqual(Array.from(r.data), refMatmul(a, b, m, k, n));
});

test("matmul refuses mismatched shapes before sending", async () => {
  await assert.rejects(client.matmul(new Float32Array(6), [2, 3], new Float32Array(6), [2, 3]), TypeError);
  await assert.rejects(client.matmul(new Float32Array(5), [2, 3], new Float32Array(6), [3, 2]), TypeError);
});

test("the worker echoes ids: the caller's string and integer ids, the client's own otherwise", async () => {
  assert.equal((await client.request({ op: "ping", id: "abc" })).header.id, "abc");
  assert.equal((await client.request({ op: "ping", id: 7 })).header.id, 7);
  const own1 = (await client.request({ op: "ping" })).header.id;
  const own2 = (await client.request({ op: "ping" })).header.id;
  assert.equal(typeof own1, "string");
  assert.notEqual(own1, own2, "a fresh id per request");
  const raw = await client.request('{"op":"ping","id":"verbatim"}');
  assert.equal(raw.header.id, "verbatim");
});

test("an unknown op rejects with TitanError code unknown_op", async () => {
  await assert.rejects(client.request({ op: "fly" }), (e: unknown) => {
    assert.ok(e instanceof TitanError);
    assert.equal(e.code, "unknown_op");
    assert.equal(e.message, "Unknown operation: fly");
    assert.equal(e.reply?.code, "unknown_op");
    return true;
  });
  await assert.rejects(client.request({ op: "matrix_multiply", a: [[1, 2]], b: [[1, 2]] }), { code: "bad_request" });
});

test("concurrent calls on one client are queued and each gets its own reply", async () => {
  const ids = Array.from({ length: 20 }, (_, i) => `c${i}`);
  const replies = await Promise.all(ids.map((id) => client.request({ op: "ping", id })));
  assert.deepEqual(replies.map((r) => r.header.id), ids);
  const [p, m] = await Promise.all([client.ping(), client.matrixMultiply([[2]], [[3]])]);
  assert.equal(p.status, "ok");
  assert.deepEqual(m, [[6]]);
});

test("NaN and Infinity in a JSON result are parsed", async () => {
  assert.deepEqual(parseReplyHeader('{"result":[[NaN,Infinity,-Infinity,1.5]],"s":"NaN Infinity"}'), {
    result: [[NaN, Infinity, -Infinity, 1.5]],
    s: "NaN Infinity",
  });
  const r = await client.matrixMultiply([[1e39]], [[-1]]);
  assert.deepEqual(r, [[-Infinity]]);
});

test("busy: a worker with --threads 1 --queue 0 running a long product answers TitanBusyError", async () => {
  const w = await Worker.start(["--threads", "1", "--queue", "0", "--blas-threads", "1"]);
  const long = new TitanClient(w.endpoint, { timeoutMs: 60000, retries: 0 });
  const probe = new TitanClient(w.endpoint, { timeoutMs: 5000 });
  const other = new TitanClient(w.endpoint, { timeoutMs: 5000, retries: 0 });
  try {
    const n = 3000; // ~54 GFLOP on one BLAS thread: it holds the executor for a while even on a fast CPU
    const big = new Float64Array(n * n).fill(1);
    const running = long.matmul(big, [n, n], big, [n, n]);
    // Wait until the product holds the executor (gpu_info is answered on the I/O thread).
    const until = Date.now() + 10000;
    while ((await probe.gpuInfo()).inflight < 1) {
      assert.ok(Date.now() < until, "the long product never started");
      await sleep(5);
    }
    await assert.rejects(other.matmul(new Float32Array([2]), [1, 1], new Float32Array([3]), [1, 1]), (e: unknown) => {
      assert.ok(e instanceof TitanBusyError, String(e));
      assert.ok(e instanceof TitanError);
      assert.equal(e.code, "busy");
      return true;
    });
    const r = await running;
    assert.equal(r.data[0], n);
  } finally {
    long.close();
    probe.close();
    other.close();
    await w.stop();
  }
});

test("timeout: a dead endpoint rejects with TitanTimeoutError after timeoutMs × attempts", async () => {
  const port = await freePort();
  const c = new TitanClient(`tcp://127.0.0.1:${port}`, { timeoutMs: 300, retries: 2 });
  const t0 = Date.now();
  try {
    await assert.rejects(c.ping(), (e: unknown) => {
      assert.ok(e instanceof TitanTimeoutError, String(e));
      assert.equal(e.code, "timeout");
      assert.equal(e.attempts, 3);
      assert.equal(e.reply, undefined);
      return true;
    });
    const took = Date.now() - t0;
    assert.ok(took >= 850 && took < 2500, `took ${took} ms`);
  } finally {
    c.close();
  }
  await assert.rejects(c.ping(), { code: "closed" });
});

test("close() after a timed-out request leaves nothing keeping the process alive", async () => {
  const port = await freePort();
  const script = `
    const { TitanClient, TitanTimeoutError } = require(${JSON.stringify(path.join(PKG_ROOT, "dist", "src", "index.js"))});
    const c = new TitanClient("tcp://127.0.0.1:${port}", { timeoutMs: 200, retries: 1 });
    c.ping().then(() => process.exit(3), (e) => {
      if (!(e instanceof TitanTimeoutError)) process.exit(4);
      c.close();
      process.stdout.write("closed\\n");
    });`;
  const child = spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "inherit"] });
  let closedAt = 0;
  child.stdout.on("data", (d) => {
    if (String(d).includes("closed")) closedAt = Date.now();
  });
  const killer = setTimeout(() => child.kill("SIGKILL"), 10000);
  const code = await new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
  clearTimeout(killer);
  assert.equal(code, 0, "the child exits by itself with status 0");
  assert.ok(closedAt > 0, "the child reached close()");
  const lag = Date.now() - closedAt;
  assert.ok(lag < 2000, `exited ${lag} ms after close()`);
});

test("Lazy Pirate: a worker restarted on the same port between attempts answers", async () => {
  const port = await freePort();
  const bind = `tcp://127.0.0.1:${port}`;
  let w = await Worker.start([], bind);
  const c = new TitanClient(bind, { timeoutMs: 700, retries: 4 });
  try {
    assert.equal((await c.ping()).status, "ok");
    await w.stop("SIGKILL");
    const pending = c.request({ op: "ping", id: "after-restart" });
    await sleep(900); // the first attempt has timed out by now
    w = await Worker.start([], bind);
    const r = await pending;
    assert.equal(r.header.status, "ok");
    assert.equal(r.header.id, "after-restart");
    assert.deepEqual(await c.matrixMultiply([[1, 1]], [[2], [3]]), [[5]]);
  } finally {
    c.close();
    await w.stop();
  }
});

test("a stale reply (wrong id) is never taken for the answer", async () => {
  // A fake ROUTER that first sends a reply carrying another id, then the right one.
  const router = new zmq.Router({ linger: 0 });
  await router.bind("tcp://127.0.0.1:*");
  const ep = router.lastEndpoint!;
  const c = new TitanClient(ep, { timeoutMs: 2000, retries: 0 });
  const serve = (async () => {
    for (let i = 0; i < 2; i++) {
      const [rid, delim, header] = await router.receive();
      const req = JSON.parse(header.toString());
      await router.send([rid, delim, JSON.stringify({ status: "ok", stale: true, id: "someone-else" })]);
      await router.send([rid, delim, JSON.stringify({ status: "ok", stale: false, id: req.id })]);
    }
  })();
  try {
    const r = await c.request({ op: "ping", id: "mine" });
    assert.equal(r.header.stale, false);
    assert.equal(r.header.id, "mine");
    const r2 = await c.request({ op: "ping" });
    assert.equal(r2.header.stale, false);
    await serve;
  } finally {
    c.close();
    router.close();
  }
});

test("CURVE: a worker with --curve-secret serves CURVE clients and ignores others", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "titan-node-keys-"));
  const keys = JSON.parse(execFileSync(CLI, ["keygen", "--out", dir, "--name", "worker", "--json"], { encoding: "utf8" }));
  const w = await Worker.start(["--curve-secret", keys.secret_file]);
  const fresh = new TitanClient(w.endpoint, { serverKey: keys.public_key, timeoutMs: 5000 });
  const pair = zmq.curveKeyPair();
  const own = new TitanClient(w.endpoint, { serverKey: keys.public_key, ...pair, timeoutMs: 5000 });
  const plain = new TitanClient(w.endpoint, { timeoutMs: 400, retries: 0 });
  try {
    assert.equal((await fresh.ping()).status, "ok");
    assert.ok(fresh.curvePublicKey && fresh.curvePublicKey.length === 40, "a fresh key pair was made");
    assert.equal(own.curvePublicKey, pair.publicKey);
    const r = await own.matmul(new Float32Array([1, 2]), [1, 2], new Float32Array([3, 4]), [2, 1]);
    assert.deepEqual(Array.from(r.data), [11]);
    await assert.rejects(plain.ping(), TitanTimeoutError);
    assert.throws(() => new TitanClient(w.endpoint, { serverKey: "short" }), TypeError);
    assert.throws(() => new TitanClient(w.endpoint, { serverKey: keys.public_key, publicKey: pair.publicKey }), TypeError);
  } finally {
    fresh.close();
    own.close();
    plain.close();
    await w.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
