// example.test.ts - examples/health.ts's Express route, healthy and unhealthy, over plain HTTP.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as http from "node:http";
import * as net from "node:net";
import type { AddressInfo } from "node:net";
import { TitanClient } from "../src/index";
import { createApp } from "../examples/health";
import { Worker } from "./helpers";

function get(port: number, p: string): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: "127.0.0.1", port, path: p, agent: false }, (res) => {
        let data = "";
        res.setEncoding("utf8");
        res.on("data", (d) => (data += d));
        res.on("end", () => resolve({ status: res.statusCode!, body: JSON.parse(data) }));
      })
      .on("error", reject);
  });
}

async function serve(client: TitanClient): Promise<{ port: number; close: () => Promise<void> }> {
  const server = createApp(client).listen(0, "127.0.0.1");
  await new Promise((r) => server.once("listening", r));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

let worker: Worker;
before(async () => {
  worker = await Worker.start();
});
after(async () => {
  await worker?.stop();
});

test("GET /api/titan/health: 200 healthy with the worker's gpu_info", async () => {
  const client = new TitanClient(worker.endpoint, { timeoutMs: 2000, retries: 0 });
  const s = await serve(client);
  try {
    const r = await get(s.port, "/api/titan/health");
    assert.equal(r.status, 200);
    assert.equal(r.body.status, "healthy");
    for (const k of ["name", "total_memory_gb", "multi_processor_count", "cuda_capability"]) assert.ok(k in r.body, k);
  } finally {
    await s.close();
    client.close();
  }
});

test("GET /api/titan/health: 503 unhealthy with an error when the worker is gone", async () => {
  // A port held by a listener that never speaks ZeroMQ: a "free" port could be taken meanwhile by a worker of
  // a test running beside this one (make test runs two at once), which would then answer.
  const silent = net.createServer(() => {}).listen(0, "127.0.0.1");
  await new Promise((r) => silent.once("listening", r));
  const port = (silent.address() as AddressInfo).port;
  const client = new TitanClient(`tcp://127.0.0.1:${port}`, { timeoutMs: 300, retries: 0 });
  const s = await serve(client);
  try {
    const r = await get(s.port, "/api/titan/health");
    assert.equal(r.status, 503);
    assert.equal(r.body.status, "unhealthy");
    assert.match(r.body.error, /^timeout: no answer from tcp:\/\/127\.0\.0\.1:\d+/);
  } finally {
    await s.close();
    client.close();
    silent.close();
  }
});
