// http_openai.cjs - the official openai npm client (tests/ref/node_modules) against titan-worker's /v1 API, for
// test_http_api.py: embeddings.create with the client's default (it asks for base64 and decodes it itself) and with
// encoding_format "float", models.list, and a wrong key. Prints one JSON object on stdout.
// Usage: node http_openai.cjs ROOT BASE_URL API_KEY MODEL INPUTS_JSON
"use strict";
const path = require("path");

async function main() {
  const [root, baseURL, apiKey, model, inputsJson] = process.argv.slice(2);
  const OpenAI = require(path.join(root, "tests", "ref", "node_modules", "openai"));
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });
  const input = JSON.parse(inputsJson);
  const out = {};
  // The default: the client sends encoding_format "base64" and turns each string into numbers (Float32Array).
  const d = await client.embeddings.create({ model, input });
  out.default = d.data.map((e) => Array.from(e.embedding));
  out.default_index = d.data.map((e) => e.index);
  out.model = d.model;
  out.usage = d.usage;
  const f = await client.embeddings.create({ model, input, encoding_format: "float" });
  out.float = f.data.map((e) => e.embedding);
  const b = await client.embeddings.create({ model, input, encoding_format: "base64" });
  out.base64 = b.data.map((e) => e.embedding);
  const models = [];
  for await (const m of client.models.list()) models.push(m.id);
  out.models = models;
  try {
    const bad = new OpenAI({ baseURL, apiKey: apiKey + "-wrong", maxRetries: 0 });
    await bad.embeddings.create({ model, input });
    out.wrong_key = "accepted";
  } catch (e) {
    out.wrong_key = { status: e.status, code: e.code, type: e.type, name: e.constructor.name };
  }
  try {
    await client.embeddings.create({ model: "no-such-model", input });
    out.unknown_model = "accepted";
  } catch (e) {
    out.unknown_model = { status: e.status, code: e.code, name: e.constructor.name, message: e.message };
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ error: String(e && e.stack ? e.stack : e), status: e && e.status }));
  process.exit(1);
});
