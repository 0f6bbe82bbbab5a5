// onnx_run.mjs - runs an ONNX model with ONNX Runtime (onnxruntime-node, CPU), the encoder tests' second
// reference (tests/integration/test_bert_forward.py).
// Usage: node tests/ref/onnx_run.mjs MODEL.onnx < {"input_ids": [[...]], "attention_mask": [[...]],
//                                                  "token_type_ids": [[...]]}
//   (padded int64 [batch, seq] arrays, each given becoming an int64 input of that name) prints
//   {"output": [[...], ...]}: the model's first output as rows, each float32 value printed exactly.
// Errors: a message on stderr and exit status 1 (2 when onnxruntime-node is missing: scripts/deps.sh test).
import { readFileSync } from 'node:fs';

let ort;
try {
  ort = (await import('onnxruntime-node')).default;
} catch (e) {
  process.stderr.write(`onnx_run: cannot load onnxruntime-node (${e.message}): run scripts/deps.sh test\n`);
  process.exit(2);
}

if (process.argv.length !== 3) {
  process.stderr.write('usage: node onnx_run.mjs MODEL.onnx < inputs.json\n');
  process.exit(1);
}
const req = JSON.parse(readFileSync(0, 'utf8'));
const session = await ort.InferenceSession.create(process.argv[2], { intraOpNumThreads: 1, interOpNumThreads: 1 });

const feeds = {};
for (const name of session.inputNames) {
  const rows = req[name];
  if (!Array.isArray(rows) || rows.length === 0 || !rows.every((r) => Array.isArray(r) && r.length === rows[0].length)) {
    process.stderr.write(`onnx_run: input "${name}" must be a non-empty rectangular array of integers\n`);
    process.exit(1);
  }
  const flat = BigInt64Array.from(rows.flat().map((v) => BigInt(v)));
  feeds[name] = new ort.Tensor('int64', flat, [rows.length, rows[0].length]);
}
const results = await session.run(feeds);
const out = results[session.outputNames[0]];
const width = out.dims.slice(1).reduce((a, b) => a * b, 1);
const rows = [];
for (let i = 0; i < out.dims[0]; i++) rows.push(Array.from(out.data.subarray(i * width, (i + 1) * width)));
process.stdout.write(JSON.stringify({ output: rows, dims: out.dims }) + '\n');
