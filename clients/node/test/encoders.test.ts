// encoders.test.ts - embed and rerank (PROTOCOL.md §5.8) against a real titan-worker --models DIR, whose model
// directories tests/encoder/make_model.py writes at test time (random weights): a normalised and a plain
// bi-encoder, a cross-encoder, a manifest with Matryoshka sizes and one with a one-request queue. Also busy,
// and malformed replies from a fake worker.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as zmq from "zeromq";
import { TitanClient, TitanError, TitanBusyError, Embeddings } from "../src/index";
import { Worker, PKG_ROOT } from "./helpers";

const MAKE_MODEL = path.resolve(PKG_ROOT, "..", "..", "tests", "encoder", "make_model.py");
const DIMS = 64; // make_model.py's default hidden size
const MAX_TOKENS = 64; // its default max_position_embeddings
// A float32 row normalised in float32: its norm is 1 within a few roundings per element (64 of them).
const NORM_TOL = 1e-5;
// One request's result against another's for the same input (PROTOCOL.md §9.1: float32 rounding, held to 1e-6).
const SAME_TOL = 1e-6;
// relevance_score is the sigmoid of the score in double precision: a few ulps of a number below 1.
const SIGMOID_TOL = 8 * Number.EPSILON;

let worker: Worker;
let client: TitanClient;
let modelsDir: string;

function makeModel(name: string, ...args: string[]): void {
  const p = spawnSync("/usr/bin/python3", [MAKE_MODEL, path.join(modelsDir, name), ...args], { encoding: "utf8" });
  assert.equal(p.status, 0, `make_model.py ${name} failed: ${p.error ?? p.stderr}`);
}

before(async () => {
  modelsDir = fs.mkdtempSync(path.join(os.tmpdir(), "titan-node-models-"));
  makeModel("bi", "--normalize", "--seed", "3");
  makeModel("raw", "--pooling", "cls", "--seed", "4");
  makeModel("cross", "--cross", "1", "--seed", "5");
  makeModel("matry-dir", "--normalize", "--seed", "8");
  fs.writeFileSync(path.join(modelsDir, "matry.model.json"),
    JSON.stringify({ name: "matry", runner: "bert", file: "matry-dir", dimensions: [16, 32] }));
  // A slow model whose queue holds one request and whose batches hold one: busy is easy to reach.
  makeModel("tight-dir", "--seed", "9", "--layers", "4", "--hidden", "256", "--intermediate", "1024", "--max-positions", "512");
  fs.writeFileSync(path.join(modelsDir, "tight.model.json"),
    JSON.stringify({ name: "tight", runner: "bert", file: "tight-dir", queue: 1, max_batch: 1 }));
  worker = await Worker.start(["--models", modelsDir, "--threads", "2"]);
  client = new TitanClient(worker.endpoint, { timeoutMs: 60000, retries: 0 });
});

after(async () => {
  client?.close();
  const rc = await worker?.stop();
  if (modelsDir) fs.rmSync(modelsDir, { recursive: true, force: true });
  assert.equal(rc, 0, "the worker exits 0 on SIGTERM");
});

function norm(v: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i] * v[i];
  return Math.sqrt(s);
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, "same length");
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

function checkShape(e: Embeddings, n: number, d = DIMS): void {
  assert.ok(e.data instanceof Float32Array, "data is a Float32Array");
  assert.deepEqual(e.shape, [n, d]);
  assert.equal(e.data.length, n * d);
  assert.equal(e.dims, d);
  assert.equal(e.embeddings.length, n);
  e.embeddings.forEach((row, i) => {
    assert.ok(row instanceof Float32Array && row.length === d);
    assert.equal(row.buffer, e.data.buffer, "rows are views into data");
    assert.equal(maxDiff(row, e.data.subarray(i * d, (i + 1) * d)), 0);
  });
  assert.ok(e.data.every(Number.isFinite), "every value is finite");
}

test("embed of a string: one float32 row of norm 1 (a --normalize model), the model and the tokens run", async () => {
  const e = await client.embed("bi", "the cat sat on the mat");
  checkShape(e, 1);
  assert.ok(Math.abs(norm(e.embeddings[0]) - 1) <= NORM_TOL, `norm ${norm(e.embeddings[0])}`);
  assert.equal(e.model, "bi");
  assert.ok(e.usage.promptTokens >= 3 && e.usage.totalTokens === e.usage.promptTokens, JSON.stringify(e.usage));
});

