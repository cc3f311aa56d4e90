import { createHash, pbkdf2Sync } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import argon2 from "argon2";
import bcrypt from "bcryptjs";
import supertest from "supertest";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { memberIdParam } from "../src/admin/admin-ops.js";
import { legacyPasswords, members } from "../src/db/schema.js";
import { makeApp, post, type TestApp } from "./support/app.js";
import { cliEnv, runCli } from "./support/cli.js";
import { linkIn, TestSmtp } from "./support/smtp.js";

const PW = "kimi no na wa 2016!";
const sha = (algo: string, s: string) => createHash(algo).update(s, "utf8").digest("hex");

async function legacyRows() {
  return [
    {
      legacy_id: "L-bcrypt",
      login_id: "old.bcrypt",
      hash_scheme: "bcrypt",
      password_hash: bcrypt.hashSync(PW, 4),
    },
    {
      legacy_id: "L-bcrypt-2y",
      login_id: "old.bcrypt2y",
      hash_scheme: "bcrypt",
      password_hash: bcrypt.hashSync(PW, 4).replace(/^\$2b\$/, "$2y$"),
    },
    {
      legacy_id: "L-argon2i",
      login_id: "old.argon2i",
      hash_scheme: "argon2",
      password_hash: await argon2.hash(PW, { type: argon2.argon2i, memoryCost: 1024, timeCost: 1 }),
    },
    {
      legacy_id: "L-pbkdf2-256",
      login_id: "old.pbkdf2a",
      hash_scheme: "pbkdf2-sha256",
      salt: "a1b2c3d4e5f60718",
      iterations: 1000,
      password_hash: pbkdf2Sync(PW, Buffer.from("a1b2c3d4e5f60718", "hex"), 1000, 32, "sha256").toString(
        "hex",
      ),
    },
    {
      legacy_id: "L-pbkdf2-512",
      login_id: "old.pbkdf2b",
      hash_scheme: "pbkdf2-sha512",
      salt: "0011223344556677",
      iterations: 500,
      password_hash: pbkdf2Sync(PW, Buffer.from("0011223344556677", "hex"), 500, 64, "sha512").toString(
        "hex",
      ),
    },
    {
      legacy_id: "L-sha256-pre",
      login_id: "old.sha256pre",
      hash_scheme: "sha256-salted",
      salt: "s@lt",
      password_hash: sha("sha256", `s@lt${PW}`),
    },
    {
      legacy_id: "L-sha256-suf",
      login_id: "old.sha256suf",
      hash_scheme: "sha256-salted",
      salt: "pepper!",
      salt_position: "suffix",
      password_hash: sha("sha256", `${PW}pepper!`).toUpperCase(),
    },
    {
      legacy_id: "L-sha1-salted",
      login_id: "old.sha1salt",
      hash_scheme: "sha1-salted",
      salt: "xyz",
      password_hash: sha("sha1", `xyz${PW}`),
    },
    { legacy_id: "L-md5", login_id: "old.md5", hash_scheme: "md5", password_hash: sha("md5", PW) },
    { legacy_id: "L-sha1", login_id: "old.sha1", hash_scheme: "sha1", password_hash: sha("sha1", PW) },
  ].map((r, i) => ({
    ...r,
    profile: { name: `旧会員 ${i}`, email: `legacy${i}@example.jp`, address: `大阪府大阪市北区梅田${i}-1` },
    created_at: "2014-04-01T00:00:00Z",
  }));
}

