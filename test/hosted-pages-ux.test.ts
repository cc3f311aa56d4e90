import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as oidc from "openid-client";
import { generateSync } from "otplib";
import supertest from "supertest";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { accountPage, mfaPage, totpEnrolPage } from "../src/http/account-pages.js";
import { consentPage, errorPage, layout, loginPage } from "../src/http/pages.js";
import { resetMfaPage } from "../src/http/recovery-pages.js";
import { Clients } from "../src/oidc/clients.js";
import {
  langSwitchIn,
  makeApp,
  ORIGIN,
  PROFILE,
  post,
  register,
  STRONG_PASSWORD,
  signIn,
  type TestApp,
} from "./support/app.js";
import { Jar } from "./support/browser-jar.js";
import { listenWithMember } from "./support/oidc.js";
import { linkIn, TestSmtp } from "./support/smtp.js";

const here = path.dirname(fileURLToPath(import.meta.url));

/** The start tag of the element with this id. */
const tagOf = (html: string, id: string) =>
  new RegExp(`<[a-z]+[^>]*\\bid="${id}"[^>]*>`).exec(html)?.[0] ?? "";
/** The `<details>` start tag that holds the element with this id. */
const detailsAround = (html: string, id: string) => {
  const at = html.indexOf(`id="${id}"`);
  const start = html.lastIndexOf("<details", at);
  return start < 0 || html.lastIndexOf("</details>", at) > start
    ? ""
    : (/<details[^>]*>/.exec(html.slice(start))?.[0] ?? "");
};

/** A second-step page answered after a wrong recovery code: that box open, only that field marked. */
function expectRecoveryFieldMarked(wrong: { status: number; text: string }) {
  expect(wrong.status).toBe(401);
  expect(detailsAround(wrong.text, "recovery")).toBe("<details open>");
  expect(tagOf(wrong.text, "recovery")).toContain('aria-invalid="true"');
  expect(tagOf(wrong.text, "code")).not.toContain("aria-invalid");
}

const ACCOUNT = {
  loginId: "hanako.y",
  email: null,
  emailVerified: false,
  passwordMinLength: 12,
  acr: "urn:sekisho:acr:mfa",
  totp: true,
  passkeys: [
    {
      id: "pk_1",
      name: "私のiPhone",
      createdAt: "2026-12-05T00:00:00Z",
      lastUsedAt: null,
      synced: false,
      suspected: false,
    },
  ],
  recoveryCodes: 10,
  sessions: [],
  devices: [],
  events: [],
};

describe("second-step pages after a wrong code (F1)", () => {
  const methods = ["webauthn", "totp", "recovery_code"] as const;

  it("a wrong recovery code brings the recovery-code box back open, marks only that field and says it was the recovery code", () => {
    for (const html of [
      mfaPage({ lang: "ja", methods: [...methods], action: "/a", next: "/n", error: "recovery_code" }),
      resetMfaPage("ja", { token: "t", methods: [...methods], attemptsLeft: 4, failed: "recovery_code" }),
    ]) {
      expect(detailsAround(html, "recovery")).toMatch(/<details open>/);
      expect(tagOf(html, "recovery")).toContain('aria-invalid="true"');
      expect(tagOf(html, "recovery")).toContain("autofocus");
      expect(tagOf(html, "code")).not.toContain("aria-invalid");
      expect(tagOf(html, "code")).not.toContain("autofocus");
      expect(html).toContain("リカバリーコードが正しくありません");
    }
    const en = mfaPage({
      lang: "en",
      methods: [...methods],
      action: "/a",
      next: "/n",
      error: "recovery_code",
    });
    expect(en).toContain("That recovery code is not valid");
  });

  it("a wrong app code marks only the app-code field and leaves the recovery-code box closed", () => {
    for (const html of [
      mfaPage({ lang: "ja", methods: [...methods], action: "/a", next: "/n", error: "totp" }),
      resetMfaPage("ja", { token: "t", methods: [...methods], attemptsLeft: 4, failed: "totp" }),
    ]) {
      expect(detailsAround(html, "recovery")).toBe("<details>");
      expect(tagOf(html, "code")).toContain('aria-invalid="true"');
      expect(tagOf(html, "recovery")).not.toContain("aria-invalid");
      expect(html).not.toContain("リカバリーコードが正しくありません");
    }
  });

  it("nothing is marked and the box is closed before any code was sent", () => {
    const html = mfaPage({ lang: "ja", methods: [...methods], action: "/a", next: "/n" });
    expect(html).not.toContain("aria-invalid");
    expect(detailsAround(html, "recovery")).toBe("<details>");
  });
});

