import * as oidc from "openid-client";
import supertest from "supertest";
import { describe, expect, it } from "vitest";
import { adminPasskeySession, adminWithPasskey } from "./support/admin.js";
import { makeApp, PROFILE, post, register, STRONG_PASSWORD, sessionCookie } from "./support/app.js";
import { runCli } from "./support/cli.js";
import { listenWithMember, memberSiteWithRefreshToken } from "./support/oidc.js";

/** The operator's commands on the host for one member: disable, enable, an admin's MFA reset. */
describe("sekisho members disable / enable", () => {
  it("a disabled member is signed out everywhere at once and can't sign in until enabled again", async () => {
    const listening = await listenWithMember("disable.me");
    const { t } = listening;
    try {
      const member = t.s.db.$client.prepare("SELECT id, sub FROM members").get() as {
        id: string;
        sub: string;
      };
      const login = () =>
        supertest(t.app)
          .post("/api/v1/login")
          .set("Origin", listening.issuer)
          .set("Content-Type", "application/json")
          .send(JSON.stringify({ login_id: "disable.me", password: STRONG_PASSWORD }));
      const cookie = sessionCookie(await login());
      const { config, refreshToken } = await memberSiteWithRefreshToken(listening, member.sub, "openid");
      // The reason is required: it is what an investigator reads later.
      expect(runCli(t, ["members", "disable", "disable.me"]).status).toBe(1);
      const disabled = runCli(t, [
        "members",
        "disable",
        "DISABLE.ME",
        "--reason",
        "account sold on a forum",
        "--json",
      ]);
      expect(disabled.status, disabled.stderr).toBe(0);
      expect(JSON.parse(disabled.stdout)).toMatchObject({
        member_id: member.id,
        status: "disabled",
        changed: true,
      });
      expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).status).toBe(401);
      await expect(oidc.refreshTokenGrant(config, refreshToken)).rejects.toMatchObject({
        error: "invalid_grant",
      });
      const refused = await login();
      expect(refused.status, refused.text).toBe(401);
      expect(refused.body.error).toBe("invalid_credentials"); // the same answer as a wrong password
      const entry = [...t.s.audit.iterate()].find((e) => e.action === "member.disabled");
      expect(entry).toMatchObject({
        actorType: "operator",
        memberId: member.id,
        reason: "account sold on a forum",
      });
      // Twice is harmless; enabling lets the member sign in again.
      expect(runCli(t, ["members", "disable", member.id, "--reason", "again"]).stdout).toMatch(
        /already disabled/,
      );
      const enabled = runCli(t, ["members", "enable", "disable.me", "--reason", "owner proved identity"]);
      expect(enabled.status, enabled.stderr).toBe(0);
      expect((await login()).status).toBe(200);
      expect(runCli(t, ["members", "disable", "nobody.here", "--reason", "x"]).stderr).toMatch(
        /no member nobody.here/,
      );
      // A login ID that starts like a member id is still a login ID.
      const odd = await supertest(t.app)
        .post("/api/v1/registrations")
        .set("Origin", listening.issuer)
        .set("Content-Type", "application/json")
        .send(JSON.stringify({ login_id: "m_taro", password: STRONG_PASSWORD, profile: PROFILE }));
      expect(odd.status, odd.text).toBe(201);
      const named = runCli(t, ["members", "disable", "m_taro", "--reason", "test", "--json"]);
      expect(JSON.parse(named.stdout)).toMatchObject({ member_id: odd.body.member_id, changed: true });
    } finally {
      await listening.close();
    }
  });
});

