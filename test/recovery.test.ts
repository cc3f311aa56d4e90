import fs from "node:fs";
import path from "node:path";
import { eq } from "drizzle-orm";
import * as oidc from "openid-client";
import { generateSync } from "otplib";
import supertest from "supertest";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { auditLog, outbox } from "../src/db/schema.js";
import { RECOVERY_ACCEPTED } from "../src/http/routes/recovery.js";
import { backoffMs } from "../src/mail/outbox.js";
import { updateMember } from "../src/members/member-row.js";
import { Clients } from "../src/oidc/clients.js";
import {
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
import { type ListeningApp, listenWithMember } from "./support/oidc.js";
import { solveChallenge } from "./support/pow.js";
import { linkIn, type ReceivedMail, TestSmtp } from "./support/smtp.js";
import { SoftAuthenticator } from "./support/soft-authenticator.js";

const NEW_PASSWORD = "a brand new passphrase 77";

/** Everything answered so far has been mailed (deferred recovery work, then the outbox). */
async function deliver(t: TestApp): Promise<void> {
  await t.s.recovery.settled();
  await t.s.mailer.runDue();
}

function lastTo(smtp: TestSmtp, address: string): ReceivedMail {
  const mail = smtp.to(address).at(-1);
  if (!mail) throw new Error(`no mail to ${address}`);
  return mail;
}

async function enrolTotp(t: TestApp, cookie: string): Promise<{ secret: string; codes: string[] }> {
  const begin = await post(t.app, "/api/v1/me/totp", {}, cookie);
  const secret = begin.body.secret as string;
  const done = await post(t.app, "/api/v1/me/totp/verify", { code: totpCode(t, secret) }, cookie);
  expect(done.status).toBe(200);
  t.clock.advance(31_000); // the enrolment code's step is spent
  return { secret, codes: done.body.recovery_codes };
}

const totpCode = (t: TestApp, secret: string) =>
  generateSync({ secret, epoch: Math.floor(t.clock.now().getTime() / 1000) });

describe("mail, verification and recovery against a real SMTP server", () => {
  const smtp = new TestSmtp();
  let t: TestApp;

  beforeAll(() => smtp.start());
  afterAll(() => smtp.stop());
  beforeEach(() => {
    smtp.inbox.length = 0;
    t = makeApp({
      SEKISHO_SMTP_URL: smtp.url,
      SEKISHO_TRUST_PROXY: "loopback",
      // proof-of-work a test can solve in milliseconds (what is tested is that it is asked for)
      SEKISHO_THROTTLE_POLICY: JSON.stringify({ challengeMaxNumber: 5000 }),
    });
  });
  afterEach(() => t.close());

  async function resetLink(loginId: string, ip = "198.51.100.7"): Promise<string> {
    const res = await post(t.app, "/api/v1/recovery/password", { login_id: loginId }).set(
      "X-Forwarded-For",
      ip,
    );
    expect(res.status).toBe(202);
    await deliver(t);
    return linkIn(lastTo(smtp, PROFILE.email), "/recovery/reset").token;
  }

  it("registration mails a verification link (Japanese by default, English on request); following it verifies the address", async () => {
    const res = await register(t.app, { login_id: "taro.verify" });
    expect(res.status).toBe(201);
    await post(t.app, "/api/v1/registrations", {
      login_id: "jane.verify",
      password: STRONG_PASSWORD,
      profile: { ...PROFILE, email: "jane@example.com" },
      locale: "en",
    });
    await deliver(t);
    const ja = lastTo(smtp, PROFILE.email);
    expect(ja.subject).toContain("メールアドレスの確認");
    expect(ja.from).toBe("no-reply@localhost");
    expect(ja.html).toContain("<a href=");
    expect(ja.html).not.toMatch(/<img/i); // no tracking pixels
    expect(ja.headers.get("auto-submitted")).toBe("auto-generated");
    const en = lastTo(smtp, "jane@example.com");
    expect(en.subject).toContain("Confirm your e-mail address");

    const cookie = await signIn(t.app, "taro.verify");
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).body.email_verified).toBe(false);
    const { token } = linkIn(ja, "/email/verify");
    const verified = await post(t.app, "/api/v1/email/verify", { token });
    expect(verified.status).toBe(200);
    expect(verified.body.status).toBe("verified");
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).body.email_verified).toBe(true);
    // used twice: refused
    const again = await post(t.app, "/api/v1/email/verify", { token });
    expect(again.status).toBe(400);
    expect(again.body.error).toBe("invalid_token");
  });

  it("refuses an expired verification link, and a resend is rate-limited", async () => {
    await register(t.app, { login_id: "taro.late" });
    await deliver(t);
    const { token } = linkIn(lastTo(smtp, PROFILE.email), "/email/verify");
    t.clock.advance(24 * 3_600_000 + 1000);
    expect((await post(t.app, "/api/v1/email/verify", { token })).body.error).toBe("invalid_token");

    const cookie = await signIn(t.app, "taro.late");
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++)
      statuses.push((await post(t.app, "/api/v1/me/email/verification", {}, cookie)).status);
    // three in ten minutes per member (and at most three mails an hour to one address)
    expect(statuses).toEqual([202, 202, 202, 429]);
    await deliver(t);
    // only the newest link works
    const links = smtp
      .to(PROFILE.email)
      .slice(-3)
      .map((m) => linkIn(m, "/email/verify").token);
    expect((await post(t.app, "/api/v1/email/verify", { token: links[0] })).status).toBe(400);
    expect((await post(t.app, "/api/v1/email/verify", { token: links[2] })).status).toBe(200);
  });

  it("a service under attack still mails a signed-in member their verification link (others can't switch it off)", async () => {
    await register(t.app, { login_id: "taro.siege", profile: { ...PROFILE, email: "siege@example.jp" } });
    const cookie = await signIn(t.app, "taro.siege");
    // Attack: a burst of failed sign-ins elsewhere turns the service "under attack" for 15 minutes.
    t.s.guard.underAttackUntil = t.clock.now().getTime() + 15 * 60_000;
    expect(t.s.guard.underAttack()).toBe(true);
    // Anonymous mail requests now cost a proof-of-work…
    const anonymous = await post(t.app, "/api/v1/recovery/password", { login_id: "taro.siege" });
    expect(anonymous.status).toBe(403);
    expect(anonymous.body.error).toBe("challenge_required");
    // …but the member's own request, which can't be challenged, still goes out.
    const resend = await post(t.app, "/api/v1/me/email/verification", {}, cookie);
    expect(resend.status, resend.text).toBe(202);
    t.s.guard.underAttackUntil = 0;
  });

  it("forgotten password without a second factor: link, new password, every session ended, member told", async () => {
    await register(t.app, { login_id: "taro.reset" });
    const cookie = await signIn(t.app, "taro.reset");
    const token = await resetLink("taro.reset");
    const mail = lastTo(smtp, PROFILE.email);
    expect(mail.subject).toContain("パスワードの再設定");
    expect(mail.text).toContain("taro.reset");
    expect(mail.text).toContain("30 分");

    const check = await post(t.app, "/api/v1/recovery/password/check", { token });
    expect(check.body).toEqual({ status: "ready", methods: [] });
    // The hosted form names the account for password managers (a hidden username field).
    const form = await supertest(t.app).get(`/recovery/reset?token=${token}&lang=ja`);
    expect(form.text).toContain(
      '<input type="text" name="username" autocomplete="username" value="taro.reset" hidden>',
    );
    const weak = await post(t.app, "/api/v1/recovery/password/reset", { token, password: "short" });
    expect(weak.status).toBe(400);
    expect(weak.body.error).toBe("weak_password");
    const done = await post(t.app, "/api/v1/recovery/password/reset", { token, password: NEW_PASSWORD });
    expect(done.status).toBe(200);
    expect(done.body).toEqual({ status: "password_reset", login_id: "taro.reset" });

    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).status).toBe(401);
    expect(
      (await post(t.app, "/api/v1/login", { login_id: "taro.reset", password: STRONG_PASSWORD })).status,
    ).toBe(401);
    const fresh = await signIn(t.app, "taro.reset", NEW_PASSWORD);
    // following the link proved the mailbox
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", fresh)).body.email_verified).toBe(true);
    // the link is spent
    const twice = await post(t.app, "/api/v1/recovery/password/reset", {
      token,
      password: "yet another passphrase 9",
    });
    expect(twice.status).toBe(400);
    expect(twice.body.error).toBe("invalid_token");
    await deliver(t);
    expect(lastTo(smtp, PROFILE.email).subject).toContain("パスワードが変更されました");
    const events = (await supertest(t.app).get("/api/v1/me/events").set("Cookie", fresh)).body.events;
    expect(events.map((e: { type: string }) => e.type)).toContain("password.reset");
  });

  it("forgotten password with TOTP: the second factor is demanded before the password can be set", async () => {
    await register(t.app, { login_id: "taro.totp" });
    const { secret, codes } = await enrolTotp(t, await signIn(t.app, "taro.totp"));
    const token = await resetLink("taro.totp");

    const check = await post(t.app, "/api/v1/recovery/password/check", { token });
    expect(check.body.status).toBe("mfa_required");
    expect(check.body.methods).toEqual(["totp", "recovery_code"]);
    // Attack: skip the second factor.
    const skipped = await post(t.app, "/api/v1/recovery/password/reset", { token, password: NEW_PASSWORD });
    expect(skipped.status).toBe(403);
    expect(skipped.body.error).toBe("mfa_required");
    const wrong = await post(t.app, "/api/v1/recovery/password/totp", { token, code: "000000" });
    expect(wrong.status).toBe(401);
    expect(wrong.body.attempts_left).toBe(4);
    const code = totpCode(t, secret);
    const right = await post(t.app, "/api/v1/recovery/password/totp", { token, code });
    expect(right.body.status).toBe("ready");
    const proof = right.body.reset_proof as string;
    expect(proof).toMatch(/^[\w-]{43}$/);
    // Attack: the link alone (someone else's copy, a shared computer's history) after the member
    // passed the second factor — without the proof handed to the member's browser.
    const linkOnly = await post(t.app, "/api/v1/recovery/password/reset", { token, password: NEW_PASSWORD });
    expect(linkOnly.status).toBe(403);
    expect(linkOnly.body.error).toBe("mfa_required");
    const forged = await post(t.app, "/api/v1/recovery/password/reset", {
      token,
      password: NEW_PASSWORD,
      reset_proof: `${proof.slice(0, -1)}${proof.endsWith("A") ? "B" : "A"}`,
    });
    expect(forged.status).toBe(403);
    const done = await post(t.app, "/api/v1/recovery/password/reset", {
      token,
      password: NEW_PASSWORD,
      reset_proof: proof,
    });
    expect(done.status).toBe(200);

    // The TOTP code just used can't be replayed at the next sign-in's second step.
    const login = await post(t.app, "/api/v1/login", { login_id: "taro.totp", password: NEW_PASSWORD });
    expect(login.body.status).toBe("mfa_required");
    const replay = await post(t.app, "/api/v1/login/totp", { mfa_token: login.body.mfa_token, code });
    expect(replay.status).toBe(401);
    // A recovery code passes a reset's second step too, once.
    const second = await resetLink("taro.totp");
    expect(
      (await post(t.app, "/api/v1/recovery/password/recovery-code", { token: second, code: codes[0] })).body
        .status,
    ).toBe("ready");
    const third = await resetLink("taro.totp", "198.51.100.8");
    expect(
      (await post(t.app, "/api/v1/recovery/password/recovery-code", { token: third, code: codes[0] })).status,
    ).toBe(401);
  });

  it("forgotten password with a passkey: the reset's ceremony passes it, a sign-in ceremony's assertion doesn't", async () => {
    await register(t.app, { login_id: "taro.pk" });
    const cookie = await signIn(t.app, "taro.pk");
    const key = new SoftAuthenticator();
    const options = await post(t.app, "/api/v1/me/passkeys/options", {}, cookie);
    expect(
      (
        await post(
          t.app,
          "/api/v1/me/passkeys",
          { response: key.register(options.body, { origin: ORIGIN }) },
          cookie,
        )
      ).status,
    ).toBe(201);
    const token = await resetLink("taro.pk");
    expect((await post(t.app, "/api/v1/recovery/password/check", { token })).body.methods).toContain(
      "webauthn",
    );
    // Attack: an assertion made for a sign-in's challenge is replayed into the reset.
    const login = await post(t.app, "/api/v1/login", { login_id: "taro.pk", password: STRONG_PASSWORD });
    const signInOptions = await post(t.app, "/api/v1/login/webauthn/options", {
      mfa_token: login.body.mfa_token,
    });
    const foreign = key.assert(signInOptions.body, { origin: ORIGIN });
    expect(
      (await post(t.app, "/api/v1/recovery/password/webauthn", { token, response: foreign })).status,
    ).toBe(401);
    const resetOptions = await post(t.app, "/api/v1/recovery/password/webauthn/options", { token });
    expect(resetOptions.status).toBe(200);
    const response = key.assert(resetOptions.body, { origin: ORIGIN });
    const passed = await post(t.app, "/api/v1/recovery/password/webauthn", { token, response });
    expect(passed.body.status).toBe("ready");
    expect(
      (
        await post(t.app, "/api/v1/recovery/password/reset", {
          token,
          password: NEW_PASSWORD,
          reset_proof: passed.body.reset_proof,
        })
      ).status,
    ).toBe(200);
  });

  it("keeps device trust only for the device that did the reset", async () => {
    await register(t.app, { login_id: "taro.devices" });
    const { secret } = await enrolTotp(t, await signIn(t.app, "taro.devices"));
    const deviceCookie = async () => {
      const login = await post(t.app, "/api/v1/login", {
        login_id: "taro.devices",
        password: STRONG_PASSWORD,
      });
      const done = await post(t.app, "/api/v1/login/totp", {
        mfa_token: login.body.mfa_token,
        code: totpCode(t, secret),
      });
      t.clock.advance(31_000);
      const raw = (done.headers["set-cookie"] as unknown as string[]).find((c) =>
        c.startsWith("sekisho_device="),
      );
      return (raw as string).split(";")[0] as string;
    };
    const mine = await deviceCookie();
    const other = await deviceCookie();
    const token = await resetLink("taro.devices");
    const passed = await post(
      t.app,
      "/api/v1/recovery/password/totp",
      { token, code: totpCode(t, secret) },
      mine,
    );
    expect(passed.status).toBe(200);
    const body = { token, password: NEW_PASSWORD, reset_proof: passed.body.reset_proof };
    expect((await post(t.app, "/api/v1/recovery/password/reset", body, mine)).status).toBe(200);
    const member = t.s.db.$client
      .prepare("SELECT id FROM members WHERE login_id = 'taro.devices'")
      .pluck()
      .get() as string;
    const live = t.s.devices.list(member).map((d) => d.id);
    expect(live).toHaveLength(1);
    expect(t.s.devices.recognise(mine.split("=")[1] as string, member)?.id).toBe(live[0]);
    expect(t.s.devices.recognise(other.split("=")[1] as string, member)).toBeNull();
  });

  it("a reset link dies after five wrong codes", async () => {
    await register(t.app, { login_id: "taro.guess" });
    const { secret } = await enrolTotp(t, await signIn(t.app, "taro.guess"));
    const token = await resetLink("taro.guess");
    for (let i = 0; i < 5; i++) {
      expect(
        (await post(t.app, "/api/v1/recovery/password/totp", { token, code: String(100000 + i) })).status,
      ).toBe(401);
    }
    const late = await post(t.app, "/api/v1/recovery/password/totp", { token, code: totpCode(t, secret) });
    expect(late.status).toBe(400);
    expect(late.body.error).toBe("invalid_token");
  });

  it("refuses an expired reset link, a verification link used as a reset link, and a link after a newer one", async () => {
    await register(t.app, { login_id: "taro.expired" });
    await deliver(t);
    const verify = linkIn(lastTo(smtp, PROFILE.email), "/email/verify").token;
    const reset = await resetLink("taro.expired");
    // another purpose's token
    expect((await post(t.app, "/api/v1/recovery/password/check", { token: verify })).body.error).toBe(
      "invalid_token",
    );
    expect((await post(t.app, "/api/v1/email/verify", { token: reset })).body.error).toBe("invalid_token");
    // 30 minutes on
    t.clock.advance(30 * 60_000 + 1000);
    const late = await post(t.app, "/api/v1/recovery/password/reset", {
      token: reset,
      password: NEW_PASSWORD,
    });
    expect(late.status).toBe(400);
    expect(late.body.error).toBe("invalid_token");
    const newer = await resetLink("taro.expired");
    // a made-up or altered token
    const altered = `${newer.slice(0, -1)}${newer.endsWith("A") ? "B" : "A"}`;
    expect((await post(t.app, "/api/v1/recovery/password/check", { token: altered })).status).toBe(400);
  });

  it("a reset link resets its own member only, and another member's second factor doesn't pass it", async () => {
    await register(t.app, { login_id: "taro.one" });
    await register(t.app, { login_id: "hanako.two", profile: { ...PROFILE, email: "hanako@example.jp" } });
    await enrolTotp(t, await signIn(t.app, "taro.one"));
    const hanako = await enrolTotp(t, await signIn(t.app, "hanako.two"));
    const token = await resetLink("taro.one");
    // Hanako's valid code does not pass Taro's reset.
    expect(
      (await post(t.app, "/api/v1/recovery/password/totp", { token, code: totpCode(t, hanako.secret) }))
        .status,
    ).toBe(401);
    expect(
      (await post(t.app, "/api/v1/recovery/password/recovery-code", { token, code: hanako.codes[0] })).status,
    ).toBe(401);
    // …so Taro's link still can't set a password, and Hanako's password is untouched.
    const reset = await post(t.app, "/api/v1/recovery/password/reset", { token, password: NEW_PASSWORD });
    expect(reset.status).toBe(403);
    expect(
      (await post(t.app, "/api/v1/login", { login_id: "hanako.two", password: STRONG_PASSWORD })).body.status,
    ).toBe("mfa_required");
    expect(
      (await post(t.app, "/api/v1/login", { login_id: "taro.one", password: NEW_PASSWORD })).status,
    ).toBe(401);
  });

  it("answers the same 202 body for known and unknown login IDs and e-mails, in similar time", async () => {
    // Limits raised so that every request is answered 202 and the known ones all mail.
    t.close();
    t = makeApp({
      SEKISHO_SMTP_URL: smtp.url,
      SEKISHO_TRUST_PROXY: "loopback",
      SEKISHO_THROTTLE_POLICY: JSON.stringify({
        mailTarget: 1000,
        mailTargetDay: 1000,
        mailIp: 1000,
        mailMember: 1000,
      }),
    });
    await register(t.app, { login_id: "taro.exists" });
    await deliver(t);
    const sent = smtp.inbox.length;
    const known: number[] = [];
    const unknown: number[] = [];
    const bodies = new Set<string>();
    // Interleaved, so that drift over the run (warm-up, garbage collection) falls on both alike.
    for (let i = 0; i < 24; i++) {
      const pairs: Array<[Record<string, string>, number[]]> = [
        [i % 2 ? { login_id: "taro.exists" } : { email: PROFILE.email }, known],
        [i % 2 ? { login_id: `nobody.${i}` } : { email: `nobody${i}@example.jp` }, unknown],
      ];
      for (const [body, times] of pairs) {
        const start = process.hrtime.bigint();
        const res = await post(t.app, "/api/v1/recovery/password", body).set(
          "X-Forwarded-For",
          "203.0.113.9",
        );
        times.push(Number(process.hrtime.bigint() - start) / 1e6);
        expect(res.status).toBe(202);
        bodies.add(res.text);
      }
    }
    expect([...bodies]).toEqual([JSON.stringify(RECOVERY_ACCEPTED)]);
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
    // The lookup, the token, the encrypted mail and the audit entries all happen after the answer:
    // what differs is noise, not work (the bound is loose so that a busy machine can't fail it: a
    // full parallel run once measured 2.1 ms; doing the work before answering makes known targets
    // several times slower, which this still catches).
    expect(Math.abs(median(known) - median(unknown))).toBeLessThan(Math.max(5, median(unknown)));
    await deliver(t);
    // and every known request did that work: one mail each
    expect(smtp.inbox.length - sent).toBe(24);
  });

  it("reminders of the login ID, however many a stranger asks for, can't use up the member's reset links", async () => {
    await register(t.app, { login_id: "taro.remind" });
    await deliver(t);
    const ask = async (path: string, body: Record<string, string>, ip: string) => {
      let res = await post(t.app, path, body).set("X-Forwarded-For", ip);
      if (res.status === 403) {
        const challenge_solution = await solveChallenge(res.body.challenge);
        res = await post(t.app, path, { ...body, challenge_solution }).set("X-Forwarded-For", ip);
      }
      expect(res.status).toBe(202);
      await deliver(t);
    };
    const resets = () => smtp.to(PROFILE.email).filter((m) => m.subject.includes("パスワードの再設定"));
    const before = smtp.to(PROFILE.email).length;
    for (let i = 0; i < 4; i++)
      await ask("/api/v1/recovery/login-id", { email: PROFILE.email }, `192.0.2.${60 + i}`);
    // the reminders were capped…
    expect(smtp.to(PROFILE.email).length - before).toBe(3);
    expect(resets()).toHaveLength(0);
    // …on their own: the member asking for a reset now gets a link that works.
    await ask("/api/v1/recovery/password", { login_id: "taro.remind" }, "198.51.100.78");
    expect(resets()).toHaveLength(1);
    const { token } = linkIn(resets()[0] as ReceivedMail, "/recovery/reset");
    expect((await post(t.app, "/api/v1/recovery/password/check", { token })).status).toBe(200);
  });

  it("a recovery request's work happens neither in nor right after its answer, and its mail waits for the outbox's next run", async () => {
    await register(t.app, { login_id: "taro.later" });
    await deliver(t);
    const before = smtp.inbox.length;
    t.s.mailer.start(3_600_000); // sending as the service does (a run now, then one an hour here)
    const requested = () =>
      t.s.db.select().from(auditLog).where(eq(auditLog.action, "recovery.password_requested")).all().length;
    for (const login_id of ["taro.later", "nobody.later"]) {
      const res = await post(t.app, "/api/v1/recovery/password", { login_id }).set(
        "X-Forwarded-For",
        "198.51.100.8",
      );
      expect(res.status).toBe(202);
    }
    // Work done at once would slow the asker's next request when the target exists, and only then.
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(requested()).toBe(0);
    expect(
      t.s.db.select().from(auditLog).where(eq(auditLog.action, "recovery.requested_unknown")).all(),
    ).toHaveLength(0);
    await t.s.recovery.settled();
    expect(requested()).toBe(1);
    // The mail is queued, not sent by the request's own work…
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(smtp.inbox.length).toBe(before);
    // …but by the outbox's periodic run. The unknown target's mail was only rehearsed (built and
    // thrown away, for the work to look alike): no row, no mail, no error.
    await t.s.mailer.runDue();
    expect(smtp.inbox.length).toBe(before + 1);
    expect(t.s.db.select().from(outbox).where(eq(outbox.template, "password_reset")).all()).toHaveLength(1);
    expect(t.logs.join("")).not.toContain("rehearsal failed");
  });

  it("a burst of recovery requests for one account is throttled from any address, known or not, without locking the member out", async () => {
    await register(t.app, { login_id: "taro.burst" });
    for (const id of ["taro.burst", "nobody.burst"]) {
      const statuses: number[] = [];
      for (let i = 0; i < 5; i++) {
        const res = await post(t.app, "/api/v1/recovery/password", { login_id: id }).set(
          "X-Forwarded-For",
          `192.0.2.${i + 1}`,
        );
        statuses.push(res.status);
        if (res.status === 403) expect(res.body.error).toBe("challenge_required");
      }
      // past three an hour, each further request costs a proof-of-work: known or not alike
      expect(statuses).toEqual([202, 202, 202, 403, 403]);
    }
    await deliver(t);
    // the mailbox got at most three reset mails…
    const resets = smtp.to(PROFILE.email).filter((m) => m.subject.includes("パスワードの再設定"));
    expect(resets).toHaveLength(3);
    // …and the burst (a stranger's) locked the member out of nothing: every link mailed works, and
    // the member can still ask, paying a second of computing.
    for (const mail of resets) {
      const { token } = linkIn(mail, "/recovery/reset");
      expect((await post(t.app, "/api/v1/recovery/password/check", { token })).status).toBe(200);
    }
    const challenged = await post(t.app, "/api/v1/recovery/password", { login_id: "taro.burst" }).set(
      "X-Forwarded-For",
      "198.51.100.200",
    );
    expect(challenged.status).toBe(403);
    const solution = await solveChallenge(challenged.body.challenge);
    const paid = await post(t.app, "/api/v1/recovery/password", {
      login_id: "taro.burst",
      challenge_solution: solution,
    }).set("X-Forwarded-For", "198.51.100.200");
    expect(paid.status).toBe(202);
    // one address asking about many accounts is slowed too
    const statuses: number[] = [];
    for (let i = 0; i < 11; i++) {
      statuses.push(
        (
          await post(t.app, "/api/v1/recovery/login-id", { email: `walk${i}@example.jp` }).set(
            "X-Forwarded-For",
            "192.0.2.99",
          )
        ).status,
      );
    }
    expect(statuses.at(-1)).toBe(429);
    expect(statuses.filter((s) => s === 202)).toHaveLength(10);
  });

  it("a stranger asking for a member's reset every two minutes, paying each time, can't keep working links out of the member's mailbox", async () => {
    await register(t.app, { login_id: "taro.keep" });
    await deliver(t);
    const ask = async (ip: string) => {
      let res = await post(t.app, "/api/v1/recovery/password", { login_id: "taro.keep" }).set(
        "X-Forwarded-For",
        ip,
      );
      if (res.status === 403) {
        const challenge_solution = await solveChallenge(res.body.challenge);
        res = await post(t.app, "/api/v1/recovery/password", {
          login_id: "taro.keep",
          challenge_solution,
        }).set("X-Forwarded-For", ip);
      }
      expect(res.status).toBe(202);
      await deliver(t);
    };
    const resets = () => smtp.to(PROFILE.email).filter((m) => m.subject.includes("パスワードの再設定"));
    // Forty minutes of it (longer than a link lives), from ever new addresses.
    for (let minute = 0; minute < 40; minute += 2) {
      await ask(`192.0.2.${minute + 1}`);
      t.clock.advance(2 * 60_000);
    }
    // The member's mailbox got a few a ten minutes, not one per request…
    expect(resets().length).toBeLessThanOrEqual(3 * 5);
    // …and whatever the stranger did, the member asking now holds a link that works.
    await ask("198.51.100.77");
    const { token } = linkIn(resets().at(-1) as ReceivedMail, "/recovery/reset");
    expect((await post(t.app, "/api/v1/recovery/password/check", { token })).status).toBe(200);
  });

  it("past the service-wide rate, each recovery request costs a proof-of-work bound to its target", async () => {
    t.close();
    t = makeApp({
      SEKISHO_SMTP_URL: smtp.url,
      SEKISHO_TRUST_PROXY: "loopback",
      SEKISHO_THROTTLE_POLICY: JSON.stringify({ mailGlobal: 4, challengeMaxNumber: 2000 }),
    });
    await register(t.app, { login_id: "taro.busy" }); // its verification mail is the first of four
    const ask = (body: Record<string, unknown>, ip: string) =>
      post(t.app, "/api/v1/recovery/password", body).set("X-Forwarded-For", ip);
    for (let i = 0; i < 3; i++)
      expect((await ask({ login_id: `someone.${i}` }, `192.0.2.${i + 1}`)).status).toBe(202);
    const refused = await ask({ login_id: "taro.busy" }, "192.0.2.50");
    expect(refused.status).toBe(403);
    expect(refused.body.error).toBe("challenge_required");
    const solution = await solveChallenge(refused.body.challenge);
    // bound to its target: it doesn't buy a request for another account
    expect((await ask({ login_id: "someone.else", challenge_solution: solution }, "192.0.2.50")).status).toBe(
      403,
    );
    expect((await ask({ login_id: "taro.busy", challenge_solution: solution }, "192.0.2.50")).status).toBe(
      202,
    );
    // and works once
    expect((await ask({ login_id: "taro.busy", challenge_solution: solution }, "192.0.2.50")).status).toBe(
      403,
    );
    await deliver(t);
    expect(smtp.to(PROFILE.email).some((m) => m.subject.includes("パスワードの再設定"))).toBe(true);
  });

  it("a recovery request by e-mail never shows the requester's address or time to another member who only registered with that address", async () => {
    // Attack: register with the target's address (never verified: no proof of owning it), then
    // watch one's own events for when, and from where, the target asks for recovery.
    await register(t.app, { login_id: "target.real" });
    await register(t.app, { login_id: "watcher.fake" });
    // The target verified the address (as following the mailed link does).
    const target = t.s.db.$client
      .prepare("SELECT id FROM members WHERE login_id = 'target.real'")
      .pluck()
      .get();
    updateMember(t.s.db, t.s.seals, target as string, { emailVerified: true });
    for (const path of ["/api/v1/recovery/password", "/api/v1/recovery/login-id"])
      expect(
        (await post(t.app, path, { email: PROFILE.email }).set("X-Forwarded-For", "203.0.113.77")).status,
      ).toBe(202);
    await deliver(t);
    const events = async (loginId: string) =>
      (
        await supertest(t.app)
          .get("/api/v1/me/events")
          .set("Cookie", await signIn(t.app, loginId))
      ).body.events as { type: string; ip: string | null }[];
    const watcher = await events("watcher.fake");
    expect(watcher.filter((e) => e.type.startsWith("recovery."))).toEqual([]);
    expect(JSON.stringify(watcher)).not.toContain("203.0.113.77");
    // The address's verified owner sees both, with the address they came from.
    const own = (await events("target.real")).filter((e) => e.type.startsWith("recovery."));
    expect(own.map((e) => [e.type, e.ip])).toEqual([
      ["recovery.login_id_requested", "203.0.113.77"],
      ["recovery.password_requested", "203.0.113.77"],
    ]);
  });

  it("forgotten login ID: every login ID registered with the address, in one mail", async () => {
    await register(t.app, { login_id: "taro.first" });
    const second = await register(t.app, {}); // a generated member number
    await deliver(t);
    const res = await post(t.app, "/api/v1/recovery/login-id", { email: "TARO.YAMADA@example.jp" });
    expect(res.status).toBe(202);
    expect(res.body).toEqual(RECOVERY_ACCEPTED);
    await deliver(t);
    const mail = lastTo(smtp, PROFILE.email);
    expect(mail.subject).toContain("ログインID");
    expect(mail.text).toContain("taro.first");
    expect(mail.text).toContain(second.body.login_id);
    // unknown address: same answer, no mail
    const before = smtp.inbox.length;
    expect((await post(t.app, "/api/v1/recovery/login-id", { email: "nobody@example.jp" })).body).toEqual(
      RECOVERY_ACCEPTED,
    );
    await deliver(t);
    expect(smtp.inbox.length).toBe(before);
    // malformed input is a 400 (it says nothing about anyone)
    expect((await post(t.app, "/api/v1/recovery/login-id", { email: "not-an-address" })).status).toBe(400);
    expect(
      (await post(t.app, "/api/v1/recovery/password", { login_id: "x", email: PROFILE.email })).status,
    ).toBe(400);
  });

  it("SMTP down during a request, then up: the message is delivered afterwards", async () => {
    await register(t.app, { login_id: "taro.outage" });
    await deliver(t);
    await smtp.stop();
    try {
      expect((await post(t.app, "/api/v1/recovery/password", { login_id: "taro.outage" })).status).toBe(202);
      await deliver(t);
      const row = t.s.db
        .select()
        .from(outbox)
        .all()
        .find((r) => r.template === "password_reset");
      expect(row?.status).toBe("pending");
      expect(row?.attempts).toBe(1);
      expect(row?.lastError).toMatch(/ECONNREFUSED|ESOCKET|ECONNECTION/);
    } finally {
      await smtp.start();
    }
    // Not before its back-off…
    expect(await t.s.mailer.runDue()).toBe(0);
    t.clock.advance(backoffMs(1));
    expect(await t.s.mailer.runDue()).toBe(1);
    const mail = lastTo(smtp, PROFILE.email);
    const { token } = linkIn(mail, "/recovery/reset");
    expect((await post(t.app, "/api/v1/recovery/password/check", { token })).status).toBe(200);
    const row = t.s.db
      .select()
      .from(outbox)
      .all()
      .find((r) => r.template === "password_reset");
    expect(row?.status).toBe("sent");
    expect(row?.message).toBeNull(); // the sent message (address, link) is wiped
  });

  it("keeps queued mail encrypted: the database holds no address or link in clear", async () => {
    await register(t.app, { login_id: "taro.secret" });
    expect((await post(t.app, "/api/v1/recovery/password", { login_id: "taro.secret" })).status).toBe(202);
    await t.s.recovery.settled(); // queued, not sent
    t.s.db.$client.pragma("wal_checkpoint(TRUNCATE)");
    const file = fs.readFileSync(t.s.config.dbFile).toString("latin1");
    expect(file).not.toContain("taro.yamada@example.jp");
    expect(file).not.toContain("/recovery/reset?token=");
    await t.s.mailer.runDue();
    const { token } = linkIn(lastTo(smtp, PROFILE.email), "/recovery/reset");
    expect(t.logs.join("")).not.toContain(token);
  });

  it("a reset cancels an e-mail change someone started with the old password", async () => {
    await register(t.app, { login_id: "taro.stolen" });
    // Attack: with a phished password, move the account's address to the attacker's.
    const thief = await signIn(t.app, "taro.stolen");
    expect((await post(t.app, "/api/v1/me/email", { email: "thief@example.net" }, thief)).status).toBe(202);
    await deliver(t);
    const confirm = linkIn(lastTo(smtp, "thief@example.net"), "/email/verify").token;
    // the member hears of it at once, and resets the password
    expect(lastTo(smtp, PROFILE.email).subject).toContain("メールアドレスの変更手続き");
    const token = await resetLink("taro.stolen");
    expect(
      (await post(t.app, "/api/v1/recovery/password/reset", { token, password: NEW_PASSWORD })).status,
    ).toBe(200);
    // the thief's confirmation link is dead
    expect((await post(t.app, "/api/v1/email/verify", { token: confirm })).status).toBe(400);
    const me = await supertest(t.app)
      .get("/api/v1/me")
      .set("Cookie", await signIn(t.app, "taro.stolen", NEW_PASSWORD));
    expect(me.body.profile.email).toBe(PROFILE.email);
  });

  it("an e-mail change kills reset links mailed to the old address", async () => {
    await register(t.app, { login_id: "taro.lostbox" });
    const oldLink = await resetLink("taro.lostbox");
    const cookie = await signIn(t.app, "taro.lostbox");
    expect((await post(t.app, "/api/v1/me/email", { email: "taro.safe@example.com" }, cookie)).status).toBe(
      202,
    );
    await deliver(t);
    const confirm = linkIn(lastTo(smtp, "taro.safe@example.com"), "/email/verify").token;
    expect((await post(t.app, "/api/v1/email/verify", { token: confirm })).status).toBe(200);
    const late = await post(t.app, "/api/v1/recovery/password/reset", {
      token: oldLink,
      password: NEW_PASSWORD,
    });
    expect(late.status).toBe(400);
    expect(late.body.error).toBe("invalid_token");
  });

  it("a password change kills pending reset links and e-mail changes", async () => {
    await register(t.app, { login_id: "taro.rotate" });
    const link = await resetLink("taro.rotate");
    const cookie = await signIn(t.app, "taro.rotate");
    await post(t.app, "/api/v1/me/email", { email: "other@example.com" }, cookie);
    await deliver(t);
    const confirm = linkIn(lastTo(smtp, "other@example.com"), "/email/verify").token;
    const changed = await post(
      t.app,
      "/api/v1/me/password",
      { current_password: STRONG_PASSWORD, new_password: NEW_PASSWORD },
      cookie,
    );
    expect(changed.status).toBe(204);
    expect((await post(t.app, "/api/v1/recovery/password/check", { token: link })).status).toBe(400);
    expect((await post(t.app, "/api/v1/email/verify", { token: confirm })).status).toBe(400);
  });

  it("of two resets racing with one link, exactly one sets its password", async () => {
    await register(t.app, { login_id: "taro.race" });
    const token = await resetLink("taro.race");
    const passwords = ["first racing passphrase 1", "second racing passphrase 2"];
    const results = await Promise.all(
      passwords.map((password) => post(t.app, "/api/v1/recovery/password/reset", { token, password })),
    );
    expect(results.map((r) => r.status).sort()).toEqual([200, 400]);
    const winner = passwords[results.findIndex((r) => r.status === 200)] as string;
    const loser = passwords.find((p) => p !== winner) as string;
    expect((await post(t.app, "/api/v1/login", { login_id: "taro.race", password: winner })).status).toBe(
      200,
    );
    expect((await post(t.app, "/api/v1/login", { login_id: "taro.race", password: loser })).status).toBe(401);
  });

  it("a refused recipient fails the message at once; a server refusing us raises an alert and keeps retrying", async () => {
    await register(t.app, { login_id: "taro.refused" });
    smtp.refuse = { stage: "rcpt", code: 550 };
    try {
      await deliver(t);
      const row = t.s.db.select().from(outbox).all().at(-1);
      expect(row?.status).toBe("failed");
      expect(row?.lastError).toBe("550");
      expect(row?.message).toBeNull();
      expect(t.s.alerts.list().map((a) => a.kind)).toContain("mail_undeliverable");

      // A wrong SMTP password (535): nothing may be lost while the operator fixes it.
      await post(t.app, "/api/v1/recovery/password", { login_id: "taro.refused" });
      smtp.refuse = { stage: "mail", code: 535 };
      await deliver(t);
      const pending = t.s.db.select().from(outbox).all().at(-1);
      expect(pending?.status).toBe("pending");
      expect(pending?.lastError).toBe("535");
      expect(t.s.alerts.list().map((a) => a.kind)).toContain("mail_failing");
    } finally {
      smtp.refuse = null;
    }
    t.clock.advance(backoffMs(1));
    expect(await t.s.mailer.runDue()).toBe(1);
    expect(lastTo(smtp, PROFILE.email).subject).toContain("パスワードの再設定");
  });

  it("an address that was just mailed (a registration's verification mail) is throttled like an unknown one: the limit tells no registered address", async () => {
    let ip = 0;
    const statuses = async (path: string, email: string) => {
      const seen: number[] = [];
      for (let i = 0; i < 4; i++) {
        ip++;
        seen.push((await post(t.app, path, { email }).set("X-Forwarded-For", `192.0.2.${ip}`)).status);
      }
      return seen;
    };
    for (const [i, path] of ["/api/v1/recovery/login-id", "/api/v1/recovery/password"].entries()) {
      const email = `hanako.${i}@example.jp`;
      // registering mails the address its verification link; asking by login ID mails it resets
      expect(
        (await register(t.app, { login_id: `hanako.${i}`, profile: { ...PROFILE, email } })).status,
      ).toBe(201);
      for (let k = 0; k < 3; k++)
        await post(t.app, "/api/v1/recovery/password", { login_id: `hanako.${i}` }).set(
          "X-Forwarded-For",
          `198.51.100.${k + 1}`,
        );
      await t.s.recovery.settled();
      const registered = await statuses(path, email);
      const unknown = await statuses(path, `nobody.${i}@example.jp`);
      expect(registered).toEqual(unknown);
      expect(unknown).toEqual([202, 202, 202, 403]);
    }
  });

  it("a member's resend or change of address tells nobody whether the address was mailed lately: past its limit the mail is withheld, the answer and the member's events the same", async () => {
    // The victim registers (the address's verification mail).
    expect(
      (
        await register(t.app, {
          login_id: "victim.mailed",
          profile: { ...PROFILE, email: "victim@example.jp" },
        })
      ).status,
    ).toBe(201);
    let n = 0;
    // Attack: register a throwaway account with an address, then ask for resends and address changes.
    const probe = async (email: string) => {
      n++;
      expect((await register(t.app, { login_id: `probe.${n}`, profile: { ...PROFILE, email } })).status).toBe(
        201,
      );
      const cookie = await signIn(t.app, `probe.${n}`);
      const seen: number[] = [];
      for (let i = 0; i < 3; i++) {
        const ip = `203.0.113.${n * 10 + i}`;
        seen.push(
          (await post(t.app, "/api/v1/me/email/verification", {}, cookie).set("X-Forwarded-For", ip)).status,
        );
      }
      const events = (await supertest(t.app).get("/api/v1/me/events").set("Cookie", cookie)).body
        .events as Array<{
        type: string;
        outcome: string;
        reason: string | null;
        details: unknown;
      }>;
      return {
        seen,
        events: events.map((e) => [e.type, e.outcome, e.reason, Object.keys(e.details as object)]),
      };
    };
    const mailed = await probe("victim@example.jp");
    const unknown = await probe("nobody.mailed@example.jp");
    expect(mailed).toEqual(unknown);
    expect(unknown.seen).toEqual([202, 202, 202]);
    // The victim's mailbox still got no more than the limit (3 an hour).
    await deliver(t);
    expect(smtp.to("victim@example.jp").length).toBeLessThanOrEqual(3);
    // The same through a change of address to an address that had its three mails this hour
    // (three registrations with it): answered alike.
    for (const id of ["victim.two", "victim.three", "victim.four"])
      expect(
        (await register(t.app, { login_id: id, profile: { ...PROFILE, email: "victim2@example.jp" } }))
          .status,
      ).toBe(201);
    const change = async (to: string) => {
      n++;
      expect(
        (
          await register(t.app, {
            login_id: `probe.${n}`,
            profile: { ...PROFILE, email: `own.${n}@example.jp` },
          })
        ).status,
      ).toBe(201);
      const cookie = await signIn(t.app, `probe.${n}`);
      // First a change to another address of the asker's: its link must die with the next change,
      // mailed or withheld alike.
      const mine = `mine.${n}@example.jp`;
      await post(t.app, "/api/v1/me/email", { email: mine }, cookie).set(
        "X-Forwarded-For",
        `203.0.113.${n * 10 + 9}`,
      );
      await deliver(t);
      const { token: myLink } = linkIn(lastTo(smtp, mine), "/email/verify");
      const seen: number[] = [];
      let older = 0;
      for (let i = 0; i < 3; i++) {
        const ip = `203.0.113.${n * 10 + i}`;
        seen.push(
          (await post(t.app, "/api/v1/me/email", { email: to }, cookie).set("X-Forwarded-For", ip)).status,
        );
        if (i === 0) older = (await supertest(t.app).get(`/email/verify?token=${myLink}`)).status;
      }
      // …and what the asker's own (current) address was told
      await deliver(t);
      return { seen, toOwnAddress: smtp.to(`own.${n}@example.jp`).map((m) => m.subject), older };
    };
    expect(await change("victim2@example.jp")).toEqual(await change("nobody2@example.jp"));
    // Admins see what was withheld.
    const withheld = t.s.db
      .select()
      .from(auditLog)
      .where(eq(auditLog.action, "email.verification_sent"))
      .all()
      .filter((e) => e.details.includes("withheld"));
    expect(withheld.length).toBeGreaterThan(0);
  });

  it("registration can't be used to flood one address: past the mail limits the member is made, the mail is not", async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) statuses.push((await register(t.app, {})).status);
    expect(statuses).toEqual([201, 201, 201, 201, 201]);
    await deliver(t);
    expect(smtp.to(PROFILE.email)).toHaveLength(3);
  });

  it("the hosted recovery forms refuse posts from another origin", async () => {
    for (const path of ["/recovery/password", "/recovery/login-id", "/recovery/reset", "/email/verify"]) {
      const res = await supertest(t.app)
        .post(path)
        .set("Origin", "https://evil.example")
        .type("form")
        .send({ identifier: "taro", email: PROFILE.email, token: "x".repeat(43) });
      expect(res.status, path).toBe(403);
    }
  });

  it("password change needs the current password, ends the other sessions and trusted devices, keeps this one, and tells the member", async () => {
    const id = (await register(t.app, { login_id: "taro.change" })).body.member_id as string;
    const here = await signIn(t.app, "taro.change");
    const elsewhere = await signIn(t.app, "taro.change");
    // Trusted devices (as sign-ins with a second factor leave them): this browser's and another.
    const thisDevice = t.s.devices.issue(id, "this browser");
    const otherDevice = t.s.devices.issue(id, "a copied cookie");
    const wrong = await post(
      t.app,
      "/api/v1/me/password",
      { current_password: "not it at all 123", new_password: NEW_PASSWORD },
      here,
    );
    expect(wrong.status).toBe(401);
    expect(wrong.body.error).toBe("invalid_credentials");
    const weak = await post(
      t.app,
      "/api/v1/me/password",
      { current_password: STRONG_PASSWORD, new_password: "password" },
      here,
    );
    expect(weak.body.error).toBe("weak_password");
    const ok = await post(
      t.app,
      "/api/v1/me/password",
      { current_password: STRONG_PASSWORD, new_password: NEW_PASSWORD },
      `${here}; sekisho_device=${thisDevice.token}`,
    );
    expect(ok.status).toBe(204);
    expect(t.s.devices.recognise(thisDevice.token, id)).not.toBeNull();
    expect(t.s.devices.recognise(otherDevice.token, id)).toBeNull();
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", here)).status).toBe(200);
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", elsewhere)).status).toBe(401);
    await signIn(t.app, "taro.change", NEW_PASSWORD);
    await deliver(t);
    expect(lastTo(smtp, PROFILE.email).subject).toContain("パスワードが変更されました");
  });

  it("wrong current passwords are throttled like sign-in failures, and a session that guesses is ended", async () => {
    // Attack: a stolen session guesses the current password to take the account over.
    await register(t.app, { login_id: "taro.guessing" });
    const guess = (cookie: string, i: number) =>
      post(
        t.app,
        "/api/v1/me/password",
        { current_password: `guess number ${i} x`, new_password: NEW_PASSWORD },
        cookie,
      );
    const cookie = await signIn(t.app, "taro.guessing");
    const answers: string[] = [];
    for (let i = 0; i < 6; i++) answers.push((await guess(cookie, i)).body.error);
    // Five wrong ones end the session; the sixth has no session left.
    expect(answers).toEqual([...Array(5).fill("invalid_credentials"), "unauthenticated"]);
    const ended = [...t.s.audit.iterate()].filter(
      (e) => e.action === "password.changed" && e.outcome === "failure",
    );
    expect(JSON.parse(ended.at(-1)?.details ?? "{}")).toMatchObject({ session_ended: true });
    // A fresh session from the same address is held to the sign-in throttle (5 a login ID there).
    const again = await signIn(t.app, "taro.guessing").catch(() => null);
    expect(again).toBeNull(); // the address's attempts on this login ID are used up: 429
  });

  it("guesses sent all at once from many addresses count before they are checked: five checks per session in all", async () => {
    await register(t.app, { login_id: "taro.parallel" });
    const parallel = await signIn(t.app, "taro.parallel");
    const verify = vi.spyOn(t.s.hasher, "verify");
    const answers = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        post(
          t.app,
          "/api/v1/me/password",
          { current_password: `guess number ${i} y`, new_password: NEW_PASSWORD },
          parallel,
        ).set("X-Forwarded-For", `198.51.100.${i + 1}`),
      ),
    );
    expect(verify.mock.calls.length).toBe(5);
    expect(answers.every((a) => a.status === 401)).toBe(true);
    verify.mockRestore();
  });

  it("changing the e-mail needs a recent sign-in, takes effect only when the new address confirms, and tells the old one", async () => {
    await register(t.app, { login_id: "taro.move" });
    const cookie = await signIn(t.app, "taro.move");
    t.clock.advance(11 * 60_000);
    const stale = await post(t.app, "/api/v1/me/email", { email: "taro.new@example.com" }, cookie);
    expect(stale.status).toBe(401);
    expect(stale.body.error).toBe("reauthentication_required");
    const fresh = await signIn(t.app, "taro.move");
    expect((await post(t.app, "/api/v1/me/email", { email: "taro.new@example.com" }, fresh)).status).toBe(
      202,
    );
    await deliver(t);
    const confirm = linkIn(lastTo(smtp, "taro.new@example.com"), "/email/verify").token;
    // nothing changed yet
    const me = async () => (await supertest(t.app).get("/api/v1/me").set("Cookie", fresh)).body;
    expect((await me()).profile.email).toBe(PROFILE.email);
    const oldVerify = linkIn(smtp.to(PROFILE.email)[0] as ReceivedMail, "/email/verify").token;
    const done = await post(t.app, "/api/v1/email/verify", { token: confirm });
    expect(done.body.status).toBe("email_changed");
    expect((await me()).profile.email).toBe("taro.new@example.com");
    expect((await me()).email_verified).toBe(true);
    await deliver(t);
    const notice = lastTo(smtp, PROFILE.email);
    expect(notice.subject).toContain("メールアドレスが変更されました");
    expect(notice.text).toContain("t***@e***.com");
    expect(notice.text).not.toContain("taro.new@example.com");
    // the old address's verification link verifies nothing now
    expect((await post(t.app, "/api/v1/email/verify", { token: oldVerify })).status).toBe(400);
    // and recovery by the new address finds the member
    await post(t.app, "/api/v1/recovery/login-id", { email: "taro.new@example.com" });
    await deliver(t);
    expect(lastTo(smtp, "taro.new@example.com").text).toContain("taro.move");
  });
});

