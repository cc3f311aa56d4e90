import { eq } from "drizzle-orm";
import { generateSync } from "otplib";
import supertest from "supertest";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { auditLog, members } from "../src/db/schema.js";
import { adminPasskeySession, adminWithPasskey as adminWithPasskeyOf } from "./support/admin.js";
import {
  makeApp,
  ORIGIN,
  post,
  register,
  STRONG_PASSWORD,
  sessionCookie,
  signIn,
  type TestApp,
} from "./support/app.js";
import { runCli } from "./support/cli.js";
import type { SoftAuthenticator } from "./support/soft-authenticator.js";

describe("admins: `sekisho admins add` and the admin API of the login-anomaly engine", () => {
  let t: TestApp;
  beforeEach(() => {
    t = makeApp();
  });
  afterEach(() => t.close());

  it("admins add reads the password from stdin, applies the password rules, and makes an admin member", () => {
    const made = runCli(
      t,
      ["admins", "add", "--login-id", "ops.admin", "--json"],
      {},
      `${STRONG_PASSWORD}\n`,
    );
    expect(made.status, made.stderr).toBe(0);
    const out = JSON.parse(made.stdout) as { member_id: string; login_id: string };
    expect(out.login_id).toBe("ops.admin");
    const row = t.s.db.select().from(members).where(eq(members.id, out.member_id)).get();
    expect(row?.role).toBe("admin");
    const weak = runCli(t, ["admins", "add", "--login-id", "weak.admin"], {}, "password123\n");
    expect(weak.status).not.toBe(0);
    expect(weak.stderr).toContain("weak_password");
    // It says why, as the API's `reasons` do.
    expect(weak.stderr).toMatch(/weak_password: .*\(.*common_password.*\)/);
  });

  const adminWithPasskey = () => adminWithPasskeyOf(t);
  const passkeySession = (auth: SoftAuthenticator) => adminPasskeySession(t, auth);

  it("GET /admin/alerts needs an admin signed in with a passkey; members and weaker sessions are refused", async () => {
    const { auth, passwordSession } = await adminWithPasskey();
    t.s.alerts.raise("under_attack", "critical", { failures_last_10_minutes: 123 });
    const get = (cookie?: string) => {
      const req = supertest(t.app).get("/api/v1/admin/alerts");
      if (cookie) req.set("Cookie", cookie);
      return req;
    };
    expect((await get()).status).toBe(401);
    // The admin's first sign-in was only a limited session (admins need a passkey from the start),
    // replaced when the passkey was added.
    const weak = await get(passwordSession);
    expect(weak.status).toBe(401);
    await register(t.app, { login_id: "plain.member" });
    expect((await get(await signIn(t.app, "plain.member"))).status).toBe(403);
    const admin = await passkeySession(auth);
    const ok = await get(admin);
    expect(ok.status).toBe(200);
    expect(ok.body.alerts[0]).toMatchObject({
      kind: "under_attack",
      severity: "critical",
      details: { failures_last_10_minutes: 123 },
    });
    expect(
      t.s.db.select().from(auditLog).where(eq(auditLog.action, "admin.alerts_viewed")).all(),
    ).toHaveLength(1);
    // The console says what the alert is, in the admin's language, with its code beside it.
    const page = await supertest(t.app).get("/admin/alerts").set("Cookie", admin);
    expect(page.text).toContain("サービス全体への攻撃");
    expect(page.text).toContain('<code class="small">under_attack</code>');
    expect(page.text).toContain("重大");
    const dashboard = await supertest(t.app).get("/admin").set("Cookie", admin);
    expect(dashboard.text).not.toMatch(/MFAポリシー: (off|optional|required)/);
  });

  it("an admin lifts an account's protection (audited with the reason)", async () => {
    const { auth } = await adminWithPasskey();
    const victim = await register(t.app, { login_id: "protected.member" });
    for (let i = 0; i < 30; i++) {
      t.s.guard.settle(
        { ip: `198.51.100.${i}`, loginId: "protected.member", trustedDevice: false, kind: "password" },
        "failure",
      );
    }
    const attempt = {
      ip: "192.0.2.9",
      loginId: "protected.member",
      trustedDevice: false,
      kind: "password" as const,
    };
    expect(t.s.guard.assess(attempt).action).toBe("protect");
    const cookie = await passkeySession(auth);
    // The alert names the member, and the console's member page says the account is protected.
    const alerts = await supertest(t.app).get("/api/v1/admin/alerts").set("Cookie", cookie);
    expect(alerts.body.alerts).toContainEqual(
      expect.objectContaining({
        kind: "account_protected",
        details: expect.objectContaining({ member_id: victim.body.member_id }),
      }),
    );
    const alertsPage = await supertest(t.app).get("/admin/alerts").set("Cookie", cookie);
    expect(alertsPage.text).toContain(`href="/admin/members/${victim.body.member_id}"`);
    const page = await supertest(t.app).get(`/admin/members/${victim.body.member_id}`).set("Cookie", cookie);
    expect(page.text).toContain("保護中（");
    const res = await post(
      t.app,
      `/api/v1/admin/members/${victim.body.member_id}/unlock`,
      { reason: "member called support" },
      cookie,
    );
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ member_id: victim.body.member_id, protection_lifted: true });
    const d = t.s.guard.assess(attempt);
    expect(d.action).toBe("allow");
    const after = await supertest(t.app).get(`/admin/members/${victim.body.member_id}`).set("Cookie", cookie);
    expect(after.text).not.toContain("保護中（");
    t.s.guard.settle(attempt, "neither");
    const entry = t.s.db.select().from(auditLog).where(eq(auditLog.action, "admin.member_unlocked")).get();
    expect(entry).toMatchObject({
      actorType: "admin",
      memberId: victim.body.member_id,
      reason: "member called support",
    });
    expect(
      (await post(t.app, "/api/v1/admin/members/m_nobodyAAAAAAAAAAAAAAAA/unlock", {}, cookie)).status,
    ).toBe(404);
    // Attack: a reason the audit chain can't hold (a lone surrogate), or one that hides what it
    // says (NUL, a right-to-left override): refused like every other reason field, and the
    // chain stays verifiable.
    for (const reason of ["x\ud800y", "a\u0000bc", "\u202Eabc", "\udc00abc"]) {
      const bad = await post(
        t.app,
        `/api/v1/admin/members/${victim.body.member_id}/unlock`,
        { reason },
        cookie,
      );
      expect(bad.status).toBe(400);
      expect(bad.body.error).toBe("invalid_request");
    }
    expect(t.s.audit.verify()).toMatchObject({ ok: true });
    // The console answers a member that doesn't exist with a page, not JSON.
    const missing = await supertest(t.app)
      .get("/admin/members/m_nobodyAAAAAAAAAAAAAAAA")
      .set("Cookie", cookie);
    expect(missing.status).toBe(404);
    expect(missing.headers["content-type"]).toMatch(/text\/html/);
    expect(missing.text).toContain("このページを表示できません");
  });

  it("an admin's passkey assertion without user verification doesn't sign the admin in", async () => {
    const { auth } = await adminWithPasskey();
    // Attack: a stolen (or borrowed) security key touched, without its PIN or fingerprint.
    const step = await post(t.app, "/api/v1/login", { login_id: "ops.admin", password: STRONG_PASSWORD });
    const options = await post(t.app, "/api/v1/login/webauthn/options", { mfa_token: step.body.mfa_token });
    expect(options.body.userVerification).toBe("required");
    const touched = await post(t.app, "/api/v1/login/webauthn", {
      mfa_token: step.body.mfa_token,
      response: auth.assert(options.body, { origin: ORIGIN, uv: false }),
    });
    expect(touched.status).toBe(401);
    // With it, as always.
    expect(await passkeySession(auth)).toMatch(/sekisho_session=/);
  });

  it("unacknowledged critical alerts stay on the list after 200 newer ones, until someone handles them", async () => {
    const { auth } = await adminWithPasskey();
    const cookie = await passkeySession(auth);
    // Attack: bury a critical alert under lesser ones anyone can cause (account protections for
    // login IDs of their choosing), or an admin can (new recovery codes, again and again).
    t.s.alerts.raise("honeytoken_touched", "critical", { trigger: "sign_in", ip: "203.0.113.9" }, "buried");
    for (let i = 0; i < 205; i++) t.s.alerts.raise("account_protected", "warning", { n: i }, `flood-${i}`);
    for (let i = 0; i < 5; i++)
      expect((await post(t.app, "/api/v1/me/recovery-codes", {}, cookie)).status).toBe(200);
    const list = async () =>
      (await supertest(t.app).get("/api/v1/admin/alerts").set("Cookie", cookie)).body.alerts as {
        id: number;
        kind: string;
      }[];
    const buried = (await list()).find((a) => a.kind === "honeytoken_touched");
    expect(buried).toBeDefined();
    // Five new sets of recovery codes: one alert (the passkey added at the first sign-in is another).
    const changes = t.s.alerts
      .list(1_000)
      .filter((a) => a.kind === "admin_factor_changed")
      .map((a) => (JSON.parse(a.details) as { change: string }).change);
    expect(changes.filter((c) => c.includes("recovery"))).toHaveLength(1);
    const ack = await post(
      t.app,
      `/api/v1/admin/alerts/${buried?.id}/acknowledge`,
      { reason: "handled" },
      cookie,
    );
    expect(ack.status).toBe(200);
    expect((await list()).some((a) => a.kind === "honeytoken_touched")).toBe(false);
    // The console's list and dashboard show it too while it is open.
    t.s.alerts.raise(
      "bulk_read_suspected",
      "critical",
      { principal: "client", principal_id: "c_x" },
      "buried2",
    );
    for (let i = 0; i < 205; i++) t.s.alerts.raise("account_protected", "warning", { n: i }, `flood2-${i}`);
    expect((await supertest(t.app).get("/admin/alerts").set("Cookie", cookie)).text).toContain("c_x");
  });
});