describe("members import: legacy members and their password hashes", () => {
  let t: TestApp;
  let file: string;
  beforeEach(() => {
    t = makeApp();
    file = path.join(t.dir, "legacy.jsonl");
  });
  afterEach(() => t.close());

  const write = (rows: unknown[]) => fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join("\n"));

  it("every hash scheme verifies at the first sign-in and is replaced by argon2id; the legacy hash is gone", async () => {
    const rows = await legacyRows();
    write(rows);
    const summary = await t.s.legacyImport.importFile(file);
    expect(summary).toMatchObject({ imported: rows.length, rejected: 0, skipped: 0 });
    for (const row of rows) {
      const wrong = await post(t.app, "/api/v1/login", {
        login_id: row.login_id,
        password: "not the password 1",
      });
      expect(wrong.status, row.hash_scheme).toBe(401);
      const ok = await post(t.app, "/api/v1/login", { login_id: row.login_id, password: PW });
      expect(ok.status, `${row.legacy_id}: ${ok.text}`).toBe(200);
      const m = t.s.db
        .select()
        .from(members)
        .all()
        .find((x) => x.loginId === row.login_id);
      expect(m?.passwordHash).toMatch(/^\$argon2id\$/);
      expect(
        t.s.db
          .select()
          .from(legacyPasswords)
          .all()
          .some((l) => l.memberId === m?.id),
      ).toBe(false);
      // and the new hash signs in
      expect((await post(t.app, "/api/v1/login", { login_id: row.login_id, password: PW })).status).toBe(200);
    }
    expect(t.s.db.select().from(legacyPasswords).all()).toHaveLength(0);
  });

  it("rejects bad rows with their line and reason, imports the rest, and is idempotent when run again", async () => {
    const good = (await legacyRows()).slice(8); // md5, sha1
    const lines = [
      JSON.stringify(good[0]),
      "{not json",
      JSON.stringify({ legacy_id: "L-bad-md5", hash_scheme: "md5", password_hash: "xyz" }),
      JSON.stringify({ legacy_id: "L-bad-scheme", hash_scheme: "crypt", password_hash: "abc" }),
      JSON.stringify({
        legacy_id: "L-bad-id",
        login_id: "someone@example.jp",
        hash_scheme: "sha1",
        password_hash: sha("sha1", "x"),
      }),
      JSON.stringify({ ...good[1], login_id: undefined }), // a generated member number
      JSON.stringify({
        legacy_id: "L-dup-login",
        login_id: good[0]?.login_id,
        hash_scheme: "md5",
        password_hash: sha("md5", "x"),
      }),
      "{also not json", // found while reading, after rows refused only when their batch is written
      JSON.stringify({ hash_scheme: "md5", password_hash: sha("md5", "x") }), // no legacy_id
    ];
    fs.writeFileSync(file, lines.join("\n"));
    const first = await t.s.legacyImport.importFile(file);
    expect(first).toMatchObject({ imported: 2, rejected: 7, skipped: 0 });
    const rejects = fs
      .readFileSync(first.reject_file as string, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { line: number; reason: string });
    expect(rejects.map((r) => r.line)).toEqual([2, 3, 4, 5, 7, 8, 9]); // in file order
    expect(rejects[6]?.reason).toMatch(/legacy_id: required: the legacy system's id/);
    expect(rejects[0]?.reason).toBe("not valid JSON");
    expect(rejects[1]?.reason).toMatch(/32 hex digits/);
    expect(rejects[3]?.reason).toMatch(/login_id: email \(.+\)/); // with what the rule is
    expect(rejects[4]?.reason).toMatch(/taken/);
    const mapping = fs
      .readFileSync(first.mapping_file as string, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(mapping).toEqual([
      { legacy_id: "L-sha1", login_id: expect.stringMatching(/^[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{3}$/) },
    ]);
    // Again: nothing twice.
    const second = await t.s.legacyImport.importFile(file);
    expect(second).toMatchObject({ imported: 0, skipped: 2 });
    expect(t.s.db.select().from(members).all()).toHaveLength(2);
    // The audit log records the import, not the rows.
    const entry = [...t.s.audit.iterate()].filter((e) => e.action === "members.imported").at(-1);
    expect(JSON.parse(entry?.details ?? "{}")).toMatchObject({
      file_sha256: expect.stringMatching(/^[0-9a-f]{64}$/),
      imported: 0,
      skipped: 2,
    });
  });

  it("reads CSV with a header row, through the command line", async () => {
    const csv = path.join(t.dir, "legacy.csv");
    fs.writeFileSync(
      csv,
      [
        "legacy_id,login_id,hash_scheme,password_hash,salt,salt_position,iterations,name,email,phone,postal_code,address,birth_date,gender,totp_secret,created_at",
        `C-1,csv.member,md5,${sha("md5", PW)},,,,佐藤 花子,hanako@example.jp,090-1111-2222,530-0001,"大阪府大阪市北区梅田1-1, 3F",1990-01-02,female,,2015-06-01T00:00:00Z`,
        `C-2,csv.member2,sha256-salted,${sha("sha256", `${PW}zz`)},zz,suffix,,鈴木 一郎,ichiro@example.jp,,,,,,,`,
      ].join("\n"),
    );
    const run = runCli(t, ["members", "import", csv, "--json"]);
    expect(run.status, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout)).toMatchObject({ imported: 2, rejected: 0, skipped: 0 });
    expect((await post(t.app, "/api/v1/login", { login_id: "csv.member", password: PW })).status).toBe(200);
    expect((await post(t.app, "/api/v1/login", { login_id: "csv.member2", password: PW })).status).toBe(200);
  });

  it("brings an authenticator app along: the member's app keeps working after the import", async () => {
    const secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
    write([
      {
        legacy_id: "T-1",
        login_id: "old.totp",
        hash_scheme: "md5",
        password_hash: sha("md5", PW),
        totp_secret: "jbsw y3dp ehpk 3pxp jbsw y3dp ehpk 3pxp",
      },
      {
        legacy_id: "T-2",
        login_id: "old.badtotp",
        hash_scheme: "md5",
        password_hash: sha("md5", PW),
        totp_secret: "not base32!",
      },
    ]);
    const summary = await t.s.legacyImport.importFile(file);
    expect(summary).toMatchObject({ imported: 1, rejected: 1 });
    const step = await post(t.app, "/api/v1/login", { login_id: "old.totp", password: PW });
    expect(step.body.status).toBe("mfa_required");
    const { generateSync } = await import("otplib");
    const code = generateSync({ secret, epoch: Math.floor(t.clock.now().getTime() / 1000) });
    expect((await post(t.app, "/api/v1/login/totp", { mfa_token: step.body.mfa_token, code })).status).toBe(
      200,
    );
    t.s.db.$client.pragma("wal_checkpoint(TRUNCATE)");
    expect(fs.readFileSync(t.s.config.dbFile).toString("latin1")).not.toContain(secret);
  });

  it("gives imported members ids of the usual shape that sort in import order, and still unguessable", async () => {
    const rows = Array.from({ length: 300 }, (_, i) => ({
      legacy_id: `S-${i}`,
      hash_scheme: "md5",
      password_hash: sha("md5", `pw-${i}`),
    }));
    write(rows);
    await t.s.legacyImport.importFile(file, { batchSize: 50 });
    const ids = t.s.db.$client.prepare("SELECT id FROM members ORDER BY rowid").pluck().all() as string[];
    expect(ids).toHaveLength(300);
    for (const id of ids) expect(memberIdParam.safeParse(id).success).toBe(true);
    expect([...ids].sort()).toEqual(ids);
    // the last 80 bits are random: no two ids share their tail
    expect(new Set(ids.map((id) => id.slice(-13))).size).toBe(300);
  });

  it("leaves no imported profile value and no legacy hash in clear in the database", async () => {
    const rows = await legacyRows();
    write(rows);
    await t.s.legacyImport.importFile(file);
    t.s.db.$client.pragma("wal_checkpoint(TRUNCATE)");
    const db = fs.readFileSync(t.s.config.dbFile).toString("latin1");
    const utf8 = fs.readFileSync(t.s.config.dbFile).toString("utf8");
    for (const row of rows) {
      expect(db).not.toContain(row.profile.email);
      expect(utf8).not.toContain(row.profile.address);
      expect(db).not.toContain(row.password_hash.slice(0, 20));
    }
  });
});

describe("import policies: a date after which legacy passwords stop signing in, and required MFA", () => {
  const smtp = new TestSmtp();
  let t: TestApp;
  let file: string;
  beforeAll(() => smtp.start());
  afterAll(() => smtp.stop());
  beforeEach(() => {
    smtp.inbox.length = 0;
    t = makeApp({ SEKISHO_SMTP_URL: smtp.url });
    file = path.join(t.dir, "legacy.jsonl");
  });
  afterEach(() => t.close());

  const row = (id: string, extra: Record<string, unknown> = {}) => ({
    legacy_id: id,
    login_id: `old.${id}`,
    hash_scheme: "md5",
    password_hash: sha("md5", PW),
    profile: { name: "旧会員", email: `${id}@example.jp` },
    ...extra,
  });
  const write = (rows: unknown[]) => fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join("\n"));
  const DAY = 24 * 3_600_000;

  it("after the date a legacy password is refused (password_reset_required) and a reset link is mailed once; members who signed in before keep signing in", async () => {
    write([row("early"), row("late")]);
    const deadline = t.clock.now().getTime() + 30 * DAY;
    await t.s.legacyImport.importFile(file, { requirePasswordChangeAfter: deadline });
    // before the date: the legacy password signs in and is upgraded
    expect((await post(t.app, "/api/v1/login", { login_id: "old.early", password: PW })).status).toBe(200);

    t.clock.advance(31 * DAY);
    // the upgraded member is no longer on a legacy hash: nothing changes for them
    expect((await post(t.app, "/api/v1/login", { login_id: "old.early", password: PW })).status).toBe(200);
    // the other is still on the old system's hash: the right password no longer signs in
    const refused = await post(t.app, "/api/v1/login", { login_id: "old.late", password: PW });
    expect(refused.status).toBe(403);
    expect(refused.body.error).toBe("password_reset_required");
    expect(refused.headers["set-cookie"]).toBeUndefined();
    // a wrong password still says only "invalid credentials"
    const wrong = await post(t.app, "/api/v1/login", { login_id: "old.late", password: "not it at all 1" });
    expect(wrong.status).toBe(401);
    // trying again does not mail again
    expect((await post(t.app, "/api/v1/login", { login_id: "old.late", password: PW })).status).toBe(403);
    await t.s.mailer.runDue();
    const mails = smtp.to("late@example.jp");
    expect(mails).toHaveLength(1);
    const { token } = linkIn(mails[0] as (typeof mails)[number], "/recovery/reset");
    const newPassword = "a brand new passphrase 77";
    const reset = await post(t.app, "/api/v1/recovery/password/reset", { token, password: newPassword });
    expect(reset.status, reset.text).toBe(200);
    // the legacy hash is gone with the new password, and only the new password signs in
    const late = t.s.db
      .select()
      .from(members)
      .all()
      .find((m) => m.loginId === "old.late");
    expect(
      t.s.db
        .select()
        .from(legacyPasswords)
        .all()
        .some((l) => l.memberId === late?.id),
    ).toBe(false);
    expect((await post(t.app, "/api/v1/login", { login_id: "old.late", password: PW })).status).toBe(401);
    expect((await post(t.app, "/api/v1/login", { login_id: "old.late", password: newPassword })).status).toBe(
      200,
    );
    const audited = t.s.db.$client
      .prepare(
        "SELECT count(*) FROM audit_log WHERE action = 'password.reset_required' AND reason = 'legacy_password_expired'",
      )
      .pluck()
      .get();
    expect(audited).toBe(1);
  });

  it("members imported with --require-mfa-enrollment must add a factor at their first sign-in; the others need not", async () => {
    write([row("plain")]);
    await t.s.legacyImport.importFile(file);
    write([row("withapp", { totp_secret: "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP" }), row("nofactor")]);
    await t.s.legacyImport.importFile(file, { requireMfaEnrollment: true });

    expect((await post(t.app, "/api/v1/login", { login_id: "old.plain", password: PW })).body.status).toBe(
      "authenticated",
    );
    expect((await post(t.app, "/api/v1/login", { login_id: "old.withapp", password: PW })).body.status).toBe(
      "mfa_required",
    );
    const limited = await post(t.app, "/api/v1/login", { login_id: "old.nofactor", password: PW });
    expect(limited.body.status).toBe("mfa_enrollment_required");
    const cookie = String(limited.headers["set-cookie"]).split(";")[0] as string;
    // the limited session reads nothing else…
    expect((await supertest(t.app).get("/api/v1/me/sessions").set("Cookie", cookie)).status).toBe(401);
    // …but can add an authenticator app, which makes it a full session — even with the MFA policy off
    t.s.policy.set(
      null,
      { mode: "off", grace_days: 0, methods: ["totp", "webauthn"], phishing_resistant: false },
      { adminId: "test", ip: null, requestId: null },
    );
    const begin = await post(t.app, "/api/v1/me/totp", {}, cookie);
    expect(begin.status, begin.text).toBe(200);
    const { generateSync } = await import("otplib");
    const code = generateSync({
      secret: begin.body.secret,
      epoch: Math.floor(t.clock.now().getTime() / 1000),
    });
    const done = await post(t.app, "/api/v1/me/totp/verify", { code }, cookie);
    expect(done.status, done.text).toBe(200);
  });

  it("takes the policies on the command line, and refuses a date it can't read", () => {
    write([row("cli")]);
    const bad = runCli(t, ["members", "import", file, "--require-password-change-after", "next spring"]);
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toContain("ISO 8601");
    const ok = runCli(t, [
      "members",
      "import",
      file,
      "--require-password-change-after",
      "2027-03-31",
      "--require-mfa-enrollment",
      "--json",
    ]);
    expect(ok.status, ok.stderr).toBe(0);
    const m = t.s.db
      .select()
      .from(members)
      .all()
      .find((x) => x.loginId === "old.cli");
    expect(m?.mfaRequired).toBe(true);
    const l = t.s.db
      .select()
      .from(legacyPasswords)
      .all()
      .find((x) => x.memberId === m?.id);
    expect(l?.changeAfter).toBe(Date.parse("2027-03-31T00:00:00Z"));
  });
});

