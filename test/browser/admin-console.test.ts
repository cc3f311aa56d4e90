import path from "node:path";
import type { Browser, Page } from "playwright-core";
import supertest from "supertest";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PROFILE, STRONG_PASSWORD } from "../support/app.js";
import { ARTIFACTS, chromiumAvailable, launchChromium, pageWithAuthenticator } from "../support/chromium.js";
import { type ListeningApp, listenWithMember } from "../support/oidc.js";

/**
 * The admin console in Debian's Chromium, with Chrome's virtual authenticator: an admin adds a
 * passkey, signs in to /admin with it, sees an alert and the MFA adoption, finds a member (masked),
 * opens their personal data with a reason, ends their sessions, requires MFA for everyone with a
 * 14-day grace period, and follows it all in the audit log with the chain verified. Screenshots go
 * to test/browser/artifacts/.
 */
describe.skipIf(!chromiumAvailable && !process.env.CI)("admin console in a real browser", () => {
  let sekisho: ListeningApp;
  let issuer: string;
  let browser: Browser;
  let page: Page;

  beforeAll(async () => {
    expect(chromiumAvailable, "Debian chromium is needed (installed by .ci/run)").toBe(true);
    sekisho = await listenWithMember("console.member");
    issuer = sekisho.issuer;
    await sekisho.t.s.registrations.register(
      { loginId: "ops.admin", password: STRONG_PASSWORD, profile: {} },
      { ip: null, requestId: null },
      { role: "admin" },
    );
    // Something to investigate: someone tried to sign in as a decoy… (raised as the engine would)
    sekisho.t.s.alerts.raise("honeytoken_touched", "critical", { trigger: "sign_in", ip: "203.0.113.66" });
    browser = await launchChromium();
    ({ page } = await pageWithAuthenticator(browser));
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await sekisho?.close();
  });

  const waitFor = (selector: string) =>
    page.waitForSelector(selector, { timeout: 8000 }).catch(async (err) => {
      throw new Error(`no ${selector} at ${page.url()}: ${(await page.content()).slice(0, 800)}`, {
        cause: err,
      });
    });
  const shot = (name: string) =>
    page.screenshot({ path: path.join(ARTIFACTS, `admin-${name}.png`), fullPage: true });

  it("an admin signs in with a passkey, investigates, acts, and requires MFA with a grace period", async () => {
    // First sign-in: password, then add the passkey on the account page.
    await page.goto(`${issuer}/account/login`);
    await page.fill("input[name=login_id]", "ops.admin");
    await page.fill("input[name=password]", STRONG_PASSWORD);
    await page.click("button[type=submit]");
    await waitFor("[data-passkey-register]");
    await page.fill("#passkey_name", "管理者の鍵");
    await page.click("[data-passkey-register]");
    await waitFor("[data-recovery-codes]:not([hidden])");

    // The console refuses a password-level session and asks for the passkey; the login page's
    // passkey (here through autofill, as a member would pick it) signs in and goes on to /admin.
    await page.goto(`${issuer}/admin`);
    await page.waitForURL(`${issuer}/admin`, { timeout: 10_000 });
    await waitFor("text=ダッシュボード");
    const dashboard = await page.textContent("main");
    expect(dashboard).toContain("honeytoken_touched");
    expect(dashboard).toContain("2段階認証の普及状況");
    await shot("dashboard-ja");

    // Find the member: masked.
    await page.goto(`${issuer}/admin/members`);
    await page.fill("#q", "console.member");
    await page.click("form.row button");
    await waitFor("text=詳細");
    const list = (await page.textContent("main")) ?? "";
    expect(list).toContain("山***");
    expect(list).not.toContain(PROFILE.email);
    await page.click("text=詳細");
    await waitFor("#reason");
    // The full profile only with a reason.
    await page.fill("#reason", "問い合わせ #4711 住所確認");
    await page.click("form:has(#reason) button");
    await waitFor(`text=${PROFILE.address}`);
    await shot("member-ja");

    // End the member's sessions (with a reason).
    await page.fill("#r_revoke-sessions", "不審なサインインの確認");
    await page.click("form[action$='/revoke-sessions'] button");
    await waitFor("text=実行しました。");

    // Require MFA for all members with a 14-day grace period.
    await page.goto(`${issuer}/admin/policy`);
    await page.selectOption("#mode", "required");
    await page.fill("#grace_days", "14");
    await page.click("form[action='/admin/policy'] button[type=submit]");
    await waitFor("text=保存しました");
    const policy = sekisho.t.s.policy.global();
    expect(policy).toMatchObject({ mode: "required", graceDays: 14 });
    await shot("policy-ja");

    // Follow it all in the audit log, the chain verified.
    await page.goto(`${issuer}/admin/audit`);
    await waitFor("text=監査ログの改ざん検証: 正常");
    const audit = (await page.textContent("main")) ?? "";
    for (const action of [
      "admin.member_viewed",
      "admin.member_sessions_revoked",
      "admin.mfa_policy_changed",
      "pii.read",
    ]) {
      expect(audit).toContain(action);
    }
    expect(audit).toContain("問い合わせ #4711 住所確認");
    expect(audit).toContain("会員の個人情報を表示"); // named in Japanese, beside its code
    await shot("audit-ja");
  });

  it("refuses the console to a member, and a cross-origin post to it", async () => {
    const { t } = sekisho;
    const login = await supertest(t.app)
      .post("/api/v1/login")
      .set("Origin", issuer)
      .set("Content-Type", "application/json")
      .send({ login_id: "console.member", password: STRONG_PASSWORD });
    const cookie = (login.headers["set-cookie"] as unknown as string[])[0]?.split(";")[0] as string;
    expect((await supertest(t.app).get("/admin").set("Cookie", cookie)).status).toBe(403);
    const forged = await supertest(t.app)
      .post("/admin/policy")
      .set("Origin", "https://evil.example")
      .type("form")
      .send({ mode: "off", grace_days: "0", methods: "totp" });
    expect(forged.status).toBe(403);
    expect(t.s.policy.global().mode).toBe("required");
  });
});
