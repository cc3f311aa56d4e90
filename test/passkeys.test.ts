import { and, eq } from "drizzle-orm";
import supertest from "supertest";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { auditLog, webauthnCredentials } from "../src/db/schema.js";
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
import { SoftAuthenticator } from "./support/soft-authenticator.js";

const PR = "urn:sekisho:acr:phishing-resistant";

describe("passkeys through the JSON API (software authenticator, real signatures)", () => {
  let t: TestApp;
  let alice: SoftAuthenticator;

  async function enrol(cookie: string, auth: SoftAuthenticator, name?: string) {
    const options = await post(t.app, "/api/v1/me/passkeys/options", {}, cookie);
    expect(options.status).toBe(200);
    expect(options.body.rp.id).toBe("localhost");
    expect(options.body.attestation).toBe("none");
    expect(options.body.authenticatorSelection).toMatchObject({
      residentKey: "preferred",
      userVerification: "preferred",
    });
    return post(
      t.app,
      "/api/v1/me/passkeys",
      { response: auth.register(options.body, { origin: ORIGIN }), ...(name ? { name } : {}) },
      cookie,
    );
  }

  async function passwordStep(loginId: string): Promise<string> {
    const res = await post(t.app, "/api/v1/login", { login_id: loginId, password: STRONG_PASSWORD });
    expect(res.body.status).toBe("mfa_required");
    return res.body.mfa_token;
  }

  async function passkeyStep(
    token: string | undefined,
    auth: SoftAuthenticator,
    where: { origin?: string; rpId?: string; uv?: boolean } = {},
    cookie?: string,
  ) {
    const options = await post(
      t.app,
      "/api/v1/login/webauthn/options",
      token ? { mfa_token: token } : {},
      cookie,
    );
    expect(options.status).toBe(200);
    const response = auth.assert(options.body, { origin: where.origin ?? ORIGIN, ...where });
    const res = await post(
      t.app,
      "/api/v1/login/webauthn",
      token ? { mfa_token: token, response } : { response },
      cookie,
    );
    return { options: options.body, response, res };
  }

  const lastFailure = () =>
    t.s.db
      .select()
      .from(auditLog)
      .where(and(eq(auditLog.outcome, "failure")))
      .all()
      .at(-1);

  beforeEach(async () => {
    t = makeApp();
    await register(t.app, { login_id: "alice.pk" });
    await register(t.app, { login_id: "bob.pk" });
    alice = new SoftAuthenticator();
    const added = await enrol(await signIn(t.app, "alice.pk"), alice, "通勤用の鍵");
    expect(added.status).toBe(201);
    expect(added.body.id).toMatch(/^pk_[\w-]{16}$/);
    expect(added.body.recovery_codes).toHaveLength(10); // first factor: recovery codes come with it
  });
  afterEach(() => t.close());

  it("stores the credential's public key, counter, flags and name, never a private key", () => {
    const row = t.s.db.select().from(webauthnCredentials).get();
    expect(row).toMatchObject({
      credentialId: alice.id,
      counter: 0,
      backupEligible: false,
      backedUp: false,
      name: "通勤用の鍵",
    });
    expect(JSON.parse(row?.transports ?? "[]")).toEqual(["internal"]);
  });

  it("signs in with the passkey as a second factor: acr phishing-resistant, amr pwd hwk user mfa", async () => {
    const token = await passwordStep("alice.pk");
    const { options, res } = await passkeyStep(token, alice);
    expect(options.allowCredentials).toEqual([
      { id: alice.id, type: "public-key", transports: ["internal"] },
    ]);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ status: "authenticated", acr: PR, amr: ["pwd", "hwk", "user", "mfa"] });
    const me = await supertest(t.app).get("/api/v1/me").set("Cookie", sessionCookie(res));
    expect(me.body.mfa.passkeys[0]).toMatchObject({ name: "通勤用の鍵" });
    expect(me.body.mfa.passkeys[0].last_used_at).not.toBeNull();
  });

  it("a synced passkey (backup eligible) is reported as swk", async () => {
    const synced = new SoftAuthenticator({ backupEligible: true });
    const cookie = await signIn(t.app, "bob.pk");
    expect((await enrol(cookie, synced)).status).toBe(201);
    const { res } = await passkeyStep(await passwordStep("bob.pk"), synced);
    expect(res.body.amr).toEqual(["pwd", "swk", "user", "mfa"]);
  });

  it("passwordless sign-in names the member by the credential and requires user verification", async () => {
    const noUv = await passkeyStep(undefined, alice, { uv: false });
    expect(noUv.options.userVerification).toBe("required");
    expect(noUv.options.allowCredentials).toBeUndefined();
    expect(noUv.res.status).toBe(401);
    const ok = await passkeyStep(undefined, alice);
    expect(ok.res.status).toBe(200);
    expect(ok.res.body.amr).toEqual(["hwk", "user", "mfa"]);
    const me = await supertest(t.app).get("/api/v1/me").set("Cookie", sessionCookie(ok.res));
    expect(me.body.login_id).toBe("alice.pk");
  });

  it("refuses a reused challenge", async () => {
    // Attack: replay a captured assertion, or sign a second one over the same challenge.
    const first = await passkeyStep(undefined, alice);
    expect(first.res.status).toBe(200);
    const replay = await post(t.app, "/api/v1/login/webauthn", { response: first.response });
    expect(replay.status).toBe(401);
    const again = alice.assert(first.options, { origin: ORIGIN });
    expect((await post(t.app, "/api/v1/login/webauthn", { response: again })).status).toBe(401);
    expect(lastFailure()?.reason).toBe("unknown_challenge");
  });

  it("refuses a response made for another origin or another RP ID", async () => {
    // Attack: a phishing site relays our challenge to the member's authenticator.
    const evilOrigin = await passkeyStep(undefined, alice, { origin: "https://sekisho.evil.example" });
    expect(evilOrigin.res.status).toBe(401);
    expect(lastFailure()?.reason).toBe("verification_failed");
    const evilRp = await passkeyStep(undefined, alice, { rpId: "evil.example" });
    expect(evilRp.res.status).toBe(401);
    expect(lastFailure()?.reason).toBe("verification_failed");
  });

  it("refuses member A's passkey presented in member B's sign-in", async () => {
    // Attack: B's password is known; the attacker's own passkey (enrolled on A) is offered for B.
    const bob = new SoftAuthenticator();
    expect((await enrol(await signIn(t.app, "bob.pk"), bob)).status).toBe(201);
    const { res } = await passkeyStep(await passwordStep("bob.pk"), alice);
    expect(res.status).toBe(401);
    expect(lastFailure()?.reason).toBe("wrong_member");
  });

  it("refuses a challenge issued for another ceremony", async () => {
    // Attack: a passwordless challenge answered into someone's second step, and a registration
    // challenge answered as a sign-in.
    const bob = new SoftAuthenticator();
    expect((await enrol(await signIn(t.app, "bob.pk"), bob)).status).toBe(201);
    const token = await passwordStep("bob.pk");
    const loose = await post(t.app, "/api/v1/login/webauthn/options", {});
    const wrong = await post(t.app, "/api/v1/login/webauthn", {
      mfa_token: token,
      response: bob.assert(loose.body, { origin: ORIGIN }),
    });
    expect(wrong.status).toBe(401);
    expect(lastFailure()?.reason).toBe("wrong_ceremony");

    const bobCookie = sessionCookie(await passkeyStep(await passwordStep("bob.pk"), bob).then((x) => x.res));
    const regOptions = await post(t.app, "/api/v1/me/passkeys/options", {}, bobCookie);
    const asSignIn = await post(t.app, "/api/v1/login/webauthn", {
      response: bob.assert({ challenge: regOptions.body.challenge }, { origin: ORIGIN }),
    });
    expect(asSignIn.status).toBe(401);
    expect(lastFailure()?.reason).toBe("wrong_ceremony");
  });

  it("a credential ID is unique across all members", async () => {
    const cookie = await signIn(t.app, "bob.pk");
    const res = await enrol(cookie, alice);
    expect(res.status).toBe(409);
    expect(res.body.error).toBe("passkey_exists");
  });

  it("steps a TOTP-level session up to phishing-resistant with the session cookie", async () => {
    const { generateSync } = await import("otplib");
    const cookie = sessionCookie(await passkeyStep(await passwordStep("alice.pk"), alice).then((x) => x.res));
    const begin = await post(t.app, "/api/v1/me/totp", {}, cookie);
    const code = () =>
      generateSync({ secret: begin.body.secret, epoch: Math.floor(t.clock.now().getTime() / 1000) });
    expect((await post(t.app, "/api/v1/me/totp/verify", { code: code() }, cookie)).status).toBe(200);
    t.clock.advance(30_000);
    const viaTotp = await post(t.app, "/api/v1/login/totp", {
      mfa_token: await passwordStep("alice.pk"),
      code: code(),
    });
    expect(viaTotp.body.acr).toBe("urn:sekisho:acr:mfa");
    const mfaCookie = sessionCookie(viaTotp);
    const { options, res } = await passkeyStep(undefined, alice, {}, mfaCookie);
    expect(options.allowCredentials).toHaveLength(1); // a step-up names the member's own passkeys
    expect(res.status).toBe(200);
    expect(res.body.acr).toBe(PR);
    expect(res.body.amr).toEqual(["pwd", "otp", "mfa", "hwk", "user"]);
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", mfaCookie)).status).toBe(401); // rotated
  });

  it("removing a passkey needs a recent sign-in", async () => {
    // Attack: a stolen, hours-old session removes the member's passkey.
    const cookie = sessionCookie(await passkeyStep(await passwordStep("alice.pk"), alice).then((x) => x.res));
    const id = t.s.db.select().from(webauthnCredentials).get()?.id as string;
    t.clock.advance(11 * 60_000);
    const del = () =>
      supertest(t.app)
        .delete(`/api/v1/me/passkeys/${id}`)
        .set("Origin", ORIGIN)
        .set("Content-Type", "application/json")
        .set("Cookie", cookie);
    const old = await del();
    expect(old.status).toBe(401);
    expect(old.body.error).toBe("reauthentication_required");
    expect(t.s.db.select().from(webauthnCredentials).all()).toHaveLength(1);
    const fresh = sessionCookie(await passkeyStep(undefined, alice, {}, cookie).then((x) => x.res)); // step-up = a fresh sign-in
    const ok = await supertest(t.app)
      .delete(`/api/v1/me/passkeys/${id}`)
      .set("Origin", ORIGIN)
      .set("Content-Type", "application/json")
      .set("Cookie", fresh);
    expect(ok.status).toBe(204);
    // The last factor is gone: its recovery codes went with it, and the password alone signs in.
    const login = await post(t.app, "/api/v1/login", { login_id: "alice.pk", password: STRONG_PASSWORD });
    expect(login.body).toEqual({ status: "authenticated" });
    expect((await passkeyStep(undefined, alice)).res.status).toBe(401);
  });

  it("renames a passkey; names follow the rules of every text field (no bidi tricks, lone surrogates or blank look-alikes) and are bounded", async () => {
    const cookie = sessionCookie(await passkeyStep(await passwordStep("alice.pk"), alice).then((x) => x.res));
    const id = t.s.db.select().from(webauthnCredentials).get()?.id as string;
    const patch = (name: string) =>
      supertest(t.app)
        .patch(`/api/v1/me/passkeys/${id}`)
        .set("Origin", ORIGIN)
        .set("Content-Type", "application/json")
        .set("Cookie", cookie)
        .send(JSON.stringify({ name }));
    expect((await patch(" evil ke\u200by ")).body).toEqual({ id, name: "evil key" });
    expect((await patch("x".repeat(65))).status).toBe(400);
    // Attack: names that would show as something else, or nothing, on the member's and admins' screens.
    for (const bad of [
      "\u202eevil key",
      "key\u0000",
      "\ud800x",
      "\u200b",
      "\u3164",
      "\u2800",
      "\u0301",
      " ",
    ]) {
      const res = await patch(bad);
      expect(res.status, JSON.stringify(bad)).toBe(400);
      expect(res.body.error).toBe("invalid_request");
    }
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).body.mfa.passkeys[0].name).toBe(
      "evil key",
    );
    const other = await supertest(t.app)
      .patch("/api/v1/me/passkeys/pk_AAAAAAAAAAAAAAAA")
      .set("Origin", ORIGIN)
      .set("Content-Type", "application/json")
      .set("Cookie", cookie)
      .send('{"name":"x"}');
    expect(other.status).toBe(404);
  });
});