test("embed of a list of strings: one row per text in order, each its text's embedding", async () => {
  const texts = ["the cat sat", "", "Café déjà vu 日本", "a dog"];
  const e = await client.embed("bi", texts);
  checkShape(e, texts.length);
  for (let i = 0; i < texts.length; i++) {
    assert.ok(Math.abs(norm(e.embeddings[i]) - 1) <= NORM_TOL);
    const alone = await client.embed("bi", texts[i]);
    assert.ok(maxDiff(alone.embeddings[0], e.embeddings[i]) <= SAME_TOL, `row ${i}`);
    for (let j = 0; j < i; j++) assert.ok(maxDiff(e.embeddings[i], e.embeddings[j]) > 1e-3, `rows ${i} and ${j} differ`);
  }
  // The empty string is [CLS] [SEP] (ids 2 and 3 in make_model.py's vocabulary).
  assert.ok(maxDiff((await client.embed("bi", [2, 3])).embeddings[0], e.embeddings[1]) <= SAME_TOL);
});

test("embed of token ids: a flat list is one input, a list of lists several; typed arrays too; usage counts them", async () => {
  const seqs = [[2, 7, 8, 9, 3], [2, 3], [2, ...Array.from({ length: 35 }, (_, i) => 5 + i), 3]];
  const total = seqs.reduce((s, x) => s + x.length, 0);
  const e = await client.embed("bi", seqs);
  checkShape(e, 3);
  assert.deepEqual(e.usage, { promptTokens: total, totalTokens: total });
  for (const row of e.embeddings) assert.ok(Math.abs(norm(row) - 1) <= NORM_TOL);
  const one = await client.embed("bi", seqs[0]);
  checkShape(one, 1);
  assert.equal(one.usage.promptTokens, seqs[0].length);
  assert.ok(maxDiff(one.data, e.embeddings[0]) <= SAME_TOL);
  const typed = await client.embed("bi", Int32Array.from(seqs[0]));
  assert.ok(maxDiff(typed.data, one.data) <= SAME_TOL);
  const typedList = await client.embed("bi", [Uint16Array.from(seqs[0]), Uint32Array.from(seqs[1])]);
  checkShape(typedList, 2);
  assert.ok(maxDiff(typedList.data, e.data.subarray(0, 2 * DIMS)) <= SAME_TOL);
});

test("embed's binary result equals the op's JSON form sent raw", async () => {
  for (const input of [["the cat sat", "", "a dog runs"], "one text", [[2, 7, 8, 3], [2, 3]]]) {
    const h = (await client.request({ op: "embed", model: "bi", input })).header;
    const json: number[][] = h.embeddings;
    const e = await client.embed("bi", input as string | string[]);
    checkShape(e, Array.isArray(input) ? input.length : 1);
    assert.equal(json.length, e.shape[0]);
    json.forEach((row, i) => assert.ok(maxDiff(row.map(Math.fround), e.embeddings[i]) <= SAME_TOL, `row ${i}`));
    assert.deepEqual(e.usage, { promptTokens: h.usage.prompt_tokens, totalTokens: h.usage.total_tokens });
    assert.equal(h.dims, e.dims);
    assert.equal(h.model, e.model);
  }
});

test("embed's normalize: true on a model that does not normalise, false on one that does", async () => {
  const texts = ["the cat sat", "a dog"];
  const raw = await client.embed("raw", texts);
  const unit = await client.embed("raw", texts, { normalize: true });
  const bi = await client.embed("bi", texts);
  const off = await client.embed("bi", texts, { normalize: false });
  for (let i = 0; i < texts.length; i++) {
    const n = norm(raw.embeddings[i]);
    assert.ok(Math.abs(n - 1) > 1e-3, `raw row ${i} is not of norm 1: ${n}`);
    assert.ok(Math.abs(norm(unit.embeddings[i]) - 1) <= NORM_TOL);
    assert.ok(maxDiff(raw.embeddings[i].map((v) => v / n), unit.embeddings[i]) <= SAME_TOL);
    const m = norm(off.embeddings[i]);
    assert.ok(Math.abs(m - 1) > 1e-3, `normalize false, row ${i}: ${m}`);
    assert.ok(maxDiff(Array.from(off.embeddings[i], (v) => v / m), bi.embeddings[i]) <= SAME_TOL);
  }
});