describe("the 6-digit code fields say their format in the page's language (F16)", () => {
  it("every 6-digit input has a title in Japanese or English", () => {
    const pages = {
      ja: [
        mfaPage({ lang: "ja", methods: ["totp"], action: "/a", next: "/n" }),
        totpEnrolPage("ja", { qrSvg: "<svg></svg>", secret: "ABCDEFGH" }),
        resetMfaPage("ja", { token: "t", methods: ["totp"] }),
      ],
      en: [
        mfaPage({ lang: "en", methods: ["totp"], action: "/a", next: "/n" }),
        totpEnrolPage("en", { qrSvg: "<svg></svg>", secret: "ABCDEFGH" }),
        resetMfaPage("en", { token: "t", methods: ["totp"] }),
      ],
    };
    for (const html of pages.ja) expect(tagOf(html, "code")).toContain('title="6桁の数字を入力してください');
    for (const html of pages.en) expect(tagOf(html, "code")).toContain('title="6 digits');
  });

  it("a wrong code on the authenticator set-up page marks the field", () => {
    const html = totpEnrolPage("ja", { qrSvg: "<svg></svg>", secret: "ABCDEFGH", error: true });
    expect(tagOf(html, "code")).toContain('aria-describedby="mfa_error"');
  });
});

describe("recovery code lists (F2)", () => {
  const style = /<style>([\s\S]*?)<\/style>/.exec(layout("ja", "x", ""))?.[1] ?? "";

  it("never breaks a code across lines and keeps one column, so numbers and codes don't collide", () => {
    expect(style).toMatch(/ol\.codes li\{[^}]*white-space:nowrap/);
    expect(style).not.toMatch(/ol\.codes\{[^}]*columns:/);
  });
});

/** WCAG relative luminance and contrast ratio of two #rrggbb colours. */
function contrast(a: string, b: string): number {
  const lum = (hex: string) => {
    const [r, g, bl] = [1, 3, 5].map((i) => {
      const v = Number.parseInt(hex.slice(i, i + 2), 16) / 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    }) as [number, number, number];
    return 0.2126 * r + 0.7152 * g + 0.0722 * bl;
  };
  const [hi, lo] = [lum(a), lum(b)].sort((x, y) => y - x) as [number, number];
  return (hi + 0.05) / (lo + 0.05);
}

describe("non-text contrast of form controls (F14, WCAG 1.4.11)", () => {
  const style = /<style>([\s\S]*?)<\/style>/.exec(layout("ja", "x", ""))?.[1] ?? "";
  const rule = (selector: string) => {
    const at = style.indexOf(`${selector}{`);
    expect(at, selector).toBeGreaterThanOrEqual(0);
    return style.slice(at + selector.length + 1, style.indexOf("}", at));
  };
  const colour = (declarations: string, property: string) =>
    new RegExp(`(?:^|;)${property}:[^;]*?(#[0-9a-f]{6})`).exec(declarations)?.[1] ?? "";

  it("input borders have at least 3:1 against the white card", () => {
    const border = colour(rule("input[type=text],input[type=password],input[type=tel]"), "border");
    expect(contrast(border, "#ffffff")).toBeGreaterThanOrEqual(3);
  });

  it("the input focus ring and focused border have at least 3:1 against white", () => {
    const focus = rule("input:focus");
    expect(contrast(colour(focus, "outline"), "#ffffff")).toBeGreaterThanOrEqual(3);
    expect(contrast(colour(focus, "border-color"), "#ffffff")).toBeGreaterThanOrEqual(3);
  });

  it("secondary buttons (and the remove disclosure) show their shape with at least 3:1 against white", () => {
    expect(contrast(colour(rule("button.secondary"), "box-shadow"), "#ffffff")).toBeGreaterThanOrEqual(3);
    expect(contrast(colour(rule("details.confirm>summary"), "box-shadow"), "#ffffff")).toBeGreaterThanOrEqual(
      3,
    );
  });
});

