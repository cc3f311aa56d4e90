/**
 * Soak test (`npm run soak -- [--minutes N] [--json FILE]`; not part of `npm test` nor of
 * `npm run bench`).
 *
 * Spawns the real server (`node --import tsx src/main.ts`, NODE_ENV=development, production
 * argon2 parameters) as a child process on a free loopback port with a fresh temporary
 * SEKISHO_DATA_DIR and SEKISHO_TRUST_PROXY=loopback (each simulated client has its own address in
 * X-Forwarded-For), registers an OIDC client with the CLI (`bin/sekisho.mjs clients add`), seeds
 * members, warms up, and then drives a realistic mix for `--minutes` (default 10, or SOAK_MINUTES;
 * fractions allowed) from `--vus` virtual users (default 8), starting scenarios at `--rate` a
 * second on average (default 16, Poisson arrivals; a scenario waits for a free user, so the
 * concurrency never exceeds the users). argon2 (about 25 ms a verification, about 80 a second on
 * two cores) is the expensive part: the default mix asks for roughly 15 password hashes a second,
 * far from the hashing queue's limit (a 503 server_busy would count as an error).
 *
 * The mix (weights of scenario starts; the request counts are typical):
 *   register          8  POST /api/v1/registrations with a Japanese profile (faker ja); 2% weak
 *                        passwords (intended 400 weak_password), 1% taken IDs (intended 409).
 *   password sign-in 28  POST /api/v1/login from the member's own stable address (3% first mistype
 *                        the password: intended 401), GET /api/v1/me, sometimes /me/sessions,
 *                        POST /api/v1/logout (70%).
 *   TOTP sign-in     12  the member's browser (with its sekisho_device cookie once it has one):
 *                        POST /login → mfa_required → POST /login/totp (otplib code; a code
 *                        works once per 30 s step and member, so the member is chosen among those
 *                        whose last step is spent; none free → a password sign-in instead),
 *                        GET /me, logout.
 *   OIDC code flow   10  authorization code flow with PKCE S256 as the contract's "no browser"
 *                        client does it (GET /oidc/auth → login page, POST /api/v1/login [+ TOTP
 *                        for 30%], GET /oidc/auth again → redirects → code), POST /oidc/token
 *                        (code), GET /oidc/userinfo, 1–3 refreshes (always the newest token); the
 *                        grant is then kept by the member site for the refresh scenario.
 *   OIDC refresh     22  a kept grant is refreshed (POST /oidc/token refresh_token, the newest
 *                        one), 40% then GET /oidc/userinfo, 10% introspection; 5% (and any grant
 *                        past 300 kept) are revoked (POST /oidc/token/revocation).
 *   enrol TOTP        2  a password member signs in, POST /me/totp, POST /me/totp/verify, and
 *                        from then on signs in with TOTP.
 *   attack           18  1–4 wrong-password tries: 45% unknown login IDs, the rest existing
 *                        members (a victim pool nobody else signs in as, and TOTP members whose
 *                        own browsers are trusted devices, which the throttle must never refuse);
 *                        75% from fresh random addresses across many /24s, 25% from three noisy
 *                        addresses; 25% with one of five sprayed passwords. Tries answered 403
 *                        challenge_required solve it and try again: all from the noisy
 *                        addresses, 20% of the others. Intended answers:
 *                        401 invalid_credentials, 429 too_many_attempts, 403 challenge_required.
 *   (and a load balancer: GET /healthz every 2 s, GET /readyz every 10 s; Prometheus: GET /metrics
 *   every 15 s.)
 *
 * The attack soon makes the service "under attack" (docs/throttling.md): from then on every
 * password sign-in from an untrusted device is answered 403 challenge_required. Legitimate members
 * then solve the proof-of-work and send the call again, as the hosted page's widget does (counted
 * as intended, then ok); members on their trusted device are not asked. The challenge difficulty is
 * lowered (SEKISHO_THROTTLE_POLICY challengeMaxNumber=10000) so that solving costs the load
 * generator milliseconds, not the CPU the server needs; issuing and checking challenges is what is
 * soaked. The member site's PII read budgets are raised (SEKISHO_PII_BUDGETS, see
 * CLIENT_PII_BUDGETS): the one site here reads profiles at the rate of many sites.
 *
 * Every response is classified: expected (ok), intended (a 4xx the scenario asked for: the
 * attack's 401/429/403, a mistyped password, a legitimate member's challenge, a weak password),
 * or error: any 5xx, connection error, timeout, or any other status or body. Errors must be 0.
 *
 * Memory: the server's RSS (VmRSS of /proc/<pid>/status) and V8 heap (process.memoryUsage(),
 * asked over IPC from bench/soak-probe.ts, preloaded into the server) after warm-up, in the
 * middle and at the end, each a second after full GCs in the server (GET /metrics has RSS and
 * heap too, and is scraped and reported, but its heap includes garbage not yet collected, which
 * makes single samples of it noisy); RSS alone (no GC) every 5 s in between.
 * Bound: the end RSS may exceed the warm RSS by max(25% of it, 64 MiB) — room for the bounded
 * caches (throttle counters, LRUs, SQLite page cache) to fill during the run, far less than an
 * unbounded leak grows over ten minutes.
 *
 * Exits 1 on any error (seeding and warm-up included), a memory bound missed, or the server
 * dying. Prints tables like the other benches; `--json FILE` also writes a JSON summary.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash, randomBytes, randomInt } from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { fakerJA } from "@faker-js/faker";
import { Command, InvalidArgumentError } from "commander";
import { generateSync } from "otplib";
import { Jar } from "../test/support/browser-jar.js";
import { freePort, SERVER_NODE_FLAGS, table } from "./util.js";

const ROOT = path.resolve(import.meta.dirname, "..");
const REDIRECT_URI = "http://localhost:4999/cb"; // never contacted: the flow stops at the redirect
/** Memory bound: end RSS ≤ warm RSS + max(RSS_GROWTH_FRACTION × warm RSS, RSS_GROWTH_MIN_BYTES). */
const RSS_GROWTH_FRACTION = 0.25;
const RSS_GROWTH_MIN_BYTES = 64 * 1024 * 1024;
/** Members seeded before the warm-up. */
const SEED = { plain: 300, totp: 150, victims: 40 } as const;
/** Grants kept by the member site for refreshes; past this, the oldest in hand is revoked. */
const GRANT_CAP = 300;
/** TOTP members (with a trusted device) the attack targets, besides the victim pool. */
const TRUSTED_TARGETS = 10;
/** Share of the attack's challenged tries from fresh addresses that solve the proof-of-work. */
const ATTACK_SOLVES = 0.2;
/** Proof-of-work difficulty for the run (default 500,000: about a second of a browser's time). */
const CHALLENGE_MAX_NUMBER = 10_000;
/**
 * The one member site here does the OIDC traffic of many: about 3 profile reads a second (ID
 * tokens and UserInfo), 11,000 an hour. With the default budgets (2,000 reads an hour, 20,000 a
 * day, bulk-read alert past 500 distinct members a day) it is blocked after ~12 minutes and its
 * UserInfo answers without profile claims from then on, as designed (docs/admin.md). A site with
 * this traffic gets budgets to match.
 */
const CLIENT_PII_BUDGETS = { clientHour: 100_000, clientDay: 1_000_000, clientDayFloor: 100_000 };
const REQUEST_TIMEOUT_MS = 30_000;
const RSS_SAMPLE_MS = 5_000;

const MIX = [
  { name: "register", weight: 8 },
  { name: "password_sign_in", weight: 28 },
  { name: "totp_sign_in", weight: 12 },
  { name: "oidc_code_flow", weight: 10 },
  { name: "oidc_refresh", weight: 22 },
  { name: "enrol_totp", weight: 2 },
  { name: "attack", weight: 18 },
] as const;
type ScenarioName = (typeof MIX)[number]["name"];

// ---------------------------------------------------------------- options

function positiveNumber(min: number) {
  return (raw: string): number => {
    const n = Number(raw);
    if (!Number.isFinite(n) || n < min) throw new InvalidArgumentError(`must be a number >= ${min}`);
    return n;
  };
}