test("embed's dimensions and truncate", async () => {
  const full = await client.embed("matry", "a cat");
  const d16 = await client.embed("matry", "a cat", { dimensions: 16 });
  checkShape(d16, 1, 16);
  const head = Array.from(full.data.subarray(0, 16));
  const n = norm(head);
  assert.ok(maxDiff(head.map((v) => v / n), d16.data) <= SAME_TOL);
  await assert.rejects(client.embed("matry", "a cat", { dimensions: 20 }), (e: unknown) =>
    e instanceof TitanError && e.code === "bad_request");
  // Ids over max_tokens: refused, or cut to the first max_tokens - 1 and the last one.
  const ids = [2, ...Array.from({ length: MAX_TOKENS + 10 }, (_, i) => 5 + (i % 40)), 3];
  await assert.rejects(client.embed("bi", ids), (e: unknown) => e instanceof TitanError && e.code === "bad_request");
  const cut = await client.embed("bi", ids, { truncate: true });
  assert.equal(cut.usage.promptTokens, MAX_TOKENS);
  const want = await client.embed("bi", [...ids.slice(0, MAX_TOKENS - 1), ids[ids.length - 1]]);
  assert.ok(maxDiff(cut.data, want.data) <= SAME_TOL);
});

const DOCS = ["the cat sat on the mat", "dogs run fast", "a cat", "the stock market fell", "", "cat cat cat"];

test("rerank: every document best first, relevanceScore the sigmoid of score, as the op's JSON form says", async () => {
  const r = await client.rerank("cross", "where is the cat", DOCS);
  assert.equal(r.results.length, DOCS.length);
  assert.deepEqual(r.results.map((x) => x.index).sort((a, b) => a - b), DOCS.map((_, i) => i));
  for (let i = 1; i < r.results.length; i++) assert.ok(r.results[i - 1].score >= r.results[i].score, "best first");
  for (const x of r.results) {
    assert.ok(Number.isFinite(x.score) && x.relevanceScore > 0 && x.relevanceScore < 1);
    assert.ok(Math.abs(x.relevanceScore - sigmoid(x.score)) <= SIGMOID_TOL, JSON.stringify(x));
    assert.deepEqual(Object.keys(x).sort(), ["index", "relevanceScore", "score"]);
  }
  assert.equal(r.model, "cross");
  assert.ok(r.usage.promptTokens > 2 * DOCS.length && r.usage.totalTokens === r.usage.promptTokens);
  const h = (await client.request({ op: "rerank", model: "cross", query: "where is the cat", documents: DOCS })).header;
  const raw = new Map<number, any>(h.results.map((x: any) => [x.index, x]));
  for (const x of r.results) assert.ok(Math.abs(x.score - raw.get(x.index).score) <= SAME_TOL);
  assert.deepEqual(r.usage, { promptTokens: h.usage.prompt_tokens, totalTokens: h.usage.total_tokens });
});

test("rerank's topN answers the best n", async () => {
  const full = await client.rerank("cross", "a cat", DOCS);
  for (const n of [1, 2, DOCS.length - 1]) {
    const top = await client.rerank("cross", "a cat", DOCS, { topN: n });
    assert.equal(top.results.length, n);
    top.results.forEach((x, i) => {
      assert.equal(x.index, full.results[i].index);
      assert.ok(Math.abs(x.score - full.results[i].score) <= SAME_TOL);
    });
  }
  assert.equal((await client.rerank("cross", "a cat", DOCS, { topN: DOCS.length + 5 })).results.length, DOCS.length);
});

test("errors carry the worker's code: not_found, bad_request, unsupported; bad options throw TypeError", async () => {
  const cases: [() => Promise<unknown>, string][] = [
    [() => client.embed("no-such-model", "x"), "not_found"],
    [() => client.rerank("no-such-model", "q", ["d"]), "not_found"],
    [() => client.embed("bi", []), "bad_request"],
    [() => client.embed("bi", ["a", [2, 3]] as unknown as string[]), "bad_request"], // a mix
    [() => client.embed("bi", [2, 100000, 3]), "bad_request"], // outside the vocabulary
    [() => client.rerank("cross", "q", []), "bad_request"],
    [() => client.rerank("cross", "q", "not a list" as unknown as string[]), "bad_request"],
    [() => client.embed("cross", "x"), "unsupported"],
    [() => client.rerank("bi", "q", ["d"]), "unsupported"],
  ];
  for (const [fn, code] of cases)
    await assert.rejects(fn(), (e: unknown) => {
      assert.ok(e instanceof TitanError, String(e));
      assert.equal(e.code, code, e.message);
      assert.equal(e.reply?.code, code);
      assert.ok(e.message.length > 0);
      return true;
    });
  for (const fn of [
    () => client.embed("bi", "x", { normalize: "yes" as unknown as boolean }),
    () => client.embed("bi", "x", { truncate: 1 as unknown as boolean }),
    () => client.embed("bi", "x", { dimensions: 0 }),
    () => client.embed("", "x"),
    () => client.embed("bi", { text: "x" } as unknown as string),
    () => client.embed("bi", new Float32Array([2, 3]) as unknown as Int32Array),
    () => client.rerank("cross", "q", ["d"], { topN: 0 }),
    () => client.rerank("cross", "q", ["d"], { topN: 1.5 }),
  ])
    await assert.rejects(fn(), TypeError);
  checkShape(await client.embed("bi", "still fine"), 1);
});