describe("expired or unknown sign-in (F7)", () => {
  it("the error page says the sign-in expired and to start again from the member site, in the reader's language, technical detail in small print", () => {
    const ja = errorPage("ja", "invalid_request", "interaction session id cookie not found", {
      expired: true,
    });
    expect(ja).toContain("<h1>サインインの有効期限が切れました</h1>");
    expect(ja).toContain("会員サイトに戻って、もう一度サインインしてください");
    expect(ja).not.toContain("リクエストの内容に誤りがあります");
    expect(ja).toContain(
      '<span class="small"><code>invalid_request</code> interaction session id cookie not found</span>',
    );
    const en = errorPage("en", "invalid_request", "interaction session id cookie not found");
    expect(en).toContain("Your sign-in expired");
    expect(en).toContain("go back to the member site and sign in again");
    // Any other invalid_request keeps its own meaning.
    expect(errorPage("ja", "invalid_request", "missing required parameter 'client_id'")).toContain(
      "リクエストの内容に誤りがあります",
    );
  });

  it("an interaction address without its cookie answers that page", async () => {
    const t = makeApp();
    try {
      const res = await supertest(t.app).get("/interaction/abcdefghijklmnop").set("Accept-Language", "ja");
      expect(res.status).toBe(400);
      expect(res.text).toContain("サインインの有効期限が切れました");
      expect(res.text).toContain("interaction session id cookie not found");
    } finally {
      t.close();
    }
  });
});

describe("consent page (F9)", () => {
  const scopes = ["openid", "profile", "email", "phone", "address", "offline_access", "members:read"];

  it("lists what the site gets in plain Japanese per scope, never the protocol words", () => {
    const html = consentPage({
      lang: "ja",
      action: "/c",
      clientName: "ポイントモール",
      scopes,
      switchHref: "/s",
    });
    for (const text of ["氏名・生年月日・性別・ログインID", "メールアドレス", "電話番号", "住所・郵便番号"])
      expect(html).toContain(`<li>${text}`);
    for (const raw of ["openid", "profile", "email", "phone", "address", "offline_access", "members:read"])
      expect(html).not.toContain(`<li>${raw}</li>`);
    expect(html).not.toContain("members:read");
    expect(html).not.toContain("offline_access");
    // Japanese sentences end with Japanese punctuation, not an ASCII colon.
    expect(html).toContain("「ポイントモール」が、あなたの次の情報を求めています。");
    expect(html).not.toMatch(/[\u3040-\u30ff\u4e00-\u9fff]:/);
  });

  it("lists the same in English", () => {
    const html = consentPage({
      lang: "en",
      action: "/c",
      clientName: "Point Mall",
      scopes,
      switchHref: "/s",
    });
    expect(html).toContain("<li>Your name, date of birth, gender and login ID</li>");
    expect(html).toContain("<li>Your phone number</li>");
    expect(html).not.toContain("<li>profile</li>");
  });

  it("says only the sign-in is shared when the site asks for openid alone", () => {
    const html = consentPage({
      lang: "ja",
      action: "/c",
      clientName: "X",
      scopes: ["openid"],
      switchHref: "/s",
    });
    expect(html).not.toContain("<ul");
    expect(html).toContain("サインインしたことだけが伝わります");
  });

  it("says who is signed in, on the real consent page of a third-party site", async () => {
    const listening = await listenWithMember("consent.member");
    try {
      const { t, issuer } = listening;
      const site = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals }).add({
        name: "Partner shop",
        redirectUris: ["http://127.0.0.1:9/callback"],
        firstParty: false,
      });
      const config = await oidc.discovery(
        new URL(issuer),
        site.clientId,
        site.clientSecret ?? undefined,
        undefined,
        {
          execute: [oidc.allowInsecureRequests],
        },
      );
      const jar = new Jar();
      const login = await jar.fetch(`${issuer}/api/v1/login`, {
        method: "POST",
        headers: { "content-type": "application/json", origin: issuer },
        body: JSON.stringify({ login_id: "consent.member", password: STRONG_PASSWORD }),
      });
      expect(login.status).toBe(200);
      const url = oidc.buildAuthorizationUrl(config, {
        redirect_uri: "http://127.0.0.1:9/callback",
        scope: "openid profile phone",
        code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()),
        code_challenge_method: "S256",
      });
      const page = await jar.follow(url.toString(), issuer);
      const html = await page.res.text();
      expect(html).toContain("ログインID「consent.member」でサインインしています。");
      expect(html).toContain("<li>氏名・生年月日・性別・ログインID</li>");
      expect(html).toContain("<li>電話番号</li>");
      expect(html).not.toContain("<li>openid</li>");
    } finally {
      await listening.close();
    }
  });
});

