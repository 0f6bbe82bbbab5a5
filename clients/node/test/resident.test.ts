// resident.test.ts - resident tensors (tensor_put/get/free/list, matmul on handles) and the client's
// identity (a stable routing id) against real titan-worker processes.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import * as zmq from "zeromq";
import { TitanClient, TitanError, TitanTimeoutError } from "../src/index";
import { Worker, intMatrix, refMatmul, sleep } from "./helpers";

let worker: Worker;
const clients: TitanClient[] = [];

/** A client of the shared worker (closed after the tests); a fresh identity unless one is given. */
function make(opts: ConstructorParameters<typeof TitanClient>[1] = {}): TitanClient {
  const c = new TitanClient(worker.endpoint, { timeoutMs: 20000, identity: freshIdentity(), ...opts });
  clients.push(c);
  return c;
}

function freshIdentity(): string {
  return `node-test-${randomBytes(6).toString("hex")}`;
}

before(async () => {
  worker = await Worker.start(["--threads", "2"]);
});

after(async () => {
  for (const c of clients) c.close();
  const rc = await worker?.stop();
  assert.equal(rc, 0, "the worker exits 0 on SIGTERM");
});

test("tensorPut / tensorGet round trip: float32 and float64, rank 1 and rank 3", async () => {
  const c = make();
  const cases: [Float32Array | Float64Array, number[]][] = [
    [Float32Array.from([1.5, -2, 3.25, 1e-7, 65504]), [5]],
    [Float64Array.from([0.1, 0.2, 0.30000000000000004, -1e300]), [4]],
    [Float32Array.from(intMatrix(2 * 3 * 4, 1, 11).map((x) => x / 8)), [2, 3, 4]],
    [Float64Array.from(intMatrix(3 * 1 * 5, 1, 12).map((x) => x / 3)), [3, 1, 5]],
  ];
  for (const [data, shape] of cases) {
    const ref = await c.tensorPut(data, shape);
    assert.match(ref, /^t-[0-9a-f]{24}$/);
    const t = await c.tensorGet(ref);
    assert.equal(t.data.constructor, data.constructor, "the dtype comes back as it was stored");
    assert.deepEqual(t.shape, shape);
    assert.deepEqual(Array.from(t.data), Array.from(data));
  }
  // A view at an offset is sent as the view, not its whole buffer.
  const backing = new Float64Array([9, 9, 1, 2, 3, 4]);
  const t = await c.tensorGet(await c.tensorPut(backing.subarray(2), [2, 2]));
  assert.deepEqual(Array.from(t.data), [1, 2, 3, 4]);
  assert.equal(await c.tensorFreeAll(), 5);
});

test("tensorPut refuses bad shapes and data before sending", async () => {
  const c = make();
  await assert.rejects(c.tensorPut(new Float32Array(6), [2, 2]), TypeError);
  await assert.rejects(c.tensorPut(new Float32Array(6), []), TypeError);
  await assert.rejects(c.tensorPut(new Float32Array(1), [1, 1, 1, 1, 1, 1, 1, 1, 1]), TypeError);
  await assert.rejects(c.tensorPut(new Float32Array(6), [2, 3.5]), TypeError);
  await assert.rejects(c.tensorPut(new Float32Array(0), [0]), TypeError);
  await assert.rejects(c.tensorPut([1, 2] as unknown as Float32Array, [2]), TypeError);
  // Rank 8 is the most the protocol takes, and fine.
  const ref = await c.tensorPut(new Float32Array(2), [1, 1, 1, 1, 1, 1, 1, 2]);
  assert.deepEqual((await c.tensorGet(ref)).shape, [1, 1, 1, 1, 1, 1, 1, 2]);
  assert.equal((await c.tensorList()).count, 1, "nothing else was stored");
});

