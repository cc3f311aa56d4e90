import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { eq } from "drizzle-orm";
import * as oidc from "openid-client";
import type { Browser, BrowserContext, CDPSession, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { auditLog, webauthnCredentials } from "../../src/db/schema.js";
import { Clients } from "../../src/oidc/clients.js";
import { STRONG_PASSWORD } from "../support/app.js";
import { ARTIFACTS, chromiumAvailable, launchChromium, pageWithAuthenticator } from "../support/chromium.js";
import { type ListeningApp, listenWithMember } from "../support/oidc.js";

/**
 * Passkeys end to end in Debian's Chromium with Chrome's virtual authenticator (CDP
 * `WebAuthn.addVirtualAuthenticator`): enrol from the account page, sign out, sign in
 * passwordless, then use the passkey as the second factor of an OIDC authorization that asks for
 * `acr_values=…phishing-resistant`; the ID token's acr/amr show it. Then the attacks a browser can
 * make: a signature counter that went backwards (a cloned authenticator) is refused.
 */
const available = chromiumAvailable;
const PR = "urn:sekisho:acr:phishing-resistant";

describe.skipIf(!available && !process.env.CI)("passkeys in a real browser (virtual authenticator)", () => {
  let sekisho: ListeningApp;
  let issuer: string;
  let rp: http.Server;
  let rpUrl: string;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  let cdp: CDPSession;
  let authenticatorId: string;

  beforeAll(async () => {
    sekisho = await listenWithMember("passkey.member");
    issuer = sekisho.issuer;
    const { t } = sekisho;
    rp = http.createServer();
    await new Promise<void>((r) => rp.listen(0, "127.0.0.1", r));
    rpUrl = `http://127.0.0.1:${(rp.address() as AddressInfo).port}`;
    const client = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals }).add({
      name: "カーナビ会員サイト",
      redirectUris: [`${rpUrl}/callback`],
    });
    const config = await oidc.discovery(
      new URL(issuer),
      client.clientId,
      client.clientSecret ?? undefined,
      undefined,
      {
        execute: [oidc.allowInsecureRequests],
      },
    );
    const pending = new Map<string, string>(); // state → PKCE verifier
    rp.on("request", async (req, res) => {
      const url = new URL(req.url ?? "/", rpUrl);
      if (url.pathname === "/start") {
        const verifier = oidc.randomPKCECodeVerifier();
        const state = oidc.randomState();
        pending.set(state, verifier);
        const auth = oidc.buildAuthorizationUrl(config, {
          redirect_uri: `${rpUrl}/callback`,
          scope: "openid",
          code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
          code_challenge_method: "S256",
          state,
          ...(url.searchParams.get("acr") ? { acr_values: url.searchParams.get("acr") as string } : {}),
        });
        res.writeHead(302, { location: auth.toString() });
        res.end();
        return;
      }
      try {
        const state = url.searchParams.get("state") ?? "";
        const tokens = await oidc.authorizationCodeGrant(config, url, {
          pkceCodeVerifier: pending.get(state) as string,
          expectedState: state,
        });
        const c = tokens.claims();
        res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
        res.end(`<p id="acr">${c?.acr}</p><p id="amr">${((c?.amr ?? []) as string[]).join(" ")}</p>`);
      } catch (err) {
        res.writeHead(500, { "content-type": "text/plain" });
        res.end(String(err));
      }
    });

    browser = await launchChromium();
    ({ context, page, cdp, authenticatorId } = await pageWithAuthenticator(browser));
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await new Promise((r) => rp?.close(r));
    await sekisho?.close();
  });

  const me = async () => {
    const res = await page.request.get(`${issuer}/api/v1/me`);
    return { status: res.status(), body: res.ok() ? await res.json() : null };
  };
  const waitFor = async (selector: string) =>
    page.waitForSelector(selector, { timeout: 8000 }).catch(async (err) => {
      throw new Error(`no ${selector} at ${page.url()}: ${(await page.content()).slice(0, 800)}`, {
        cause: err,
      });
    });

  const presence = (enabled: boolean) =>
    cdp.send("WebAuthn.setAutomaticPresenceSimulation", { authenticatorId, enabled });

  it("enrols a passkey from the account page, signs out, and signs in passwordless through autofill", async () => {
    await page.goto(`${issuer}/account`);
    await waitFor("input[name=login_id]");
    await page.fill("input[name=login_id]", "passkey.member");
    await page.fill("input[name=password]", STRONG_PASSWORD);
    await page.click("button[type=submit]");
    await waitFor("[data-passkey-register]");
    await page.fill("#passkey_name", "テスト端末");
    await page.click("[data-passkey-register]");
    // The first factor comes with recovery codes, shown once on the page.
    await waitFor("[data-recovery-codes]:not([hidden])");
    expect(await page.locator("[data-recovery-codes] li").count()).toBe(10);
    await page.click("[data-recovery-codes] a");
    await page.waitForURL(/notice=passkey/, { timeout: 8000 });
    expect(await page.textContent("body")).toContain("テスト端末");
    await page.screenshot({ path: path.join(ARTIFACTS, "account-ja.png"), fullPage: true });
    const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
    expect(credentials).toHaveLength(1);
    expect(credentials[0]?.isResidentCredential).toBe(true);
    expect((await me()).body.mfa.passkeys).toMatchObject([{ name: "テスト端末" }]);

    // Sign out. The login page offers the passkey in the login ID field's autofill (conditional
    // UI); the virtual authenticator picks it as a member would, and no login ID is typed.
    await page.click('form[action="/account/logout"] button');
    await page.waitForURL(/\/account\/login/, { timeout: 8000 });
    await page.waitForURL(`${issuer}/account`, { timeout: 8000 });
    const after = await me();
    expect(after.body.session.acr).toBe(PR);
    expect(after.body.session.amr).toEqual(["hwk", "user", "mfa"]);
    const events = (await (await page.request.get(`${issuer}/api/v1/me/events`)).json()).events as Array<{
      type: string;
    }>;
    expect(events.map((e) => e.type)).toEqual(
      expect.arrayContaining(["factor.passkey_added", "login.passkey"]),
    );
  });

  it("uses the passkey as the second factor of an OIDC authorization asking for phishing-resistant", async () => {
    await context.clearCookies();
    // No member at the keyboard yet: the login page's passkey autofill waits instead of answering.
    await presence(false);
    await page.goto(`${rpUrl}/start?acr=${encodeURIComponent(PR)}`);
    await waitFor("input[name=login_id]");
    await page.fill("input[name=login_id]", "passkey.member");
    await page.fill("input[name=password]", STRONG_PASSWORD);
    await page.click("button[type=submit]");
    // The password was right; the second step offers the passkey.
    await waitFor("[data-passkey-mfa]");
    await page.screenshot({ path: path.join(ARTIFACTS, "mfa-ja.png"), fullPage: true });
    // The member reads English better: the footer's switch posts the pending sign-in back.
    await page.click("footer button.link");
    await page.waitForSelector('html[lang="en"]', { timeout: 8000 });
    await waitFor("[data-passkey-mfa]");
    expect(await page.textContent("footer button.link")).toBe("日本語");
    await page.screenshot({ path: path.join(ARTIFACTS, "mfa-en.png"), fullPage: true });
    await presence(true);
    await page.click("[data-passkey-mfa]");
    await waitFor("#acr");
    expect(await page.textContent("#acr")).toBe(PR);
    expect(await page.textContent("#amr")).toBe("pwd hwk user mfa");
  });

  it("refuses a passkey whose signature counter went backwards, and tells the member", async () => {
    // Attack: a cloned authenticator signs with a counter the real one has already passed.
    const { t } = sekisho;
    const row = t.s.db.select().from(webauthnCredentials).get();
    expect(row?.counter).toBeGreaterThan(0);
    t.s.db
      .update(webauthnCredentials)
      .set({ counter: 1_000 })
      .where(eq(webauthnCredentials.id, row?.id as string))
      .run();
    await context.clearCookies();
    await page.goto(`${issuer}/account/login`);
    await waitFor("[data-passkey-login]");
    await waitFor("[data-passkey-error]:not([hidden])"); // the autofill attempt was refused
    expect(page.url()).toContain("/account/login");
    expect((await me()).status).toBe(401);
    const flagged = t.s.db.select().from(webauthnCredentials).get();
    expect(flagged?.suspectedCloneAt).not.toBeNull();
    const alarm = t.s.db
      .select()
      .from(auditLog)
      .where(eq(auditLog.action, "mfa.passkey_clone_suspected"))
      .all();
    expect(alarm).toHaveLength(1);
    expect(alarm[0]?.memberId).toBe(row?.memberId);
    // Suspended: even with the counter back in order it stays refused until the member replaces it.
    t.s.db
      .update(webauthnCredentials)
      .set({ counter: 0 })
      .where(eq(webauthnCredentials.id, row?.id as string))
      .run();
    await presence(false);
    await page.reload();
    await waitFor("[data-passkey-login]");
    await presence(true);
    await page.click("[data-passkey-login]"); // the button this time
    await waitFor("[data-passkey-error]:not([hidden])");
    expect((await me()).status).toBe(401);
  });

  it("enrols an authenticator app on the account page (QR and key), then signs in with password and code (en)", async () => {
    const { generateSync } = await import("otplib");
    const { t } = sekisho;
    await t.s.registrations.register(
      { loginId: "totp.browser", password: STRONG_PASSWORD, profile: { email: "totp@example.jp" } },
      { ip: "127.0.0.1", requestId: null },
    );
    const ctx = await browser.newContext({ locale: "en-US" });
    const p = await ctx.newPage();
    const wait = (sel: string) =>
      p.waitForSelector(sel, { timeout: 8000 }).catch(async (err) => {
        throw new Error(`no ${sel} at ${p.url()}: ${(await p.content()).slice(0, 800)}`, { cause: err });
      });
    await p.goto(`${issuer}/account/login`);
    await wait("input[name=login_id]");
    await p.fill("input[name=login_id]", "totp.browser");
    await p.fill("input[name=password]", STRONG_PASSWORD);
    await p.click("button[type=submit]");
    await wait('form[action="/account/totp"] button');
    await p.click('form[action="/account/totp"] button');
    await wait(".qr svg");
    await p.screenshot({ path: path.join(ARTIFACTS, "totp-en.png"), fullPage: true });
    const secret = ((await p.textContent("code.secret")) ?? "").replace(/\s/g, "");
    // Sekisho's clock (the test's movable one), not the wall clock: time travels, nobody sleeps.
    const code = () => generateSync({ secret, epoch: Math.floor(t.clock.now().getTime() / 1000) });
    await p.fill("input[name=code]", code());
    await p.click("button[type=submit]");
    await wait("ol.codes");
    expect(await p.locator("ol.codes li").count()).toBe(10);
    await p.click('a[href="/account"]');
    await wait('form[action="/account/logout"] button');
    expect(await p.textContent("body")).toContain("Authenticator app (TOTP)");
    await p.click('form[action="/account/logout"] button');
    await wait("input[name=login_id]");
    // Password, then the second step asks for the app's code (the enrolment's code is spent: the
    // next time step's code it is).
    await p.fill("input[name=login_id]", "totp.browser");
    await p.fill("input[name=password]", STRONG_PASSWORD);
    await p.click("button[type=submit]");
    await wait("input[name=code]");
    t.clock.advance(30_000);
    await p.fill("input[name=code]", code());
    await p.click("form:has(input[value=totp]) button[type=submit]");
    await wait('form[action="/account/logout"] button');
    const me = await (await p.request.get(`${issuer}/api/v1/me`)).json();
    expect(me.session.acr).toBe("urn:sekisho:acr:mfa");
    expect(me.session.amr).toEqual(["pwd", "otp", "mfa"]);
    await ctx.close();
  });

  it("sends a member whose sign-in is no longer recent to sign in again when they add a passkey", async () => {
    const { t } = sekisho;
    await t.s.registrations.register(
      { loginId: "reauth.browser", password: STRONG_PASSWORD, profile: { email: "reauth@example.jp" } },
      { ip: "127.0.0.1", requestId: null },
    );
    const own = await pageWithAuthenticator(browser);
    const p = own.page;
    try {
      await p.goto(`${issuer}/account/login`);
      await p.waitForSelector("input[name=login_id]", { timeout: 8000 });
      await p.fill("input[name=login_id]", "reauth.browser");
      await p.fill("input[name=password]", STRONG_PASSWORD);
      await p.click("button[type=submit]");
      await p.waitForSelector("[data-passkey-register]:not([hidden])", { timeout: 8000 });
      // Adding a factor needs a sign-in within SEKISHO_REAUTH_MINUTES (10): eleven minutes on.
      t.clock.advance(11 * 60_000);
      await p.click("[data-passkey-register]");
      await p.waitForURL(/\/account\/login\?reauth=1/, { timeout: 8000 });
      expect(await p.textContent("body")).toContain("もう一度サインインしてください");
      // Nothing was added on the way.
      const { credentials } = await own.cdp.send("WebAuthn.getCredentials", {
        authenticatorId: own.authenticatorId,
      });
      expect(credentials).toHaveLength(0);
    } finally {
      await own.context.close();
    }
  });
});