describe("passkey controls without JavaScript (F10, F11)", () => {
  const script = fs.readFileSync(path.join(here, "../src/http/assets/passkeys.js"), "utf8");

  it("the reset page's passkey button comes hidden and the script shows it", () => {
    const html = resetMfaPage("ja", { token: "t", methods: ["webauthn", "totp"] });
    expect(html).toMatch(/<button type="button" hidden data-passkey-reset/);
    const loop = script.slice(script.indexOf('querySelectorAll("[data-passkey-reset]")'));
    expect(loop).toMatch(/button\.hidden = false/);
  });

  it("the login page's 'or' separator comes hidden with the passkey button", () => {
    const html = loginPage({ lang: "ja", action: "/l", clientName: "X", switchHref: "/s", next: "/n" });
    expect(html).toMatch(/<p class="sep" hidden data-passkey-only>または<\/p>/);
    expect(script).toContain('querySelectorAll("[data-passkey-only]")');
  });

  it("the account page's passkey name field comes hidden with its button, and a note says why without JavaScript", () => {
    const html = accountPage("ja", ACCOUNT);
    const field = html.indexOf('id="passkey_name"');
    const wrapper = html.lastIndexOf("<div", field);
    expect(html.slice(wrapper, field)).toMatch(/^<div hidden data-passkey-only>/);
    expect(html).toContain("<noscript>");
  });
});

describe("removing a factor asks first (F15)", () => {
  it("the authenticator app's and each passkey's remove button only opens a confirmation holding the real button", () => {
    const html = accountPage("ja", ACCOUNT);
    for (const action of ["/account/totp/remove", "/account/passkeys/pk_1/remove"]) {
      const form = html.indexOf(`<form method="post" action="${action}"`);
      expect(form, action).toBeGreaterThan(0);
      // The form sits inside a closed <details class="confirm">, whose summary is not a submit button.
      const details = html.lastIndexOf('<details class="confirm">', form);
      expect(details, action).toBeGreaterThan(0);
      expect(html.slice(details, form)).not.toContain("</details>");
      expect(html.slice(details, form)).toMatch(/<summary[^>]*>削除<\/summary>/);
      expect(html.slice(form, html.indexOf("</form>", form))).toContain('class="danger">削除する</button>');
    }
    expect(html).toContain("認証アプリを削除しますか？");
    expect(html).toContain("パスキー「私のiPhone」を削除しますか？");
    // It says what stays protecting the account.
    expect(html).toContain("削除後も使える2段階認証の方法：パスキー1個");
    expect(html).toContain("削除後も使える2段階認証の方法：認証アプリ");
  });

  it("warns when the factor is the last one", () => {
    const html = accountPage("ja", { ...ACCOUNT, totp: false });
    expect(html).toContain("これが最後の2段階認証の方法です");
  });
});

