/**
 * Sign-in throughput benchmark (`npm run bench`).
 *
 * Measures, one after the other in one run: (1) raw argon2id verifications per second, calling
 * argon2.verify() directly with the server's parameters from C concurrent loops, and (2) password
 * sign-ins per second through HTTP (POST /api/v1/login) against the real server in a child process
 * with SEKISHO_HASH_CONCURRENCY=C (the same argon2 concurrency), from 2C keep-alive clients. argon2 is the expensive
 * part of a sign-in, so everything else the server does should cost little:
 * target HTTP/raw >= 0.85. Exits 1 when the target is missed or any HTTP request failed.
 * Env: BENCH_SECONDS (default 8), BENCH_CONCURRENCY (default os.availableParallelism()),
 * SEKISHO_ARGON2_MEMORY_KIB / _TIME_COST / _PARALLELISM (default 19456 / 2 / 1); BENCH_PROFILE=1
 * writes a CPU profile of the server to bench/out/ (diagnostics).
 */
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import argon2 from "argon2";
import { type CpuSample, cpuOf, cpuPercent, freePort, spawnServer, table } from "./util.js";

const TARGET = 0.85;
const WARMUP_MS = 1000;
const ROOT = path.resolve(import.meta.dirname, "..");
const OUT_DIR = path.join(ROOT, "bench", "out");