function positiveInt(raw: string): number {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("must be a positive integer");
  return n;
}

interface Options {
  minutes: number;
  warmup: number;
  vus: number;
  rate: number;
  json?: string;
}

function parseOptions(): Options {
  const envMinutes = process.env.SOAK_MINUTES;
  const program = new Command()
    .name("soak")
    .description("Soak test: a realistic mix against a real Sekisho server in a child process")
    .option(
      "--minutes <n>",
      "measured duration in minutes, fractions allowed (env SOAK_MINUTES)",
      positiveNumber(0.01),
      envMinutes ? positiveNumber(0.01)(envMinutes) : 10,
    )
    .option("--warmup <seconds>", "warm-up with the same mix before measuring", positiveNumber(0), 30)
    .option("--vus <n>", "virtual users (concurrent scenarios at most)", positiveInt, 8)
    .option("--rate <n>", "scenario starts a second on average", positiveNumber(0.1), 16)
    .option("--json <file>", "also write a JSON summary to FILE")
    .parse();
  return program.opts<Options>();
}

// ---------------------------------------------------------------- statistics

type Outcome = "ok" | "intended" | "error";

class RouteStats {
  requests = 0;
  ok = 0;
  intended = 0;
  errors = 0;
  readonly latenciesMs: number[] = [];
}

class Recorder {
  readonly routes = new Map<string, RouteStats>();
  readonly intendedKinds = new Map<string, number>();
  readonly errorKinds = new Map<string, number>();
  readonly scenarios = new Map<string, { started: number; completed: number; aborted: number }>();
  readonly notes = new Map<string, number>();
  errors = 0;

  constructor(readonly name: string) {}

  record(route: string, outcome: Outcome, ms: number, kind?: string): void {
    let r = this.routes.get(route);
    if (!r) {
      r = new RouteStats();
      this.routes.set(route, r);
    }
    r.requests++;
    r[outcome === "ok" ? "ok" : outcome === "intended" ? "intended" : "errors"]++;
    r.latenciesMs.push(ms);
    if (outcome === "intended" && kind) bump(this.intendedKinds, kind);
    if (outcome === "error") {
      this.errors++;
      bump(this.errorKinds, kind ?? `${route}: error`);
    }
  }

  scenario(name: string, what: "started" | "completed" | "aborted"): void {
    let s = this.scenarios.get(name);
    if (!s) {
      s = { started: 0, completed: 0, aborted: 0 };
      this.scenarios.set(name, s);
    }
    s[what]++;
  }

  note(what: string): void {
    bump(this.notes, what);
  }
}

function bump(map: Map<string, number>, key: string, by = 1): void {
  map.set(key, (map.get(key) ?? 0) + by);
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
}

/** Least-squares slope of RSS over time, in bytes a minute (NaN with fewer than 3 points). */
function slopePerMinute(points: ReadonlyArray<{ t_s: number; rss: number }>): number {
  if (points.length < 3) return Number.NaN;
  const n = points.length;
  const mt = points.reduce((a, p) => a + p.t_s, 0) / n;
  const mr = points.reduce((a, p) => a + p.rss, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.t_s - mt) * (p.rss - mr);
    den += (p.t_s - mt) ** 2;
  }
  return den === 0 ? Number.NaN : (num / den) * 60;
}

const mib = (bytes: number | undefined) => (bytes === undefined ? "-" : (bytes / 1048576).toFixed(1));

// ---------------------------------------------------------------- HTTP

/** A scenario can't go on (the error is already recorded). */
class Abort extends Error {}

interface Spec {
  route: string;
  method: "GET" | "POST";
  /** A path on the issuer, or an absolute URL on it. */
  url: string;
  ip: string;
  jar?: Jar;
  json?: unknown;
  form?: Record<string, string>;
  authorization?: string;
  userAgent?: string;
}

interface Resp {
  status: number;
  body: string;
  location: string | null;
  data: Record<string, unknown>;
}

type Validate = (r: Resp) => string | null;

