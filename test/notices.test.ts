import { generateSync } from "otplib";
import supertest from "supertest";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { localTime } from "../src/http/pages.js";
import {
  makeApp,
  PROFILE,
  post,
  register,
  STRONG_PASSWORD,
  sessionCookie,
  signIn,
  type TestApp,
} from "./support/app.js";
import { TestSmtp } from "./support/smtp.js";

/** Security notices to members, delivered through a real SMTP server on loopback. */
describe("security notices by mail", () => {
  const smtp = new TestSmtp();
  let t: TestApp;
  beforeAll(() => smtp.start());
  afterAll(() => smtp.stop());
  beforeEach(async () => {
    smtp.inbox.length = 0;
    t = makeApp({
      SEKISHO_SMTP_URL: smtp.url,
      SEKISHO_TRUST_PROXY: "loopback",
      SEKISHO_THROTTLE_POLICY: JSON.stringify({
        accountProtect: 3,
        accountSlow: 100,
        ipLoginSlow: 100,
        secondFactorNotice: 3,
      }),
    });
    await register(t.app, { login_id: "taro.notice" });
  });
  afterEach(() => t.close());

  const subjects = async () => {
    await t.s.mailer.runDue();
    return smtp.to(PROFILE.email).map((m) => m.subject);
  };

  it("tells the member of a new authenticator app, and of the first sign-in from a new device, with when, where and what browser", async () => {
    const cookie = await signIn(t.app, "taro.notice");
    const begin = await post(t.app, "/api/v1/me/totp", {}, cookie);
    const code = () =>
      generateSync({ secret: begin.body.secret, epoch: Math.floor(t.clock.now().getTime() / 1000) });
    expect((await post(t.app, "/api/v1/me/totp/verify", { code: code() }, cookie)).status).toBe(200);
    t.clock.advance(31_000);
    // The first factor's recovery codes are no news of their own ("the old ones no longer work"
    // would be wrong: there were none); making new ones later is.
    const first = await subjects();
    expect(first).toContain("認証アプリが設定されました — Sekisho");
    expect(first).not.toContain("リカバリーコードが再発行されました — Sekisho");

    const step = await post(t.app, "/api/v1/login", { login_id: "taro.notice", password: STRONG_PASSWORD })
      .set("X-Forwarded-For", "203.0.113.77")
      .set(
        "User-Agent",
        "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Chrome/130.0 Mobile Safari/537.36",
      );
    const done = await post(t.app, "/api/v1/login/totp", { mfa_token: step.body.mfa_token, code: code() })
      .set("X-Forwarded-For", "203.0.113.77")
      .set(
        "User-Agent",
        "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Chrome/130.0 Mobile Safari/537.36",
      );
    expect(done.status).toBe(200);
    const regenerated = await post(t.app, "/api/v1/me/recovery-codes", {}, sessionCookie(done));
    expect(regenerated.status).toBe(200);
    expect(await subjects()).toContain("リカバリーコードが再発行されました — Sekisho");
    await t.s.mailer.runDue();
    const notice = smtp.to(PROFILE.email).find((m) => m.subject.startsWith("新しい端末からのサインイン"));
    expect(notice?.text).toContain("203.0.113.0/24"); // the network, not the address
    expect(notice?.text).not.toContain("203.0.113.77");
    expect(notice?.text).toContain("Chrome 130 / Android 14");
    expect(notice?.text).toMatch(/2026年6月1日 18:0\d（日本時間）/); // the clock's 09:0x UTC, in Japan time
    expect(notice?.text).toContain("パスワードを再設定");
  });

  it("tells the member when their account is protected after repeated failures", async () => {
    for (let i = 0; i < 3; i++) {
      await post(t.app, "/api/v1/login", {
        login_id: "taro.notice",
        password: `wrong guess ${i} abcdef`,
      }).set("X-Forwarded-For", `198.51.100.${i + 1}`);
    }
    expect(await subjects()).toContain("不正なサインインの試みを検知しました — Sekisho");
  });

  it("tells the member, once, when someone who knows their password keeps failing the second step", async () => {
    const cookie = await signIn(t.app, "taro.notice");
    const secret = (await post(t.app, "/api/v1/me/totp", {}, cookie)).body.secret as string;
    const now = () => Math.floor(t.clock.now().getTime() / 1000);
    expect(
      (await post(t.app, "/api/v1/me/totp/verify", { code: generateSync({ secret, epoch: now() }) }, cookie))
        .status,
    ).toBe(200);
    // The attacker has the password, not the authenticator: wrong codes from new addresses.
    const wrongCode = () =>
      String((Number(generateSync({ secret, epoch: now() })) + 1) % 1_000_000).padStart(6, "0");
    for (let i = 0; i < 5; i++) {
      const ip = `203.0.113.${i + 1}`;
      const step = await post(t.app, "/api/v1/login", {
        login_id: "taro.notice",
        password: STRONG_PASSWORD,
      }).set("X-Forwarded-For", ip);
      if (step.body.status !== "mfa_required") break; // (refused past the day's ceiling)
      const res = await post(t.app, "/api/v1/login/totp", {
        mfa_token: step.body.mfa_token,
        code: wrongCode(),
      }).set("X-Forwarded-For", ip);
      expect(res.status).not.toBe(200);
    }
    const told = (await subjects()).filter((s) =>
      s.startsWith("パスワードが他人に知られている可能性があります"),
    );
    expect(told).toHaveLength(1);
    const events = await supertest(t.app).get("/api/v1/me/events").set("Cookie", cookie);
    expect(events.body.events.map((e: { type: string }) => e.type)).toContain(
      "account.second_factor_guessing",
    );
    expect(t.s.alerts.list().map((a) => a.kind)).toContain("second_factor_guessing");
  });
});

describe("times on pages", () => {
  it("are Japan time on Japanese pages, as in the mails, and UTC on English ones, the zone always said", () => {
    expect(localTime("ja", "2026-12-04T17:32:09Z")).toBe("2026/12/05 02:32 (日本時間)");
    expect(localTime("en", "2026-12-04T17:32:09Z")).toBe("04/12/2026, 17:32 UTC");
    expect(localTime("ja", "2026-12-04T17:32:09Z", { seconds: true })).toBe("2026/12/05 02:32:09 (日本時間)");
    expect(localTime("ja", "not a time")).toBe("not a time");
  });
});
