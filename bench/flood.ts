/**
 * Flood benchmark (`npm run bench:flood`, part of `npm run bench`): a member's password sign-in
 * latency while bad attempts from many addresses arrive at 1,000 requests a second, against the
 * same without the flood. Target: p99 during the flood at most 2× the p99 without it — the flood
 * must not starve argon2 for real members. The real server runs in a child process with the
 * production argon2 parameters; the member signs in from their own browser (`sekisho_device`,
 * from an earlier sign-in with a second factor), as members with a second factor do.
 *
 * The target is measured over the whole flood, from its first request: its start (until it is
 * answered at its rate, two quarter-seconds in a row within 10%; the flood's client ramps up, and
 * the attempts admitted before the throttle caught on are hashed or challenged) and then
 * FLOOD_SECONDS of the established flood. The start and the established flood are also printed
 * on rows of their own, so a slower start shows.
 *
 * Env: FLOOD_SECONDS (default 8), FLOOD_RATE (default 1000 requests/s), FLOOD_VIA=form (the flood
 * posts to the hosted sign-in form instead of the JSON API; see formTarget); FLOOD_PROFILE=1 writes a
 * CPU profile of the server to bench/out/, FLOOD_DEBUG=1 prints every latency (diagnostics).
 */
import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs/promises";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { generateSync } from "otplib";
import { cpuOf, cpuPercent, freePort, spawnServer } from "./util.js";

const ROOT = path.resolve(import.meta.dirname, "..");
const SECONDS = Number(process.env.FLOOD_SECONDS ?? 8);
const RATE = Number(process.env.FLOOD_RATE ?? 1000);
const PASSWORD = "correct horse battery staple 42";
const TARGET = 2;
/** The flood must be answered at its rate within this long of starting, or the run fails. */
const START_LIMIT_MS = 10_000;

interface Res {
  status: number;
  body: string;
  cookies: string[];
}

function request(
  agent: http.Agent,
  port: number,
  method: string,
  urlPath: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
      {
        port,
        host: "127.0.0.1",
        method,
        path: urlPath,
        agent,
        headers: { ...(data ? { "content-type": "application/json" } : {}), ...headers },
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c) => {
          text += c;
        });
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, body: text, cookies: res.headers["set-cookie"] ?? [] }),
        );
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(data);
  });
}

const cookie = (res: Res, name: string) =>
  res.cookies.find((c) => c.startsWith(`${name}=`))?.split(";")[0] ?? "";
interface FloodReport {
  sent: number;
  answered: number;
  seconds: number;
  statuses: Record<string, number>;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;
const p99 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * 0.99)] ?? Number.NaN;

/**
 * FLOOD_VIA=form: the flood goes to the hosted sign-in form instead of the JSON API, as a bot
 * would send it: one authorization request started (a registered member site), then every bad
 * attempt posted to that interaction's form with its cookies and the issuer's Origin.
 */