/** A sample's value in Prometheus' text format (the first series of that name). */
function promValue(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+-]+)`, "m").exec(text);
  return m ? Number(m[1]) : undefined;
}

/** An intended non-success answer: a status and, for JSON errors, the error code. */
interface Intended {
  status: number;
  error?: string;
}

interface Ctx {
  issuer: string;
  rec: () => Recorder;
}

function parseJson(body: string): Record<string, unknown> {
  if (!body.startsWith("{")) return {};
  try {
    const v = JSON.parse(body) as unknown;
    return typeof v === "object" && v !== null ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

const str = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined);

/**
 * Send one request and classify its answer: a status in `expected` (and `validate` happy) is ok, a
 * match in `intended` is intended, anything else (or a connection error, a timeout) is an error,
 * which aborts the scenario.
 */
async function send(
  ctx: Ctx,
  spec: Spec,
  expected: readonly number[],
  intended: readonly Intended[] = [],
  validate?: Validate,
): Promise<Resp> {
  const headers: Record<string, string> = {
    "x-forwarded-for": spec.ip,
    "user-agent": spec.userAgent ?? "Mozilla/5.0 (soak)",
    "accept-language": "ja,en;q=0.5",
  };
  let body: string | undefined;
  if (spec.json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(spec.json);
  } else if (spec.form) {
    headers["content-type"] = "application/x-www-form-urlencoded";
    body = new URLSearchParams(spec.form).toString();
  }
  // Browsers send Origin on POSTs (the member API's CSRF check wants ours); a member site's
  // backend calling the token endpoints sends none (with one, oidc-provider answers 400
  // invalid_request "origin … not allowed for client": a CORS request from a non-allowed origin).
  if (spec.method === "POST" && spec.authorization === undefined) headers.origin = ctx.issuer;
  if (spec.authorization) headers.authorization = spec.authorization;
  if (spec.jar?.cookies.size) headers.cookie = spec.jar.header();
  const url = spec.url.startsWith("http") ? spec.url : `${ctx.issuer}${spec.url}`;
  const t0 = performance.now();
  let res: Response;
  let text: string;
  try {
    res = await fetch(url, {
      method: spec.method,
      headers,
      body,
      redirect: "manual",
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    text = await res.text();
  } catch (err) {
    const ms = performance.now() - t0;
    const cause =
      err instanceof Error ? ((err.cause as { code?: string } | undefined)?.code ?? err.name) : "";
    const message = err instanceof Error ? err.message : String(err);
    ctx.rec().record(spec.route, "error", ms, `${spec.route}: connection error ${cause} ${message}`.trim());
    throw new Abort(message);
  }
  const ms = performance.now() - t0;
  spec.jar?.store(res);
  const r: Resp = {
    status: res.status,
    body: text,
    location: res.headers.get("location"),
    data: parseJson(text),
  };
  const error = str(r.data.error);
  if (expected.includes(r.status)) {
    const problem = validate?.(r) ?? null;
    if (problem === null) {
      ctx.rec().record(spec.route, "ok", ms);
      return r;
    }
    ctx.rec().record(spec.route, "error", ms, `${spec.route}: ${r.status} but ${problem}`);
    throw new Abort(problem);
  }
  if (
    r.status < 500 &&
    intended.some((i) => i.status === r.status && (i.error === undefined || i.error === error))
  ) {
    ctx.rec().record(spec.route, "intended", ms, `${spec.route} → ${r.status}${error ? ` ${error}` : ""}`);
    return r;
  }
  const description = str(r.data.error_description);
  const detail = error
    ? `${error}${description ? ` (${description.slice(0, 120)})` : ""}`
    : text.replace(/\s+/g, " ").slice(0, 100);
  ctx.rec().record(spec.route, "error", ms, `${spec.route} → ${r.status} ${detail}`);
  throw new Abort(`${spec.route} answered ${r.status}`);
}

/** A route pattern for a URL on the issuer: random path segments become `:uid`. */
function routeOf(method: string, url: string): string {
  const p = new URL(url).pathname.replace(/\/[A-Za-z0-9_-]{16,}(?=\/|$)/g, "/:uid");
  return `${method} ${p}`;
}

/** GET `url` and follow redirects while they stay on the issuer; the last answer and its URL. */
async function follow(ctx: Ctx, jar: Jar, url: string, ip: string, ua: string) {
  let current = url;
  for (let hops = 0; hops < 10; hops++) {
    const res = await send(
      ctx,
      { route: routeOf("GET", current), method: "GET", url: current, ip, jar, userAgent: ua },
      [200, 302, 303],
    );
    if (res.status === 200 || !res.location) return { res, url: current };
    const next = new URL(res.location, current).toString();
    if (new URL(next).origin !== new URL(ctx.issuer).origin) return { res, url: next };
    current = next;
  }
  ctx.rec().record("GET /oidc/auth", "error", 0, "GET /oidc/auth: more than 10 redirects");
  throw new Abort("too many redirects");
}

// ---------------------------------------------------------------- test data

const SURNAMES = ["sato", "suzuki", "takahashi", "tanaka", "watanabe", "ito", "yamamoto", "nakamura"];
const GIVEN = ["hanako", "taro", "yui", "haruto", "sakura", "ren", "aoi", "sota", "mei", "yuto", "hina"];
const WORDS = [
  "kasumi",
  "sakura",
  "tsuki",
  "yuki",
  "kawa",
  "mori",
  "hoshi",
  "kaze",
  "umi",
  "sora",
  "hana",
  "yama",
  "tori",
  "kumo",
  "ame",
  "natsu",
];
const SPRAYED = ["password1234", "qwerty123456", "iloveyou2024", "sakura2024!!", "Summer2024!!"];
const USER_AGENTS = [
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Version/17.5 Mobile Safari/604.1",
  "Mozilla/5.0 (Linux; Android 14; SH-51D) AppleWebKit/537.36 Chrome/126.0 Mobile Safari/537.36",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari/605.1.15",
];
// First octets of a few address blocks: members' (Japanese providers) and attackers' (anywhere).
const HOME_NETS = [
  27, 36, 42, 49, 58, 60, 61, 101, 106, 110, 111, 114, 118, 119, 122, 126, 133, 153, 180, 219,
];
const BOT_NETS = [5, 31, 37, 45, 46, 77, 80, 85, 91, 94, 103, 104, 141, 176, 178, 185, 188, 193, 195, 212];
const NOISY_IPS = ["185.220.101.7", "45.155.205.99", "91.240.118.23"];
const RP_BACKEND_IP = "192.0.2.10";

const pick = <T>(xs: readonly T[]): T => xs[Math.floor(Math.random() * xs.length)] as T;
const chance = (p: number) => Math.random() < p;
const randomIp = (nets: readonly number[]) =>
  `${pick(nets)}.${randomInt(256)}.${randomInt(256)}.${randomInt(1, 255)}`;

let memberSerial = 0;
const newPassword = () => `${pick(WORDS)} ${pick(WORDS)} ${pick(WORDS)} ${randomBytes(3).toString("hex")}`;
const newLoginId = () => `${pick(GIVEN)}.${pick(SURNAMES)}.${(++memberSerial).toString(36)}`;

function japaneseProfile(loginHint: string): Record<string, string> {
  const f = fakerJA;
  const sex = chance(0.5) ? "female" : "male";
  const birth = f.date.birthdate({ mode: "age", min: 18, max: 85 }).toISOString().slice(0, 10);
  const profile: Record<string, string> = {
    name: `${f.person.lastName()} ${f.person.firstName(sex)}`,
    email: `${loginHint.replace(/[^a-z0-9.]/g, "")}@${pick(["example.jp", "example.co.jp", "example.ne.jp"])}`,
  };
  // Optional fields are given by most members, not all.
  if (chance(0.8))
    profile.phone = `0${pick(["70", "80", "90"])}-${f.string.numeric(4)}-${f.string.numeric(4)}`;
  if (chance(0.7)) profile.postal_code = `〒${f.location.zipCode()}`;
  if (chance(0.7)) profile.address = `${f.location.state()}${f.location.city()}${f.location.streetAddress()}`;
  if (chance(0.6)) profile.birth_date = birth;
  if (chance(0.6)) profile.gender = chance(0.9) ? sex : "prefer_not_to_say";
  return profile;
}

interface Member {
  loginId: string;
  password: string;
  /** The member's own address (home connection), stable across sign-ins. */
  ip: string;
  ua: string;
  totp?: { secret: string; lastStep: number };
  /** The member's browser's sekisho_device cookie, once it has one. */
  device?: string;
  busy: boolean;
  /** The attack has tried wrong passwords on this member (who has a trusted device). */
  attacked?: boolean;
}

function markAttacked(m: Member | undefined): Member | undefined {
  if (m) m.attacked = true;
  return m;
}

interface Grant {
  refreshToken: string;
  accessToken: string;
  sub: string;
}

class World {
  readonly plain: Member[] = [];
  readonly totp: Member[] = [];
  readonly victims: Member[] = [];
  readonly grants: Grant[] = [];
  ipSerial = 0;

  /**
   * A member's home address: 198.18.0.0/15 (benchmarking range), 50 members a /24 (a network
   * registers at most 100 members in 10 minutes).
   */
  memberIp(): string {
    const i = this.ipSerial++;
    return `198.${18 + ((i / 12800) & 1)}.${Math.floor(i / 50) % 256}.${(i % 50) + 1}`;
  }

  /** A random free member of `pool` satisfying `ok`, marked busy. */
  take(pool: Member[], ok: (m: Member) => boolean = () => true): Member | undefined {
    if (pool.length === 0) return undefined;
    const start = randomInt(pool.length);
    for (let k = 0; k < pool.length; k++) {
      const m = pool[(start + k) % pool.length] as Member;
      if (!m.busy && ok(m)) {
        m.busy = true;
        return m;
      }
    }
    return undefined;
  }
}

const step = () => Math.floor(Date.now() / 30_000);

/** Solve an ALTCHA (v1, SHA-256) challenge as the hosted page's widget does; the API's encoding. */
function solveChallenge(c: unknown): string {
  const ch = (c ?? {}) as Record<string, unknown>;
  const salt = str(ch.salt);
  const challenge = str(ch.challenge);
  const max = typeof ch.maxnumber === "number" ? ch.maxnumber : 1_000_000;
  if (ch.algorithm !== "SHA-256" || salt === undefined || challenge === undefined) {
    throw new Error(`unexpected challenge ${JSON.stringify(c)}`);
  }
  for (let n = 0; n <= max; n++) {
    if (createHash("sha256").update(`${salt}${n}`).digest("hex") === challenge) {
      return Buffer.from(
        JSON.stringify({ algorithm: ch.algorithm, challenge, number: n, salt, signature: ch.signature }),
      ).toString("base64");
    }
  }
  throw new Error("challenge has no solution");
}

// ---------------------------------------------------------------- scenarios

interface Env {
  ctx: Ctx;
  world: World;
  clientId: string;
  basic: string;
  /** False once the server process has exited: the users stop instead of piling up errors. */
  serverAlive: () => boolean;
}

async function register(env: Env, kind: "normal" | "weak" | "taken" = "normal"): Promise<Member | null> {
  const chosen = kind !== "normal" || chance(0.8);
  let loginId = chosen ? newLoginId() : undefined;
  let password = newPassword();
  const intended: Intended[] = [];
  if (kind === "taken") {
    // An existing chosen login ID (a member number would be refused as one: invalid_login_id).
    const chosenIds = env.world.plain.filter((m) => m.loginId.includes("."));
    if (chosenIds.length === 0) return register(env, "normal");
    loginId = pick(chosenIds).loginId;
    intended.push({ status: 409, error: "login_id_taken" });
  } else if (kind === "weak") {
    password = chance(0.5) ? "short pw" : `${loginId} ${pick(WORDS)}`;
    intended.push({ status: 400, error: "weak_password" });
  }
  const ip = randomIp(HOME_NETS);
  const res = await send(
    env.ctx,
    {
      route: "POST /api/v1/registrations",
      method: "POST",
      url: "/api/v1/registrations",
      ip,
      json: {
        ...(loginId ? { login_id: loginId } : {}),
        password,
        profile: japaneseProfile(loginId ?? `member${memberSerial++}`),
        ...(chance(0.1) ? { locale: "en" } : {}),
      },
    },
    kind === "normal" ? [201] : [],
    intended,
    (r) => (str(r.data.member_id)?.startsWith("m_") && str(r.data.login_id) ? null : "no member_id/login_id"),
  );
  if (res.status !== 201) return null;
  return {
    loginId: str(res.data.login_id) as string,
    password,
    ip: env.world.memberIp(),
    ua: pick(USER_AGENTS),
    busy: false,
  };
}

/** POST /api/v1/login as the member, solving a proof-of-work when asked; the 200 answer. */
async function passwordStep(env: Env, m: Member, jar: Jar): Promise<Resp> {
  const { ctx } = env;
  if (chance(0.03)) {
    // A mistyped password first.
    await send(
      ctx,
      {
        route: "POST /api/v1/login",
        method: "POST",
        url: "/api/v1/login",
        ip: m.ip,
        jar,
        userAgent: m.ua,
        json: { login_id: m.loginId, password: `${m.password}x` },
      },
      [],
      [
        { status: 401, error: "invalid_credentials" },
        { status: 403, error: "challenge_required" },
      ],
    );
    ctx.rec().note("mistyped passwords");
  }
  let solution: string | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    const res = await send(
      ctx,
      {
        route: "POST /api/v1/login",
        method: "POST",
        url: "/api/v1/login",
        ip: m.ip,
        jar,
        userAgent: m.ua,
        json: {
          login_id: m.loginId,
          password: m.password,
          ...(solution ? { challenge_solution: solution } : {}),
        },
      },
      [200],
      [{ status: 403, error: "challenge_required" }],
    );
    if (res.status === 200) return res;
    solution = solveChallenge(res.data.challenge);
    ctx.rec().note("challenges solved by members");
  }
  ctx
    .rec()
    .record("POST /api/v1/login", "error", 0, "POST /api/v1/login: still challenged after 2 solutions");
  throw new Abort("challenge loop");
}

/** Password, then TOTP for a member who has it; the session cookie ends in the jar. */
async function signIn(env: Env, m: Member, jar: Jar): Promise<void> {
  const res = await passwordStep(env, m, jar);
  const status = str(res.data.status);
  if (!m.totp) {
    if (status !== "authenticated")
      bad(env, "POST /api/v1/login", `status ${status} for a password-only member`);
    return;
  }
  const methods = res.data.methods;
  const token = str(res.data.mfa_token);
  if (status !== "mfa_required" || !token || !Array.isArray(methods) || !methods.includes("totp")) {
    bad(env, "POST /api/v1/login", `status ${status} for a TOTP member`);
  }
  const epoch = Math.floor(Date.now() / 1000);
  m.totp.lastStep = Math.floor(epoch / 30);
  await send(
    env.ctx,
    {
      route: "POST /api/v1/login/totp",
      method: "POST",
      url: "/api/v1/login/totp",
      ip: m.ip,
      jar,
      userAgent: m.ua,
      json: { mfa_token: token, code: generateSync({ secret: m.totp.secret, epoch }) },
    },
    [200],
    [],
    (r) =>
      r.data.status === "authenticated" && jar.cookies.has("sekisho_session") ? null : "not authenticated",
  );
  const device = jar.cookies.get("sekisho_device");
  if (device) m.device = device;
  if (m.attacked) env.ctx.rec().note("sign-ins of attacked members on their trusted device");
}

/** Record a body problem on an answer already counted as ok, and abort. */
function bad(env: Env, route: string, problem: string): never {
  const rec = env.ctx.rec();
  const r = rec.routes.get(route);
  if (r && r.ok > 0) {
    r.ok--;
    r.errors++;
  }
  rec.errors++;
  bump(rec.errorKinds, `${route}: ${problem}`);
  throw new Abort(problem);
}

function browserJar(m: Member): Jar {
  const jar = new Jar();
  if (m.device) jar.cookies.set("sekisho_device", m.device);
  return jar;
}

async function useSession(env: Env, m: Member, jar: Jar, logoutShare: number): Promise<void> {
  const { ctx } = env;
  await send(
    ctx,
    { route: "GET /api/v1/me", method: "GET", url: "/api/v1/me", ip: m.ip, jar, userAgent: m.ua },
    [200],
    [],
    (r) => (r.data.login_id === m.loginId ? null : "another member's /me"),
  );
  if (chance(0.3)) {
    await send(
      ctx,
      {
        route: "GET /api/v1/me/sessions",
        method: "GET",
        url: "/api/v1/me/sessions",
        ip: m.ip,
        jar,
        userAgent: m.ua,
      },
      [200],
      [],
      (r) => (Array.isArray(r.data.sessions) ? null : "no sessions list"),
    );
  }
  if (chance(logoutShare)) await logout(env, m, jar);
}

async function logout(env: Env, m: Member, jar: Jar): Promise<void> {
  await send(
    env.ctx,
    {
      route: "POST /api/v1/logout",
      method: "POST",
      url: "/api/v1/logout",
      ip: m.ip,
      jar,
      userAgent: m.ua,
      json: {},
    },
    [204],
  );
}

/** A member of the pool (that `free` allows) signs in, uses the session, mostly signs out. */
async function memberSignIn(env: Env, pool: Member[], free?: (m: Member) => boolean): Promise<boolean> {
  const m = env.world.take(pool, free);
  if (!m) return false;
  try {
    const jar = browserJar(m);
    await signIn(env, m, jar);
    await useSession(env, m, jar, 0.7);
  } finally {
    m.busy = false;
  }
  return true;
}

const passwordSignIn = (env: Env) => memberSignIn(env, env.world.plain);

const totpFree = (m: Member) => (m.totp?.lastStep ?? Number.MAX_SAFE_INTEGER) < step();

const totpSignIn = (env: Env) => memberSignIn(env, env.world.totp, totpFree);

async function enrolTotp(env: Env, m: Member): Promise<void> {
  const { ctx } = env;
  const jar = browserJar(m);
  await signIn(env, m, jar);
  const begin = await send(
    ctx,
    {
      route: "POST /api/v1/me/totp",
      method: "POST",
      url: "/api/v1/me/totp",
      ip: m.ip,
      jar,
      userAgent: m.ua,
      json: {},
    },
    [200],
    [],
    (r) => (str(r.data.secret) && str(r.data.otpauth_uri)?.startsWith("otpauth://") ? null : "no secret"),
  );
  const secret = str(begin.data.secret) as string;
  const epoch = Math.floor(Date.now() / 1000);
  await send(
    ctx,
    {
      route: "POST /api/v1/me/totp/verify",
      method: "POST",
      url: "/api/v1/me/totp/verify",
      ip: m.ip,
      jar,
      userAgent: m.ua,
      json: { code: generateSync({ secret, epoch }) },
    },
    [200],
    [],
    (r) =>
      Array.isArray(r.data.recovery_codes) && r.data.recovery_codes.length === 10
        ? null
        : "no recovery codes",
  );
  m.totp = { secret, lastStep: Math.floor(epoch / 30) };
  await logout(env, m, jar);
}

async function enrolScenario(env: Env): Promise<boolean> {
  const w = env.world;
  const m = w.take(w.plain);
  if (!m) return false;
  try {
    await enrolTotp(env, m);
    w.plain.splice(w.plain.indexOf(m), 1);
    w.totp.push(m);
  } finally {
    m.busy = false;
  }
  return true;
}

function decodeJwtPayload(jwt: string): Record<string, unknown> {
  const part = jwt.split(".")[1] ?? "";
  try {
    return JSON.parse(Buffer.from(part, "base64url").toString()) as Record<string, unknown>;
  } catch {
    return {};
  }
}

async function refresh(env: Env, g: Grant): Promise<void> {
  const res = await send(
    env.ctx,
    {
      route: "POST /oidc/token (refresh)",
      method: "POST",
      url: "/oidc/token",
      ip: RP_BACKEND_IP,
      authorization: env.basic,
      form: { grant_type: "refresh_token", refresh_token: g.refreshToken },
    },
    [200],
    [],
    (r) =>
      str(r.data.refresh_token) && str(r.data.access_token) && r.data.refresh_token !== g.refreshToken
        ? null
        : "no rotated refresh token",
  );
  g.refreshToken = str(res.data.refresh_token) as string;
  g.accessToken = str(res.data.access_token) as string;
}

async function userinfo(env: Env, g: Grant): Promise<void> {
  await send(
    env.ctx,
    {
      route: "GET /oidc/userinfo",
      method: "GET",
      url: "/oidc/userinfo",
      ip: RP_BACKEND_IP,
      authorization: `Bearer ${g.accessToken}`,
    },
    [200],
    [],
    // Every scope asked for includes email, which every member has: a UserInfo answer without it
    // means the site's PII budget blocked it (sign-ins go on without profile claims).
    (r) => (r.data.sub !== g.sub ? "another sub" : str(r.data.email) ? null : "no email claim (PII budget?)"),
  );
}

async function oidcCodeFlow(env: Env): Promise<boolean> {
  const { ctx, world: w } = env;
  const m = (chance(0.3) ? w.take(w.totp, totpFree) : undefined) ?? w.take(w.plain);
  if (!m) return false;
  try {
    const jar = browserJar(m);
    const verifier = randomBytes(32).toString("base64url");
    const state = randomBytes(16).toString("base64url");
    const nonce = randomBytes(16).toString("base64url");
    const authUrl = `${ctx.issuer}/oidc/auth?${new URLSearchParams({
      response_type: "code",
      client_id: env.clientId,
      redirect_uri: REDIRECT_URI,
      scope: pick(["openid profile email", "openid profile email address", "openid email phone"]),
      code_challenge: createHash("sha256").update(verifier).digest("base64url"),
      code_challenge_method: "S256",
      state,
      nonce,
    })}`;
    // 1. No session: the hosted login page.
    const first = await follow(ctx, jar, authUrl, m.ip, m.ua);
    if (first.res.status !== 200 || !first.res.body.includes('name="password"')) {
      bad(env, routeOf("GET", first.url), "the authorization did not end on the login page");
    }
    // 2. Sign in through the JSON API; 3. the same authorization again: redirects to the site.
    await signIn(env, m, jar);
    const second = await follow(ctx, jar, authUrl, m.ip, m.ua);
    const cb = new URL(second.url);
    const code = cb.searchParams.get("code");
    if (`${cb.origin}${cb.pathname}` !== REDIRECT_URI || !code) {
      bad(env, routeOf("GET", second.url), `the authorization ended at ${cb.pathname}, not the redirect_uri`);
    }
    if (cb.searchParams.get("state") !== state || cb.searchParams.get("iss") !== ctx.issuer) {
      bad(env, "GET /oidc/auth/:uid", "state or iss did not round-trip");
    }
    const tokens = await send(
      ctx,
      {
        route: "POST /oidc/token (code)",
        method: "POST",
        url: "/oidc/token",
        ip: RP_BACKEND_IP,
        authorization: env.basic,
        form: { grant_type: "authorization_code", code, redirect_uri: REDIRECT_URI, code_verifier: verifier },
      },
      [200],
      [],
      (r) => {
        const idToken = decodeJwtPayload(str(r.data.id_token) ?? "");
        if (!str(r.data.refresh_token) || !str(r.data.access_token)) return "no tokens";
        if (idToken.nonce !== nonce || idToken.iss !== ctx.issuer || idToken.aud !== env.clientId)
          return "ID token nonce/iss/aud wrong";
        const acr = m.totp ? "urn:sekisho:acr:mfa" : "urn:sekisho:acr:password";
        return idToken.acr === acr ? null : `acr ${String(idToken.acr)}, expected ${acr}`;
      },
    );
    const grant: Grant = {
      refreshToken: str(tokens.data.refresh_token) as string,
      accessToken: str(tokens.data.access_token) as string,
      sub: str(decodeJwtPayload(str(tokens.data.id_token) ?? "").sub) as string,
    };
    await userinfo(env, grant);
    for (let i = randomInt(1, 4); i > 0; i--) await refresh(env, grant);
    w.grants.push(grant);
    if (chance(0.5)) await logout(env, m, jar);
  } finally {
    m.busy = false;
  }
  return true;
}

async function revoke(env: Env, g: Grant): Promise<void> {
  await send(
    env.ctx,
    {
      route: "POST /oidc/token/revocation",
      method: "POST",
      url: "/oidc/token/revocation",
      ip: RP_BACKEND_IP,
      authorization: env.basic,
      form: { token: g.refreshToken, token_type_hint: "refresh_token" },
    },
    [200],
  );
}

async function oidcRefresh(env: Env): Promise<boolean> {
  const w = env.world;
  const g = w.grants.shift(); // the least recently used grant; in use, it is nobody else's
  if (!g) return false;
  await refresh(env, g);
  if (chance(0.4)) await userinfo(env, g);
  if (chance(0.1)) {
    await send(
      env.ctx,
      {
        route: "POST /oidc/token/introspection",
        method: "POST",
        url: "/oidc/token/introspection",
        ip: RP_BACKEND_IP,
        authorization: env.basic,
        form: { token: g.accessToken },
      },
      [200],
      [],
      (r) => (r.data.active === true && r.data.sub === g.sub ? null : "token not active"),
    );
  }
  if (chance(0.05) || w.grants.length >= GRANT_CAP) await revoke(env, g);
  else w.grants.push(g);
  return true;
}

async function attack(env: Env): Promise<void> {
  const w = env.world;
  // The trusted-device targets: a few TOTP members whose browsers have their sekisho_device cookie,
  // attacked hard enough to be slowed and protected within minutes. Their own sign-ins (TOTP and
  // OIDC scenarios) must still go through: the throttle never refuses a member's own device.
  const trusted = w.totp.filter((m) => m.device !== undefined).slice(0, TRUSTED_TARGETS);
  for (let i = randomInt(1, 5); i > 0; i--) {
    const r = Math.random();
    const loginId =
      r < 0.45
        ? // With a separator: 11 letters and digits would be read as a member number (400 if its check fails).
          `${pick(GIVEN)}${pick([".", "_", "-"])}${pick(SURNAMES)}${randomInt(10, 9999)}`
        : ((r < 0.8 || trusted.length === 0 ? pick(w.victims) : markAttacked(pick(trusted)))?.loginId ??
          "nobody.here");
    const noisy = chance(0.25);
    const ip = noisy ? pick(NOISY_IPS) : randomIp(BOT_NETS);
    const password = chance(0.25) ? pick(SPRAYED) : randomBytes(6).toString("base64url");
    const attempt = (solution?: string) =>
      send(
        env.ctx,
        {
          route: "POST /api/v1/login (attack)",
          method: "POST",
          url: "/api/v1/login",
          ip,
          userAgent: "python-requests/2.31.0",
          json: { login_id: loginId, password, ...(solution ? { challenge_solution: solution } : {}) },
        },
        [],
        [
          { status: 401, error: "invalid_credentials" },
          { status: 429, error: "too_many_attempts" },
          { status: 403, error: "challenge_required" },
        ],
      );
    const res = await attempt();
    // Some attackers pay the proof-of-work (the noisy addresses always do): their wrong password
    // then reaches argon2 and counts, so the address and account limits (429) keep being exercised
    // while the service is under attack (when every unsolved try is only a 403).
    if (res.status === 403 && (noisy || chance(ATTACK_SOLVES))) {
      env.ctx.rec().note("challenges solved by the attack");
      const again = await attempt(solveChallenge(res.data.challenge));
      if (again.status === 403) env.ctx.rec().note("attack tries still challenged after solving");
    }
  }
}

async function runScenario(env: Env, name: ScenarioName): Promise<string> {
  switch (name) {
    case "register": {
      const r = Math.random();
      const m = await register(env, r < 0.02 ? "weak" : r < 0.03 ? "taken" : "normal");
      if (m) env.world.plain.push(m);
      return name;
    }
    case "password_sign_in":
      if (await passwordSignIn(env)) return name;
      return "none";
    case "totp_sign_in":
      if (await totpSignIn(env)) return name;
      env.ctx.rec().note("TOTP sign-ins done as password sign-ins (no TOTP member with a fresh step)");
      return (await passwordSignIn(env)) ? "password_sign_in" : "none";
    case "oidc_code_flow":
      return (await oidcCodeFlow(env)) ? name : "none";
    case "oidc_refresh":
      if (await oidcRefresh(env)) return name;
      return (await oidcCodeFlow(env)) ? "oidc_code_flow" : "none";
    case "enrol_totp":
      return (await enrolScenario(env)) ? name : "none";
    case "attack":
      await attack(env);
      return name;
  }
}

function pickScenario(): ScenarioName {
  const total = MIX.reduce((a, s) => a + s.weight, 0);
  let r = Math.random() * total;
  for (const s of MIX) {
    r -= s.weight;
    if (r < 0) return s.name;
  }
  return "attack";
}

/** Run the mix from `vus` users until `deadline`, starting scenarios at `rate` a second (Poisson). */
async function drive(env: Env, vus: number, rate: number, deadline: number): Promise<number> {
  let nextAt = performance.now();
  let starts = 0;
  const user = async () => {
    for (;;) {
      // Take the next start time: exponential gaps; no catching up on starts missed while all users were busy.
      const now = performance.now();
      const at = Math.max(nextAt, now);
      nextAt = at + (-Math.log(1 - Math.random()) * 1000) / rate;
      if (at >= deadline || !env.serverAlive()) return;
      if (at > now) await new Promise((r) => setTimeout(r, at - now));
      starts++;
      const name = pickScenario();
      const rec = env.ctx.rec();
      try {
        const ran = await runScenario(env, name);
        if (ran !== "none") {
          rec.scenario(ran, "started");
          rec.scenario(ran, "completed");
        }
      } catch (err) {
        rec.scenario(name, "started");
        rec.scenario(name, "aborted");
        if (!(err instanceof Abort)) {
          rec.errors++;
          bump(rec.errorKinds, `${name}: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: vus }, user));
  return starts;
}

