// health.ts - an Express route: GET /api/titan/health answers from the worker's gpu_info.
//   200 {"status":"healthy", ...gpu_info}   or   503 {"status":"unhealthy","error":"..."}
// Run: node dist/examples/health.js [tcp://127.0.0.1:5555] [port]   (TITAN_SERVER_KEY turns CURVE on)
import express from "express";
import type { Express, Request, Response } from "express";
import { TitanClient, TitanError } from "../src/index";

export function createApp(client: TitanClient): Express {
  const app = express();
  app.get("/api/titan/health", async (_req: Request, res: Response) => {
    try {
      const info = await client.gpuInfo();
      res.status(200).json({ status: "healthy", ...info });
    } catch (e) {
      const error = e instanceof TitanError ? `${e.code}: ${e.message}` : String(e);
      res.status(503).json({ status: "unhealthy", error });
    }
  });
  return app;
}

if (require.main === module) {
  const endpoint = process.argv[2] ?? "tcp://127.0.0.1:5555";
  const port = Number(process.argv[3] ?? 3000);
  // A health check should answer fast: one attempt of 2 s rather than 3 of 5 s.
  const client = new TitanClient(endpoint, { timeoutMs: 2000, retries: 0, serverKey: process.env.TITAN_SERVER_KEY });
  const server = createApp(client).listen(port, "127.0.0.1", () =>
    console.log(`http://127.0.0.1:${port}/api/titan/health -> ${endpoint}`),
  );
  const stop = () => {
    client.close();
    server.close();
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}