describe("sign-in page after a wrong password (F17)", () => {
  it("keeps the login ID and puts the focus on the password field", () => {
    const html = loginPage({
      lang: "ja",
      action: "/l",
      clientName: "X",
      switchHref: "/s",
      next: "/n",
      error: "invalid",
      loginId: "taro",
    });
    expect(tagOf(html, "login_id")).toContain('value="taro"');
    expect(tagOf(html, "password")).toContain("autofocus");
    expect(tagOf(html, "login_id")).not.toContain("autofocus");
    expect(
      tagOf(
        loginPage({ lang: "ja", action: "/l", clientName: "X", switchHref: "/s", next: "/n" }),
        "password",
      ),
    ).not.toContain("autofocus");
  });
});

const form = (t: TestApp, url: string, body: Record<string, string>, cookie?: string) => {
  const req = supertest(t.app).post(url).set("Origin", ORIGIN).type("form");
  if (cookie) req.set("Cookie", cookie);
  return req.send(body);
};

describe("account pages through the routes (F1, F12)", () => {
  let t: TestApp;
  beforeEach(async () => {
    t = makeApp();
    expect((await register(t.app, { login_id: "hanako.reauth" })).status).toBe(201);
  });
  afterEach(() => t.close());

  it("a refused password change shows its message at the password form, on the field it is about (not at the top of a long page)", async () => {
    const cookie = await signIn(t.app, "hanako.reauth");
    const wrong = await form(
      t,
      "/account/password",
      { current_password: "not the password 123", new_password: "a new long passphrase 2026" },
      cookie,
    );
    expect(wrong.status).toBe(303);
    expect(wrong.headers.location).toBe("/account?error=wrong_password&in=password#password");
    const page = (
      await supertest(t.app).get("/account?error=wrong_password&in=password").set("Cookie", cookie)
    ).text;
    const section = page.slice(page.indexOf('<section id="password">'));
    expect(section).toContain('id="password_error"');
    // Said once, in the section.
    expect(page.split("現在のパスワードが正しくありません。")).toHaveLength(2);
    expect(section).toContain("現在のパスワードが正しくありません。");
    expect(tagOf(page, "current_password")).toContain('aria-describedby="password_error"');
    expect(tagOf(page, "current_password")).toContain("autofocus");
    expect(tagOf(page, "new_password")).not.toContain("aria-invalid");
    // A weak new password marks the new-password field instead.
    const weak = (
      await supertest(t.app).get("/account?error=weak_password&in=password").set("Cookie", cookie)
    ).text;
    expect(tagOf(weak, "new_password")).toContain('aria-invalid="true"');
    expect(tagOf(weak, "current_password")).not.toContain("aria-invalid");
    // A bad e-mail address: at the e-mail form.
    const bad = await form(t, "/account/email", { email: "not an address" }, cookie);
    expect(bad.headers.location).toBe("/account?error=invalid&in=email#email");
  });

  it("re-authentication says why, fills in the signed-in login ID and keeps reauth in the language switch", async () => {
    const cookie = await signIn(t.app, "hanako.reauth");
    const res = await supertest(t.app).get("/account/login?reauth=1&lang=ja&then=totp").set("Cookie", cookie);
    expect(res.status).toBe(200);
    expect(res.text).toContain("この変更には、直近のサインインが必要です。");
    expect(tagOf(res.text, "login_id")).toContain('value="hanako.reauth"');
    expect(res.text).toContain('href="/account/login?reauth=1&amp;lang=en&amp;then=totp"');
    expect(res.text).toContain('action="/account/login?reauth=1&amp;lang=ja&amp;then=totp"');
    // Without a session, nothing is filled in.
    const anonymous = await supertest(t.app).get("/account/login?reauth=1&lang=ja");
    expect(tagOf(anonymous.text, "login_id")).toContain('value=""');
  });

  it("a change refused for an old sign-in returns to its section after signing in again, only to our own fixed paths", async () => {
    const cookie = await signIn(t.app, "hanako.reauth");
    t.clock.advance(11 * 60_000); // past SEKISHO_REAUTH_MINUTES
    const refused = await form(t, "/account/totp", {}, cookie);
    expect(refused.status).toBe(303);
    expect(refused.headers.location).toBe("/account/login?reauth=1&lang=ja&then=totp");
    const again = await form(t, "/account/login?reauth=1&lang=ja&then=totp", {
      login_id: "hanako.reauth",
      password: STRONG_PASSWORD,
    });
    expect(again.status).toBe(303);
    expect(again.headers.location).toBe("/account#totp");
    for (const then of ["https://evil.example/", "//evil.example", "/admin"]) {
      const other = await form(t, `/account/login?lang=ja&then=${encodeURIComponent(then)}`, {
        login_id: "hanako.reauth",
        password: STRONG_PASSWORD,
      });
      expect(other.headers.location, then).toBe("/account");
    }
  });

  it("a throttled sign-in page says how long to wait, as its Retry-After does", async () => {
    let last = await form(t, "/account/login?lang=ja", {
      login_id: "hanako.reauth",
      password: "wrong password 1",
    });
    for (let i = 2; i <= 6 && last.status !== 429; i++)
      last = await form(t, "/account/login?lang=ja", {
        login_id: "hanako.reauth",
        password: `wrong password ${i}`,
      });
    expect(last.status).toBe(429);
    const minutes = Math.ceil(Number(last.headers["retry-after"]) / 60);
    expect(minutes).toBeGreaterThan(0);
    expect(last.text).toContain(minutes > 1 ? `約${minutes}分後に、もう一度お試しください。` : "1分後に");
  });

  it("a wrong recovery code on /account/mfa comes back with the recovery box open and only that field marked", async () => {
    const cookie = await signIn(t.app, "hanako.reauth");
    const begin = await post(t.app, "/api/v1/me/totp", {}, cookie);
    const code = generateSync({
      secret: begin.body.secret,
      epoch: Math.floor(t.clock.now().getTime() / 1000),
    });
    expect((await post(t.app, "/api/v1/me/totp/verify", { code }, cookie)).status).toBe(200);
    const step = await form(t, "/account/login?lang=ja", {
      login_id: "hanako.reauth",
      password: STRONG_PASSWORD,
    });
    const mfaToken = /name="mfa_token" value="([^"]+)"/.exec(step.text)?.[1] as string;
    expect(mfaToken).toBeTruthy();
    const wrong = await form(t, "/account/mfa?lang=ja", {
      mfa_token: mfaToken,
      method: "recovery_code",
      code: "aaaa-bbbb-cccc-dddd",
    });
    expectRecoveryFieldMarked(wrong);
    expect(wrong.text).toContain("リカバリーコードが正しくありません");
  });

  it("the second step switches language without losing the pending sign-in, counting no try and checking no code", async () => {
    const cookie = await signIn(t.app, "hanako.reauth");
    const begin = await post(t.app, "/api/v1/me/totp", {}, cookie);
    const totp = () =>
      generateSync({ secret: begin.body.secret, epoch: Math.floor(t.clock.now().getTime() / 1000) });
    expect((await post(t.app, "/api/v1/me/totp/verify", { code: totp() }, cookie)).status).toBe(200);
    t.clock.advance(30_000);
    const step = await form(t, "/account/login?lang=ja&then=totp", {
      login_id: "hanako.reauth",
      password: STRONG_PASSWORD,
    });
    const switchTo = langSwitchIn(step.text);
    expect(switchTo.action).toBe("/account/mfa?lang=en&then=totp");
    // More switches than a pending sign-in has tries: none is a wrong code.
    let english = await form(t, switchTo.action, switchTo.fields);
    for (let i = 0; i < 6; i++) english = await form(t, switchTo.action, switchTo.fields);
    expect(english.status).toBe(200);
    expect(english.text).toContain('<html lang="en">');
    expect(english.text).toContain("6-digit code from your authenticator app");
    expect(String(english.headers["set-cookie"])).toContain("sekisho_lang=en");
    expect(langSwitchIn(english.text).action).toBe("/account/mfa?lang=ja&then=totp");
    // A switch carrying a code checks nothing: the code is still unused afterwards.
    const code = totp();
    await form(t, switchTo.action, { ...switchTo.fields, method: "totp", code });
    const done = await form(t, "/account/mfa?lang=en&then=totp", {
      mfa_token: switchTo.fields.mfa_token as string,
      method: "totp",
      code,
    });
    expect(done.status).toBe(303);
    expect(done.headers.location).toBe("/account#totp");
    // The pending sign-in is used up: switching shows the expired page, not the step.
    const after = await form(t, switchTo.action, switchTo.fields);
    expect(after.status).toBe(401);
    expect(after.text).not.toContain('name="mfa_token"');
    // A made-up token shows nothing either.
    const madeUp = await form(t, switchTo.action, { ...switchTo.fields, mfa_token: "A".repeat(43) });
    expect(madeUp.status).toBe(401);
    expect(madeUp.text).not.toContain('name="mfa_token"');
  });

  it("a wrong password on the sign-in page keeps the login ID and focuses the password", async () => {
    const res = await form(t, "/account/login?lang=ja", {
      login_id: "hanako.reauth",
      password: "wrong password 1",
    });
    expect(res.status).toBe(401);
    expect(tagOf(res.text, "login_id")).toContain('value="hanako.reauth"');
    expect(tagOf(res.text, "password")).toContain("autofocus");
  });
});