/** Run `fn` over `items` with `n` in flight at most. */
async function parallel<T>(items: readonly T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) {
        const item = items[next++] as T;
        await fn(item).catch((err: unknown) => {
          if (!(err instanceof Abort)) throw err;
        });
      }
    }),
  );
}

// ---------------------------------------------------------------- the server

interface MemorySample {
  point: string;
  t_s: number;
  rss: number;
  /** Peak RSS so far (VmHWM). */
  rss_peak: number;
  heap_used?: number;
  heap_total?: number;
  external?: number;
  array_buffers?: number;
}

class Server {
  readonly child: ChildProcess;
  output = "";
  errorLines: string[] = [];
  /** Security alerts the server logged (kind → count). */
  readonly alerts = new Map<string, number>();
  #questions = 0;
  readonly #answers = new Map<number, (usage: NodeJS.MemoryUsage | null) => void>();

  constructor(
    readonly env: NodeJS.ProcessEnv,
    readonly issuer: string,
  ) {
    this.child = spawn(
      process.execPath,
      [
        "--expose-gc",
        ...SERVER_NODE_FLAGS,
        "--import",
        "tsx",
        "--import",
        pathToFileURL(path.join(ROOT, "bench", "soak-probe.ts")).href,
        "src/main.ts",
      ],
      { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe", "ipc"] },
    );
    const keep = (chunk: Buffer) => {
      const text = chunk.toString();
      this.output = (this.output + text).slice(-8000);
      for (const line of text.split("\n")) {
        // pino levels: 50 error, 60 fatal. Security alerts are logged at level 50 too: counted apart.
        if (!/"level":(50|60)/.test(line)) continue;
        const alert = /"msg":"security alert"/.test(line) ? /"alert":"([^"]+)"/.exec(line)?.[1] : undefined;
        if (alert) bump(this.alerts, alert);
        else if (this.errorLines.length < 1000) this.errorLines.push(line);
      }
    };
    this.child.stdout?.on("data", keep);
    this.child.stderr?.on("data", keep);
    this.child.on("message", (msg: unknown) => {
      const m = msg as { type?: string; id?: number; usage?: NodeJS.MemoryUsage };
      if (m.type !== "memory" || m.id === undefined) return;
      this.#answers.get(m.id)?.(m.usage ?? null);
      this.#answers.delete(m.id);
    });
    // The channel must not keep the soak alive either.
    this.child.channel?.unref();
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async waitHealthy(): Promise<void> {
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      if (!this.alive) throw new Error(`server exited (${this.child.exitCode}):\n${this.output}`);
      const ok = await fetch(`${this.issuer}/healthz`)
        .then(async (r) => {
          await r.text();
          return r.status === 200;
        })
        .catch(() => false);
      if (ok) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`server not healthy after 60 s:\n${this.output}`);
  }

  /** VmRSS and VmHWM of the server process, in bytes. */
  async rss(): Promise<{ rss: number; peak: number }> {
    const status = await fs.readFile(`/proc/${this.pid}/status`, "utf8");
    const kb = (key: string) =>
      Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? Number.NaN);
    return { rss: kb("VmRSS") * 1024, peak: kb("VmHWM") * 1024 };
  }

  /** CPU seconds the server has used (utime + stime). */
  async cpuSeconds(): Promise<number> {
    const stat = await fs.readFile(`/proc/${this.pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // After the command name: state is field 3, utime 14, stime 15 (1-based) → indexes 11, 12.
    const ticks = Number(fields[11]) + Number(fields[12]);
    return ticks / 100; // USER_HZ is 100 on Linux
  }

  /** process.memoryUsage() inside the server, after a full GC when `gc`; null if it does not answer. */
  heap(gc: boolean): Promise<NodeJS.MemoryUsage | null> {
    const id = ++this.#questions;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#answers.delete(id);
        resolve(null);
      }, 5000);
      this.#answers.set(id, (usage) => {
        clearTimeout(timer);
        resolve(usage);
      });
      if (!this.child.connected || !this.child.send({ type: "memory", id, gc })) {
        clearTimeout(timer);
        this.#answers.delete(id);
        resolve(null);
      }
    });
  }

  async sample(point: string, t0: number): Promise<MemorySample> {
    // Full GCs first (in the probe), then RSS a second later (V8 gives the freed pages back in the
    // background, within ~250 ms here): otherwise garbage and the pages a burst (the seeding) left
    // committed make the warm baseline depend on when V8 last shrank its heap (40–80 MiB here).
    // So warm, middle and end compare what the server really holds.
    const usage = await this.heap(true);
    await new Promise((r) => setTimeout(r, 1000));
    const { rss, peak } = await this.rss();
    return {
      point,
      t_s: Math.round((performance.now() - t0) / 100) / 10,
      rss,
      rss_peak: peak,
      ...(usage
        ? {
            heap_used: usage.heapUsed,
            heap_total: usage.heapTotal,
            external: usage.external,
            array_buffers: usage.arrayBuffers,
          }
        : {}),
    };
  }

  async stop(): Promise<void> {
    if (!this.alive) return;
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 12_000);
    await exited;
    clearTimeout(timer);
  }
}

/** The environment of the server and the CLI: inherited, minus any Sekisho settings, plus ours. */
function serverEnv(dataDir: string, port: number, issuer: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("SEKISHO_") && !["PORT", "HOST", "NODE_ENV", "LOG_LEVEL"].includes(k)) env[k] = v;
  }
  return {
    ...env,
    NODE_ENV: "development",
    HOST: "127.0.0.1",
    PORT: String(port),
    LOG_LEVEL: "warn",
    SEKISHO_DATA_DIR: dataDir,
    SEKISHO_ISSUER: issuer,
    SEKISHO_TRUST_PROXY: "loopback",
    SEKISHO_THROTTLE_POLICY: JSON.stringify({ challengeMaxNumber: CHALLENGE_MAX_NUMBER }),
    SEKISHO_PII_BUDGETS: JSON.stringify(CLIENT_PII_BUDGETS),
  };
}

async function addClient(env: NodeJS.ProcessEnv): Promise<{ clientId: string; clientSecret: string }> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ["bin/sekisho.mjs", "clients", "add", "--name", "soak", "--redirect-uri", REDIRECT_URI, "--json"],
    { cwd: ROOT, env },
  );
  const line = stdout.split("\n").find((l) => l.trim().startsWith("{"));
  const out = parseJson(line?.trim() ?? "");
  const clientId = str(out.client_id);
  const clientSecret = str(out.client_secret);
  if (!clientId || !clientSecret) throw new Error(`clients add printed no client: ${stdout}`);
  return { clientId, clientSecret };
}

// ---------------------------------------------------------------- main

async function main(): Promise<number> {
  const opts = parseOptions();
  const measuredMs = opts.minutes * 60_000;
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), "sekisho-soak-"));
  const port = await freePort();
  const issuer = `http://127.0.0.1:${port}`;
  const env = serverEnv(dataDir, port, issuer);
  const server = new Server(env, issuer);
  const onSignal = () => {
    server.child.kill("SIGKILL");
    void fs.rm(dataDir, { recursive: true, force: true }).finally(() => process.exit(130));
  };
  for (const sig of ["SIGINT", "SIGTERM"] as const) process.once(sig, onSignal);

  const seedRec = new Recorder("seed");
  const warmRec = new Recorder("warm-up");
  const mainRec = new Recorder("measured");
  let current = seedRec;
  const ctx: Ctx = { issuer, rec: () => current };
  const out = (s: string) => process.stdout.write(s);
  try {
    out(
      `sekisho soak: ${opts.minutes} min measured after ${opts.warmup} s warm-up, ${opts.vus} virtual users, ` +
        `${opts.rate} scenarios/s; ${os.availableParallelism()} CPUs, node ${process.version}\n`,
    );
    await server.waitHealthy();
    out(`server pid ${server.pid} on ${issuer}, data ${dataDir}\n`);
    const client = await addClient(env);
    const world = new World();
    const senv: Env = {
      ctx,
      world,
      clientId: client.clientId,
      basic: `Basic ${Buffer.from(`${client.clientId}:${client.clientSecret}`).toString("base64")}`,
      serverAlive: () => server.alive,
    };

    // Seed: members, victims (only the attack uses their IDs), TOTP members (enrolled).
    let t = performance.now();
    const seeded: Member[] = [];
    await parallel(
      Array.from({ length: SEED.plain + SEED.totp + SEED.victims }, (_, i) => i),
      opts.vus,
      async () => {
        const m = await register(senv);
        if (m) seeded.push(m);
      },
    );
    world.victims.push(...seeded.splice(0, SEED.victims));
    const toEnrol = seeded.splice(0, SEED.totp);
    world.plain.push(...seeded);
    await parallel(toEnrol, opts.vus, async (m) => {
      await enrolTotp(senv, m);
      world.totp.push(m);
    });
    out(
      `seeded ${world.plain.length} members, ${world.totp.length} with TOTP, ${world.victims.length} attack victims ` +
        `in ${((performance.now() - t) / 1000).toFixed(1)} s (${seedRec.errors} errors)\n`,
    );

    // The load balancer's health checks and Prometheus scraping /metrics (from loopback, which
    // SEKISHO_METRICS_ALLOW allows by default); the scrapes' memory figures (no GC) are kept.
    const scraped: Array<{ t_s: number; rss: number; heap_used: number }> = [];
    let scrapeT0 = performance.now();
    const probes = (deadline: number) => {
      const loop = async (route: string, url: string, everyMs: number, ua: string, validate?: Validate) => {
        while (performance.now() + everyMs < deadline) {
          await new Promise((r) => setTimeout(r, everyMs));
          await send(
            ctx,
            { route, method: "GET", url, ip: "127.0.0.1", userAgent: ua },
            [200],
            [],
            validate,
          ).catch(() => {});
        }
      };
      const metrics: Validate = (r) => {
        const rss = promValue(r.body, "process_resident_memory_bytes");
        const heapUsed = promValue(r.body, "nodejs_heap_size_used_bytes");
        if (rss === undefined || heapUsed === undefined) return "no process memory metrics";
        scraped.push({ t_s: Math.round((performance.now() - scrapeT0) / 1000), rss, heap_used: heapUsed });
        return null;
      };
      return Promise.all([
        loop("GET /healthz", "/healthz", 2000, "kube-probe/1.30"),
        loop("GET /readyz", "/readyz", 10_000, "kube-probe/1.30"),
        loop("GET /metrics", "/metrics", 15_000, "Prometheus/2.53.0", metrics),
      ]);
    };

    // Warm-up with the same mix.
    current = warmRec;
    t = performance.now();
    if (opts.warmup > 0) {
      out(`warming up for ${opts.warmup} s...\n`);
      const end = t + opts.warmup * 1000;
      await Promise.all([drive(senv, opts.vus, opts.rate, end), probes(end)]);
    }
    if (!server.alive) throw new Error(`server died during warm-up:\n${server.output}`);

    // Measured run.
    current = mainRec;
    const t0 = performance.now();
    const deadline = t0 + measuredMs;
    scraped.length = 0;
    scrapeT0 = t0;
    const samples: MemorySample[] = [await server.sample("warm (start)", t0)];
    const timeline: Array<{ t_s: number; rss: number }> = [];
    const cpu0 = await server.cpuSeconds();
    const loadCpu0 = process.cpuUsage();
    out(`measuring for ${opts.minutes} min...\n`);
    let sampling = true;
    const sampler = (async () => {
      let middleTaken = false;
      let nextReport = 60_000;
      while (sampling && server.alive && performance.now() < deadline) {
        await new Promise((r) => setTimeout(r, Math.min(RSS_SAMPLE_MS, deadline - performance.now())));
        if (!sampling || !server.alive) break;
        const now = performance.now();
        try {
          if (!middleTaken && now - t0 >= measuredMs / 2) {
            middleTaken = true;
            samples.push(await server.sample("middle", t0));
          }
        } catch {
          break; // the server is gone (reported below)
        }
        const rss = (await server.rss().catch(() => null))?.rss;
        if (rss === undefined) break;
        timeline.push({ t_s: Math.round((now - t0) / 1000), rss });
        if (now - t0 >= nextReport && now < deadline - 1000) {
          nextReport += 60_000;
          out(`  ${Math.round((now - t0) / 60_000)} min: ${mainRec.errors} errors, RSS ${mib(rss)} MiB\n`);
        }
      }
    })();
    const starts = await Promise.all([drive(senv, opts.vus, opts.rate, deadline), probes(deadline)]).then(
      ([n]) => n,
    );
    const elapsedS = (performance.now() - t0) / 1000;
    sampling = false;
    await sampler;
    const serverCpu = (await server.cpuSeconds().catch(() => cpu0)) - cpu0;
    const loadCpu = process.cpuUsage(loadCpu0);
    const alive = server.alive;
    if (alive) samples.push(await server.sample("end", t0));

    // ------------------------------------------------------------ report
    const routes = [...mainRec.routes].sort(([a], [b]) => a.localeCompare(b));
    const all = new RouteStats();
    const rows: string[][] = [["route", "requests", "req/s", "ok", "intended", "errors", "p50 ms", "p99 ms"]];
    const routeJson: Array<Record<string, string | number>> = [];
    for (const [route, r] of routes) {
      const sorted = [...r.latenciesMs].sort((a, b) => a - b);
      all.requests += r.requests;
      all.ok += r.ok;
      all.intended += r.intended;
      all.errors += r.errors;
      all.latenciesMs.push(...r.latenciesMs);
      const p50 = percentile(sorted, 50);
      const p99 = percentile(sorted, 99);
      rows.push([
        route,
        String(r.requests),
        (r.requests / elapsedS).toFixed(2),
        String(r.ok),
        String(r.intended),
        String(r.errors),
        p50.toFixed(1),
        p99.toFixed(1),
      ]);
      routeJson.push({
        route,
        requests: r.requests,
        per_s: r.requests / elapsedS,
        ok: r.ok,
        intended: r.intended,
        errors: r.errors,
        p50_ms: p50,
        p99_ms: p99,
      });
    }
    const allSorted = [...all.latenciesMs].sort((a, b) => a - b);
    rows.push([
      "all",
      String(all.requests),
      (all.requests / elapsedS).toFixed(2),
      String(all.ok),
      String(all.intended),
      String(all.errors),
      percentile(allSorted, 50).toFixed(1),
      percentile(allSorted, 99).toFixed(1),
    ]);
    out(`\n${table(rows)}\n`);

    const scenRows: string[][] = [["scenario", "completed", "per s", "aborted"]];
    for (const s of MIX) {
      const st = mainRec.scenarios.get(s.name) ?? { started: 0, completed: 0, aborted: 0 };
      scenRows.push([
        `${s.name} (weight ${s.weight})`,
        String(st.completed),
        (st.completed / elapsedS).toFixed(2),
        String(st.aborted),
      ]);
    }
    out(`\n${table(scenRows)}\n`);
    out(
      `scenario starts ${(starts / elapsedS).toFixed(2)}/s (target ${opts.rate}/s); ` +
        `server CPU ${((100 * serverCpu) / elapsedS).toFixed(0)}% of one core, ` +
        `load generator ${((100 * (loadCpu.user + loadCpu.system)) / 1e6 / elapsedS).toFixed(0)}%\n`,
    );
    for (const [what, n] of [...mainRec.notes].sort()) out(`  ${what}: ${n}\n`);

    out("\nintended answers:\n");
    for (const [kind, n] of [...mainRec.intendedKinds].sort((a, b) => b[1] - a[1])) out(`  ${n}  ${kind}\n`);

    const warm = samples[0] as MemorySample;
    const end = samples.find((s) => s.point === "end");
    const allowance = Math.max(RSS_GROWTH_FRACTION * warm.rss, RSS_GROWTH_MIN_BYTES);
    const limit = warm.rss + allowance;
    const memRows: string[][] = [
      ["memory (MiB)", "t s", "RSS", "RSS peak", "heap used", "heap total", "external"],
    ];
    for (const s of samples) {
      memRows.push([
        s.point,
        s.t_s.toFixed(0),
        mib(s.rss),
        mib(s.rss_peak),
        mib(s.heap_used),
        mib(s.heap_total),
        mib(s.external),
      ]);
    }
    out(`\n${table(memRows)}\n`);
    const rssAll = [...samples.map((x) => x.rss), ...timeline.map((x) => x.rss)];
    const rssMin = Math.min(...rssAll);
    const rssMax = Math.max(...rssAll);
    const trend = slopePerMinute(timeline.filter((x) => x.t_s >= elapsedS / 2));
    out(
      `RSS every ${RSS_SAMPLE_MS / 1000} s: min ${mib(rssMin)}, max ${mib(rssMax)} MiB, second half's trend ` +
        `${Number.isNaN(trend) ? "-" : `${trend >= 0 ? "+" : ""}${mib(trend)} MiB/min`} (information only); ` +
        `RSS and heap of the three points 1 s after full GCs\nbound: end RSS <= warm RSS + max(${RSS_GROWTH_FRACTION * 100}% of it, ` +
        `${RSS_GROWTH_MIN_BYTES / 1048576} MiB) = ${mib(limit)} MiB\n`,
    );
    const firstScrape = scraped[0];
    const lastScrape = scraped.at(-1);
    if (firstScrape && lastScrape) {
      out(
        `GET /metrics (no GC): RSS ${mib(firstScrape.rss)} → ${mib(lastScrape.rss)} MiB, heap used ` +
          `${mib(firstScrape.heap_used)} → ${mib(lastScrape.heap_used)} MiB (t ${firstScrape.t_s} → ${lastScrape.t_s} s)\n`,
      );
    }

    const failures: string[] = [];
    const seedAndWarmErrors = seedRec.errors + warmRec.errors;
    if (mainRec.errors > 0) failures.push(`${mainRec.errors} errors in the measured run`);
    if (seedAndWarmErrors > 0) failures.push(`${seedAndWarmErrors} errors while seeding or warming up`);
    if (!alive)
      failures.push(`the server died (exit ${server.child.exitCode}, signal ${server.child.signalCode})`);
    if (!end) failures.push("no end memory sample");
    else if (end.rss > limit)
      failures.push(
        `end RSS ${mib(end.rss)} MiB exceeds the bound ${mib(limit)} MiB (warm ${mib(warm.rss)} MiB)`,
      );
    for (const rec of [seedRec, warmRec, mainRec]) {
      if (rec.errors === 0) continue;
      out(`\nerrors (${rec.name}):\n`);
      for (const [kind, n] of [...rec.errorKinds].sort((a, b) => b[1] - a[1])) out(`  ${n}  ${kind}\n`);
    }
    if (server.alerts.size > 0) {
      out(
        `\nsecurity alerts logged by the server (whole run): ${[...server.alerts].map(([k, n]) => `${k} x${n}`).join(", ")}\n`,
      );
    }
    if (server.errorLines.length > 0) {
      out(`\nserver logged ${server.errorLines.length} error lines, e.g.:\n`);
      for (const line of server.errorLines.slice(0, 5)) out(`  ${line.slice(0, 300)}\n`);
    }
    const pass = failures.length === 0;
    out(
      `\n${pass ? "PASS" : "FAIL"}: ${all.requests} requests in ${elapsedS.toFixed(0)} s (${(all.requests / elapsedS).toFixed(1)}/s), ` +
        `${all.errors} errors, ${all.intended} intended 4xx; end RSS ${end ? mib(end.rss) : "-"} MiB ` +
        `(warm ${mib(warm.rss)}, bound ${mib(limit)})${pass ? "" : `\n  ${failures.join("\n  ")}`}\n`,
    );

    if (opts.json) {
      const summary = {
        at: new Date().toISOString(),
        node: process.version,
        cpus: os.availableParallelism(),
        config: {
          minutes: opts.minutes,
          warmup_s: opts.warmup,
          vus: opts.vus,
          rate: opts.rate,
          mix: Object.fromEntries(MIX.map((s) => [s.name, s.weight])),
          seed: SEED,
          challenge_max_number: CHALLENGE_MAX_NUMBER,
          client_pii_budgets: CLIENT_PII_BUDGETS,
          attack: { trusted_targets: TRUSTED_TARGETS, noisy_ips: NOISY_IPS.length, solves: ATTACK_SOLVES },
        },
        measured_s: elapsedS,
        scenario_starts_per_s: starts / elapsedS,
        server_cpu_percent: (100 * serverCpu) / elapsedS,
        loadgen_cpu_percent: (100 * (loadCpu.user + loadCpu.system)) / 1e6 / elapsedS,
        requests: all.requests,
        requests_per_s: all.requests / elapsedS,
        ok: all.ok,
        intended: all.intended,
        errors: all.errors,
        p50_ms: percentile(allSorted, 50),
        p99_ms: percentile(allSorted, 99),
        routes: routeJson,
        scenarios: Object.fromEntries(mainRec.scenarios),
        notes: Object.fromEntries(mainRec.notes),
        intended_kinds: Object.fromEntries(mainRec.intendedKinds),
        error_kinds: Object.fromEntries(mainRec.errorKinds),
        seed_errors: Object.fromEntries(seedRec.errorKinds),
        warmup_errors: Object.fromEntries(warmRec.errorKinds),
        server_error_log_lines: server.errorLines.length,
        server_alerts: Object.fromEntries(server.alerts),
        memory: {
          bound: {
            rule: `end RSS <= warm RSS + max(${RSS_GROWTH_FRACTION} x warm RSS, ${RSS_GROWTH_MIN_BYTES} bytes)`,
            limit_bytes: limit,
          },
          samples,
          rss_timeline: timeline,
          metrics_scrapes: scraped,
          rss_trend_second_half_bytes_per_min: Number.isNaN(trend) ? null : trend,
        },
        failures,
        pass,
      };
      await fs.writeFile(opts.json, `${JSON.stringify(summary, null, 2)}\n`);
      out(`summary written to ${opts.json}\n`);
    }
    return pass ? 0 : 1;
  } finally {
    for (const sig of ["SIGINT", "SIGTERM"] as const) process.removeListener(sig, onSignal);
    await server.stop();
    await fs.rm(dataDir, { recursive: true, force: true });
  }
}

// process.exit: idle keep-alive sockets of fetch's pool must not hold the process (stdout is
// synchronous for files and pipes on Linux, so nothing printed is lost).
main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error("soak failed:", err);
    process.exit(1);
  },
);
