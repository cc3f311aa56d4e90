import path from "node:path";
import { generateSync } from "otplib";
import type { Browser, Locator, Page } from "playwright-core";
import supertest from "supertest";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PROFILE, sessionCookie, STRONG_PASSWORD } from "../support/app.js";
import { ARTIFACTS, chromiumAvailable, launchChromium } from "../support/chromium.js";
import { type ListeningApp, listenWithMember } from "../support/oidc.js";
import { linkIn, TestSmtp } from "../support/smtp.js";

/**
 * The "done when", in Debian's Chromium: a member with an authenticator app who forgot
 * both the login ID and the password gets back in through the hosted pages alone, with every mail
 * going through a real SMTP server on loopback.
 */
/** Click something that loads a new page, and wait for it. */
async function go(page: Page, target: Locator): Promise<void> {
  await Promise.all([page.waitForNavigation(), target.click()]);
}

describe.skipIf(!chromiumAvailable && !process.env.CI)(
  "recovery through the hosted pages in a real browser",
  () => {
    const smtp = new TestSmtp();
    let sekisho: ListeningApp;
    let browser: Browser;
    let secret: string;
    const NEW_PASSWORD = "kaeru no uta ga kikoete kuru yo 2026";

    beforeAll(async () => {
      expect(chromiumAvailable, "Debian chromium is needed (installed by .ci/run)").toBe(true);
      await smtp.start();
      sekisho = await listenWithMember("forgetful.taro", { SEKISHO_SMTP_URL: smtp.url });
      const { t, issuer } = sekisho;
      const api = (url: string, body: unknown, cookie?: string) => {
        const req = supertest(t.app).post(url).set("Origin", issuer).set("Content-Type", "application/json");
        if (cookie) req.set("Cookie", cookie);
        return req.send(JSON.stringify(body));
      };
      const cookie = sessionCookie(
        await api("/api/v1/login", { login_id: "forgetful.taro", password: STRONG_PASSWORD }),
      );
      secret = (await api("/api/v1/me/totp", {}, cookie)).body.secret;
      const code = generateSync({ secret, epoch: Math.floor(t.clock.now().getTime() / 1000) });
      expect((await api("/api/v1/me/totp/verify", { code }, cookie)).status).toBe(200);
      t.clock.advance(31_000);
      browser = await launchChromium();
    });
    afterAll(async () => {
      await browser?.close();
      await sekisho?.close();
      await smtp.stop();
    });

    const deliver = async () => {
      await sekisho.t.s.recovery.settled();
      await sekisho.t.s.mailer.runDue();
    };
    const totp = () => {
      const { t } = sekisho;
      const now = t.clock.now().getTime();
      const code = generateSync({ secret, epoch: Math.floor(now / 1000) });
      // Each code once: on into the next 30 s step, 1 s in, where the code is still within the
      // ±30 s window. (A flat 31 s from a step's last second, on this wall-clock start, left it
      // two steps behind: refused, about one run in ten.)
      t.clock.advance(30_000 - (now % 30_000) + 1_000);
      return code;
    };

    it("forgot login ID, then password: mail, second factor, new password, signed in", async () => {
      const { issuer } = sekisho;
      const page = await browser.newPage({ locale: "ja-JP" });

      // 1. Forgot the login ID: the sign-in page links to the form; the mail names it.
      await page.goto(`${issuer}/account/login`);
      await go(page, page.getByRole("link", { name: "ログインIDをお忘れの方" }));
      await page.fill("#email", PROFILE.email);
      await go(page, page.getByRole("button", { name: "メールを送る" }));
      expect(await page.textContent("h1")).toBe("メールをご確認ください");
      await deliver();
      const idMail = smtp.to(PROFILE.email).find((m) => m.subject.includes("ログインID"));
      expect(idMail?.text).toContain("forgetful.taro");
      const loginId = (idMail?.text.match(/^\s{4}(\S+)$/m) ?? [])[1] as string;
      expect(loginId).toBe("forgetful.taro");

      // 2. Forgot the password too.
      await page.goto(`${issuer}/account/login`);
      await go(page, page.getByRole("link", { name: "パスワードをお忘れの方" }));
      await page.fill("#identifier", loginId);
      await go(page, page.getByRole("button", { name: "メールを送る" }));
      expect(await page.textContent("h1")).toBe("メールをご確認ください");
      await deliver();
      const resetMail = smtp.to(PROFILE.email).find((m) => m.subject.includes("パスワードの再設定"));
      const { url } = linkIn(resetMail as never, "/recovery/reset");

      // 3. The link asks for the second factor first; a wrong code is refused.
      await page.goto(url);
      expect(await page.textContent("h1")).toBe("本人確認");
      await page.fill("#code", "000000");
      await go(page, page.getByRole("button", { name: "確認", exact: true }));
      expect(await page.textContent(".error")).toContain("残り 4 回");
      await page.fill("#code", totp());
      await go(page, page.getByRole("button", { name: "確認", exact: true }));

      // 4. The new password (twice), then the done page with the login ID.
      expect(await page.textContent("h1")).toBe("新しいパスワード");
      await page.fill("#password", NEW_PASSWORD);
      await page.fill("#password_confirm", NEW_PASSWORD);
      await page.screenshot({ path: path.join(ARTIFACTS, "recovery-new-password-ja.png") });
      await go(page, page.getByRole("button", { name: "パスワードを設定" }));
      expect(await page.textContent("h1")).toBe("パスワードを再設定しました");
      expect(await page.textContent(".ok")).toContain("forgetful.taro");

      // 5. Signing in with the new password (and the authenticator app) opens the account page.
      await go(page, page.getByRole("link", { name: "サインイン" }));
      await page.fill("#login_id", loginId);
      await page.fill("#password", NEW_PASSWORD);
      await go(page, page.getByRole("button", { name: "サインイン", exact: true }));
      await page.fill("#code", totp());
      await go(page, page.getByRole("button", { name: "確認", exact: true }));
      expect(await page.textContent("h1")).toBe("アカウントのセキュリティ");
      expect(await page.textContent("body")).toContain("パスワードを再設定");
      // the reset link proved the mailbox
      expect(await page.textContent("body")).toContain("確認済み");
      await deliver();
      expect(smtp.to(PROFILE.email).some((m) => m.subject.includes("パスワードが変更されました"))).toBe(true);
      await page.close();
    });

    it("an expired reset link shows a clear page with a way to ask again (English)", async () => {
      const { issuer, t } = sekisho;
      const page = await browser.newPage({ locale: "en-US" });
      await page.goto(`${issuer}/recovery/password`);
      await page.fill("#identifier", PROFILE.email);
      await go(page, page.getByRole("button", { name: "Send the mail" }));
      expect(await page.textContent("h1")).toBe("Check your mail");
      await deliver();
      const mail = smtp.to(PROFILE.email).at(-1);
      t.clock.advance(31 * 60_000);
      await page.goto(linkIn(mail as never, "/recovery/reset").url);
      expect(await page.textContent("h1")).toBe("This link can't be used");
      expect(await page.getByRole("link", { name: "Send a new mail" }).isVisible()).toBe(true);
      await page.close();
    });
  },
);
