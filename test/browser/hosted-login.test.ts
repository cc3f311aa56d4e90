import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import * as oidc from "openid-client";
import type { Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Clients } from "../../src/oidc/clients.js";
import { STRONG_PASSWORD } from "../support/app.js";
import { ARTIFACTS, chromiumAvailable, launchChromium } from "../support/chromium.js";
import { type ListeningApp, listenWithMember } from "../support/oidc.js";

/**
 * End to end in Debian's Chromium (playwright-core, no browser download): a tiny relying-party
 * page on localhost sends the member to Sekisho's hosted login page, the member signs in there,
 * and the relying party receives the code and the ID token. Screenshots of the login page in
 * Japanese and English are kept in test/browser/artifacts/ (not committed).
 */
const available = chromiumAvailable;

describe.skipIf(!available && !process.env.CI)("hosted sign-in in a real browser", () => {
  let sekisho: ListeningApp;
  let rp: http.Server;
  let browser: Browser;
  let rpUrl: string;

  beforeAll(async () => {
    expect(available, "Debian chromium is needed (installed by .ci/run)").toBe(true);
    sekisho = await listenWithMember("browser.member");
    const { t, issuer } = sekisho;

    // The relying party: one page with a sign-in link, one callback.
    rp = http.createServer();
    await new Promise<void>((r) => rp.listen(0, "127.0.0.1", r));
    rpUrl = `http://127.0.0.1:${(rp.address() as AddressInfo).port}`;
    const client = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals }).add({
      name: "カーナビ会員サイト",
      redirectUris: [`${rpUrl}/callback`],
      postLogoutRedirectUris: [`${rpUrl}/bye`],
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
    const verifier = oidc.randomPKCECodeVerifier();
    const state = oidc.randomState();
    const authUrl = oidc.buildAuthorizationUrl(config, {
      redirect_uri: `${rpUrl}/callback`,
      scope: "openid profile",
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
      code_challenge_method: "S256",
      state,
    });
    rp.on("request", async (req, res) => {
      const url = new URL(req.url ?? "/", rpUrl);
      if (url.pathname === "/callback") {
        try {
          const tokens = await oidc.authorizationCodeGrant(config, url, {
            pkceCodeVerifier: verifier,
            expectedState: state,
          });
          const info = await oidc.fetchUserInfo(config, tokens.access_token, tokens.claims()?.sub as string);
          res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
          const logout = oidc.buildEndSessionUrl(config, {
            id_token_hint: tokens.id_token as string,
            post_logout_redirect_uri: `${rpUrl}/bye`,
          });
          res.end(
            `<h1 id="who">signed in as ${info.preferred_username}</h1><p id="acr">${tokens.claims()?.acr}</p>` +
              `<a id="signout" href="${logout.toString().replace(/&/g, "&amp;")}">Sign out</a>`,
          );
        } catch (err) {
          res.writeHead(500, { "content-type": "text/plain" });
          res.end(String(err));
        }
        return;
      }
      if (url.pathname === "/bye") {
        res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
        res.end(`<h1 id="bye">signed out</h1>`);
        return;
      }
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(`<a id="signin" href="${authUrl.toString().replace(/&/g, "&amp;")}">Sign in with Sekisho</a>`);
    });

    browser = await launchChromium();
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await new Promise((r) => rp?.close(r));
    await sekisho?.close();
  });

  for (const [locale, lang, javaScriptEnabled] of [
    ["ja-JP", "ja", true],
    ["en-US", "en", false],
  ] as const) {
    it(`signs in from a relying-party page through the hosted login page (${lang}, JavaScript ${javaScriptEnabled ? "on" : "off"})`, async () => {
      const context = await browser.newContext({ locale, javaScriptEnabled });
      const page = await context.newPage();
      await page.goto(rpUrl);
      await page.click("#signin");
      await page.waitForSelector("input[name=login_id]", { timeout: 5000 }).catch(async (err) => {
        throw new Error(`no login form at ${page.url()}: ${(await page.content()).slice(0, 500)}`, {
          cause: err,
        });
      });
      expect(await page.getAttribute("html", "lang")).toBe(lang);
      expect(await page.textContent("body")).toContain("カーナビ会員サイト");
      await page.screenshot({ path: path.join(ARTIFACTS, `login-${lang}.png`), fullPage: true });
      // No inline script: only our own script files (CSP script-src 'self'); the form needs none.
      const scripts = await page
        .locator("script")
        .evaluateAll((els) => els.map((el) => el.getAttribute("src")));
      expect(scripts).toEqual(["/assets/simplewebauthn-browser.js", "/assets/passkeys.js"]);
      await page.fill("input[name=login_id]", "browser.member");
      await page.fill("input[name=password]", STRONG_PASSWORD);
      await page.click("button[type=submit]");
      await page.waitForSelector("#who", { timeout: 5000 }).catch(async (err) => {
        throw new Error(`no callback page at ${page.url()}: ${(await page.content()).slice(0, 500)}`, {
          cause: err,
        });
      });
      expect(await page.textContent("#who")).toBe("signed in as browser.member");
      expect(await page.textContent("#acr")).toBe("urn:sekisho:acr:password");
      // RP-initiated logout: confirm on Sekisho's page, land back on the site (a redirect after a
      // form post, which a CSP form-action would block in a browser).
      await page.click("#signout");
      await page.click("button[name=logout]");
      await page.waitForSelector("#bye", { timeout: 5000 });
      expect(new URL(page.url()).pathname).toBe("/bye");
      await context.close();
    });
  }
});
