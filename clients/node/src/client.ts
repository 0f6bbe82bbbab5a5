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
  /**
   * A stable name for this client on the worker: 1 to 64 printable ASCII characters, no spaces. It is
   * set as the ZeroMQ routing id of every socket the client opens (the first and each one a retry
   * makes), so the worker knows this client across reconnects: without CURVE, resident tensors
   * (tensorPut) belong to the routing id that made them (PROTOCOL.md §5.7). Two live clients must not
   * share an identity: the newer connection takes it over. Default: none (a fresh id per socket).
   */
  identity?: string;
}

export interface TitanReply {
  /** The parsed reply header (frame 0 of the body). */
  header: any;
  /** Tensor frames after the header (at most one in protocol 1). */
  frames: Buffer[];
}

/** The element arrays the binary form carries: float32 or float64, little-endian on the wire. */
export type FloatArray = Float32Array | Float64Array;

/**
 * A tensor: row-major `data` and its `shape`. Matrix products are 2-D (the default `S`);
 * `tensorGet` returns any rank from 1 to 8 (`Tensor<FloatArray, number[]>`).
 */
export interface Tensor<T extends FloatArray = FloatArray, S extends number[] = [number, number]> {
  data: T;
  shape: S;
}

/** Options of matmulResident. */
export interface MatmulResidentOptions {
  /** Keep the product in the worker's memory and resolve with its handle instead of the data. */
  keep?: boolean;
}

/** One input's token ids (the model's whole input, `[CLS] … [SEP]` included): numbers or an integer typed array. */
export type TokenIds = number[] | Int8Array | Uint8Array | Int16Array | Uint16Array | Int32Array | Uint32Array;

/** `embed`'s input: a text, several texts, one input's token ids, or several inputs' ids (PROTOCOL.md §5.8). */
export type EmbedInput = string | string[] | TokenIds | TokenIds[];

/** Options of embed (PROTOCOL.md §5.8). */
export interface EmbedOptions {
  /** L2-normalise each embedding. Default: the model's own choice (a sentence-transformers Normalize module). */
  normalize?: boolean;
  /** Cut an input over the model's max_tokens instead of refusing it (`bad_request`). Default false. */
  truncate?: boolean;
  /** A smaller embedding size, one the model's manifest lists (Matryoshka models). */
  dimensions?: number;
}

/** Tokens an `embed` or `rerank` request ran, special tokens included (the reply's `usage`). */
export interface EncoderUsage {
  promptTokens: number;
  totalTokens: number;
}

/**
 * What embed resolves with: the embeddings as one row-major Float32Array `data` of `shape` [n, dims]
 * (n inputs, in the request's order), the same rows as `embeddings` (views into `data`, not copies),
 * the model's name, `dims` and the tokens run.
 */
export interface Embeddings extends Tensor<Float32Array> {
  embeddings: Float32Array[];
  model: string;
  dims: number;
  usage: EncoderUsage;
}

/** Options of rerank. */
export interface RerankOptions {
  /** Answer only the best n documents. */
  topN?: number;
  /** Cut a (query, document) pair over max_tokens instead of refusing it. Default false. */
  truncate?: boolean;
}

/** One document of a rerank answer. */
export interface RerankResult {
  /** Its index in the request's documents. */
  index: number;
  /** The cross-encoder's raw logit. */
  score: number;
  /** The logit's sigmoid, from 0 to 1. */
  relevanceScore: number;
}

/** What rerank resolves with: the results best first (ties in the documents' order), the model, the tokens run. */
export interface Ranking {
  results: RerankResult[];
  model: string;
  usage: EncoderUsage;
}

