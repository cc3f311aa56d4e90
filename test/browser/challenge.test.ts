import path from "node:path";
import type { Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { STRONG_PASSWORD } from "../support/app.js";
import { ARTIFACTS, chromiumAvailable, launchChromium } from "../support/chromium.js";
import { type ListeningApp, listenWithMember } from "../support/oidc.js";

/**
 * The proof-of-work challenge on the hosted login page, in Debian's Chromium: when the service is
 * under attack, an untrusted password sign-in is answered with ALTCHA's widget (served from our own
 * files under a strict CSP, its solver in a same-origin worker); the widget solves the challenge,
 * the member enters the password again, and is signed in.
 */
const available = chromiumAvailable;

describe.skipIf(!available && !process.env.CI)("proof-of-work challenge in a real browser", () => {
  let sekisho: ListeningApp;
  let browser: Browser;

  beforeAll(async () => {
    sekisho = await listenWithMember("challenged.member", {
      SEKISHO_THROTTLE_POLICY: JSON.stringify({ attackFloorPerMinute: 2, challengeMaxNumber: 20_000 }),
    });
    browser = await launchChromium();
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await sekisho?.close();
  });

  it("under attack, the login page solves an ALTCHA challenge and the member gets in", async () => {
    const { t, issuer } = sekisho;
    // A stuffing wave: twenty failures from twenty addresses in one minute.
    for (let i = 0; i < 20; i++) {
      t.s.guard.settle(
        { ip: `198.51.100.${i}`, loginId: `stuffed${i}`, trustedDevice: false, kind: "password" },
        "failure",
      );
    }
    expect(t.s.guard.underAttack()).toBe(true);

    const context = await browser.newContext({ locale: "ja-JP" });
    const page = await context.newPage();
    const problems: string[] = [];
    page.on("console", (m) => {
      if (m.type() === "error") problems.push(m.text());
    });
    page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
    await page.goto(`${issuer}/account/login`);
    await page.fill("input[name=login_id]", "challenged.member");
    await page.fill("input[name=password]", STRONG_PASSWORD);
    await page.click("button[type=submit]");
    await page.waitForSelector("altcha-widget", { timeout: 8000 });
    expect(await page.textContent("body")).toContain("自動確認");
    // The widget solves the proof-of-work by itself and fills challenge_solution.
    const solution = page.locator('input[name="challenge_solution"]');
    await expect
      .poll(() => solution.inputValue(), {
        timeout: 20_000,
        message: `widget did not solve: ${problems.join(" | ")}`,
      })
      .not.toBe("");
    await page.screenshot({ path: path.join(ARTIFACTS, "challenge-ja.png"), fullPage: true });
    await page.fill("input[name=password]", STRONG_PASSWORD);
    await page.click("button[type=submit]");
    await page.waitForURL(`${issuer}/account`, { timeout: 8000 });
    const me = await (await page.request.get(`${issuer}/api/v1/me`)).json();
    expect(me.login_id).toBe("challenged.member");
    // No CSP violation, no script error (the 403 of the challenged page itself is expected).
    expect(problems.filter((p) => !/status of 403/.test(p))).toEqual([]);
    await context.close();
  });
});