test("matmulResident with keep, then tensorGet, equals the product in JS; without keep it returns the data", async () => {
  const c = make();
  for (const Arr of [Float32Array, Float64Array]) {
    const m = 9, k = 7, n = 5;
    const a = Arr.from(intMatrix(m, k, 21)), b = Arr.from(intMatrix(k, n, 22));
    const ra = await c.tensorPut(a, [m, k]);
    const rb = await c.tensorPut(b, [k, n]);
    const rc = await c.matmulResident(ra, rb, { keep: true });
    assert.equal(typeof rc, "string");
    assert.notEqual(rc, ra);
    const prod = await c.tensorGet(rc);
    assert.ok(prod.data instanceof Arr);
    assert.deepEqual(prod.shape, [m, n]);
    assert.deepEqual(Array.from(prod.data), refMatmul(a, b, m, k, n));
    const direct = await c.matmulResident(ra, rb);
    assert.ok(direct.data instanceof Arr);
    assert.deepEqual(direct.shape, [m, n]);
    assert.deepEqual(Array.from(direct.data), refMatmul(a, b, m, k, n));
    // matmul takes a handle for either operand (and the other as data).
    const left = await c.matmul(ra, b, [k, n]);
    assert.deepEqual(left.shape, [m, n]);
    assert.deepEqual(Array.from(left.data), refMatmul(a, b, m, k, n));
    const right = await c.matmul(a, [m, k], rb);
    assert.ok(right.data instanceof Arr);
    assert.deepEqual(Array.from(right.data), refMatmul(a, b, m, k, n));
  }
  // Mismatched inner dimensions are the worker's bad_request.
  const r1 = await c.tensorPut(new Float32Array(6), [2, 3]);
  await assert.rejects(c.matmulResident(r1, r1, { keep: true }), { code: "bad_request" });
  await assert.rejects(c.matmul(r1, new Float64Array(6), [3, 2]), { code: "bad_request" }, "dtype mismatch");
  await assert.rejects(c.matmul(r1 as any, r1 as any, [3, 2] as any), TypeError, "two handles: matmulResident");
  assert.equal((await c.tensorList()).count, 7);
});

test("another client (without the identity) gets unauthorized for this client's handles", async () => {
  const owner = make();
  const ref = await owner.tensorPut(Float32Array.from([1, 2, 3, 4]), [2, 2]);
  for (const other of [new TitanClient(worker.endpoint, { timeoutMs: 20000 }), make()]) {
    clients.push(other);
    for (const call of [() => other.tensorGet(ref), () => other.tensorFree(ref), () => other.matmulResident(ref, ref, { keep: true })])
      await assert.rejects(call(), (e: unknown) => {
        assert.ok(e instanceof TitanError, String(e));
        assert.equal(e.code, "unauthorized");
        assert.equal(e.reply?.code, "unauthorized");
        return true;
      });
    assert.equal((await other.tensorList()).count, 0, "another client sees none of them");
  }
  assert.deepEqual(Array.from((await owner.tensorGet(ref)).data), [1, 2, 3, 4], "still there for its owner");
  // A new client object with the same identity (a restarted process) owns them.
  const again = make({ identity: owner.identity });
  owner.close();
  assert.deepEqual(Array.from((await again.tensorGet(ref)).data), [1, 2, 3, 4]);
  assert.equal(await again.tensorFree(ref), 16);
});

test("tensorFree returns the bytes; a freed handle is not_found; tensorFreeAll and tensorList count", async () => {
  const c = make();
  const r32 = await c.tensorPut(new Float32Array(10), [10]);
  const r64 = await c.tensorPut(new Float64Array(12), [3, 4]);
  const r3 = await c.tensorPut(new Float32Array(8), [2, 2, 2]);
  let list = await c.tensorList();
  assert.equal(list.count, 3);
  assert.equal(list.bytes, 40 + 96 + 32);
  assert.ok(!("id" in list), "the client's own id is not passed on");
  assert.deepEqual(new Set(list.tensors.map((t: any) => t.ref)), new Set([r32, r64, r3]));
  const t64 = list.tensors.find((t: any) => t.ref === r64);
  assert.deepEqual([t64.dtype, t64.shape, t64.bytes], ["float64", [3, 4], 96]);
  assert.equal(typeof list.quota, "object");

  assert.equal(await c.tensorFree(r64), 96);
  await assert.rejects(c.tensorGet(r64), (e: unknown) => e instanceof TitanError && e.code === "not_found");
  await assert.rejects(c.tensorFree(r64), { code: "not_found" });
  await assert.rejects(c.matmul(r64, new Float64Array(4), [4, 1]), { code: "not_found" });
  await assert.rejects(c.tensorGet("t-000000000000000000000000"), { code: "not_found" });
  list = await c.tensorList();
  assert.equal(list.count, 2);
  assert.equal(list.bytes, 72);

  assert.equal(await c.tensorFreeAll(), 2);
  assert.equal(await c.tensorFreeAll(), 0);
  list = await c.tensorList();
  assert.equal(list.count, 0);
  assert.deepEqual(list.tensors, []);
  await assert.rejects(c.tensorGet(r32), { code: "not_found" });
});

