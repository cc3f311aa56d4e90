import * as oidc from "openid-client";
import { generateSync } from "otplib";
import supertest from "supertest";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Clients } from "../src/oidc/clients.js";
import { adminPasskeySession, adminWithPasskey } from "./support/admin.js";
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
import { Jar } from "./support/browser-jar.js";
import { type ListeningApp, listenWithMember } from "./support/oidc.js";
import { SoftAuthenticator } from "./support/soft-authenticator.js";

const DAY = 24 * 3_600_000;
const REQUIRED = {
  mode: "required",
  grace_days: 14,
  methods: ["totp", "webauthn"],
  phishing_resistant: false,
};

async function enrolTotp(t: TestApp, cookie: string) {
  const begin = await post(t.app, "/api/v1/me/totp", {}, cookie);
  const secret = begin.body.secret as string;
  const code = () => generateSync({ secret, epoch: Math.floor(t.clock.now().getTime() / 1000) });
  const done = await post(t.app, "/api/v1/me/totp/verify", { code: code() }, cookie);
  t.clock.advance(31_000);
  return { secret, code, done };
}

describe("MFA policy: admin API and enforcement at sign-in", () => {
  let t: TestApp;
  let admin: string;
  let auth: SoftAuthenticator;
  beforeEach(async () => {
    t = makeApp();
    ({ auth } = await adminWithPasskey(t));
    admin = await adminPasskeySession(t, auth);
  });
  afterEach(() => t.close());

  const put = (body: unknown, cookie = admin) =>
    supertest(t.app)
      .put("/api/v1/admin/mfa-policy")
      .set("Origin", ORIGIN)
      .set("Content-Type", "application/json")
      .set("Cookie", cookie)
      .send(JSON.stringify(body));
  const login = (loginId: string) =>
    post(t.app, "/api/v1/login", { login_id: loginId, password: STRONG_PASSWORD });

  it("reads and sets the policy (validated, audited); members can't", async () => {
    const initial = await supertest(t.app).get("/api/v1/admin/mfa-policy").set("Cookie", admin);
    expect(initial.body).toMatchObject({
      mode: "optional",
      grace_days: 14,
      methods: ["totp", "webauthn"],
      phishing_resistant: false,
    });
    expect((await put({ ...REQUIRED, grace_days: -1 })).status).toBe(400);
    expect((await put({ ...REQUIRED, methods: ["totp"], phishing_resistant: true })).status).toBe(400);
    expect((await put({ ...REQUIRED, extra: 1 })).status).toBe(400);
    const set = await put(REQUIRED);
    expect(set.status).toBe(200);
    expect(set.body.required_since).toBe(t.clock.now().toISOString());
    const entry = [...t.s.audit.iterate()].filter((e) => e.action === "admin.mfa_policy_changed").at(-1);
    expect(JSON.parse(entry?.details ?? "{}")).toMatchObject({
      scope: "global",
      before: null,
      after: { mode: "required" },
    });
    // editing a required policy does not restart the grace period
    t.clock.advance(30 * 60_000);
    expect((await put({ ...REQUIRED, grace_days: 7 })).body.required_since).toBe(set.body.required_since);
    await register(t.app, { login_id: "plain.member" });
    expect((await put(REQUIRED, await signIn(t.app, "plain.member"))).status).toBe(403);
  });

  it("required with a 14-day grace: password alone until it ends, then only a limited session that can add a factor", async () => {
    await register(t.app, { login_id: "taro.grace" });
    await put(REQUIRED);
    const during = await login("taro.grace");
    expect(during.body.status).toBe("authenticated");
    expect(during.body.mfa_enrollment_due).toBe(new Date(t.clock.now().getTime() + 14 * DAY).toISOString());

    t.clock.advance(14 * DAY + 1000);
    const after = await login("taro.grace");
    expect(after.body).toEqual({ status: "mfa_enrollment_required", methods: ["totp", "webauthn"] });
    const limited = sessionCookie(after);
    // The limited session reads /me and adds a factor; nothing else.
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", limited)).status).toBe(200);
    expect((await supertest(t.app).get("/api/v1/me/sessions").set("Cookie", limited)).status).toBe(401);
    expect((await supertest(t.app).get("/api/v1/me/events").set("Cookie", limited)).status).toBe(401);
    const { done } = await enrolTotp(t, limited);
    expect(done.body.status).toBe("authenticated");
    const full = sessionCookie(done);
    expect((await supertest(t.app).get("/api/v1/me/sessions").set("Cookie", full)).status).toBe(200);
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", limited)).status).toBe(401); // replaced
    const me = await supertest(t.app).get("/api/v1/me").set("Cookie", full);
    expect(me.body.session.acr).toBe("urn:sekisho:acr:mfa");
    // From now on the factor is asked for.
    expect((await login("taro.grace")).body.status).toBe("mfa_required");
  });

  it("the hosted account page gives a limited session only the means to add a factor", async () => {
    await register(t.app, { login_id: "taro.hosted" });
    await put({ ...REQUIRED, grace_days: 0 });
    const res = await supertest(t.app)
      .post("/account/login")
      .set("Origin", ORIGIN)
      .type("form")
      .send({ login_id: "taro.hosted", password: STRONG_PASSWORD });
    expect(res.status).toBe(303);
    const limited = sessionCookie(res);
    const page = await supertest(t.app).get("/account").set("Cookie", limited);
    expect(page.text).toContain("2段階認証の設定が必要です");
    expect(page.text).toContain("data-passkey-register");
    expect(page.text).not.toContain("/account/sessions/"); // nothing else of the account
    const totp = await supertest(t.app)
      .post("/account/totp")
      .set("Origin", ORIGIN)
      .set("Cookie", limited)
      .type("form")
      .send({});
    expect(totp.status).toBe(200);
    expect(totp.text).toContain("<svg");
  });

  it("a limited session can't swap the member's authenticator app for the attacker's, nor read the profile", async () => {
    await register(t.app, { login_id: "taro.swap" });
    const { code } = await enrolTotp(t, await signIn(t.app, "taro.swap"));
    // Both methods listed, but phishing-resistant: only passkeys count.
    await put({ mode: "required", grace_days: 0, methods: ["totp", "webauthn"], phishing_resistant: true });
    const step = await login("taro.swap");
    const limited = await post(t.app, "/api/v1/login/totp", { mfa_token: step.body.mfa_token, code: code() });
    expect(limited.body.status).toBe("mfa_enrollment_required");
    const cookie = sessionCookie(limited);
    // Attack: with a phished password and code, replace the member's app by the attacker's.
    expect((await post(t.app, "/api/v1/me/totp", {}, cookie)).status).toBe(403);
    const me = await supertest(t.app).get("/api/v1/me").set("Cookie", cookie);
    expect(me.status).toBe(200);
    expect(me.body.profile).toBeUndefined(); // no personal data behind a limited session
    expect(me.body.session.kind).toBe("limited");
  });

  it("where only passkeys count, a member who has one can't sign in with a code (TOTP or recovery) at all", async () => {
    await register(t.app, { login_id: "taro.both" });
    const first = await signIn(t.app, "taro.both");
    const { code, done } = await enrolTotp(t, first);
    const mfaStep = await login("taro.both");
    const mfa = sessionCookie(
      await post(t.app, "/api/v1/login/totp", { mfa_token: mfaStep.body.mfa_token, code: code() }),
    );
    t.clock.advance(31_000);
    const key = new SoftAuthenticator();
    const options = await post(t.app, "/api/v1/me/passkeys/options", {}, mfa);
    const added = await post(
      t.app,
      "/api/v1/me/passkeys",
      { response: key.register(options.body, { origin: ORIGIN }) },
      mfa,
    );
    expect(added.status).toBe(201);
    await put({ mode: "required", grace_days: 0, methods: ["webauthn"], phishing_resistant: false });
    const step = await login("taro.both");
    expect(step.body.methods).toEqual(["webauthn"]);
    const viaTotp = await post(t.app, "/api/v1/login/totp", { mfa_token: step.body.mfa_token, code: code() });
    expect(viaTotp.status).toBe(403);
    expect(viaTotp.body.error).toBe("method_not_allowed");
    const recovery = done.body.recovery_codes[0] as string;
    const viaCode = await post(t.app, "/api/v1/login/recovery-code", {
      mfa_token: step.body.mfa_token,
      code: recovery,
    });
    expect(viaCode.status).toBe(403);
    expect(viaCode.headers["set-cookie"]).toBeUndefined();
    // (the code was not spent)
    const id = t.s.db.$client
      .prepare("SELECT id FROM members WHERE login_id = 'taro.both'")
      .pluck()
      .get() as string;
    expect(t.s.factors.of(id).recoveryCodes).toBe(10);
  });

  it("under a required policy the last factor can't be removed (the session would outrank the account)", async () => {
    await register(t.app, { login_id: "taro.last" });
    await put({ ...REQUIRED, grace_days: 0 });
    const limited = sessionCookie(await login("taro.last"));
    const { done } = await enrolTotp(t, limited);
    const full = sessionCookie(done);
    const del = () =>
      supertest(t.app)
        .delete("/api/v1/me/totp")
        .set("Origin", ORIGIN)
        .set("Content-Type", "application/json")
        .set("Cookie", full);
    const refused = await del();
    expect(refused.status).toBe(409);
    expect(refused.body.error).toBe("factor_required");
    const me = await supertest(t.app).get("/api/v1/me").set("Cookie", full);
    expect(me.body.mfa.totp).toBe(true); // rolled back, recovery codes too
    expect(me.body.mfa.recovery_codes_remaining).toBe(10);
    // With a passkey beside it, the app can go.
    const key = new SoftAuthenticator();
    const options = await post(t.app, "/api/v1/me/passkeys/options", {}, full);
    await post(
      t.app,
      "/api/v1/me/passkeys",
      { response: key.register(options.body, { origin: ORIGIN }) },
      full,
    );
    expect((await del()).status).toBe(204);
    // Where only passkeys count, an authenticator app left behind is not enough either.
    const { done: again } = await enrolTotp(t, full);
    expect(again.status).toBe(200);
    await put({ ...REQUIRED, grace_days: 0, methods: ["webauthn"] });
    const passkeyId = (await supertest(t.app).get("/api/v1/me").set("Cookie", full)).body.mfa.passkeys[0].id;
    const last = await supertest(t.app)
      .delete(`/api/v1/me/passkeys/${passkeyId}`)
      .set("Origin", ORIGIN)
      .set("Content-Type", "application/json")
      .set("Cookie", full);
    expect(last.status).toBe(409);
    expect(last.body.error).toBe("factor_required");
  });

  it("a limited session that adds a passkey is upgraded with the amr that passkey proved, not more", async () => {
    await register(t.app, { login_id: "taro.amr" });
    await put({ ...REQUIRED, grace_days: 0 });
    const after = await login("taro.amr");
    expect(after.body.status).toBe("mfa_enrollment_required");
    const limited = sessionCookie(after);
    const key = new SoftAuthenticator();
    const options = await post(t.app, "/api/v1/me/passkeys/options", {}, limited);
    // An authenticator that did not verify the user (no PIN, no biometrics).
    const added = await post(
      t.app,
      "/api/v1/me/passkeys",
      { response: key.register(options.body, { origin: ORIGIN, uv: false }) },
      limited,
    );
    expect(added.status, added.text).toBe(201);
    const me = await supertest(t.app).get("/api/v1/me").set("Cookie", sessionCookie(added));
    expect(me.body.session.amr).toContain("hwk");
    expect(me.body.session.amr).not.toContain("user");
  });

  it("counts the grace period from registration for members who join after the policy took effect", async () => {
    await put(REQUIRED);
    t.clock.advance(10 * DAY);
    await register(t.app, { login_id: "taro.late" });
    t.clock.advance(5 * DAY); // 15 days after the policy, 5 after registration
    expect((await login("taro.late")).body.status).toBe("authenticated");
    t.clock.advance(10 * DAY);
    expect((await login("taro.late")).body.status).toBe("mfa_enrollment_required");
  });

  it("phishing_resistant: TOTP no longer satisfies; a member with a passkey is offered only it", async () => {
    await register(t.app, { login_id: "taro.totp" });
    const { code } = await enrolTotp(t, await signIn(t.app, "taro.totp"));
    await put({ mode: "required", grace_days: 0, methods: ["webauthn"], phishing_resistant: true });
    const step = await login("taro.totp");
    expect(step.body.status).toBe("mfa_required");
    const afterTotp = await post(t.app, "/api/v1/login/totp", {
      mfa_token: step.body.mfa_token,
      code: code(),
    });
    // Attack: a phished password and one-time code. They get a session that can only add a passkey.
    expect(afterTotp.body).toEqual({ status: "mfa_enrollment_required", methods: ["webauthn"] });
    const limited = sessionCookie(afterTotp);
    expect((await supertest(t.app).get("/api/v1/me/sessions").set("Cookie", limited)).status).toBe(401);
    // The member adds a passkey and is signed in at the phishing-resistant level.
    const key = new SoftAuthenticator();
    const options = await post(t.app, "/api/v1/me/passkeys/options", {}, limited);
    const added = await post(
      t.app,
      "/api/v1/me/passkeys",
      { response: key.register(options.body, { origin: ORIGIN }) },
      limited,
    );
    expect(added.body.status).toBe("authenticated");
    const me = await supertest(t.app).get("/api/v1/me").set("Cookie", sessionCookie(added));
    expect(me.body.session.acr).toBe("urn:sekisho:acr:phishing-resistant");
    // Next time only the passkey is offered.
    expect((await login("taro.totp")).body.methods).toEqual(["webauthn"]);
    // And no new authenticator app can be added.
    expect((await post(t.app, "/api/v1/me/totp", {}, sessionCookie(added))).status).toBe(403);
  });

  it("admins need a passkey from the first sign-in; an admin with password and TOTP is refused by the admin API", async () => {
    const made = await t.s.registrations.register(
      { loginId: "totp.admin", password: STRONG_PASSWORD, profile: {} },
      { ip: null, requestId: null },
      { role: "admin" },
    );
    // First sign-in: only a limited session, and only a passkey may be added.
    const first = await login("totp.admin");
    expect(first.body).toEqual({ status: "mfa_enrollment_required", methods: ["webauthn"] });
    expect((await post(t.app, "/api/v1/me/totp", {}, sessionCookie(first))).status).toBe(403);
    // An admin who has TOTP anyway (say, from before the rule): password + TOTP is not enough.
    const begun = t.s.factors.totp.begin(made.memberId, "totp.admin");
    const code = () =>
      generateSync({ secret: begun.secret, epoch: Math.floor(t.clock.now().getTime() / 1000) });
    expect(t.s.factors.totp.activate(made.memberId, code())).toBe(true);
    t.clock.advance(31_000);
    const step = await login("totp.admin");
    const done = await post(t.app, "/api/v1/login/totp", { mfa_token: step.body.mfa_token, code: code() });
    expect(done.body).toEqual({ status: "mfa_enrollment_required", methods: ["webauthn"] });
    const refused = await supertest(t.app).get("/api/v1/admin/alerts").set("Cookie", sessionCookie(done));
    expect(refused.status).toBe(401);
  });

  it("shows adoption: members with TOTP, passkeys, nothing, and past the grace period", async () => {
    await register(t.app, { login_id: "with.totp" });
    await enrolTotp(t, await signIn(t.app, "with.totp"));
    await register(t.app, { login_id: "without.1" });
    await put(REQUIRED);
    t.clock.advance(15 * DAY);
    await register(t.app, { login_id: "without.2" }); // still in grace (registered after)
    admin = await adminPasskeySession(t, auth); // (the old session expired meanwhile)
    const adoption = await supertest(t.app).get("/api/v1/admin/mfa-adoption").set("Cookie", admin);
    expect(adoption.body).toMatchObject({
      members: 3,
      with_totp: 1,
      with_passkeys: 0,
      without_factor: 2,
      past_grace: 1,
    });
  });
});

