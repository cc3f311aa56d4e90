import { spawnSync } from "node:child_process";
import fs from "node:fs";
import type http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import supertest from "supertest";
import { afterEach, describe, expect, it } from "vitest";
import { SERVER_NODE_FLAGS } from "../bench/util.js";
import { profiles } from "../src/db/schema.js";
import { startMetricsServer } from "../src/http/metrics-routes.js";
import { Clients } from "../src/oidc/clients.js";
import { writePidFile } from "../src/ops/pid-file.js";
import { Keyring, writeKeyringFile } from "../src/vault/keyring.js";
import { makeApp, PROFILE, post, register, STRONG_PASSWORD, signIn, type TestApp } from "./support/app.js";
import { cliEnv, runCli } from "./support/cli.js";
import { startCommand, startServer } from "./support/server.js";

/** Every label value of every sekisho_ series in a scrape. */
function labelValues(scrape: string): string[] {
  const values: string[] = [];
  for (const line of scrape.split("\n")) {
    if (!line.startsWith("sekisho_")) continue;
    for (const m of line.matchAll(/(\w+)="([^"]*)"/g)) values.push(`${m[1]}=${m[2]}`);
  }
  return values;
}

function sample(scrape: string, series: string): number {
  const line = scrape.split("\n").find((l) => l.startsWith(`${series} `));
  return line ? Number(line.split(" ")[1]) : 0;
}