test("handles are checked locally: nothing malformed reaches the wire", async () => {
  const c = make();
  for (const bad of ["", 't-"}', "t-1 2", "x".repeat(64), "t-é", 42 as unknown as string])
    for (const call of [() => c.tensorGet(bad), () => c.tensorFree(bad), () => c.matmulResident(bad, "t-1"),
      () => c.matmulResident("t-1", bad, { keep: true }), () => c.matmul(bad, new Float32Array(1), [1, 1])])
      await assert.rejects(call(), TypeError, `handle ${JSON.stringify(bad)}`);
  await assert.rejects(c.tensorGet("x".repeat(63)), { code: "not_found" }, "63 characters are allowed");
});

test("quota_exceeded on a worker with --tensor-quota-mb 1 (put and keep); nothing is stored or evicted", async () => {
  const w = await Worker.start(["--tensor-quota-mb", "1", "--threads", "2"]);
  const c = new TitanClient(w.endpoint, { timeoutMs: 20000, identity: freshIdentity() });
  try {
    await assert.rejects(c.tensorPut(new Float64Array(200000), [200000]), (e: unknown) => {
      assert.ok(e instanceof TitanError, String(e));
      assert.equal(e.code, "quota_exceeded");
      assert.match(e.message, /quota/);
      return true;
    });
    assert.equal((await c.tensorList()).count, 0);
    // 200 KB + 200 KB fit; their 500×500 float32 product (1 MB) would not.
    const ra = await c.tensorPut(new Float32Array(500 * 100).fill(1), [500, 100]);
    const rb = await c.tensorPut(new Float32Array(100 * 500).fill(1), [100, 500]);
    await assert.rejects(c.matmulResident(ra, rb, { keep: true }), { code: "quota_exceeded" });
    const list = await c.tensorList();
    assert.equal(list.count, 2);
    assert.equal(list.quota.client_bytes, 1 << 20);
    // Without keep the product is not resident, so the quota does not apply.
    const p = await c.matmulResident(ra, rb);
    assert.deepEqual(p.shape, [500, 500]);
    assert.equal(p.data[0], 100);
  } finally {
    c.close();
    await w.stop();
  }
});

test("identity is validated at construction", () => {
  const ep = "tcp://127.0.0.1:1";
  for (const bad of ["", "a b", "x".repeat(65), "caf\u00e9", "tab\there", "nl\n", "\u0000x", 7 as unknown as string])
    assert.throws(() => new TitanClient(ep, { identity: bad }), TypeError, `identity ${JSON.stringify(bad)}`);
  for (const ok of ["a", "x".repeat(64), "svc/eu-1:worker#3", "~!@$%^&*()[]{}"]) {
    const c = new TitanClient(ep, { identity: ok });
    assert.equal(c.identity, ok);
    c.close();
  }
  assert.equal(new TitanClient(ep).identity, undefined);
});

test("identity: every socket carries it as routing id, each attempt its own tag; other tags are dropped", async () => {
  // A fake ROUTER: ignores the first attempt, then answers the second (on the retry's fresh socket)
  // first with the first attempt's tag, then without a tag, then with the right one.
  // Like the worker: ROUTER_HANDOVER, so a reconnection with the same routing id takes it over.
  const router = new zmq.Router({ linger: 0, handover: true });
  await router.bind("tcp://127.0.0.1:*");
  const identity = freshIdentity();
  const c = new TitanClient(router.lastEndpoint!, { timeoutMs: 300, retries: 1, identity });
  const seen: { rid: string; tag: string; id: unknown }[] = [];
  const serve = (async () => {
    for (let i = 0; i < 2; i++) {
      const [rid, tag, delim, header] = await router.receive();
      assert.equal(delim.length, 0, "the delimiter follows the tag");
      seen.push({ rid: rid.toString(), tag: tag.toString(), id: JSON.parse(header.toString()).id });
    }
    const [first, second] = seen;
    const answer = (t: string | null, stale: boolean) =>
      router.send([Buffer.from(second.rid), ...(t === null ? [] : [t]), "", JSON.stringify({ status: "ok", stale, id: second.id })]);
    await answer(first.tag, true);
    await answer(null, true);
    await answer(second.tag, false);
  })();
  try {
    const [r] = await Promise.all([c.request({ op: "ping", id: "fixed" }), serve]);
    assert.equal(r.header.stale, false);
    assert.deepEqual(seen.map((x) => x.rid), [identity, identity], "the retry's socket has the same routing id");
    assert.match(seen[0].tag, /^@[0-9a-f]{8}$/);
    assert.notEqual(seen[0].tag, seen[1].tag, "a new tag per attempt");
    assert.deepEqual(seen.map((x) => x.id), ["fixed", "fixed"]);
    assert.equal(c.droppedReplies, 2);
  } finally {
    c.close();
    router.close();
  }
});