describe("MFA policy per member site, in OIDC", () => {
  let listening: ListeningApp;
  const REDIRECT = "http://127.0.0.1:9/callback";
  beforeAll(async () => {
    listening = await listenWithMember("oidc.policy");
  });
  afterAll(() => listening.close());

  it("a site requiring MFA gets no code for a password-only member; after adding TOTP, an ID token with acr mfa", async () => {
    const { t, issuer } = listening;
    const client = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals }).add({
      name: "strict site",
      redirectUris: [REDIRECT],
    });
    t.s.policy.set(
      client.clientId,
      { mode: "required", grace_days: 0, methods: ["totp", "webauthn"], phishing_resistant: false },
      {
        adminId: "m_test",
        ip: null,
        requestId: null,
      },
    );
    const config = await oidc.discovery(
      new URL(issuer),
      client.clientId,
      client.clientSecret ?? undefined,
      undefined,
      {
        execute: [oidc.allowInsecureRequests],
      },
    );
    const jar = new Jar();
    const verifier = oidc.randomPKCECodeVerifier();
    const url = oidc
      .buildAuthorizationUrl(config, {
        redirect_uri: REDIRECT,
        scope: "openid",
        code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
        code_challenge_method: "S256",
      })
      .toString();
    const api = async (path: string, body: unknown) => {
      const res = await jar.fetch(`${issuer}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json", origin: issuer },
        body: JSON.stringify(body),
      });
      return { status: res.status, body: (await res.json()) as Record<string, string> };
    };
    await jar.follow(url, issuer);
    // The global policy is optional: the password signs in to Sekisho…
    const signedIn = await api("/api/v1/login", { login_id: "oidc.policy", password: STRONG_PASSWORD });
    expect(signedIn.body.status).toBe("authenticated");
    const refused = await jar.follow(url, issuer);
    expect(new URL(refused.url).origin).toBe(issuer); // …but the strict site gets no code
    expect(await refused.res.text()).toContain("2段階認証");

    // The member adds an authenticator app (the session is fresh) and steps up.
    const begin = (await api("/api/v1/me/totp", {})).body;
    const code = () =>
      generateSync({ secret: begin.secret as string, epoch: Math.floor(t.clock.now().getTime() / 1000) });
    expect((await api("/api/v1/me/totp/verify", { code: code() })).status).toBe(200);
    t.clock.advance(31_000);
    expect((await api("/api/v1/login/totp", { code: code() })).body.status).toBe("authenticated");
    const back = await jar.follow(url, issuer);
    const callback = new URL(back.url);
    expect(`${callback.origin}${callback.pathname}`).toBe(REDIRECT);
    const tokens = await oidc.authorizationCodeGrant(config, callback, { pkceCodeVerifier: verifier });
    expect(tokens.claims()?.acr).toBe("urn:sekisho:acr:mfa");
  });
});