describe("admins with SEKISHO_ADMIN_ACR=mfa (password + authenticator app)", () => {
  it("an admin's recovery code signs nothing in, though the app's code does", async () => {
    const t = makeApp({ SEKISHO_ADMIN_ACR: "mfa" });
    try {
      await t.s.registrations.register(
        { loginId: "ops.totp", password: STRONG_PASSWORD, profile: {} },
        { ip: null, requestId: null },
        { role: "admin" },
      );
      const first = await signIn(t.app, "ops.totp"); // limited: add a factor first
      const begin = await post(t.app, "/api/v1/me/totp", {}, first);
      const now = () => Math.floor(t.clock.now().getTime() / 1000);
      const done = await post(
        t.app,
        "/api/v1/me/totp/verify",
        { code: generateSync({ secret: begin.body.secret, epoch: now() }) },
        first,
      );
      expect(done.status, done.text).toBe(200);
      // An admin's factor changes reach the other admins (and the webhook): no mailbox here.
      const changes = t.s.alerts
        .list()
        .filter((a) => a.kind === "admin_factor_changed")
        .map((a) => JSON.parse(a.details).change);
      expect(changes).toContain("factor.totp_added");
      const codes = done.body.recovery_codes as string[];
      t.clock.advance(31_000);
      const step = async () =>
        (await post(t.app, "/api/v1/login", { login_id: "ops.totp", password: STRONG_PASSWORD })).body
          .mfa_token as string;
      // Attack: a recovery code (on paper, in a drawer) as the admin's second factor.
      const byCode = await post(t.app, "/api/v1/login/recovery-code", {
        mfa_token: await step(),
        code: codes[0],
      });
      expect(byCode.status).toBe(403);
      expect(byCode.body.error).toBe("method_not_allowed");
      const byApp = await post(t.app, "/api/v1/login/totp", {
        mfa_token: await step(),
        code: generateSync({ secret: begin.body.secret, epoch: now() }),
      });
      expect(byApp.status).toBe(200);
      const admin = sessionCookie(byApp);
      const own = await supertest(t.app).get("/api/v1/admin/alerts").set("Cookie", admin);
      expect(own.status).toBe(200);
      // The alert about this admin's factors is for the other admins, not for this one.
      expect(JSON.stringify(own.body)).not.toContain("admin_factor_changed");
    } finally {
      t.close();
    }
  });
});

describe("an admin's recovery code, with the default SEKISHO_ADMIN_ACR", () => {
  it("doesn't step a stale admin session up either (a stolen cookie plus a code on paper would keep the account)", async () => {
    const t = makeApp();
    try {
      const { auth, recoveryCodes } = await adminWithPasskeyOf(t);
      expect(recoveryCodes.length).toBe(10);
      const admin = await adminPasskeySession(t, auth);
      t.clock.advance(11 * 60_000); // stale: adding a factor needs a recent sign-in
      const stepped = await post(t.app, "/api/v1/login/recovery-code", { code: recoveryCodes[0] }, admin);
      expect(stepped.status).toBe(403);
      expect(stepped.body.error).toBe("method_not_allowed");
      expect(stepped.headers["set-cookie"]).toBeUndefined();
    } finally {
      t.close();
    }
  });
});