describe("mailed tokens and member-level revocation", () => {
  let t: TestApp;
  let memberId: string;
  beforeEach(async () => {
    t = makeApp();
    memberId = (await register(t.app, { login_id: "taro.tokens" })).body.member_id;
  });
  afterEach(() => t.close());

  it("keeps the newest three reset links alive and never voids one whose second factor passed; only the newest verification link", () => {
    const tokens = t.s.memberTokens;
    const issue = (purpose: "reset_password" | "verify_email") => {
      t.clock.advance(1000);
      return tokens.issue(purpose, memberId, { emailIndex: null });
    };
    const passed = issue("reset_password");
    expect(tokens.markMfaPassed(passed.tokenHash)).toMatch(/^[\w-]{43}$/);
    const resets = [
      issue("reset_password"),
      issue("reset_password"),
      issue("reset_password"),
      issue("reset_password"),
    ];
    const live = (x: { token: string }, purpose: "reset_password" | "verify_email") =>
      tokens.find(x.token, purpose) !== null;
    expect(resets.map((r) => live(r, "reset_password"))).toEqual([false, true, true, true]);
    expect(live(passed, "reset_password")).toBe(true);
    const verifies = [issue("verify_email"), issue("verify_email")];
    expect(verifies.map((v) => live(v, "verify_email"))).toEqual([false, true]);
  });

  it("a passed second factor's proof holds for ten minutes, for its own link only", () => {
    const tokens = t.s.memberTokens;
    const a = tokens.issue("reset_password", memberId, { emailIndex: null });
    const b = tokens.issue("reset_password", memberId, { emailIndex: null });
    const proof = tokens.markMfaPassed(a.tokenHash) as string;
    expect(tokens.consume(b.tokenHash, { mfaProof: proof })).toBe(false);
    t.clock.advance(10 * 60_000 + 1);
    expect(tokens.consume(a.tokenHash, { mfaProof: proof })).toBe(false);
    const again = tokens.markMfaPassed(a.tokenHash) as string;
    expect(tokens.consume(a.tokenHash, { mfaProof: proof })).toBe(false); // the old proof is replaced
    expect(tokens.consume(a.tokenHash, { mfaProof: again })).toBe(true);
    expect(tokens.consume(a.tokenHash, { mfaProof: again })).toBe(false); // once
  });

  it("links provider rows written before account_id existed to their member, so a reset revokes them", async () => {
    const store = t.s.oidcStore;
    const sub = t.s.db.$client
      .prepare("SELECT sub FROM members WHERE id = ?")
      .pluck()
      .get(memberId) as string;
    await store.upsert(
      "RefreshToken",
      "rt-old",
      { accountId: sub, grantId: "g1", jti: "rt-old" } as never,
      3600,
    );
    await store.upsert("Grant", "g1", { accountId: sub, jti: "g1" } as never, 3600);
    await store.upsert("ClientCredentials", "cc", { jti: "cc" } as never, 3600);
    // as a database from before migration 0009 would hold them
    t.s.db.$client.prepare("UPDATE oidc_payloads SET account_id = NULL").run();
    expect(store.revokeAccount(sub)).toBe(0);
    expect(store.backfillAccountIds()).toBe(2);
    expect(store.backfillAccountIds()).toBe(0); // idempotent
    expect(store.revokeAccount(sub)).toBe(2);
    expect(store.find("RefreshToken", "rt-old")).toBeUndefined();
    expect(store.find("ClientCredentials", "cc")).toBeDefined();
  });
});