test("busy: the model's queue full answers TitanBusyError at once", async () => {
  const ids = [2, ...Array.from({ length: 500 }, (_, i) => 5 + (i % 300)), 3];
  const raw = new zmq.Dealer({ linger: 0 });
  raw.connect(worker.endpoint);
  const c = new TitanClient(worker.endpoint, { timeoutMs: 60000, retries: 0 });
  const burst = 8; // two run (two executors), one waits, the rest are refused
  let sent = 0;
  try {
    const deadline = Date.now() + 60000;
    for (;;) {
      for (let i = 0; i < burst; i++) await raw.send(["", JSON.stringify({ op: "embed", model: "tight", input: ids })]);
      sent += burst;
      try {
        await c.embed("tight", ids);
      } catch (e) {
        assert.ok(e instanceof TitanBusyError, String(e));
        assert.equal(e.code, "busy");
        break;
      }
      assert.ok(Date.now() < deadline, "never answered busy");
    }
    raw.receiveTimeout = 120000;
    for (let i = 0; i < sent; i++) await raw.receive(); // every request of the bursts is answered
    checkShape(await c.embed("tight", ids), 1, 256);
  } finally {
    c.close();
    raw.close();
  }
});

test("malformed embed and rerank replies reject with code protocol", async () => {
  const usage = { prompt_tokens: 3, total_tokens: 3 };
  const good = Float32Array.from({ length: 8 }, (_, i) => i - 2.5);
  const emb = (shape: number[], bytes: number, extra: object = {}) => ({
    header: { model: "m", dims: shape[shape.length - 1], usage, embeddings: { dtype: "float32", shape, frame: 1 }, ...extra },
    frames: [Buffer.alloc(bytes)],
  });
  const replies: { header: object; frames?: Buffer[] }[] = [
    { header: { model: "m", dims: 4, usage, embeddings: { dtype: "float32", shape: [2, 4], frame: 1 } },
      frames: [Buffer.from(good.buffer)] },
    emb([1, 4], 12), // a frame too short
    emb([2, 4], 32), // two rows for one input
    emb([1, 4], 16, { dims: 5 }), // dims that disagree with the shape
    { header: { model: "m", dims: 4, embeddings: { dtype: "float32", shape: [1, 4], frame: 1 } }, frames: [Buffer.alloc(16)] },
    { header: { model: "m", dims: 4, usage, embeddings: [[0, 0, 0, 0]] } }, // the JSON form
    { header: { model: "m", usage, results: [{ index: 0, score: 1, relevance_score: 0.7 }, { index: 0, score: 0.5, relevance_score: 0.6 }] } },
    { header: { model: "m", usage, results: [{ index: 2, score: 1, relevance_score: 0.7 }] } },
    { header: { model: "m", usage, results: [{ index: 0, score: 1, relevance_score: 0.7 }] } },
  ];
  const router = new zmq.Router({ linger: 0 });
  await router.bind("tcp://127.0.0.1:*");
  const c = new TitanClient(router.lastEndpoint!, { timeoutMs: 5000, retries: 0 });
  const serve = (async () => {
    for (const r of replies) {
      const [rid, delim, header] = await router.receive();
      const id = JSON.parse(header.toString()).id;
      await router.send([rid, delim, JSON.stringify({ ...r.header, id }), ...(r.frames ?? [])]);
    }
  })();
  const isProtocol = (e: unknown) => e instanceof TitanError && e.code === "protocol";
  try {
    const ok = await c.embed("m", [[2, 3], [2, 3]]); // the well-formed reply: decoded as sent
    assert.deepEqual(ok.shape, [2, 4]);
    assert.deepEqual(Array.from(ok.data), Array.from(good));
    assert.deepEqual(Array.from(ok.embeddings[1]), Array.from(good.subarray(4)));
    for (let i = 0; i < 5; i++) await assert.rejects(c.embed("m", "x"), isProtocol);
    await assert.rejects(c.rerank("m", "q", ["a", "b"]), isProtocol); // the same document twice
    await assert.rejects(c.rerank("m", "q", ["a", "b"], { topN: 1 }), isProtocol); // an index past the documents
    await assert.rejects(c.rerank("m", "q", ["a", "b"]), isProtocol); // one result for two documents
    await serve;
  } finally {
    c.close();
    router.close();
  }
});