function envInt(name: string, def: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer (got ${raw})`);
  return n;
}

const SECONDS = envInt("BENCH_SECONDS", 8);
const C = envInt("BENCH_CONCURRENCY", Math.max(1, os.availableParallelism()));
/**
 * HTTP clients in flight. The server hashes at most C at once (SEKISHO_HASH_CONCURRENCY=C), the
 * same argon2 concurrency as the raw loops; it is offered 2C requests so that, like the raw loops
 * and like any loaded server, its hash slots never sit idle while a response travels back and the
 * next request arrives. BENCH_CLIENTS overrides.
 */
const CLIENTS = envInt("BENCH_CLIENTS", 2 * C);
const PARAMS = {
  memoryCost: envInt("SEKISHO_ARGON2_MEMORY_KIB", 19456),
  timeCost: envInt("SEKISHO_ARGON2_TIME_COST", 2),
  parallelism: envInt("SEKISHO_ARGON2_PARALLELISM", 1),
};
const LOGIN_ID = "bench.member";
const PASSWORD = "correct horse battery staple 42";

interface LoopResult {
  /** Where the CPU went during an HTTP run (percent of one CPU), when /proc tells. */
  cpu?: { serverEventLoop: string; serverOtherThreads: string; benchClient: string };
  ok: number;
  errors: Map<string, number>;
  latenciesMs: number[];
  elapsedS: number;
}

/**
 * Run `op` in C concurrent loops until `ms` have passed; an op (given its loop's index) returns
 * "ok" or an error label.
 */
async function runLoops(ms: number, op: (loop: number) => Promise<string>, loops = C): Promise<LoopResult> {
  const result: LoopResult = { ok: 0, errors: new Map(), latenciesMs: [], elapsedS: 0 };
  const start = performance.now();
  const deadline = start + ms;
  const loop = async (_: unknown, index: number) => {
    while (performance.now() < deadline) {
      const t0 = performance.now();
      const outcome = await op(index).catch((err: unknown) =>
        err instanceof Error ? err.message : String(err),
      );
      result.latenciesMs.push(performance.now() - t0);
      if (outcome === "ok") result.ok++;
      else result.errors.set(outcome, (result.errors.get(outcome) ?? 0) + 1);
    }
  };
  await Promise.all(Array.from({ length: loops }, loop));
  result.elapsedS = (performance.now() - start) / 1000;
  return result;
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
}

function request(
  agent: http.Agent,
  port: number,
  method: string,
  urlPath: string,
  body?: string,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const headers: http.OutgoingHttpHeaders = {};
    if (body !== undefined) {
      headers["content-type"] = "application/json";
      headers["content-length"] = Buffer.byteLength(body);
    }
    const req = http.request({ host: "127.0.0.1", port, method, path: urlPath, agent, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

/**
 * The measured requests' client: one keep-alive socket per loop, the request's bytes built once,
 * and only as much of the answer parsed as the count needs (status, Content-Length, body). The
 * load generator shares the two cores with the server; node:http's client cost about 1 ms of CPU
 * per request here, several times this, all of it taken from the server's argon2 threads.
 */
function rawPoster(port: number, urlPath: string, body: string) {
  const payload = Buffer.from(body);
  const bytes = Buffer.concat([
    Buffer.from(
      `POST ${urlPath} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\nContent-Length: ${payload.length}\r\nConnection: keep-alive\r\n\r\n`,
    ),
    payload,
  ]);
  let socket: net.Socket | null = null;
  let buffered: Buffer = Buffer.alloc(0);
  let waiting: { resolve: (r: { status: number; body: string }) => void; reject: (e: Error) => void } | null =
    null;
  const fail = (err: Error) => {
    socket = null;
    waiting?.reject(err);
    waiting = null;
  };
  const onData = (chunk: Buffer) => {
    buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
    const end = buffered.indexOf("\r\n\r\n");
    if (end < 0) return;
    const head = buffered.subarray(0, end).toString("latin1");
    const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? Number.NaN);
    if (!Number.isInteger(length)) return fail(new Error(`no Content-Length in ${head.slice(0, 80)}`));
    if (buffered.length < end + 4 + length) return;
    const status = Number(head.slice(9, 12));
    const text = buffered.subarray(end + 4, end + 4 + length).toString();
    buffered = buffered.subarray(end + 4 + length);
    if (/\r\nconnection:\s*close/i.test(head)) {
      socket?.destroy();
      socket = null;
    }
    const w = waiting;
    waiting = null;
    w?.resolve({ status, body: text });
  };
  return (): Promise<{ status: number; body: string }> =>
    new Promise((resolve, reject) => {
      waiting = { resolve, reject };
      if (!socket) {
        buffered = Buffer.alloc(0);
        const s = net.connect(port, "127.0.0.1");
        s.setNoDelay(true);
        s.on("data", onData);
        s.on("error", (err) => fail(err));
        s.on("close", () => {
          if (socket === s) fail(new Error("connection closed"));
        });
        socket = s;
      }
      socket.write(bytes);
    });
}

async function waitHealthy(agent: http.Agent, port: number, child: ChildProcess, log: () => string) {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`server exited (${child.exitCode}):\n${log()}`);
    const res = await request(agent, port, "GET", "/healthz").catch(() => null);
    if (res?.status === 200) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`server not healthy after 30 s:\n${log()}`);
}

async function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
  await exited;
  clearTimeout(timer);
}

async function measureRaw(ms: number): Promise<LoopResult> {
  // A 32-byte secret, as the server's dev keyring pepper adds to every hash.
  const secret = randomBytes(32);
  const hash = await argon2.hash(PASSWORD, { type: argon2.argon2id, ...PARAMS, secret });
  const op = async () => ((await argon2.verify(hash, PASSWORD, { secret })) ? "ok" : "verify returned false");
  await runLoops(WARMUP_MS, op);
  return runLoops(ms, op);
}

async function measureHttp(): Promise<LoopResult> {
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), "sekisho-bench-"));
  const port = await freePort();
  const agent = new http.Agent({ keepAlive: true, maxSockets: CLIENTS });
  const child = spawnServer({
    dataDir,
    port,
    env: { SEKISHO_HASH_CONCURRENCY: String(C) },
    profile: Boolean(process.env.BENCH_PROFILE),
  });
  let output = "";
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-8000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const onSignal = () => {
    child.kill("SIGKILL");
    void fs.rm(dataDir, { recursive: true, force: true }).finally(() => process.exit(130));
  };
  for (const sig of ["SIGINT", "SIGTERM"] as const) process.once(sig, onSignal);
  try {
    await waitHealthy(agent, port, child, () => output);
    const profile = { email: "bench@example.com", name: "Bench" };
    const reg = await request(
      agent,
      port,
      "POST",
      "/api/v1/registrations",
      JSON.stringify({ login_id: LOGIN_ID, password: PASSWORD, profile }),
    );
    if (reg.status !== 201) throw new Error(`registration answered ${reg.status}: ${reg.body}`);
    const login = JSON.stringify({ login_id: LOGIN_ID, password: PASSWORD });
    // One connection per client loop, as node:http's keep-alive agent gave each.
    const posters = Array.from({ length: CLIENTS }, () => rawPoster(port, "/api/v1/login", login));
    const op = async (loop: number) => {
      const res = await (posters[loop] as () => Promise<{ status: number; body: string }>)();
      return res.status === 200 ? "ok" : `HTTP ${res.status}: ${res.body.slice(0, 120)}`;
    };
    await runLoops(WARMUP_MS, op, CLIENTS);
    const before = await Promise.all([
      cpuOf(child.pid, "main thread"),
      cpuOf(child.pid, "process"),
      cpuOf(process.pid, "process"),
    ]);
    const result = await runLoops(SECONDS * 1000, op, CLIENTS);
    const after = await Promise.all([
      cpuOf(child.pid, "main thread"),
      cpuOf(child.pid, "process"),
      cpuOf(process.pid, "process"),
    ]);
    const [loop0, all0, bench0] = before as [CpuSample, CpuSample, CpuSample];
    const [loop1, all1, bench1] = after as [CpuSample, CpuSample, CpuSample];
    // The server's other threads (argon2 on libuv's pool, V8's GC helpers): all less the main one.
    const others = (all: CpuSample, main: CpuSample): CpuSample => ({
      cpu: all.cpu === null || main.cpu === null ? null : all.cpu - main.cpu,
      at: all.at,
    });
    result.cpu = {
      serverEventLoop: cpuPercent(loop0, loop1),
      serverOtherThreads: cpuPercent(others(all0, loop0), others(all1, loop1)),
      benchClient: cpuPercent(bench0, bench1),
    };
    return result;
  } finally {
    for (const sig of ["SIGINT", "SIGTERM"] as const) process.removeListener(sig, onSignal);
    agent.destroy();
    await stopServer(child);
    await fs.rm(dataDir, { recursive: true, force: true });
  }
}

/** Warn when other work keeps the CPUs busy (e.g. a test run): it takes cores from argon2. */
async function checkQuiet(phase: string): Promise<number> {
  const sample = () => {
    let idle = 0;
    let all = 0;
    for (const { times: t } of os.cpus()) {
      idle += t.idle;
      all += t.user + t.nice + t.sys + t.idle + t.irq;
    }
    return { idle, all };
  };
  const a = sample();
  await new Promise((r) => setTimeout(r, 500));
  const b = sample();
  const busy = 1 - (b.idle - a.idle) / Math.max(1, b.all - a.all);
  if (busy > 0.1)
    console.warn(`warning: CPUs ${Math.round(busy * 100)}% busy before ${phase}; results will be noisy`);
  return busy;
}

async function main(): Promise<number> {
  const p = PARAMS;
  process.stdout.write(
    `sekisho bench: argon2 concurrency C=${C} (of ${os.availableParallelism()} CPUs), ${CLIENTS} HTTP clients, ${SECONDS} s per measurement + ${WARMUP_MS} ms warm-up, ` +
      `argon2id m=${p.memoryCost} KiB t=${p.timeCost} p=${p.parallelism}\n`,
  );
  const busyBefore = { raw: await checkQuiet("raw"), http: 0 };
  // Raw is measured in two halves around the HTTP run, so a drift of the machine's speed during the
  // run (seen here on shared VMs) weighs on both sides alike.
  process.stdout.write("measuring raw argon2id verify (first half)...\n");
  const rawA = await measureRaw((SECONDS * 1000) / 2);
  busyBefore.http = await checkQuiet("HTTP");
  process.stdout.write("measuring POST /api/v1/login through HTTP...\n");
  const web = await measureHttp();
  process.stdout.write("measuring raw argon2id verify (second half)...\n");
  const rawB = await measureRaw((SECONDS * 1000) / 2);
  const raw: LoopResult = {
    ok: rawA.ok + rawB.ok,
    errors: new Map([...rawA.errors, ...rawB.errors]),
    latenciesMs: [...rawA.latenciesMs, ...rawB.latenciesMs],
    elapsedS: rawA.elapsedS + rawB.elapsedS,
  };

  const rawOps = raw.ok / raw.elapsedS;
  const httpOps = web.ok / web.elapsedS;
  const sorted = [...web.latenciesMs].sort((a, b) => a - b);
  const p50 = percentile(sorted, 50);
  const p99 = percentile(sorted, 99);
  const httpErrors = [...web.errors.values()].reduce((a, b) => a + b, 0);
  const rawErrors = [...raw.errors.values()].reduce((a, b) => a + b, 0);
  const ratio = rawOps > 0 ? httpOps / rawOps : 0;
  const pass = ratio >= TARGET && httpErrors === 0 && rawErrors === 0;

  process.stdout.write(
    `\n${table([
      ["metric", "value", "unit"],
      ["argon2id verify (raw)", rawOps.toFixed(1), "ops/s"],
      ["POST /api/v1/login (HTTP)", httpOps.toFixed(1), "ops/s"],
      ["HTTP latency p50", p50.toFixed(1), "ms"],
      ["HTTP latency p99", p99.toFixed(1), "ms"],
      ["HTTP errors", String(httpErrors), "requests"],
      ["ratio HTTP/raw", ratio.toFixed(3), `target >= ${TARGET}`],
    ])}\n\n` +
      (web.cpu
        ? `CPU during the HTTP run (100% = one CPU of ${os.availableParallelism()}): server event loop ${web.cpu.serverEventLoop}, ` +
          `server's other threads (argon2, GC helpers) ${web.cpu.serverOtherThreads}, this benchmark's HTTP clients ${web.cpu.benchClient}\n`
        : ""),
  );
  for (const [label, n] of [...raw.errors, ...web.errors]) process.stdout.write(`error x${n}: ${label}\n`);
  process.stdout.write(
    `${pass ? "PASS" : "FAIL"}: HTTP/raw ${ratio.toFixed(3)} (target >= ${TARGET}), ${httpErrors} HTTP errors\n`,
  );

  const results = {
    at: new Date().toISOString(),
    node: process.version,
    cpus: os.availableParallelism(),
    cpu_busy_before: busyBefore,
    concurrency: C,
    http_clients: CLIENTS,
    seconds: SECONDS,
    argon2: p,
    raw: { ok: raw.ok, errors: rawErrors, elapsed_s: raw.elapsedS, ops_per_s: rawOps },
    http: {
      ok: web.ok,
      errors: httpErrors,
      error_kinds: Object.fromEntries(web.errors),
      elapsed_s: web.elapsedS,
      ops_per_s: httpOps,
      p50_ms: p50,
      p99_ms: p99,
      cpu_percent_of_one_cpu: web.cpu ?? null,
    },
    ratio,
    target: TARGET,
    pass,
  };
  await fs.mkdir(OUT_DIR, { recursive: true });
  await fs.writeFile(path.join(OUT_DIR, "results.json"), `${JSON.stringify(results, null, 2)}\n`);
  process.stdout.write(`results written to ${path.relative(ROOT, path.join(OUT_DIR, "results.json"))}\n`);
  return pass ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    console.error("bench failed:", err);
    process.exitCode = 1;
  },
);
