// vectors.test.ts - every conformance vector in tests/vectors/*.json against a real worker.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { TitanClient, TitanError, TitanReply } from "../src/index";
import { Worker, PKG_ROOT } from "./helpers";

const DIR = path.resolve(PKG_ROOT, "..", "..", "tests", "vectors");
const files = fs.existsSync(DIR) ? fs.readdirSync(DIR).filter((f) => f.endsWith(".json")).sort() : [];

let worker: Worker;
let client: TitanClient;

if (files.length === 0) {
  test("conformance vectors", { skip: `no vectors in ${DIR} yet` }, () => {});
} else {
  before(async () => {
    worker = await Worker.start();
    client = new TitanClient(worker.endpoint, { timeoutMs: 5000, retries: 0 });
  });
  after(async () => {
    client?.close();
    await worker?.stop();
  });
  for (const f of files) {
    const v = JSON.parse(fs.readFileSync(path.join(DIR, f), "utf8"));
    test(`vector ${f}: ${v.name}`, async () => {
      // The header is sent as compact JSON text, verbatim: the client adds no id of its own here,
      // so the reply is exactly what the vector expects.
      const text: string = v.request.header_text ?? JSON.stringify(v.request.header);
      const frames = (v.request.frames ?? []).map((b: string) => Buffer.from(b, "base64"));
      let reply: TitanReply;
      try {
        reply = await client.request(text, frames);
      } catch (e) {
        if (!(e instanceof TitanError) || !e.reply) throw e;
        reply = { header: e.reply, frames: [] };
      }
      const want = v.reply;
      if (want.header !== undefined) assert.deepStrictEqual(reply.header, want.header);
      for (const [k, val] of Object.entries(want.header_subset ?? {}))
        assert.deepStrictEqual(reply.header[k], val, `member ${k}`);
      for (const k of want.header_keys ?? []) assert.ok(k in reply.header, `member ${k} present`);
      for (const k of want.header_absent ?? []) assert.ok(!(k in reply.header), `member ${k} absent`);
      const wantFrames = (want.frames ?? []).map((b: string) => Buffer.from(b, "base64"));
      assert.equal(reply.frames.length, wantFrames.length, "reply frame count");
      wantFrames.forEach((fr: Buffer, i: number) => assert.ok(fr.equals(reply.frames[i]), `reply frame ${i + 1} bytes`));

      // Through the object API too, where the client adds its own id (dropped before comparing).
      if (v.request.header !== undefined && v.request.header.id === undefined && want.header !== undefined) {
        let r2: TitanReply;
        try {
          r2 = await client.request(v.request.header, frames);
        } catch (e) {
          if (!(e instanceof TitanError) || !e.reply) throw e;
          r2 = { header: e.reply, frames: [] };
        }
        assert.equal(typeof r2.header.id, "string", "the client's id is echoed");
        const { id: _id, ...rest } = r2.header;
        assert.deepStrictEqual(rest, want.header);
        assert.equal(r2.frames.length, wantFrames.length);
      }
    });
  }
}