describe("metrics", () => {
  let t: TestApp;
  afterEach(() => t.close());

  it("are refused from an address outside the allow-list and served to one inside, with no member, login ID or IP in any label", async () => {
    t = makeApp({ SEKISHO_TRUST_PROXY: "loopback", SEKISHO_METRICS_ALLOW: "10.0.0.0/8" });
    const reg = await register(t.app, { login_id: "metrics.member" });
    const memberId = reg.body.member_id as string;
    await post(t.app, "/api/v1/login", { login_id: "metrics.member", password: "not the password 1" }).set(
      "X-Forwarded-For",
      "203.0.113.77",
    );
    await post(t.app, "/api/v1/login", { login_id: "nobody.here", password: STRONG_PASSWORD }).set(
      "X-Forwarded-For",
      "203.0.113.78",
    );
    const cookie = await signIn(t.app, "metrics.member");
    await supertest(t.app).get(`/api/v1/admin/members/${memberId}`).set("Cookie", cookie);

    // outside the list: a client on the internet behind the proxy, and the proxy's own address
    const outside = await supertest(t.app).get("/metrics").set("X-Forwarded-For", "203.0.113.9");
    expect(outside.status).toBe(403);
    expect(outside.text).not.toContain("sekisho_");
    expect((await supertest(t.app).get("/metrics")).status).toBe(403); // 127.0.0.1, not in 10/8
    // a client can't claim an allowed address past the proxy: the proxy appends the real one
    const spoofed = await supertest(t.app).get("/metrics").set("X-Forwarded-For", "10.1.2.3, 203.0.113.9");
    expect(spoofed.status).toBe(403);

    const inside = await supertest(t.app).get("/metrics").set("X-Forwarded-For", "10.1.2.3");
    expect(inside.status).toBe(200);
    expect(inside.headers["content-type"]).toContain("text/plain");
    const scrape = inside.text;
    expect(sample(scrape, 'sekisho_sign_in_attempts_total{method="password",outcome="failure"}')).toBe(2);
    expect(sample(scrape, 'sekisho_sign_in_attempts_total{method="password",outcome="success"}')).toBe(1);
    expect(scrape).toMatch(
      /sekisho_throttle_decisions_total\{kind="password",decision="allow",reason="none"\} 3/,
    );
    expect(scrape).toContain('route="/api/v1/login"');
    // the admin route's pattern, never the member id in its path
    expect(scrape).toContain('route="/api/v1/admin/members/:member_id"');
    expect(scrape).toContain("sekisho_hash_queue_depth 0");
    const values = labelValues(scrape);
    expect(values.length).toBeGreaterThan(10);
    const text = values.join("\n");
    for (const secret of [memberId, "metrics.member", "nobody.here", "203.0.113", "127.0.0.1", PROFILE.email])
      expect(text).not.toContain(secret);
    // every label value is a route pattern or a short word from a known set
    for (const v of values) expect(v).toMatch(/^\w+=(?:[a-z0-9_.+]{1,48}|[\w/.:*-]{1,80})$/i);
  });

  it("refuse forwarded requests when no proxy is trusted (the proxy's loopback address says nothing of the client)", async () => {
    t = makeApp();
    expect((await supertest(t.app).get("/metrics")).status).toBe(200); // loopback, the default
    expect((await supertest(t.app).get("/metrics").set("X-Forwarded-For", "127.0.0.1")).status).toBe(403);
    expect((await supertest(t.app).get("/metrics").set("Forwarded", "for=127.0.0.1")).status).toBe(403);
  });

  it("count OIDC grants, PII decryptions by principal kind and alerts", async () => {
    t = makeApp();
    await register(t.app, { login_id: "pii.member" });
    const cookie = await signIn(t.app, "pii.member");
    await supertest(t.app).get("/api/v1/me").set("Cookie", cookie);
    t.s.alerts.raise("under_attack", "critical", { test: true });
    const backend = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals }).add({
      name: "backend",
      redirectUris: ["https://site.example/cb"],
      grants: ["client_credentials"],
      scope: "members:read",
    });
    const token = (body: Record<string, string>) =>
      supertest(t.app)
        .post("/oidc/token")
        .auth(backend.clientId, backend.clientSecret as string)
        .type("form")
        .send(body);
    expect((await token({ grant_type: "client_credentials", scope: "members:read" })).status).toBe(200);
    expect((await token({ grant_type: "refresh_token", refresh_token: "not a token" })).status).toBe(400);
    const scrape = (await supertest(t.app).get("/metrics")).text;
    expect(sample(scrape, 'sekisho_oidc_grants_total{grant_type="client_credentials",result="issued"}')).toBe(
      1,
    );
    expect(sample(scrape, 'sekisho_oidc_grants_total{grant_type="refresh_token",result="refused"}')).toBe(1);
    expect(sample(scrape, 'sekisho_pii_decryptions_total{principal="member"}')).toBeGreaterThan(0);
    expect(sample(scrape, 'sekisho_alerts_raised_total{kind="under_attack"}')).toBe(1);
    expect(scrape).toContain('route="/oidc/token"');
  });

  it("can be served on a port of their own, to the allow-list only", async () => {
    t = makeApp({ SEKISHO_METRICS_PORT: "9464" });
    // not on the main port then
    expect((await supertest(t.app).get("/metrics")).status).toBe(404);
    const listen = (allow: string[]) =>
      startMetricsServer(t.s.metrics, { host: "127.0.0.1", port: 0, allow });
    const urlOf = (s: http.Server) => `http://127.0.0.1:${(s.address() as AddressInfo).port}/metrics`;
    const open = await listen(["loopback"]);
    const closed = await listen(["10.0.0.0/8"]);
    try {
      const ok = await fetch(urlOf(open));
      expect(ok.status).toBe(200);
      expect(await ok.text()).toContain("sekisho_hash_queue_depth");
      expect((await fetch(urlOf(closed))).status).toBe(403);
      expect((await fetch(urlOf(open).replace("/metrics", "/api/v1/me"))).status).toBe(404);
    } finally {
      open.close();
      closed.close();
    }
  });
});