describe("second factors: the review's attacks", () => {
  let t: TestApp;
  let alice: SoftAuthenticator;
  const from = (ip: string, url: string, body: unknown, cookie?: string) => {
    const req = supertest(t.app)
      .post(url)
      .set("Origin", ORIGIN)
      .set("Content-Type", "application/json")
      .set("X-Forwarded-For", ip);
    if (cookie) req.set("Cookie", cookie);
    return req.send(JSON.stringify(body));
  };
  const passwordStep = async (ip = "192.0.2.1") =>
    (await from(ip, "/api/v1/login", { login_id: "alice.pk", password: STRONG_PASSWORD })).body;
  async function passkeySignIn(cookie?: string, body: Record<string, unknown> = {}) {
    const options = await post(t.app, "/api/v1/login/webauthn/options", body, cookie);
    return post(
      t.app,
      "/api/v1/login/webauthn",
      { response: alice.assert(options.body, { origin: ORIGIN }) },
      cookie,
    );
  }

  beforeEach(async () => {
    t = makeApp({ SEKISHO_TRUST_PROXY: "loopback" });
    await register(t.app, { login_id: "alice.pk" });
    await register(t.app, { login_id: "bob.pk" });
    alice = new SoftAuthenticator();
    const cookie = await signIn(t.app, "alice.pk");
    const options = await post(t.app, "/api/v1/me/passkeys/options", {}, cookie);
    const added = await post(
      t.app,
      "/api/v1/me/passkeys",
      { response: alice.register(options.body, { origin: ORIGIN }) },
      cookie,
    );
    expect(added.status).toBe(201);
  });
  afterEach(() => t.close());

  it("refuses adding a factor with an old session, or with a password-only session once a factor exists", async () => {
    // Attack: a stolen session adds the thief's own passkey or authenticator app and keeps the account.
    const old = await signIn(t.app, "bob.pk");
    t.clock.advance(11 * 60_000);
    for (const path of ["/api/v1/me/passkeys/options", "/api/v1/me/totp"]) {
      const res = await post(t.app, path, {}, old);
      expect(res.status, path).toBe(401);
      expect(res.body.error).toBe("reauthentication_required");
    }
    // alice has a passkey; a recent session at the password level (made before enrolling) is not enough
    const enrolledButWeak = t.s.sessions.create({
      memberId: (await memberId("alice.pk")) as string,
      acr: "urn:sekisho:acr:password",
      amr: ["pwd"],
      ip: null,
      userAgent: null,
    });
    const weak = `sekisho_session=${enrolledButWeak.token}`;
    expect((await post(t.app, "/api/v1/me/totp", {}, weak)).body.error).toBe("reauthentication_required");
    expect((await post(t.app, "/api/v1/me/passkeys/options", {}, weak)).body.error).toBe(
      "reauthentication_required",
    );
  });

  async function memberId(loginId: string) {
    return t.s.db.$client.prepare("SELECT id FROM members WHERE login_id = ?").pluck().get(loginId) as
      | string
      | undefined;
  }

  it("a passkey that looks copied ends everything the copy may have opened, alerts the admins and tells the member", async () => {
    // Attack: a copy of alice's passkey signs in first (its counter ahead); her own key is next.
    alice.counter = 100;
    const copy = await passkeySignIn();
    expect(copy.status).toBe(200);
    const copyCookie = sessionCookie(copy);
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", copyCookie)).status).toBe(200);
    // With it, the copy's holder starts moving the account's e-mail address to theirs.
    expect((await post(t.app, "/api/v1/me/email", { email: "thief@example.net" }, copyCookie)).status).toBe(
      202,
    );
    const id = (await memberId("alice.pk")) as string;
    const mails = () =>
      (
        t.s.db.$client.prepare("SELECT count(*) AS n FROM outbox WHERE member_id = ?").get(id) as {
          n: number;
        }
      ).n;
    const before = mails();
    alice.counter = 10; // the genuine key, behind the copy
    expect((await passkeySignIn()).status).toBe(401);
    // The copy's session is over, the admins are alerted, a notice is queued for alice.
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", copyCookie)).status).toBe(401);
    const alert = t.s.alerts.list().find((a) => a.kind === "passkey_clone_suspected");
    expect(JSON.parse(alert?.details ?? "{}")).toMatchObject({ member_id: id });
    expect(JSON.parse(alert?.details ?? "{}").sessions_revoked).toBeGreaterThanOrEqual(1);
    expect(mails()).toBe(before + 1);
    // The change link the copy started is dead.
    const open = t.s.db.$client
      .prepare(
        "SELECT count(*) AS n FROM member_tokens WHERE member_id = ? AND purpose = 'change_email' AND consumed_at IS NULL",
      )
      .get(id) as { n: number };
    expect(open.n).toBe(0);
  });

  it("a disabled member can't sign in with a passkey either", async () => {
    t.s.db.$client.prepare("UPDATE members SET status = 'disabled' WHERE login_id = 'alice.pk'").run();
    const res = await passkeySignIn();
    expect(res.status).toBe(401);
  });

  it("a suspended only passkey never turns MFA off: the password alone still isn't enough", async () => {
    t.s.db.$client.prepare("UPDATE webauthn_credentials SET suspected_clone_at = 1").run();
    const step = await passwordStep();
    expect(step.status).toBe("mfa_required");
    expect(step.methods).toEqual(["recovery_code"]);
  });

  it("caps second-step guesses per member across addresses; the member's own device is exempt", async () => {
    // Attack: the password is known; fresh mfa_tokens from ever new addresses to guess the code.
    const own = await passkeySignIn(); // alice's own browser: it signed in with her passkey before
    const device = String(own.headers["set-cookie"]).match(/sekisho_device=[\w-]{43}/)?.[0] as string;
    for (let i = 0; i < 10; i++) {
      const token = (await passwordStep(`198.51.100.${i}`)).mfa_token;
      const wrong = await from(`198.51.100.${i}`, "/api/v1/login/recovery-code", {
        mfa_token: token,
        code: "0000-0000-0000-0000",
      });
      expect(wrong.status).toBe(401);
    }
    // Ten failures on the account from untrusted devices: a new address is slowed at once.
    const capped = await from("203.0.113.7", "/api/v1/login", {
      login_id: "alice.pk",
      password: STRONG_PASSWORD,
    });
    expect(capped.status).toBe(429);
    // From her own browser (known device), alice still gets in.
    const mine = await from(
      "203.0.113.8",
      "/api/v1/login",
      { login_id: "alice.pk", password: STRONG_PASSWORD },
      device,
    );
    expect(mine.body.status).toBe("mfa_required");
    const options = await from(
      "203.0.113.8",
      "/api/v1/login/webauthn/options",
      { mfa_token: mine.body.mfa_token },
      device,
    );
    const done = await from(
      "203.0.113.8",
      "/api/v1/login/webauthn",
      { mfa_token: mine.body.mfa_token, response: alice.assert(options.body, { origin: ORIGIN }) },
      device,
    );
    expect(done.status).toBe(200);
  });

  it("limits passwordless option requests per address (each one stores a challenge)", async () => {
    let last = 0;
    for (let i = 0; i < 301; i++)
      last = (await from("192.0.2.50", "/api/v1/login/webauthn/options", {})).status;
    expect(last).toBe(429);
    expect((await from("192.0.2.51", "/api/v1/login/webauthn/options", {})).status).toBe(200);
  });

  it("a passwordless sign-in in a browser holding another member's session signs in the new member and ends the old session", async () => {
    const bobCookie = await signIn(t.app, "bob.pk");
    const res = await passkeySignIn(bobCookie, { passwordless: true });
    expect(res.status).toBe(200);
    expect(res.body.amr).toEqual(["hwk", "user", "mfa"]);
    const me = await supertest(t.app).get("/api/v1/me").set("Cookie", sessionCookie(res));
    expect(me.body.login_id).toBe("alice.pk");
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", bobCookie)).status).toBe(401);
  });

  it("a step-up of a passwordless session with a code does not claim a password (amr)", async () => {
    const { generateSync } = await import("otplib");
    const pwless = sessionCookie(await passkeySignIn());
    const secret = (await post(t.app, "/api/v1/me/totp", {}, pwless)).body.secret as string;
    const code = () => generateSync({ secret, epoch: Math.floor(t.clock.now().getTime() / 1000) });
    expect((await post(t.app, "/api/v1/me/totp/verify", { code: code() }, pwless)).status).toBe(200);
    t.clock.advance(30_000);
    const stepped = await post(t.app, "/api/v1/login/totp", { code: code() }, pwless);
    expect(stepped.status).toBe(200);
    // A code is weaker than the session's passkey: the new session is as strong as the code, now
    // (a fresh phishing-resistant session from a code would pass every recency check a passkey is
    // asked for).
    expect(stepped.body.amr).toEqual(["otp", "mfa"]);
    expect(stepped.body.acr).toBe("urn:sekisho:acr:mfa");
  });
});