describe("password reset's second step through the routes (F1)", () => {
  const smtp = new TestSmtp();
  let t: TestApp;
  beforeAll(() => smtp.start());
  afterAll(() => smtp.stop());
  beforeEach(() => {
    t = makeApp({ SEKISHO_SMTP_URL: smtp.url });
  });
  afterEach(() => t.close());

  it("a wrong recovery code comes back with the recovery box open, that field marked, and says so", async () => {
    await register(t.app, { login_id: "reset.ux" });
    const cookie = await signIn(t.app, "reset.ux");
    const begin = await post(t.app, "/api/v1/me/totp", {}, cookie);
    const code = generateSync({
      secret: begin.body.secret,
      epoch: Math.floor(t.clock.now().getTime() / 1000),
    });
    expect((await post(t.app, "/api/v1/me/totp/verify", { code }, cookie)).status).toBe(200);
    expect((await post(t.app, "/api/v1/recovery/password", { login_id: "reset.ux" })).status).toBe(202);
    await t.s.recovery.settled();
    await t.s.mailer.runDue();
    const mail = smtp.to(PROFILE.email).at(-1);
    const { token } = linkIn(mail as never, "/recovery/reset");

    const page = await supertest(t.app).get(`/recovery/reset?token=${token}&lang=ja`);
    expect(detailsAround(page.text, "recovery")).toBe("<details>");

    const wrong = await form(t, "/recovery/reset/mfa?lang=ja", {
      token,
      method: "recovery_code",
      code: "nope-nope-nope-nope",
    });
    expectRecoveryFieldMarked(wrong);
    expect(wrong.text).toContain("リカバリーコードが正しくありません（残り");

    const wrongApp = await form(t, "/recovery/reset/mfa?lang=ja", { token, method: "totp", code: "000000" });
    expect(detailsAround(wrongApp.text, "recovery")).toBe("<details>");
    expect(tagOf(wrongApp.text, "code")).toContain('aria-invalid="true"');
  });
});
