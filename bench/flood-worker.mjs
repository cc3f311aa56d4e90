// The flood of bench/flood.ts, in its own thread so that the member's measured requests are not
// delayed by the flood's callbacks in the same event loop: bad attempts from ever new addresses
// and login IDs at `rate` a second until told to stop; reports the statuses.
import http from "node:http";
import { parentPort, workerData } from "node:worker_threads";

const { port, rate } = workerData;
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
const statuses = {};
let sent = 0;
let flooding = true;
const inflight = new Set();

parentPort.on("message", (m) => {
  if (m === "stop") flooding = false;
});

function attempt(i) {
  return new Promise((resolve) => {
    const body = JSON.stringify({ login_id: `victim${i % 5000}`, password: `guess ${i}` });
    const req = http.request(
      {
        port,
        host: "127.0.0.1",
        method: "POST",
        path: "/api/v1/login",
        agent,
        headers: {
          "content-type": "application/json",
          "x-forwarded-for": `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
        },
      },
      (res) => {
        res.resume();
        res.on("end", () => {
          statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1;
          resolve();
        });
      },
    );
    req.on("error", () => {
      statuses[0] = (statuses[0] ?? 0) + 1;
      resolve();
    });
    req.end(body);
  });
}

const start = Date.now();
while (flooding) {
  const due = Math.floor(((Date.now() - start) / 1000) * rate);
  while (sent < due) {
    const p = attempt(sent++).finally(() => inflight.delete(p));
    inflight.add(p);
  }
  await new Promise((r) => setTimeout(r, 5));
}
await Promise.all(inflight);
agent.destroy();
parentPort.postMessage({ sent, statuses });
