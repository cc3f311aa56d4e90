import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import argon2 from "argon2";
import Database from "better-sqlite3";
import supertest from "supertest";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { AdminOps } from "../src/admin/admin-ops.js";
import { Clients } from "../src/oidc/clients.js";
import { assertSealsNotRemoved, SEALED_TABLES, sealRowsOnce } from "../src/vault/seal-rows.js";
import { adminPasskeySession, adminWithPasskey } from "./support/admin.js";
import { makeApp, ORIGIN, post, register, STRONG_PASSWORD, signIn, type TestApp } from "./support/app.js";
import { runCli } from "./support/cli.js";
import { SoftAuthenticator } from "./support/soft-authenticator.js";

/**
 * Attacker: someone who can write to the database but doesn't hold the keyring (an SQL injection
 * elsewhere on the host, a restored copy, an insider with the file). Each test writes what such a
 * person would, straight into SQLite, and tries to use it through the API.
 */
const SEALED = SEALED_TABLES;

describe("row seals: rows written without the keyring count for nothing", () => {
  let t: TestApp;
  beforeEach(() => {
    t = makeApp();
  });
  afterEach(() => t.close());

  const sql = (q: string, ...args: unknown[]) => t.s.db.$client.prepare(q).run(...args);
  const me = (cookie: string) => supertest(t.app).get("/api/v1/me").set("Cookie", cookie);
  const memberId = (loginId: string) =>
    t.s.db.$client.prepare("SELECT id FROM members WHERE login_id = ?").pluck().get(loginId) as string;
  /** Alerts are raised after the turn that found the row. */
  const brokenAlerts = async () => {
    await new Promise((r) => setImmediate(r));
    return t.s.alerts
      .list()
      .filter((a) => a.kind === "row_seal_broken")
      .map((a) => JSON.parse(a.details) as { table: string; row: string });
  };

  it("refuses a session row inserted for a token of the attacker's choosing, even with another row's seal", async () => {
    await register(t.app, { login_id: "victim.one" });
    const real = await signIn(t.app, "victim.one");
    expect((await me(real)).status).toBe(200);
    const token = randomBytes(32).toString("base64url");
    // A copy of the victim's real session row (its seal included), under the attacker's token.
    sql(
      `INSERT INTO sessions (id, token_hash, member_id, kind, acr, amr, auth_time, created_at, last_seen_at,
         idle_expires_at, absolute_expires_at, seal)
       SELECT 's_forged', ?, member_id, kind, acr, amr, auth_time, created_at, last_seen_at,
         idle_expires_at, absolute_expires_at, seal FROM sessions LIMIT 1`,
      createHash("sha256").update(token).digest("base64url"),
    );
    const forged = await me(`sekisho_session=${token}`);
    expect(forged.status).toBe(401);
    expect(await brokenAlerts()).toEqual([{ table: "sessions", row: "s_forged" }]);
    // The real session is untouched.
    expect((await me(real)).status).toBe(200);
  });

  it("refuses a session moved to another member in the database", async () => {
    await register(t.app, { login_id: "victim.two" });
    await register(t.app, { login_id: "mallory.two" });
    const mallory = await signIn(t.app, "mallory.two");
    sql("UPDATE sessions SET member_id = ?", memberId("victim.two"));
    expect((await me(mallory)).status).toBe(401);
    expect((await brokenAlerts()).map((a) => a.table)).toEqual(["sessions"]);
  });

  it("refuses a raised level written into a session row", async () => {
    await register(t.app, { login_id: "victim.three" });
    const cookie = await signIn(t.app, "victim.three");
    sql("UPDATE sessions SET acr = 'urn:sekisho:acr:phishing-resistant', amr = '[\"pwd\",\"hwk\"]'");
    expect((await me(cookie)).status).toBe(401);
  });

  it("an admin whose factors were deleted in the database can't enrol new ones with the password alone, until an operator resets them", async () => {
    await adminWithPasskey(t);
    // Attack: someone with the database and the admin's password deletes the admin's factors, to
    // get the limited session that enrols a passkey of their own (which opens the admin API).
    sql("DELETE FROM webauthn_credentials WHERE member_id = ?", memberId("ops.admin"));
    sql("DELETE FROM recovery_codes WHERE member_id = ?", memberId("ops.admin"));
    // ...and takes the audit entry of the passkey's enrolment out, so that the admin's
    // registration looks like the last word on their factors (it leaves a gap in the chain).
    sql("DROP TRIGGER audit_log_no_delete");
    sql(
      "DELETE FROM audit_log WHERE member_id = ? AND action = 'factor.passkey_added'",
      memberId("ops.admin"),
    );
    t.s.audit.ensureAppendOnly();
    const res = await post(t.app, "/api/v1/login", { login_id: "ops.admin", password: STRONG_PASSWORD });
    expect(res.status).toBe(401);
    expect(res.body.error).toBe("invalid_credentials");
    expect(res.headers["set-cookie"]).toBeUndefined();
    expect((await brokenAlerts()).map((a) => a.table)).toEqual(["webauthn_credentials"]);
    // Variants (from a review): the enrolment's entry moved to another member, or its action
    // renamed, instead of deleted; no gap then, but the chain after the admin's registration no
    // longer holds.
    for (const edit of [
      "UPDATE audit_log SET member_id = 'm_nobody' WHERE member_id = ? AND action = 'factor.passkey_added'",
      "UPDATE audit_log SET action = 'factor.passkey_renamed' WHERE member_id = ? AND action = 'factor.passkey_added'",
    ]) {
      const other = makeApp();
      try {
        await adminWithPasskey(other);
        const id = other.s.db.$client
          .prepare("SELECT id FROM members WHERE login_id = 'ops.admin'")
          .pluck()
          .get();
        other.s.db.$client.prepare("DELETE FROM webauthn_credentials WHERE member_id = ?").run(id);
        other.s.db.$client.prepare("DELETE FROM recovery_codes WHERE member_id = ?").run(id);
        other.s.db.$client.exec("DROP TRIGGER audit_log_no_update");
        other.s.db.$client.prepare(edit).run(id);
        other.s.audit.ensureAppendOnly();
        const login = await post(other.app, "/api/v1/login", {
          login_id: "ops.admin",
          password: STRONG_PASSWORD,
        });
        expect(login.status, edit).toBe(401);
      } finally {
        other.close();
      }
    }
    // The remedy: the operator's reset (audited, under the keyring); then the admin enrols anew.
    t.s.support.resetMfa(memberId("ops.admin"), {
      adminId: null,
      reason: "ticket 9",
      ip: null,
      requestId: null,
    });
    const again = await post(t.app, "/api/v1/login", { login_id: "ops.admin", password: STRONG_PASSWORD });
    expect(again.body.status).toBe("mfa_enrollment_required");
  });

  it("makes no admin of a member whose role was set in the database", async () => {
    const { auth } = await adminWithPasskey(t);
    const admin = await adminPasskeySession(t, auth);
    expect((await supertest(t.app).get("/api/v1/admin/alerts").set("Cookie", admin)).status).toBe(200);
    // The attacker's own account, made an admin by hand, with a session it signed in for itself.
    await register(t.app, { login_id: "mallory.four" });
    const mallory = await signIn(t.app, "mallory.four");
    sql("UPDATE members SET role = 'admin' WHERE login_id = 'mallory.four'");
    const session = t.s.sessions.authenticate(decodeURIComponent(mallory.split("=")[1] as string));
    expect(session).toBeNull();
    expect((await supertest(t.app).get("/api/v1/admin/alerts").set("Cookie", mallory)).status).toBe(401);
    // Asked directly, the admin check says no too.
    expect(() =>
      new AdminOps(t.s).authorize({
        id: "s_x",
        memberId: memberId("mallory.four"),
        kind: "full",
        acr: "urn:sekisho:acr:phishing-resistant",
        amr: ["hwk"],
        authTime: 0,
        createdAt: 0,
        lastSeenAt: 0,
        expiresAt: Number.MAX_SAFE_INTEGER,
        ip: null,
        userAgent: null,
      }),
    ).toThrow(/administrator/);
    // A fresh sign-in with the right password doesn't get through either.
    const again = await post(t.app, "/api/v1/login", { login_id: "mallory.four", password: STRONG_PASSWORD });
    expect(again.status).toBe(401);
    expect(again.body.error).toBe("invalid_credentials");
    // The real admin still is one, and sees the alert.
    const alerts = await supertest(t.app).get("/api/v1/admin/alerts").set("Cookie", admin);
    expect(
      alerts.body.alerts.filter((a: { kind: string }) => a.kind === "row_seal_broken").length,
    ).toBeGreaterThan(0);
  });

  it("signs no one in with a password hash written into the database", async () => {
    await register(t.app, { login_id: "victim.five" });
    // argon2id of a password the attacker knows, without the keyring's pepper (they don't hold it).
    const hash = await argon2.hash("attacker's own password 99", { type: argon2.argon2id });
    sql("UPDATE members SET password_hash = ?, pepper_id = NULL WHERE login_id = 'victim.five'", hash);
    const res = await post(t.app, "/api/v1/login", {
      login_id: "victim.five",
      password: "attacker's own password 99",
    });
    expect(res.status).toBe(401);
    expect(res.body.error).toBe("invalid_credentials");
    const entry = [...t.s.audit.iterate()].filter((e) => e.action === "login.password").at(-1);
    expect(entry).toMatchObject({ outcome: "failure", reason: "row_seal_broken" });
    expect(await brokenAlerts()).toEqual([{ table: "members", row: memberId("victim.five") }]);
  });

  it("doesn't re-seal a tampered member row when the member next changes something legitimately", async () => {
    await register(t.app, { login_id: "mallory.six" });
    const cookie = await signIn(t.app, "mallory.six");
    sql("UPDATE members SET mfa_required = 1 WHERE login_id = 'mallory.six'");
    // The member support's disable (a sealed column) is refused, and the row stays as it was.
    const id = memberId("mallory.six");
    expect(() =>
      t.s.support.setStatus(id, "disabled", { ip: null, requestId: null, adminId: "a", reason: "ticket" }),
    ).toThrow(/integrity/);
    const seal = t.s.db.$client.prepare("SELECT status, seal FROM members WHERE id = ?").get(id);
    expect(seal).toMatchObject({ status: "active" });
    expect((await me(cookie)).status).toBe(401);
  });

  it("refuses the attacker's passkey moved onto another member's account", async () => {
    await register(t.app, { login_id: "victim.seven" });
    await register(t.app, { login_id: "mallory.seven" });
    const auth = new SoftAuthenticator();
    const own = await signIn(t.app, "mallory.seven");
    const options = await post(t.app, "/api/v1/me/passkeys/options", {}, own);
    expect(
      (
        await post(
          t.app,
          "/api/v1/me/passkeys",
          { response: auth.register(options.body, { origin: ORIGIN }) },
          own,
        )
      ).status,
    ).toBe(201);
    sql("UPDATE webauthn_credentials SET member_id = ?", memberId("victim.seven"));
    // Passwordless, without a user handle that would name the attacker's own account.
    auth.userHandle = null;
    const request = await post(t.app, "/api/v1/login/webauthn/options", {});
    const res = await post(t.app, "/api/v1/login/webauthn", {
      response: auth.assert(request.body, { origin: ORIGIN }),
    });
    expect(res.status).toBe(401);
    expect((await brokenAlerts()).map((a) => a.table)).toEqual(["webauthn_credentials"]);
  });

  it("refuses a password-reset link written into the database", async () => {
    await register(t.app, { login_id: "victim.eight" });
    const token = randomBytes(32).toString("base64url");
    const now = t.clock.now().getTime();
    sql(
      `INSERT INTO member_tokens (token_hash, purpose, member_id, email_bidx, created_at, expires_at)
       VALUES (?, 'reset_password', ?, (SELECT email_bidx FROM profiles WHERE member_id = ?), ?, ?)`,
      createHash("sha256").update(token).digest("base64url"),
      memberId("victim.eight"),
      memberId("victim.eight"),
      now,
      now + 600_000,
    );
    const res = await post(t.app, "/api/v1/recovery/password/reset", {
      token,
      password: "attacker's own password 99",
    });
    expect(res.status).toBeGreaterThanOrEqual(400);
    expect(res.status).toBeLessThan(500);
    expect(
      (await post(t.app, "/api/v1/login", { login_id: "victim.eight", password: STRONG_PASSWORD })).status,
    ).toBe(200);
    expect((await brokenAlerts()).map((a) => a.table)).toEqual(["member_tokens"]);
  });

  it("a member site's redirect address or secret written into the database makes no client", async () => {
    const site = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals }).add({
      name: "shop",
      redirectUris: ["https://shop.example.jp/cb"],
      grants: ["client_credentials"],
      scope: "openid",
    });
    const token = (secret: string) =>
      supertest(t.app)
        .post("/oidc/token")
        .auth(site.clientId, secret)
        .type("form")
        .send({ grant_type: "client_credentials" });
    expect((await token(site.clientSecret as string)).status).toBe(200);
    // Attack: send the site's codes to one's own address, and use a secret of one's own. Written
    // from another connection (another process), as the service's client cache would notice.
    const evil = "attacker's own secret, 43 characters long...";
    vi.useFakeTimers({ toFake: ["performance"] });
    try {
      const other = new Database(t.s.config.dbFile);
      other
        .prepare("UPDATE oidc_clients SET redirect_uris = ?, secret_hash = ? WHERE client_id = ?")
        .run(
          JSON.stringify(["https://evil.example/cb"]),
          createHash("sha256").update(evil, "utf8").digest("base64url"),
          site.clientId,
        );
      other.close();
      vi.advanceTimersByTime(10);
    } finally {
      vi.useRealTimers();
    }
    const auth = await supertest(t.app).get(
      `/oidc/auth?${new URLSearchParams({
        client_id: site.clientId,
        redirect_uri: "https://evil.example/cb",
        response_type: "code",
        scope: "openid",
        code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        code_challenge_method: "S256",
      })}`,
    );
    expect(auth.status).toBe(400);
    expect(auth.headers.location).toBeUndefined();
    expect((await token(evil)).status).toBe(401);
    expect((await brokenAlerts()).map((a) => a.table)).toContain("oidc_clients");
    // The remedy: remove it (a changed one is refused) and register the site again.
    expect(runCli(t, ["clients", "update", site.clientId, "--name", "x"]).status).not.toBe(0);
    const removed = runCli(t, ["clients", "remove", site.clientId]);
    expect(removed.status, removed.stderr).toBe(0);
  });

  it("seals the rows written before seals existed once (also after a start that died before sealing), and never a row unsealed later", async () => {
    await register(t.app, { login_id: "old.member" });
    const cookie = await signIn(t.app, "old.member");
    // As a database from before migration 0019 would be once migrated (or one whose upgrading
    // start died between migrating and sealing): no seals, no `seals.enabled` entry.
    for (const table of SEALED) sql(`UPDATE ${table} SET seal = NULL`);
    expect((await me(cookie)).status).toBe(401);
    expect(sealRowsOnce(t.s.db, t.s.seals, t.s.audit, { markEmpty: false })).toBeGreaterThanOrEqual(2);
    expect((await me(cookie)).status).toBe(200);
    expect([...t.s.audit.iterate()].filter((e) => e.action === "seals.enabled")).toHaveLength(1);
    // Later, an unsealed row is the attacker's: no start seals it…
    sql("UPDATE members SET role = 'admin', seal = NULL WHERE login_id = 'old.member'");
    expect(sealRowsOnce(t.s.db, t.s.seals, t.s.audit, { markEmpty: true })).toBeNull();
    expect((await me(cookie)).status).toBe(401);
    expect(
      t.s.db.$client.prepare("SELECT seal FROM members WHERE login_id = 'old.member'").pluck().get(),
    ).toBeNull();
    // …not when the `seals.enabled` entry is edited away either: other rows still have seals…
    t.s.db.$client.exec(
      "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET action = 'seals.enab1ed' WHERE action = 'seals.enabled'",
    );
    t.s.audit.ensureAppendOnly();
    expect(sealRowsOnce(t.s.db, t.s.seals, t.s.audit, { markEmpty: false })).toBe(0);
    expect(
      t.s.db.$client.prepare("SELECT seal FROM members WHERE login_id = 'old.member'").pluck().get(),
    ).toBeNull();
    // …and with every seal removed as well, the edited log doesn't verify: nothing is sealed.
    for (const table of SEALED) sql(`UPDATE ${table} SET seal = NULL`);
    expect(() => sealRowsOnce(t.s.db, t.s.seals, t.s.audit, { markEmpty: true })).toThrow(/doesn't verify/);
    expect(t.s.db.$client.prepare("SELECT count(*) FROM members WHERE seal IS NOT NULL").pluck().get()).toBe(
      0,
    );
    // Dropping the column (and 0019's record) to have a start seal it again is refused.
    t.s.db.$client.exec(
      "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET action = 'seals.enabled' WHERE action = 'seals.enab1ed'",
    );
    sql("ALTER TABLE members DROP COLUMN seal");
    expect(() => assertSealsNotRemoved(t.s.db)).toThrow(/removed/);
  });

  it("refuses a second step and a recovery code written into the database (no password needed otherwise)", async () => {
    await register(t.app, { login_id: "victim.nine" });
    const victim = memberId("victim.nine");
    // Attack: a pending second step for the victim (as if their password had been right), and a
    // recovery code of the attacker's, both inserted as the service would have hashed them.
    const token = randomBytes(32).toString("base64url");
    const code = "abcdefghjkmnpqrs";
    const now = t.clock.now().getTime();
    sql(
      "INSERT INTO mfa_tokens (token_hash, member_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
      createHash("sha256").update(token).digest("base64url"),
      victim,
      now,
      now + 300_000,
    );
    sql(
      "INSERT INTO recovery_codes (member_id, code_hash, created_at) VALUES (?, ?, ?)",
      victim,
      createHash("sha256").update(`sekisho-recovery-code\u0000${code}`).digest("base64url"),
      now,
    );
    const res = await post(t.app, "/api/v1/login/recovery-code", { mfa_token: token, code });
    expect(res.status).toBe(401);
    expect(res.headers["set-cookie"]).toBeUndefined();
    expect((await brokenAlerts()).map((a) => a.table)).toEqual(["mfa_tokens"]);
    // The attacker's code alone, in a real second step of the victim's (had they the password):
    // no such code.
    expect(t.s.factors.recovery.consume(victim, code)).toBe(false);
    expect((await brokenAlerts()).map((a) => a.table)).toEqual(["recovery_codes", "mfa_tokens"]);
  });

  it("a trusted device written into the database is no trusted device", async () => {
    await register(t.app, { login_id: "victim.ten" });
    const victim = memberId("victim.ten");
    const token = randomBytes(32).toString("base64url");
    const now = t.clock.now().getTime();
    sql(
      `INSERT INTO devices (id, member_id, token_hash, created_at, last_seen_at, expires_at)
       VALUES ('d_forgedAAAAAAAAAAAAAA', ?, ?, ?, ?, ?)`,
      victim,
      createHash("sha256").update(token).digest("base64url"),
      now,
      now,
      now + 86_400_000,
    );
    expect(t.s.devices.recognise(token, victim)).toBeNull();
    expect(t.s.devices.isLiveFor(token, "victim.ten")).toBe(false);
  });

  it("an upgraded database's rows are sealed by the first `sekisho` run, which then finds none broken", async () => {
    await register(t.app, { login_id: "before.upgrade" });
    const cookie = await signIn(t.app, "before.upgrade");
    // The database as the version before row seals left it: no seal columns, neither 0019 nor
    // 0020 (the migrations that added them) applied, nor any later one (each undone here).
    for (const table of SEALED) sql(`ALTER TABLE ${table} DROP COLUMN seal`);
    sql("DROP TABLE throttle_state"); // 0021
    const journal = JSON.parse(
      fs.readFileSync(path.join(import.meta.dirname, "..", "drizzle", "meta", "_journal.json"), "utf8"),
    ) as { entries: Array<{ tag: string; when: number }> };
    const sealsCame = journal.entries.find((e) => e.tag === "0019_row_seals")?.when as number;
    expect(journal.entries.at(-1)?.tag, "undo the newer migrations above").toBe("0021_throttle_carry_over");
    sql("DELETE FROM __drizzle_migrations WHERE created_at >= ?", sealsCame);
    const check = runCli(t, ["seals", "check", "--json"]);
    expect(check.stderr).not.toMatch(/Error/);
    expect(JSON.parse(check.stdout)).toEqual({ ok: true, broken: [] });
    expect(check.status).toBe(0);
    expect((await me(cookie)).status).toBe(200);
    const enabled = [...t.s.audit.iterate()].filter((e) => e.action === "seals.enabled");
    expect(enabled.map((e) => JSON.parse(e.details))).toEqual([
      {
        sealed: {
          members: 1,
          sessions: 1,
          webauthn_credentials: 0,
          member_tokens: 1,
          mfa_tokens: 0,
          recovery_codes: 0,
          devices: 0,
          oidc_clients: 0,
        },
      },
    ]);
    // A row changed afterwards is what `seals check` finds, and `seals accept` takes it as it is,
    // with a new password required.
    sql("UPDATE members SET role = 'admin' WHERE login_id = 'before.upgrade'");
    const found = runCli(t, ["seals", "check", "--json"]);
    expect(found.status).toBe(1);
    expect(JSON.parse(found.stdout).broken).toEqual([
      { table: "members", row: memberId("before.upgrade"), member_id: memberId("before.upgrade") },
    ]);
    sql("UPDATE members SET role = 'member' WHERE login_id = 'before.upgrade'");
    const accepted = runCli(t, [
      "seals",
      "accept",
      "before.upgrade",
      "--reason",
      "ticket 9: role put back",
      "--json",
    ]);
    expect(accepted.status).toBe(0);
    expect(JSON.parse(accepted.stdout)).toMatchObject({
      role: "member",
      status: "active",
      sessions_revoked: 1,
    });
    expect(runCli(t, ["seals", "check"]).status).toBe(0);
    const again = await post(t.app, "/api/v1/login", {
      login_id: "before.upgrade",
      password: STRONG_PASSWORD,
    });
    expect(again.body.error ?? again.body.status).toBe("password_reset_required");
  });
});