describe("sekisho admins reset-mfa", () => {
  it("removes a lost admin passkey and ends the admin's sessions; members are not reset this way", async () => {
    const t = makeApp();
    try {
      const { auth } = await adminWithPasskey(t);
      const admin = await adminPasskeySession(t, auth);
      expect((await supertest(t.app).get("/api/v1/admin/alerts").set("Cookie", admin)).status).toBe(200);
      await register(t.app, { login_id: "plain.member" });
      expect(runCli(t, ["admins", "reset-mfa", "plain.member", "--reason", "x"]).stderr).toMatch(
        /not an admin/,
      );
      const run = runCli(t, [
        "admins",
        "reset-mfa",
        "ops.admin",
        "--reason",
        "passkey lost with laptop",
        "--json",
      ]);
      expect(run.status, run.stderr).toBe(0);
      expect(JSON.parse(run.stdout)).toMatchObject({ factors_removed: 1 });
      expect((await supertest(t.app).get("/api/v1/admin/alerts").set("Cookie", admin)).status).toBe(401);
      // The lost passkey no longer signs in; the password alone reaches only the account page,
      // where a new passkey is added before the admin API opens again.
      const step = await post(t.app, "/api/v1/login", { login_id: "ops.admin", password: STRONG_PASSWORD });
      expect(step.body.mfa_token).toBeUndefined();
      const entry = [...t.s.audit.iterate()].find((e) => e.action === "mfa.reset_by_admin");
      expect(entry).toMatchObject({ actorType: "operator", reason: "passkey lost with laptop" });
      // The password may have been phished too: the operator sets a new one (rules apply).
      const weak = runCli(
        t,
        ["admins", "set-password", "ops.admin", "--reason", "phished"],
        {},
        "password\n",
      );
      expect(weak.status).toBe(1);
      expect(weak.stderr).toMatch(/weak_password: .*too_short, common_password/);
      const fresh = "a brand new admin passphrase 2026";
      const set = runCli(
        t,
        ["admins", "set-password", "ops.admin", "--reason", "phished", "--json"],
        {},
        `${fresh}\n`,
      );
      expect(set.status, set.stderr).toBe(0);
      expect(
        (await post(t.app, "/api/v1/login", { login_id: "ops.admin", password: STRONG_PASSWORD })).status,
      ).toBe(401);
      expect((await post(t.app, "/api/v1/login", { login_id: "ops.admin", password: fresh })).status).toBe(
        200,
      );
      expect([...t.s.audit.iterate()].find((e) => e.action === "password.set_by_operator")).toMatchObject({
        actorType: "operator",
        reason: "phished",
      });
      expect(
        runCli(t, ["admins", "set-password", "plain.member", "--reason", "x"], {}, `${fresh}\n`).stderr,
      ).toMatch(/not an admin/);
    } finally {
      t.close();
    }
  });
});

describe("sekisho sessions revoke-all", () => {
  it("ends every session, trusted device and (when asked) member-site token on a running server, audited with its reason", async () => {
    const listening = await listenWithMember("everyone.out");
    try {
      const { t } = listening;
      const member = t.s.db.$client
        .prepare("SELECT id, sub FROM members WHERE login_id = 'everyone.out'")
        .get() as {
        id: string;
        sub: string;
      };
      const cookie = sessionCookie(
        await supertest(t.app)
          .post("/api/v1/login")
          .set("Origin", listening.issuer)
          .set("Content-Type", "application/json")
          .send(JSON.stringify({ login_id: "everyone.out", password: STRONG_PASSWORD })),
      );
      const device = t.s.devices.issue(member.id, null).token;
      const { config, refreshToken } = await memberSiteWithRefreshToken(listening, member.sub, "openid");
      expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).status).toBe(200);
      expect(runCli(t, ["sessions", "revoke-all"]).status).not.toBe(0); // a reason is required
      const run = runCli(t, [
        "sessions",
        "revoke-all",
        "--reason",
        "host compromise, scope unknown",
        "--site-tokens",
        "--json",
      ]);
      expect(run.status, run.stderr).toBe(0);
      expect(JSON.parse(run.stdout)).toMatchObject({ sessions_revoked: 1, devices_revoked: 1 });
      expect(JSON.parse(run.stdout).site_rows_deleted).toBeGreaterThan(0);
      // The running server sees it at once.
      expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).status).toBe(401);
      expect(t.s.devices.isLiveFor(device, "everyone.out")).toBe(false);
      await expect(oidc.refreshTokenGrant(config, refreshToken)).rejects.toMatchObject({
        error: "invalid_grant",
      });
      const entry = [...t.s.audit.iterate()].find((e) => e.action === "operator.sessions_revoked_all");
      expect(entry).toMatchObject({ actorType: "operator", reason: "host compromise, scope unknown" });
    } finally {
      await listening.close();
    }
  });
});