const Z85 = /^[0-9a-zA-Z.\-:+=^!/*?&<>()[\]{}@%$#]{40}$/;
/** Printable ASCII without the space: what an identity (a routing id) may hold. */
const IDENTITY = /^[\x21-\x7e]{1,64}$/;
/** What a resident-tensor handle is made of (the worker's are "t-" and 24 hex digits). */
const HANDLE = /^[A-Za-z0-9_-]{1,63}$/;
/** The most dimensions a tensor has (PROTOCOL.md §4.1). */
const MAX_RANK = 8;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function checkHandle(name: string, ref: unknown): string {
  if (typeof ref !== "string" || !HANDLE.test(ref))
    throw new TypeError(`${name} must be a tensor handle (1 to 63 of A-Z a-z 0-9 _ -), got ${JSON.stringify(ref)}`);
  return ref;
}

function dtypeOf(name: string, x: unknown): "float32" | "float64" {
  if (x instanceof Float64Array) return "float64";
  if (x instanceof Float32Array) return "float32";
  throw new TypeError(`${name} must be a Float32Array or a Float64Array`);
}

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
 * taken for a later one. With an `identity`, each attempt also carries its own tag frame before the
 * delimiter, and a reply with another tag (a late answer to an abandoned attempt, which the worker
 * now routes to the reconnected socket) is dropped too. close() leaves nothing that keeps the
 * process alive.
 */
export class TitanClient {
  readonly endpoint: string;
  readonly timeoutMs: number;
  readonly retries: number;
  /** The routing id this client's sockets carry (TitanClientOptions.identity), or undefined. */
  readonly identity?: string;
  private readonly serverKey?: string;
  private readonly publicKey?: string;
  private readonly secretKey?: string;
  private socket: zmq.Dealer | null = null;
  private closed = false;
  private tail: Promise<unknown> = Promise.resolve();
  private readonly tag = randomBytes(4).toString("hex");
  private seq = 0;
  /** With an identity: the tag of the current attempt (random start, so another client object with
   * the same identity, e.g. a restarted process, never reuses this one's tags). */
  private attemptTag = randomBytes(4).readUInt32BE(0);
  private dropped = 0;

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
    if (opts.identity !== undefined) {
      if (typeof opts.identity !== "string" || !IDENTITY.test(opts.identity))
        throw new TypeError("identity must be 1 to 64 printable ASCII characters without spaces");
      this.identity = opts.identity;
    }
  }

  /** How many replies this client has dropped as not its current request's: stale ones (another id or
   * tag, e.g. late answers to attempts that timed out) and messages that are not replies. */
  get droppedReplies(): number {
    return this.dropped;
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

  /**
   * Binary form: row-major a (m×k) times b (k×n), both Float32Array or both Float64Array. Either
   * operand may instead be a resident tensor's handle (from tensorPut or matmulResident with keep),
   * given without a shape: `matmul(ref, b, bShape)` or `matmul(a, aShape, ref)`. The resident
   * tensor must have the other operand's dtype (else the worker answers `bad_request`). For two
   * handles, use matmulResident.
   */
  matmul<T extends FloatArray>(a: T, aShape: [number, number], b: T, bShape: [number, number]): Promise<Tensor<T>>;
  matmul<T extends FloatArray>(a: string, b: T, bShape: [number, number]): Promise<Tensor<T>>;
  matmul<T extends FloatArray>(a: T, aShape: [number, number], b: string): Promise<Tensor<T>>;
  async matmul(...args: unknown[]): Promise<Tensor<FloatArray>> {
    type Operand = { ref: string } | { data: FloatArray; shape: [number, number]; dtype: "float32" | "float64" };
    let i = 0;
    const take = (name: string): Operand => {
      const x = args[i++];
      if (typeof x === "string") return { ref: checkHandle(name, x) };
      const dtype = dtypeOf(name, x);
      const data = x as FloatArray;
      const shape = args[i++] as [number, number];
      if (!Array.isArray(shape) || shape.length !== 2 || !shape.every((d) => Number.isInteger(d) && d >= 1))
        throw new TypeError(`${name}Shape must be two positive integers`);
      if (data.length !== shape[0] * shape[1])
        throw new TypeError(`${name} has ${data.length} elements but its shape needs ${shape[0] * shape[1]}`);
      return { data, shape, dtype };
    };
    const a = take("a");
    const b = take("b");
    if (args.slice(i).some((x) => x !== undefined)) throw new TypeError("matmul: too many arguments for these operands");
    if ("ref" in a && "ref" in b) throw new TypeError("matmul takes at most one handle: use matmulResident for two");
    if ("data" in a && "data" in b) {
      if (a.dtype !== b.dtype) throw new TypeError("a and b must have the same dtype");
      if (a.shape[1] !== b.shape[0]) throw new TypeError(`inner dimensions do not match: ${a.shape} x ${b.shape}`);
    }
    const frames: Buffer[] = [];
    const desc = (o: Operand) => {
      if ("ref" in o) return { ref: o.ref };
      frames.push(toLE(o.data));
      return { dtype: o.dtype, shape: o.shape, frame: frames.length };
    };
    const header = { op: "matrix_multiply", a: desc(a), b: desc(b) };
    const reply = await this.request(header, frames);
    // The worker checks that a resident operand has the other's dtype: the product has it too.
    const dtype = "data" in a ? a.dtype : "data" in b ? b.dtype : undefined;
    return this.tensorFromReply(reply, dtype, 2) as Tensor<FloatArray>;
  }

  /**
   * `tensor_put`: stores a tensor in the worker's memory (its GPU's on CUDA) and resolves with its
   * handle. `data` is row-major; `shape` has 1 to 8 positive dimensions whose product is
   * `data.length`. The tensor belongs to this client (its CURVE key, else its routing id: set
   * `identity` to keep it across reconnects) until tensorFree or the worker stops. Rejects with
   * TitanError `quota_exceeded` when it would take this client or the worker over its quota.
   */
  async tensorPut(data: Float32Array | Float64Array, shape: number[]): Promise<string> {
    const dtype = dtypeOf("data", data);
    checkShape("shape", shape);
    const elems = shape.reduce((p, d) => p * d, 1);
    if (data.length !== elems) throw new TypeError(`data has ${data.length} elements but its shape needs ${elems}`);
    const reply = await this.request({ op: "tensor_put", tensor: { dtype, shape: [...shape], frame: 1 } }, [toLE(data)]);
    return this.handleFromReply(reply, reply.header);
  }

  /** `tensor_get`: a copy of a resident tensor (its dtype and shape as stored). `not_found` when it was
   * freed, expired or never made here; `unauthorized` when it is another client's. */
  async tensorGet(ref: string): Promise<Tensor<Float32Array | Float64Array, number[]>> {
    const reply = await this.request({ op: "tensor_get", ref: checkHandle("ref", ref) });
    return this.tensorFromReply(reply, undefined, undefined);
  }

  /** `tensor_free`: frees a resident tensor and resolves with the bytes it held. */
  async tensorFree(ref: string): Promise<number> {
    const h = (await this.request({ op: "tensor_free", ref: checkHandle("ref", ref) })).header;
    if (typeof h.bytes !== "number") throw new TitanError("protocol", `tensor_free's reply lacks "bytes": ${JSON.stringify(h)}`, h);
    return h.bytes;
  }

  /** `tensor_free` with `"all": true`: frees every resident tensor of this client and resolves with
   * how many tensors it freed (the worker reports a count, not bytes). */
  async tensorFreeAll(): Promise<number> {
    const h = (await this.request({ op: "tensor_free", all: true })).header;
    if (typeof h.freed !== "number") throw new TitanError("protocol", `tensor_free's reply lacks "freed": ${JSON.stringify(h)}`, h);
    return h.freed;
  }

  /**
   * `tensor_list`: this client's resident tensors and quotas, the reply as the worker sends it
   * (without the client's id): `{tensors: [{ref, dtype, shape, bytes, age_s, idle_s}…], bytes, count,
   * quota: {client_bytes, client_tensors, worker_bytes, idle_ttl_s}, worker_bytes}`.
   */
  async tensorList(): Promise<any> {
    const h = { ...(await this.request({ op: "tensor_list" })).header };
    delete h.id;
    return h;
  }

  /**
   * Multiplies two resident matrices (handles of 2-D tensors of one dtype). With `keep: true` the
   * product stays in the worker's memory as a new resident tensor of this client and the promise
   * resolves with its handle (over a quota: `quota_exceeded`); otherwise with the product itself.
   */
  matmulResident(a: string, b: string, opts: { keep: true }): Promise<string>;
  matmulResident(a: string, b: string, opts?: { keep?: false }): Promise<Tensor<Float32Array | Float64Array>>;
  matmulResident(a: string, b: string, opts?: MatmulResidentOptions): Promise<string | Tensor<Float32Array | Float64Array>>;
  async matmulResident(a: string, b: string, opts: MatmulResidentOptions = {}): Promise<string | Tensor<FloatArray>> {
    const header: Record<string, unknown> = { op: "matrix_multiply", a: { ref: checkHandle("a", a) }, b: { ref: checkHandle("b", b) } };
    if (opts.keep !== undefined && typeof opts.keep !== "boolean") throw new TypeError("keep must be a boolean");
    if (opts.keep) header.keep = true;
    const reply = await this.request(header);
    if (opts.keep) return this.handleFromReply(reply, reply.header.result);
    return this.tensorFromReply(reply, undefined, 2) as Tensor<FloatArray>;
  }

  /**
   * `embed` (PROTOCOL.md §5.8): embeds texts or token ids with a bi-encoder of a worker started with
   * `--models DIR`. Always asks for the binary form, so the values arrive as float32 bytes, never as
   * JSON numbers. What the input holds (not empty, not mixed, ids within the vocabulary, within
   * max_tokens) is the worker's to judge: it rejects with TitanError `bad_request`; `not_found` for a
   * model it does not serve, `unsupported` for a cross-encoder (use rerank), TitanBusyError when the
   * model's queue is full. Bad options throw TypeError before anything is sent.
   */
  async embed(model: string, input: EmbedInput, opts: EmbedOptions = {}): Promise<Embeddings> {
    const plain = embedInput(input);
    const header: Record<string, unknown> = { op: "embed", model: checkModel(model), input: plain, binary: true };
    if (opts.normalize !== undefined) header.normalize = checkBool("normalize", opts.normalize);
    if (opts.truncate !== undefined && checkBool("truncate", opts.truncate)) header.truncate = true;
    if (opts.dimensions !== undefined) header.dimensions = checkPositive("dimensions", opts.dimensions);
    const reply = await this.request(header);
    const h = reply.header;
    const t = this.tensorFromReply(reply, "float32", 2, "embeddings");
    const [n, d] = t.shape;
    // A string or a flat list of ids is one input; otherwise one row per element.
    const want = typeof plain === "string" || (plain.length > 0 && typeof plain[0] === "number") ? 1 : plain.length;
    if (n !== want || d !== h.dims || (opts.dimensions !== undefined && d !== opts.dimensions) || typeof h.model !== "string")
      throw new TitanError("protocol", `an embed reply that does not fit its ${want} input(s): ${JSON.stringify(h)}`, h);
    const data = t.data as Float32Array;
    const embeddings = Array.from({ length: n }, (_, i) => data.subarray(i * d, (i + 1) * d));
    return { data, shape: [n, d], embeddings, model: h.model, dims: d, usage: usageFrom(h, "embed") };
  }

  /**
   * `rerank` (PROTOCOL.md §5.8): scores each document against the query with a cross-encoder and
   * resolves with the results best first (only the best `topN` when given). Rejects with TitanError
   * `not_found`, `unsupported` (a bi-encoder, or a cross-encoder with several labels), `bad_request`
   * (no documents…), or TitanBusyError; bad options throw TypeError before anything is sent.
   */
  async rerank(model: string, query: string, documents: string[], opts: RerankOptions = {}): Promise<Ranking> {
    const header: Record<string, unknown> = { op: "rerank", model: checkModel(model), query, documents };
    if (opts.topN !== undefined) header.top_n = checkPositive("topN", opts.topN);
    if (opts.truncate !== undefined && checkBool("truncate", opts.truncate)) header.truncate = true;
    const h = (await this.request(header)).header;
    const count = Array.isArray(documents) ? documents.length : -1;
    const want = Math.min(count, opts.topN ?? count);
    const bad = (why: string) => new TitanError("protocol", `${why}: ${JSON.stringify(h)}`, h);
    if (!Array.isArray(h.results) || h.results.length !== want || typeof h.model !== "string")
      throw bad(`a rerank reply without "results" for its ${want} document(s)`);
    const seen = new Set<number>();
    const results = h.results.map((x: any): RerankResult => {
      if (!x || typeof x !== "object" || !Number.isInteger(x.index) || x.index < 0 || x.index >= count || seen.has(x.index) ||
          typeof x.score !== "number" || typeof x.relevance_score !== "number")
        throw bad("a malformed rerank result");
      seen.add(x.index);
      return { index: x.index, score: x.score, relevanceScore: x.relevance_score };
    });
    return { results, model: h.model, usage: usageFrom(h, "rerank") };
  }

  /** The handle in `obj.ref` of a reply, checked. */
  private handleFromReply(reply: TitanReply, obj: any): string {
    const ref = obj && typeof obj === "object" ? obj.ref : undefined;
    if (typeof ref !== "string" || !HANDLE.test(ref))
      throw new TitanError("protocol", `the reply lacks a valid tensor handle "ref": ${JSON.stringify(reply.header)}`, reply.header);
    return ref;
  }

  /** Decodes a binary result (`{"result": {dtype, shape, frame}}` and its frame; the descriptor under `key`)
   * into a fresh array. */
  private tensorFromReply(reply: TitanReply, dtype: string | undefined, rank: number | undefined,
                          key = "result"): Tensor<FloatArray, number[]> {
    const r = reply.header[key];
    const bad = (why: string) => new TitanError("protocol", `${why}: ${JSON.stringify(reply.header)}`, reply.header);
    if (!r || typeof r !== "object" || Array.isArray(r)) throw bad("unexpected result");
    if ((r.dtype !== "float32" && r.dtype !== "float64") || (dtype !== undefined && r.dtype !== dtype))
      throw bad("unexpected result descriptor");
    const shape = r.shape;
    if (!Array.isArray(shape) || shape.length < 1 || shape.length > MAX_RANK || (rank !== undefined && shape.length !== rank) ||
        !shape.every((d: unknown) => Number.isInteger(d) && (d as number) >= 1))
      throw bad("unexpected result descriptor");
    const itemsize = r.dtype === "float64" ? 8 : 4;
    const frame = reply.frames[(r.frame ?? 1) - 1];
    const elems = shape.reduce((p: number, d: number) => p * d, 1);
    if (!frame || frame.length !== elems * itemsize)
      throw new TitanError("protocol", "the result frame is missing or has the wrong size", reply.header);
    const copy = new ArrayBuffer(frame.length);
    const bytes = new Uint8Array(copy);
    bytes.set(frame);
    if (!LITTLE_ENDIAN) {
      const b = Buffer.from(copy);
      if (itemsize === 8) b.swap64();
      else b.swap32();
    }
    const data = r.dtype === "float64" ? new Float64Array(copy) : new Float32Array(copy);
    return { data, shape: [...shape] };
  }

  private makeSocket(): zmq.Dealer {
    const s = new zmq.Dealer({ linger: 0, sendTimeout: this.timeoutMs, receiveTimeout: this.timeoutMs });
    // A stable routing id: the worker knows this client across reconnects (and hands the id over
    // to the newest connection: ZMQ_ROUTER_HANDOVER).
    if (this.identity !== undefined) s.routingId = this.identity;
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
      // With an identity, late replies to abandoned attempts come to this socket too: a tag frame
      // the worker echoes (PROTOCOL.md §1.1), new for each attempt, tells them apart, whatever the id.
      let tag: Buffer | undefined;
      if (this.identity !== undefined) {
        this.attemptTag = (this.attemptTag + 1) >>> 0;
        tag = Buffer.from("@" + this.attemptTag.toString(16).padStart(8, "0"), "ascii");
      }
      try {
        sock.sendTimeout = this.timeoutMs;
        await sock.send([...(tag ? [tag] : []), Buffer.alloc(0), Buffer.from(text, "utf8"), ...frames]);
        for (;;) {
          const left = deadline - Date.now();
          if (left <= 0) throw Object.assign(new Error("timed out"), { code: "EAGAIN" });
          sock.receiveTimeout = left;
          let msg = await sock.receive();
          if (tag) {
            if (msg.length < 1 || !msg[0].equals(tag)) {
              this.dropped++; // an earlier attempt's reply
              continue;
            }
            msg = msg.slice(1);
          }
          if (msg.length < 2 || msg[0].length !== 0) {
            this.dropped++; // not a reply to a delimited request
            continue;
          }
          let reply: any;
          try {
            reply = parseReplyHeader(msg[1].toString("utf8"));
          } catch {
            this.dropped++; // not ours: the worker always answers JSON
            continue;
          }
          if (reply === null || typeof reply !== "object" || Array.isArray(reply)) {
            this.dropped++;
            continue;
          }
          // Match by id. A reply without one is taken only when the worker could not have read ours
          // (an error reply, e.g. a header it could not parse) or when we sent a verbatim string.
          if (expectId !== undefined) {
            if ("id" in reply) {
              if (reply.id !== expectId) {
                this.dropped++; // stale
                continue;
              }
            } else if (!("error" in reply)) {
              this.dropped++;
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

const INT_ARRAYS = [Int8Array, Uint8Array, Int16Array, Uint16Array, Int32Array, Uint32Array];

function isIntArray(x: unknown): x is Exclude<TokenIds, number[]> {
  return INT_ARRAYS.some((T) => x instanceof T);
}

/**
 * embed's input as plain JSON values: integer typed arrays become arrays of numbers. Whether it is a
 * valid input (not empty, not mixed, integers) is the worker's to say; only what JSON cannot carry
 * as meant is refused here.
 */
function embedInput(x: unknown): string | unknown[] {
  if (typeof x === "string") return x;
  if (isIntArray(x)) return Array.from(x);
  if (Array.isArray(x)) return x.map((v) => (isIntArray(v) ? Array.from(v) : v));
  throw new TypeError("input must be a string, an array of strings, token ids (numbers or an integer typed array) or an array of them");
}

function checkModel(model: unknown): string {
  if (typeof model !== "string" || model.length === 0)
    throw new TypeError(`model must be a model's name (a non-empty string; list_models names them), got ${JSON.stringify(model)}`);
  return model;
}

function checkBool(name: string, x: unknown): boolean {
  if (typeof x !== "boolean") throw new TypeError(`${name} must be a boolean`);
  return x;
}

function checkPositive(name: string, x: unknown): number {
  if (!Number.isSafeInteger(x) || (x as number) < 1) throw new TypeError(`${name} must be a positive integer, got ${JSON.stringify(x)}`);
  return x as number;
}

/** The reply's `usage`, checked, in this client's camelCase. */
function usageFrom(h: any, what: string): EncoderUsage {
  const u = h.usage;
  const ok = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
  if (!u || typeof u !== "object" || !ok(u.prompt_tokens) || !ok(u.total_tokens))
    throw new TitanError("protocol", `${what}'s reply lacks "usage" with prompt_tokens and total_tokens: ${JSON.stringify(h)}`, h);
  return { promptTokens: u.prompt_tokens, totalTokens: u.total_tokens };
}

/** Checks a tensor shape: 1 to 8 positive integers. */
function checkShape(name: string, shape: unknown): void {
  if (!Array.isArray(shape) || shape.length < 1 || shape.length > MAX_RANK ||
      !shape.every((d) => Number.isInteger(d) && d >= 1))
    throw new TypeError(`${name} must be 1 to ${MAX_RANK} positive integers`);
}

/** The array's bytes, little-endian (the wire order), without copying on little-endian hosts. */
function toLE(a: Float32Array | Float64Array): Buffer {
  const buf = Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  if (LITTLE_ENDIAN) return buf;
  const out = Buffer.from(buf);
  if (a instanceof Float64Array) out.swap64();
  else out.swap32();
  return out;
}