describe("members wrap-weak, and an import killed mid-file", () => {
  let t: TestApp;
  beforeEach(() => {
    t = makeApp();
  });
  afterEach(() => t.close());

  it("wraps every fast or unsalted legacy hash in argon2id, resumably; wrapped hashes still sign in", async () => {
    const file = path.join(t.dir, "weak.jsonl");
    const rows = (await legacyRows()).filter((r) =>
      ["md5", "sha1", "sha1-salted", "sha256-salted", "bcrypt"].includes(r.hash_scheme),
    );
    fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join("\n"));
    await t.s.legacyImport.importFile(file);
    const weak = rows.filter((r) => r.hash_scheme !== "bcrypt").length;
    const run = runCli(t, ["members", "wrap-weak", "--rate", "1000", "--json"], {
      SEKISHO_ARGON2_MEMORY_KIB: "1024",
      SEKISHO_ARGON2_TIME_COST: "1",
    });
    expect(run.status, run.stderr).toBe(0);
    const result = JSON.parse(run.stdout) as { wrapped: number; rows_per_second: number; argon2: object };
    expect(result.wrapped).toBe(weak);
    expect(result.argon2).toMatchObject({ memoryCost: 1024, timeCost: 1 });
    const stored = t.s.db.select().from(legacyPasswords).all();
    expect(stored.filter((r) => r.wrapped)).toHaveLength(weak);
    // the inner fast hash is gone
    for (const r of stored.filter((x) => x.wrapped)) {
      const h = t.s.legacyPasswords.find(r.memberId);
      expect(h?.hash).toBe("");
      expect(h?.wrapped).toMatch(/^\$argon2id\$/);
    }
    // again: nothing left to do
    expect(JSON.parse(runCli(t, ["members", "wrap-weak", "--json"]).stdout).wrapped).toBe(0);
    for (const r of rows) {
      expect(
        (await post(t.app, "/api/v1/login", { login_id: r.login_id, password: PW })).status,
        r.legacy_id,
      ).toBe(200);
    }
  });

  it("an import killed (SIGKILL) mid-file and run again yields every member exactly once and no partial rows", async () => {
    const file = path.join(t.dir, "big.jsonl");
    const n = 6000;
    const lines: string[] = [];
    for (let i = 0; i < n; i++) {
      lines.push(
        JSON.stringify({
          legacy_id: `K-${i}`,
          hash_scheme: "md5",
          password_hash: sha("md5", `pw-${i}`),
          profile: { name: `会員 ${i}`, email: `k${i}@example.jp` },
        }),
      );
    }
    fs.writeFileSync(file, lines.join("\n"));
    const { spawn } = await import("node:child_process");
    // (With the heap flag set, bin/sekisho.mjs runs the import itself rather than in a child of
    // its own, so the SIGKILL below hits the importer.)
    const args = ["--max-old-space-size=128", path.resolve("bin/sekisho.mjs"), "members", "import", file];
    const child = spawn(process.execPath, [...args, "--batch-size", "200", "--json"], {
      env: cliEnv(t),
      stdio: "ignore",
    });
    const count = () => t.s.db.$client.prepare("SELECT count(*) FROM members").pluck().get() as number;
    // Kill it once some batches have landed, long before the end.
    for (let i = 0; i < 600 && count() < 400; i++) await new Promise((r) => setTimeout(r, 25));
    child.kill("SIGKILL");
    await new Promise((r) => child.once("exit", r));
    const partial = count();
    expect(partial).toBeGreaterThan(0);
    expect(partial).toBeLessThan(n);
    expect(partial % 200).toBe(0); // whole batches only
    const again = runCli(t, ["members", "import", file, "--json"]);
    expect(again.status, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ imported: n - partial, skipped: partial, rejected: 0 });
    const q = (sql: string) => t.s.db.$client.prepare(sql).pluck().get() as number;
    expect(count()).toBe(n);
    expect(q("SELECT count(DISTINCT legacy_id) FROM legacy_members")).toBe(n);
    expect(q("SELECT count(*) FROM profiles")).toBe(n);
    expect(q("SELECT count(*) FROM legacy_passwords")).toBe(n);
    expect(
      q(
        "SELECT count(*) FROM members m WHERE NOT EXISTS (SELECT 1 FROM profiles p WHERE p.member_id = m.id)",
      ),
    ).toBe(0);
  }, 60_000);

  it("killing the `sekisho` command (SIGKILL) also stops the importer it runs under a heap limit", async () => {
    const file = path.join(t.dir, "outer.jsonl");
    const n = 6000;
    const lines: string[] = [];
    for (let i = 0; i < n; i++)
      lines.push(
        JSON.stringify({
          legacy_id: `O-${i}`,
          hash_scheme: "md5",
          password_hash: sha("md5", `pw-${i}`),
          profile: { name: `会員 ${i}` },
        }),
      );
    fs.writeFileSync(file, lines.join("\n"));
    const { spawn } = await import("node:child_process");
    // No heap flag: bin/sekisho.mjs re-runs itself with one, and the re-run process does the work.
    const outer = spawn(
      process.execPath,
      [path.resolve("bin/sekisho.mjs"), "members", "import", file, "--batch-size", "200"],
      {
        env: cliEnv(t),
        stdio: "ignore",
      },
    );
    const count = () => t.s.db.$client.prepare("SELECT count(*) FROM members").pluck().get() as number;
    for (let i = 0; i < 600 && count() < 400; i++) await new Promise((r) => setTimeout(r, 25));
    outer.kill("SIGKILL");
    await new Promise((r) => outer.once("exit", r));
    // Processes still working on this file (found by their command line).
    const importers = () =>
      fs.readdirSync("/proc").filter((pid) => {
        if (!/^\d+$/.test(pid)) return false;
        try {
          return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(file);
        } catch {
          return false;
        }
      });
    for (let i = 0; i < 200 && importers().length > 0; i++) await new Promise((r) => setTimeout(r, 25));
    expect(importers()).toEqual([]);
    const stopped = count();
    expect(stopped).toBeLessThan(n);
    expect(stopped % 200).toBe(0);
  }, 60_000);
});