describe("logs", () => {
  let t: TestApp;
  afterEach(() => t.close());

  it("carry the request id on every line logged while handling a request, and the error answer names it", async () => {
    t = makeApp();
    await register(t.app, { login_id: "broken.profile" });
    await register(t.app, { login_id: "other.member" });
    // Someone swaps a ciphertext between two members: the decryption fails, loudly.
    const rows = t.s.db.select().from(profiles).all();
    t.s.db.$client
      .prepare("UPDATE profiles SET name = ? WHERE member_id = ?")
      .run(rows[1]?.name, rows[0]?.memberId);
    const cookie = await signIn(t.app, "broken.profile");
    const res = await supertest(t.app).get("/api/v1/me").set("Cookie", cookie);
    expect(res.status).toBe(500);
    const id = res.headers["x-request-id"] as string;
    expect(res.body.request_id).toBe(id);
    const lines = t.logs.map((l) => JSON.parse(l) as Record<string, unknown>);
    const failure = lines.find((l) => l.msg === "profile field failed to decrypt");
    expect(failure?.req_id).toBe(id);
    const mine = lines.filter((l) => l.req_id === id).map((l) => l.msg);
    expect(mine).toEqual(
      expect.arrayContaining(["profile field failed to decrypt", "unhandled error", "request"]),
    );
  });
});

