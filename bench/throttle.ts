/**
 * Throttle benchmarks (`npm run bench`): the login-anomaly engine's decision time with 100,000
 * tracked keys (target p99 ≤ 0.5 ms), and a throttled sign-in answered over HTTP (target p99 ≤
 * 2 ms). Prints a table; exits 1 when a target is missed. (The third target of issue 5, a member's
 * sign-in p99 during a flood of bad attempts, is bench/flood.ts.) BENCH_DEBUG=1 prints the p50s.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { createApp } from "../src/http/app.js";
import type { Attempt } from "../src/throttle/engine.js";
import { world } from "./world.js";

// One client address floods here: keep the service-wide detector out of the measurement.
const w = world({
  start: Date.now(),
  env: { SEKISHO_THROTTLE_POLICY: JSON.stringify({ attackFloorPerMinute: 10_000_000 }) },
});
const { s } = w;

const p50 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const p99 = (xs: number[]) => {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))] as number;
};
const ms = (start: bigint) => Number(process.hrtime.bigint() - start) / 1e6;

// 1. Decision time with 100,000 tracked keys.
for (let i = 0; i < 25_000; i++) {
  const a: Attempt = {
    ip: `10.${(i >> 8) & 255}.${i & 255}.7`,
    loginId: `user${i}`,
    trustedDevice: false,
    kind: "password",
  };
  s.guard.settle(a, "failure");
}
const keys = s.guard.trackedKeys;
const decisions: number[] = [];
for (let i = 0; i < 20_000; i++) {
  const j = Math.floor(Math.random() * 25_000);
  const a: Attempt = {
    ip: `10.${(j >> 8) & 255}.${j & 255}.7`,
    loginId: `user${j}`,
    trustedDevice: false,
    kind: "password",
    password: `pw${i}`,
  };
  const start = process.hrtime.bigint();
  const d = s.guard.assess(a);
  decisions.push(ms(start));
  if (d.action === "allow") s.guard.settle(a, "neither");
}

// 2. A throttled sign-in over HTTP.
const app = createApp(s);
const server = http.createServer(app);
await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
const port = (server.address() as AddressInfo).port;
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const body = JSON.stringify({ login_id: "flooded", password: "wrong password here" });
const post = () =>
  new Promise<number>((resolve, reject) => {
    const req = http.request(
      { port, path: "/api/v1/login", method: "POST", agent, headers: { "content-type": "application/json" } },
      (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode ?? 0));
      },
    );
    req.on("error", reject);
    req.end(body);
  });
// Fill the (IP, login ID) window, then warm up (JIT) before measuring.
for (let i = 0; i < 1_000; i++) await post();
const throttled: number[] = [];
let not429 = 0;
for (let i = 0; i < 3_000; i++) {
  const start = process.hrtime.bigint();
  const status = await post();
  throttled.push(ms(start));
  if (status !== 429) not429++;
}
// The same client and server on a route that does nothing (GET /healthz): the floor this machine
// puts under any HTTP answer.
const get = () =>
  new Promise<number>((resolve, reject) => {
    const req = http.request({ port, path: "/healthz", method: "GET", agent }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("error", reject);
    req.end();
  });
const floor: number[] = [];
for (let i = 0; i < 1_000; i++) await get();
for (let i = 0; i < 3_000; i++) {
  const start = process.hrtime.bigint();
  await get();
  floor.push(ms(start));
}
server.close();
agent.destroy();
w.close();

const rows = [
  { what: `throttle decision, ${keys.toLocaleString("en")} tracked keys`, p99: p99(decisions), target: 0.5 },
  { what: "throttled sign-in over HTTP (429)", p99: p99(throttled), target: 2 },
];
const lines = ["| measurement | p99 (ms) | target (ms) | met |", "| --- | --- | --- | --- |"];
lines.push(`| (reference) GET /healthz over the same connection | ${p99(floor).toFixed(3)} | - | - |`);
for (const r of rows)
  lines.push(`| ${r.what} | ${r.p99.toFixed(3)} | ≤ ${r.target} | ${r.p99 <= r.target ? "yes" : "**no**"} |`);
process.stdout.write(`${lines.join("\n")}\n`);
if (process.env.BENCH_DEBUG)
  process.stderr.write(`p50 throttled ${p50(throttled).toFixed(3)} healthz ${p50(floor).toFixed(3)}\n`);
if (not429 > 0) process.stderr.write(`${not429} flood requests were not answered 429\n`);
if (not429 > 0 || rows.some((r) => r.p99 > r.target)) process.exit(1);