test("identity: a late reply to an abandoned attempt is dropped, not taken for the next call's answer", async (t) => {
  // Two executors and one BLAS thread each: the two attempts' products run side by side, slowly.
  const w = await Worker.start(["--threads", "2", "--blas-threads", "1"]);
  const identity = freshIdentity();
  const own = Float32Array.from([1, 2, 3, 4, 5, 6]);
  let c = new TitanClient(w.endpoint, { timeoutMs: 20000, identity });
  try {
    const ref = await c.tensorPut(own, [2, 3]);
    c.close();
    // A product that outlasts two short attempts: each attempt reconnects with the same routing id.
    // The caller's own id is the same in both attempts and in the next client's first request, so
    // only the per-attempt tag frame tells the late replies apart.
    c = new TitanClient(w.endpoint, { timeoutMs: 5, retries: 1, identity });
    const dim = 2000; // 2 x 32 MB to send and 16 GFLOP: no machine answers within 5 ms
    const big = new Float64Array(dim * dim);
    for (let i = 0; i < big.length; i++) big[i] = i % 7;
    const desc = (frame: number) => ({ dtype: "float64", shape: [dim, dim], frame });
    const bytes = Buffer.from(big.buffer);
    try {
      await c.request({ op: "matrix_multiply", id: "same-id", a: desc(1), b: desc(2) }, [bytes, bytes]);
      assert.fail("the machine computed a 2000x2000 float64 product within 5 ms");
    } catch (e) {
      assert.ok(e instanceof TitanTimeoutError, String(e));
      assert.equal(e.attempts, 2);
    }
    c.close();
    // At once, a new client object with the same identity (a restarted process): the worker routes
    // the abandoned products' replies to its socket.
    c = new TitanClient(w.endpoint, { timeoutMs: 60000, retries: 0, identity });
    // gpu_info is answered on the worker's I/O thread: the products still running now answer later,
    // to this connection (it holds the identity once this reply came back on it). With both running,
    // tensor_get waits for an executor, so the first product's reply comes before its answer.
    const running = (await c.gpuInfo()).inflight as number;
    const raw = await c.request({ op: "tensor_get", id: "same-id", ref });
    assert.deepEqual(raw.header.result, { dtype: "float32", shape: [2, 3], frame: 1 }, "the tensor, not a product");
    assert.equal(raw.frames[0].length, own.byteLength);
    const got = await c.tensorGet(ref);
    assert.ok(got.data instanceof Float32Array, "the tensor, not a float64 product");
    assert.deepEqual(got.shape, [2, 3]);
    assert.deepEqual(Array.from(got.data), Array.from(own));
    // Wait for the products to finish: their replies reach this socket before the gpu_info reply
    // that says none is left, and are dropped on the way.
    const until = Date.now() + 60000;
    while ((await c.gpuInfo()).inflight > 0) {
      assert.ok(Date.now() < until, "the products never finished");
      await sleep(20);
    }
    assert.ok(c.droppedReplies >= running, `dropped ${c.droppedReplies} replies, ${running} products were running`);
    t.diagnostic(`${running} abandoned products were running when the new client connected; it dropped ${c.droppedReplies} replies`);
    assert.equal((await c.ping()).status, "ok", "the next call gets its own answer");
    assert.deepEqual(Array.from((await c.tensorGet(ref)).data), Array.from(own));
  } finally {
    c.close();
    await w.stop();
  }
});