describe("backups", () => {
  let t: TestApp;
  afterEach(() => t.close());

  it("a backup taken during writes opens, passes its integrity check and verifies with the keyring, and restores", async () => {
    t = makeApp();
    for (let i = 0; i < 20; i++) await register(t.app, { login_id: `before.${i}` });
    const file = path.join(t.dir, "backup.db");
    // Writes go on (registrations and audit entries in this process) while the CLI copies.
    let writing = true;
    let written = 0;
    const writer = (async () => {
      while (writing) {
        await register(t.app, { login_id: `during.${written++}` });
      }
    })();
    const { spawn } = await import("node:child_process");
    const backup = spawn(process.execPath, [path.resolve("bin/sekisho.mjs"), "backup", file, "--json"], {
      env: cliEnv(t),
    });
    let stdout = "";
    let stderr = "";
    backup.stdout.on("data", (c: Buffer) => (stdout += String(c)));
    backup.stderr.on("data", (c: Buffer) => (stderr += String(c)));
    const code = await new Promise<number | null>((r) => backup.once("exit", r));
    writing = false;
    await writer;
    expect(code, stderr).toBe(0);
    expect(written).toBeGreaterThan(0);
    const summary = JSON.parse(stdout) as { integrity: string; audit: { ok: boolean }; members: number };
    expect(summary.integrity).toBe("ok");
    expect(summary.audit.ok).toBe(true);
    expect(summary.members).toBeGreaterThanOrEqual(20);
    expect(fs.statSync(file).mode & 0o077).toBe(0);
    // The copy is a consistent database on its own: integrity, and members = their profiles.
    const copy = new Database(file, { readonly: true });
    expect(copy.pragma("integrity_check", { simple: true })).toBe("ok");
    const members = copy.prepare("SELECT count(*) FROM members").pluck().get() as number;
    expect(copy.prepare("SELECT count(*) FROM profiles").pluck().get()).toBe(members);
    expect(members).toBe(summary.members);
    copy.close();
    // Refuses to overwrite.
    expect(runCli(t, ["backup", file]).status).not.toBe(0);

    // Restored into a new data dir with the same keyring: the audit chain verifies there.
    const target = path.join(t.dir, "restored");
    const env = { SEKISHO_DATA_DIR: target };
    const restored = runCli(t, ["restore", file, "--json"], env);
    expect(restored.status, restored.stderr).toBe(0);
    expect(JSON.parse(restored.stdout)).toMatchObject({ members, previous: null });
    const verify = runCli(t, ["audit", "verify", "--json"], env);
    expect(verify.status, verify.stdout).toBe(0);
    expect(JSON.parse(verify.stdout).ok).toBe(true);
  }, 60_000);

  it("restore refuses a backup the keyring can't read, and refuses while a server runs on the data dir", async () => {
    t = makeApp();
    await register(t.app, { login_id: "keyed.member" });
    const file = path.join(t.dir, "backup.db");
    expect(runCli(t, ["backup", file]).status).toBe(0);
    const otherKeyring = path.join(t.dir, "other-keyring.json");
    writeKeyringFile(otherKeyring, Keyring.generate(new Date()));
    const wrong = runCli(t, ["restore", file], {
      SEKISHO_DATA_DIR: path.join(t.dir, "elsewhere"),
      SEKISHO_KEYRING_FILE: otherKeyring,
    });
    expect(wrong.status).not.toBe(0);
    expect(wrong.stderr).toContain("does not verify with this keyring");
    expect(fs.existsSync(path.join(t.dir, "elsewhere", "sekisho.db"))).toBe(false);

    writePidFile(t.s.config.dataDir); // this test process stands for a running server
    const busy = runCli(t, ["restore", file]);
    expect(busy.status).not.toBe(0);
    expect(busy.stderr).toContain(`pid ${process.pid}`);
  }, 60_000);

  it("a backup restore would refuse (a broken audit log) fails loudly but is kept; restore takes it only when told, and records that", async () => {
    t = makeApp();
    await register(t.app, { login_id: "broken.member" });
    // Someone edited an entry: every backup from now on carries the broken chain.
    t.s.db.$client.exec("DROP TRIGGER audit_log_no_update; UPDATE audit_log SET reason = 'x' WHERE seq = 1");
    t.s.audit.ensureAppendOnly();
    const file = path.join(t.dir, "broken.db");
    const backup = runCli(t, ["backup", file]);
    expect(backup.status).toBe(1);
    expect(backup.stderr).toMatch(/restore will refuse it: the audit log is BROKEN at entry #1/);
    expect(fs.existsSync(file)).toBe(true);
    const elsewhere = { SEKISHO_DATA_DIR: path.join(t.dir, "elsewhere") };
    const refused = runCli(t, ["restore", file], elsewhere);
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toContain("--accept-broken-audit");
    const accepted = runCli(t, ["restore", file, "--accept-broken-audit"], elsewhere);
    expect(accepted.status, accepted.stderr).toBe(0);
    const restored = new Database(path.join(t.dir, "elsewhere", "sekisho.db"), { readonly: true });
    const entry = restored
      .prepare("SELECT details FROM audit_log WHERE action = 'database.restored'")
      .pluck()
      .get() as string;
    restored.close();
    expect(JSON.parse(entry).accepted_broken_audit).toMatchObject({ seq: 1 });
    // A backup into a directory that doesn't exist: a clear error, no stack trace.
    const nowhere = runCli(t, ["backup", path.join(t.dir, "no", "such", "dir", "b.db"), "--json"]);
    expect(nowhere.status).not.toBe(0);
    expect(nowhere.stderr).toMatch(/does not exist; create the backup directory first/);
    expect(nowhere.stderr).not.toMatch(/\n\s+at /);
  }, 60_000);
});

describe("graceful stop", () => {
  it("SIGTERM during a burst of sign-ins: every request gets a whole answer or a connection error, the process exits 0, the database is intact", async () => {
    const server = await startServer({ SEKISHO_TRUST_PROXY: "loopback" });
    try {
      // Members signing in from their own addresses (the throttle lets one address and one
      // account have only a few attempts in flight at once).
      const MEMBERS = 25;
      for (let i = 0; i < MEMBERS; i++) {
        const reg = await fetch(`${server.url}/api/v1/registrations`, {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-Forwarded-For": `198.51.100.${i}` },
          body: JSON.stringify({ login_id: `burst.${i}`, password: STRONG_PASSWORD, profile: PROFILE }),
        });
        expect(reg.status).toBe(201);
      }
      let n = 0;
      const signInOnce = async (): Promise<string> => {
        const i = n++ % MEMBERS;
        try {
          const res = await fetch(`${server.url}/api/v1/login`, {
            method: "POST",
            headers: { "Content-Type": "application/json", "X-Forwarded-For": `203.0.113.${i}` },
            body: JSON.stringify({ login_id: `burst.${i}`, password: STRONG_PASSWORD }),
          });
          const body = (await res.json()) as { status?: string; error?: string };
          return `${res.status} ${body.status ?? body.error}`;
        } catch (err) {
          const cause = (err as { cause?: { code?: string } }).cause;
          return `connection error ${cause?.code ?? String(err)}`;
        }
      };
      const burst: Promise<string>[] = [];
      for (let i = 0; i < 40; i++) burst.push(signInOnce());
      await Promise.race(burst); // at least one answered: the rest are in flight
      server.proc.kill("SIGTERM");
      await new Promise((r) => setTimeout(r, 50));
      for (let i = 0; i < 10; i++) burst.push(signInOnce()); // after the signal
      const outcomes = await Promise.all(burst);
      const exit = await server.exited;
      expect(exit).toEqual({ code: 0, signal: null });
      for (const o of outcomes)
        expect(o).toMatch(/^(200 authenticated|429 too_many_attempts|503 server_busy|connection error \w+)$/);
      const answered = outcomes.filter((o) => o === "200 authenticated").length;
      expect(answered).toBeGreaterThanOrEqual(1);
      expect(outcomes.filter((o) => o.startsWith("connection error")).length).toBeGreaterThanOrEqual(1);
      expect(server.output.join("")).toContain('"msg":"stopped"');

      const db = new Database(path.join(server.env.SEKISHO_DATA_DIR as string, "sekisho.db"));
      expect(db.pragma("integrity_check", { simple: true })).toBe("ok");
      // Every sign-in that answered 200 left exactly its session, and no other did.
      expect(db.prepare("SELECT count(*) FROM sessions").pluck().get()).toBe(answered);
      db.close();
      expect(fs.existsSync(path.join(server.env.SEKISHO_DATA_DIR as string, "sekisho.pid"))).toBe(false);
    } finally {
      if (server.proc.exitCode === null) server.proc.kill("SIGKILL");
      fs.rmSync(server.dir, { recursive: true, force: true });
    }
  }, 60_000);
  it("a graceful restart carries the throttle's counters over: failures before it still protect the account after it", async () => {
    // A low protection threshold, and no hourly slow-down, so a few failures show it.
    const policy = JSON.stringify({ accountProtect: 4, accountSlow: 1000, ipLoginSlow: 1000 });
    const first = await startServer({ SEKISHO_TRUST_PROXY: "loopback", SEKISHO_THROTTLE_POLICY: policy });
    const same = {
      SEKISHO_TRUST_PROXY: "loopback",
      SEKISHO_THROTTLE_POLICY: policy,
      SEKISHO_DATA_DIR: first.env.SEKISHO_DATA_DIR as string,
      SEKISHO_KEYRING_FILE: first.env.SEKISHO_KEYRING_FILE as string,
    };
    let second: Awaited<ReturnType<typeof startServer>> | undefined;
    const login = (url: string, ip: string, password: string) =>
      fetch(`${url}/api/v1/login`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Forwarded-For": ip },
        body: JSON.stringify({ login_id: "carried.member", password }),
      }).then(async (r) => ({ status: r.status, body: (await r.json()) as { error?: string } }));
    try {
      const reg = await fetch(`${first.url}/api/v1/registrations`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Forwarded-For": "198.51.100.1" },
        body: JSON.stringify({ login_id: "carried.member", password: STRONG_PASSWORD, profile: PROFILE }),
      });
      expect(reg.status).toBe(201);
      for (let i = 0; i < 3; i++)
        expect((await login(first.url, `203.0.113.${i}`, `wrong guess ${i}`)).status).toBe(401);
      first.proc.kill("SIGTERM");
      expect(await first.exited).toEqual({ code: 0, signal: null });
      expect(first.output.join("")).toContain("throttle counters kept for the next start");

      second = await startServer(same);
      expect(second.output.join("")).toContain("throttle counters carried over from the last stop");
      // The fourth failure of the day, the first after the restart, protects the account.
      expect((await login(second.url, "203.0.113.3", "wrong guess 3")).status).toBe(401);
      const after = await login(second.url, "203.0.113.4", STRONG_PASSWORD);
      // (An account protection is answered as the contract's throttling answer.)
      expect(after).toMatchObject({ status: 429, body: { error: "too_many_attempts" } });
    } finally {
      for (const s of [first, second]) if (s && s.proc.exitCode === null) s.proc.kill("SIGKILL");
      fs.rmSync(first.dir, { recursive: true, force: true });
      if (second) fs.rmSync(second.dir, { recursive: true, force: true });
    }
  }, 60_000);
  it("SIGTERM right after a recovery request: the reset mail is sent before the process exits", async () => {
    const server = await startServer();
    const outbox = path.join(server.env.SEKISHO_DATA_DIR as string, "outbox");
    const mails = () =>
      fs.existsSync(outbox) ? fs.readdirSync(outbox).filter((f) => f.endsWith(".eml")) : [];
    try {
      const reg = await fetch(`${server.url}/api/v1/registrations`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ login_id: "stop.recovery", password: STRONG_PASSWORD, profile: PROFILE }),
      });
      expect(reg.status).toBe(201);
      for (let i = 0; i < 100 && mails().length === 0; i++) await new Promise((r) => setTimeout(r, 50));
      const before = mails().length; // the verification mail
      const asked = await fetch(`${server.url}/api/v1/recovery/password`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ login_id: "stop.recovery" }),
      });
      expect(asked.status).toBe(202);
      server.proc.kill("SIGTERM");
      expect(await server.exited).toEqual({ code: 0, signal: null });
      const sent = mails().map((f) => fs.readFileSync(path.join(outbox, f), "utf8"));
      expect(sent).toHaveLength(before + 1);
      expect(sent.some((m) => m.includes("/recovery/reset?token="))).toBe(true);
    } finally {
      if (server.proc.exitCode === null) server.proc.kill("SIGKILL");
      fs.rmSync(server.dir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe("deployment files", () => {
  const unit = path.resolve(import.meta.dirname, "../deploy/sekisho.service");
  const read = (rel: string) => fs.readFileSync(path.resolve(import.meta.dirname, "..", rel), "utf8");

  it("every way of starting the server runs Node with the same flags (npm start, Dockerfile, systemd unit, benchmarks)", () => {
    expect(SERVER_NODE_FLAGS.length).toBeGreaterThan(0);
    const start = startCommand();
    const docker = JSON.parse(/^CMD (\[.*\])$/m.exec(read("Dockerfile"))?.[1] ?? "[]") as string[];
    const execStart = /^ExecStart=(.*)$/m.exec(read("deploy/sekisho.service"))?.[1]?.split(/\s+/) ?? [];
    const emulated =
      /exec (\/usr\/bin\/node [^']*)'/.exec(read("deploy/emulate-unit.sh"))?.[1]?.split(/\s+/) ?? [];
    for (const argv of [start, docker, execStart, emulated]) {
      // The flags, before the script: node's own options, not arguments to src/main.ts.
      expect(argv.at(-1)).toBe("src/main.ts");
      for (const flag of SERVER_NODE_FLAGS) expect(argv.slice(0, -1)).toContain(flag);
    }
  });

  const analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].find((p) => fs.existsSync(p));

  it.skipIf(!analyze)(
    "the systemd unit passes systemd-analyze verify, which does catch a broken unit",
    () => {
      const verify = (file: string) =>
        spawnSync(analyze as string, ["verify", file], {
          encoding: "utf8",
          env: { ...process.env, SYSTEMD_LOG_COLOR: "0" },
        });
      const ok = verify(unit);
      expect(ok.status, ok.stderr).toBe(0);
      expect(ok.stderr.trim()).toBe("");
      // Positive control: the same unit with a bad value and an unknown directive is reported.
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sekisho-unit-"));
      try {
        const broken = path.join(dir, "sekisho.service");
        fs.writeFileSync(
          broken,
          fs
            .readFileSync(unit, "utf8")
            .replace("NoNewPrivileges=true", "NoNewPrivileges=maybe\nProtectSystm=strict"),
        );
        const bad = verify(broken);
        expect(bad.stderr).toMatch(/NoNewPrivileges|maybe/);
        expect(bad.stderr).toMatch(/ProtectSystm/);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