async function formTarget(port: number, dataDir: string): Promise<string[]> {
  if (process.env.FLOOD_VIA !== "form") return [];
  const redirect = "http://127.0.0.1:9/cb";
  const cli = spawn(
    process.execPath,
    ["bin/sekisho.mjs", "clients", "add", "--name", "Flood site", "--redirect-uri", redirect, "--json"],
    {
      cwd: ROOT,
      env: { ...process.env, SEKISHO_DATA_DIR: dataDir, NODE_ENV: "development" },
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  let out = "";
  cli.stdout?.on("data", (c: Buffer) => {
    out += c.toString();
  });
  await new Promise((r) => cli.once("exit", r));
  const clientId = JSON.parse(out.slice(out.indexOf("{"))).client_id as string;
  const agent = new http.Agent({ keepAlive: false });
  const issuer = JSON.parse(
    (await request(agent, port, "GET", "/.well-known/openid-configuration")).body,
  ).issuer;
  const q = new URLSearchParams({
    client_id: clientId,
    response_type: "code",
    scope: "openid",
    redirect_uri: redirect,
    state: "flood",
    code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
    code_challenge_method: "S256",
  });
  const auth = await new Promise<http.IncomingMessage>((resolve, reject) =>
    http.get({ port, host: "127.0.0.1", path: `/oidc/auth?${q}`, agent }, resolve).on("error", reject),
  );
  auth.resume();
  const location = String(auth.headers.location ?? "");
  const cookies = (auth.headers["set-cookie"] ?? []).map((c) => c.split(";")[0]).join("; ");
  if (!location.includes("/interaction/")) throw new Error(`no interaction: ${auth.statusCode} ${location}`);
  return [`${new URL(location, issuer).pathname}/login?lang=ja`, cookies, new URL(issuer).origin];
}

async function main(): Promise<number> {
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), "sekisho-flood-"));
  const port = await freePort();
  const child: ChildProcess = spawnServer({
    dataDir,
    port,
    env: { SEKISHO_TRUST_PROXY: "loopback" },
    profile: Boolean(process.env.FLOOD_PROFILE),
  });
  let output = "";
  child.stdout?.on("data", (c: Buffer) => {
    output = (output + c.toString()).slice(-4000);
  });
  child.stderr?.on("data", (c: Buffer) => {
    output = (output + c.toString()).slice(-4000);
  });
  const member = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    for (let i = 0; ; i++) {
      if (child.exitCode !== null) throw new Error(`server exited:\n${output}`);
      const ok = await request(member, port, "GET", "/healthz").catch(() => null);
      if (ok?.status === 200) break;
      if (i > 300) throw new Error(`server not healthy:\n${output}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    // The member: registered, TOTP set up, one sign-in with it (their browser becomes known).
    const h = { "x-forwarded-for": "192.0.2.10" };
    await request(
      member,
      port,
      "POST",
      "/api/v1/registrations",
      {
        login_id: "flood.member",
        password: PASSWORD,
        profile: { email: "flood@example.jp" },
      },
      h,
    );
    const first = await request(
      member,
      port,
      "POST",
      "/api/v1/login",
      { login_id: "flood.member", password: PASSWORD },
      h,
    );
    const session = cookie(first, "sekisho_session");
    const totp = JSON.parse(
      (await request(member, port, "POST", "/api/v1/me/totp", {}, { ...h, cookie: session })).body,
    );
    const verified = await request(
      member,
      port,
      "POST",
      "/api/v1/me/totp/verify",
      { code: generateSync({ secret: totp.secret }) },
      {
        ...h,
        cookie: session,
      },
    );
    const codes = JSON.parse(verified.body).recovery_codes as string[];
    const step = JSON.parse(
      (
        await request(
          member,
          port,
          "POST",
          "/api/v1/login",
          { login_id: "flood.member", password: PASSWORD },
          h,
        )
      ).body,
    );
    const done = await request(
      member,
      port,
      "POST",
      "/api/v1/login/recovery-code",
      { mfa_token: step.mfa_token, code: codes[0] },
      h,
    );
    const device = cookie(done, "sekisho_device");
    if (!device) throw new Error(`no device cookie: ${done.status} ${done.body}`);

    /** The member signs in (password step) over and over while `more()`; latencies in ms. */
    const signInsWhile = async (more: () => boolean) => {
      const lat: number[] = [];
      let bad = 0;
      while (more()) {
        const t0 = process.hrtime.bigint();
        const res = await request(
          member,
          port,
          "POST",
          "/api/v1/login",
          { login_id: "flood.member", password: PASSWORD },
          { ...h, cookie: device },
        );
        lat.push(Number(process.hrtime.bigint() - t0) / 1e6);
        if (res.status !== 200) bad++;
      }
      return { lat, bad };
    };
    const signIns = (ms: number) => {
      const end = Date.now() + ms;
      return signInsWhile(() => Date.now() < end);
    };

    await signIns(1500); // warm up
    const cpu0 = await cpuOf(child.pid, "main thread");
    const quiet = await signIns(SECONDS * 1000);
    const cpu1 = await cpuOf(child.pid, "main thread");

    // The flood: bad attempts from ever new addresses and login IDs, at RATE a second, from a
    // process of its own at the lowest CPU priority (bench/flood-worker.mjs says why).
    const flood = spawn(
      process.execPath,
      [
        path.join(ROOT, "bench", "flood-worker.mjs"),
        String(port),
        String(RATE),
        ...(await formTarget(port, dataDir)),
      ],
      {
        stdio: ["ignore", "inherit", "inherit", "ipc"],
      },
    );
    // The flood is established when two quarter-seconds in a row were answered at its rate (±10%).
    const floodStart = Date.now();
    let steadyQuarters = 0;
    let established: number | null = null;
    const report = new Promise<FloodReport>((resolve, reject) => {
      flood.on("message", (m: FloodReport | { quarter: number }) => {
        if (!("quarter" in m)) return resolve(m);
        steadyQuarters = Math.abs(m.quarter - RATE / 4) <= RATE / 40 ? steadyQuarters + 1 : 0;
        if (steadyQuarters >= 2 && established === null) established = Date.now();
      });
      flood.once("exit", (code) => reject(new Error(`flood process exited (${code})`)));
    });
    // The member signs in from the flood's first request: its start counts (and shows on its own row).
    const starting = await signInsWhile(
      () => established === null && Date.now() - floodStart < START_LIMIT_MS,
    );
    if (established === null)
      throw new Error(`the flood was not answered at ${RATE}/s within ${START_LIMIT_MS} ms`);
    const startSeconds = ((established as number) - floodStart) / 1000;
    const cpu2 = await cpuOf(child.pid, "main thread");
    const loud = await signIns(SECONDS * 1000);
    const cpu3 = await cpuOf(child.pid, "main thread");
    flood.send("stop");
    const { sent, answered, seconds, statuses } = await report;
    const reached = answered / seconds;

    const during = [...starting.lat, ...loud.lat];
    const ratio = p99(during) / p99(quiet.lat);
    const lines = [
      "| measurement | value |",
      "| --- | --- |",
      `| member sign-in p99 without flood | ${p99(quiet.lat).toFixed(1)} ms (${quiet.lat.length} sign-ins) |`,
      `| member sign-in p99 during the flood, from its first request | ${p99(during).toFixed(1)} ms (${during.length} sign-ins) |`,
      `| ratio (target ≤ ${TARGET}) | ${ratio.toFixed(2)} ${ratio <= TARGET ? "met" : "**missed**"} |`,
      `| of which the flood's start: until answered at its rate | ${startSeconds.toFixed(1)} s; member's median ${median(starting.lat).toFixed(1)} ms, slowest ${Math.max(...starting.lat).toFixed(1)} ms (${starting.lat.length} sign-ins) |`,
      `| of which the established flood: member's p99 | ${p99(loud.lat).toFixed(1)} ms (${loud.lat.length} sign-ins) |`,
      `| server event loop busy, without / during the flood | ${cpuPercent(cpu0, cpu1)} / ${cpuPercent(cpu2, cpu3)} |`,
      `| flood rate reached (answered while flooding) | ${Math.round(reached)}/s of ${RATE}/s asked |`,
      `| flood requests sent | ${sent} (${Object.entries(statuses)
        .map(([s, c]) => `${s}: ${c}`)
        .join(", ")}) |`,
    ];
    process.stdout.write(`${lines.join("\n")}\n`);
    if (process.env.FLOOD_DEBUG)
      process.stdout.write(
        `${JSON.stringify({
          quiet: [...quiet.lat].sort((a, b) => a - b).map(Math.round),
          starting: [...starting.lat].sort((a, b) => a - b).map(Math.round),
          loud: [...loud.lat].sort((a, b) => a - b).map(Math.round),
        })}\n`,
      );
    const failed = quiet.bad + loud.bad + starting.bad;
    if (failed > 0) process.stderr.write(`${failed} member sign-ins did not answer 200\n`);
    // A flood that fell short of its rate would flatter the server: that is a failed run too.
    const floodShort = reached < RATE * 0.95;
    if (floodShort)
      process.stderr.write(`the flood reached ${Math.round(reached)}/s, under 95% of ${RATE}/s\n`);
    return ratio <= TARGET && failed === 0 && !floodShort ? 0 : 1;
  } finally {
    member.destroy();
    child.kill("SIGTERM");
    await new Promise((r) => setTimeout(r, 500));
    await fs.rm(dataDir, { recursive: true, force: true });
  }
}

process.exit(await main());