describe("development mail: .eml files in the data directory", () => {
  it("writes each message as one .eml file in <data dir>/outbox, readable only by the service", async () => {
    const t = makeApp();
    try {
      await register(t.app, { login_id: "taro.files" });
      expect(await t.s.mailer.runDue()).toBe(1);
      const dir = path.join(t.dir, "outbox");
      const files = fs.readdirSync(dir).filter((f) => f.endsWith(".eml"));
      expect(files).toHaveLength(1);
      const file = path.join(dir, files[0] as string);
      expect(fs.statSync(file).mode & 0o077).toBe(0);
      const raw = fs.readFileSync(file, "utf8");
      expect(raw).toMatch(/^To: taro\.yamada@example\.jp$/m);
      expect(raw).toContain("/email/verify?token=");
    } finally {
      t.close();
    }
  });
});

describe("recovery and OIDC: a reset revokes member sites' tokens; verification shows in claims", () => {
  const smtp = new TestSmtp();
  let listening: ListeningApp;
  const REDIRECT = "http://127.0.0.1:9/callback";

  beforeAll(async () => {
    await smtp.start();
    listening = await listenWithMember("oidc.reset", { SEKISHO_SMTP_URL: smtp.url });
  });
  afterAll(async () => {
    await listening.close();
    await smtp.stop();
  });

  async function codeFlow(config: oidc.Configuration, issuer: string) {
    const jar = new Jar();
    const verifier = oidc.randomPKCECodeVerifier();
    const state = oidc.randomState();
    const url = oidc.buildAuthorizationUrl(config, {
      redirect_uri: REDIRECT,
      scope: "openid email",
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
      code_challenge_method: "S256",
      state,
    });
    await jar.follow(url.toString(), issuer);
    const login = await jar.fetch(`${issuer}/api/v1/login`, {
      method: "POST",
      headers: { "content-type": "application/json", origin: issuer },
      body: JSON.stringify({ login_id: "oidc.reset", password: STRONG_PASSWORD }),
    });
    expect(login.status).toBe(200);
    const back = await jar.follow(url.toString(), issuer);
    return oidc.authorizationCodeGrant(config, new URL(back.url), {
      pkceCodeVerifier: verifier,
      expectedState: state,
    });
  }

  it("email_verified follows verification, and a reset kills refresh tokens", async () => {
    const { t, issuer } = listening;
    const client = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals }).add({
      name: "会員サイト",
      redirectUris: [REDIRECT],
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
    const before = await codeFlow(config, issuer);
    const sub = before.claims()?.sub as string;
    expect((await oidc.fetchUserInfo(config, before.access_token, sub)).email_verified).toBe(false);

    await t.s.mailer.runDue();
    const verify = linkIn(lastTo(smtp, PROFILE.email), "/email/verify").token;
    const verified = await supertest(t.app)
      .post("/api/v1/email/verify")
      .set("Origin", issuer)
      .set("Content-Type", "application/json")
      .send({ token: verify });
    expect(verified.status).toBe(200);
    const after = await codeFlow(config, issuer);
    expect((await oidc.fetchUserInfo(config, after.access_token, sub)).email_verified).toBe(true);

    // The refresh tokens work… until the password is reset.
    const rotated = await oidc.refreshTokenGrant(config, after.refresh_token as string);
    const ask = await supertest(t.app)
      .post("/api/v1/recovery/password")
      .set("Origin", issuer)
      .set("Content-Type", "application/json")
      .send({ email: PROFILE.email });
    expect(ask.status).toBe(202);
    await t.s.recovery.settled();
    await t.s.mailer.runDue();
    const token = linkIn(lastTo(smtp, PROFILE.email), "/recovery/reset").token;
    const reset = await supertest(t.app)
      .post("/api/v1/recovery/password/reset")
      .set("Origin", issuer)
      .set("Content-Type", "application/json")
      .send({ token, password: NEW_PASSWORD });
    expect(reset.status).toBe(200);
    for (const rt of [rotated.refresh_token, before.refresh_token]) {
      await expect(oidc.refreshTokenGrant(config, rt as string)).rejects.toMatchObject({
        error: "invalid_grant",
      });
    }
    await expect(oidc.fetchUserInfo(config, rotated.access_token, sub)).rejects.toBeTruthy();
  });
});
