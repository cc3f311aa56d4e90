import { generateSync } from "otplib";
import QRCode from "qrcode";
import supertest from "supertest";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { totpFactors } from "../src/db/schema.js";
import { checkTotp, TotpService } from "../src/factors/totp.js";
import { encryptField } from "../src/vault/fields.js";
import {
  makeApp,
  post,
  register,
  STRONG_PASSWORD,
  sessionCookie,
  signIn,
  type TestApp,
} from "./support/app.js";

/** RFC 6238 Appendix B: seeds are the ASCII strings below; T0 = 0, X = 30, 8 digits. */
const SEEDS = {
  sha1: "12345678901234567890",
  sha256: "12345678901234567890123456789012",
  sha512: "1234567890123456789012345678901234567890123456789012345678901234",
} as const;
const VECTORS: Array<[number, string, "sha1" | "sha256" | "sha512"]> = [
  [59, "94287082", "sha1"],
  [59, "46119246", "sha256"],
  [59, "90693936", "sha512"],
  [1111111109, "07081804", "sha1"],
  [1111111109, "68084774", "sha256"],
  [1111111109, "25091201", "sha512"],
  [1111111111, "14050471", "sha1"],
  [1111111111, "67062674", "sha256"],
  [1111111111, "99943326", "sha512"],
  [1234567890, "89005924", "sha1"],
  [1234567890, "91819424", "sha256"],
  [1234567890, "93441116", "sha512"],
  [2000000000, "69279037", "sha1"],
  [2000000000, "90698825", "sha256"],
  [2000000000, "38618901", "sha512"],
  [20000000000, "65353130", "sha1"],
  [20000000000, "77737706", "sha256"],
  [20000000000, "47863826", "sha512"],
];
/** Base32 of the SHA-1 seed, as an authenticator app would hold it. */
const SHA1_SEED_B32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

describe("TOTP verification (RFC 6238)", () => {
  it.each(VECTORS)("accepts the Appendix B code at T=%i (%s, %s)", (time, code, algorithm) => {
    const secret = new TextEncoder().encode(SEEDS[algorithm]);
    const step = checkTotp({
      secret,
      token: code,
      epochSeconds: time,
      digits: 8,
      algorithm,
      toleranceSeconds: 0,
    });
    expect(step).toBe(Math.floor(time / 30));
    // and refuses the same code one step later with no drift allowed
    expect(
      checkTotp({ secret, token: code, epochSeconds: time + 30, digits: 8, algorithm, toleranceSeconds: 0 }),
    ).toBeNull();
  });

  it("the service (SHA-1, 6 digits) accepts each SHA-1 vector's last six digits at its time", () => {
    const t = makeApp();
    try {
      const totp = new TotpService({ db: t.s.db, keys: t.s.keys, clock: t.clock, issuer: "Sekisho" });
      const memberId = makeMember(t);
      const secret = encryptField(
        t.s.keys,
        { table: "totp_factors", column: "secret", rowId: memberId },
        SHA1_SEED_B32,
      );
      t.s.db.insert(totpFactors).values({ memberId, secret, updatedAt: 0, lastStep: 0 }).run();
      for (const [time, code] of VECTORS.filter((v) => v[2] === "sha1")) {
        t.clock.set(time * 1000);
        expect(totp.verify(memberId, code.slice(2)), `T=${time}`).toBe(true);
      }
    } finally {
      t.close();
    }
  });
});

function makeMember(t: TestApp): string {
  const id = `m_test${Math.random().toString(36).slice(2, 10)}`;
  t.s.db.$client
    .prepare(
      "INSERT INTO members (id, sub, login_id, login_id_kind, created_at, updated_at) VALUES (?, ?, ?, 'chosen', 0, 0)",
    )
    .run(id, `sub-${id}`, `login-${id.slice(6)}`);
  return id;
}

describe("TOTP enrolment and sign-in", () => {
  let t: TestApp;
  let cookie: string;
  let secret: string;
  let recovery: string[];
  const code = (offsetSeconds = 0) =>
    generateSync({ secret, epoch: Math.floor(t.clock.now().getTime() / 1000) + offsetSeconds });

  async function passwordStep(): Promise<string> {
    const res = await post(t.app, "/api/v1/login", { login_id: "taro.mfa", password: STRONG_PASSWORD });
    expect(res.status).toBe(200);
    expect(res.body.status).toBe("mfa_required");
    expect(res.headers["set-cookie"]).toBeUndefined();
    return res.body.mfa_token as string;
  }

  beforeEach(async () => {
    t = makeApp();
    expect((await register(t.app, { login_id: "taro.mfa" })).status).toBe(201);
    cookie = await signIn(t.app, "taro.mfa");
    const begin = await post(t.app, "/api/v1/me/totp", {}, cookie);
    expect(begin.status).toBe(200);
    secret = begin.body.secret;
    expect(secret).toMatch(/^[A-Z2-7]{32}$/); // 160 bits
    expect(begin.body.otpauth_uri).toBe(`otpauth://totp/Sekisho:taro.mfa?secret=${secret}&issuer=Sekisho`);
    const done = await post(t.app, "/api/v1/me/totp/verify", { code: code() }, cookie);
    expect(done.status).toBe(200);
    recovery = done.body.recovery_codes;
    t.clock.advance(31_000); // the enrolment code's step is spent
  });

  it("a sign-in that asks for the second step ends the session this browser presented at once", async () => {
    // A shared browser: the member signed in before (the session `cookie`); someone starts a new
    // sign-in there and stops after the password. The earlier session must not live on.
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).status).toBe(200);
    const res = await post(
      t.app,
      "/api/v1/login",
      { login_id: "taro.mfa", password: STRONG_PASSWORD },
      cookie,
    );
    expect(res.body.status).toBe("mfa_required");
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).status).toBe(401);
  });
  afterEach(() => t.close());

  it("stores the secret only encrypted, and never logs it", async () => {
    const raw = JSON.stringify(t.s.db.select().from(totpFactors).all());
    expect(raw).not.toContain(secret);
    expect(t.logs.join("")).not.toContain(secret);
  });

  it("turning on a first factor ends the member's other sessions (one taken with a phished password), not this one", async () => {
    const other = makeApp();
    try {
      await register(other.app, { login_id: "moving.to.mfa" });
      const mine = await signIn(other.app, "moving.to.mfa");
      // Attack: the password was phished; the attacker signed in before the member turned on MFA.
      const attacker = await signIn(other.app, "moving.to.mfa");
      const me = (c: string) => supertest(other.app).get("/api/v1/me").set("Cookie", c);
      expect((await me(attacker)).status).toBe(200);
      const begin = await post(other.app, "/api/v1/me/totp", {}, mine);
      const s = begin.body.secret as string;
      const epoch = Math.floor(other.clock.now().getTime() / 1000);
      expect(
        (await post(other.app, "/api/v1/me/totp/verify", { code: generateSync({ secret: s, epoch }) }, mine))
          .status,
      ).toBe(200);
      expect((await me(attacker)).status).toBe(401);
      expect((await me(mine)).status).toBe(200);
    } finally {
      other.close();
    }
  });

  it("a pending enrolment is not a factor until verified, and a wrong code doesn't activate it", async () => {
    const other = makeApp();
    try {
      await register(other.app, { login_id: "pending.one" });
      const c = await signIn(other.app, "pending.one");
      await post(other.app, "/api/v1/me/totp", {}, c);
      const wrong = await post(other.app, "/api/v1/me/totp/verify", { code: "000000" }, c);
      expect(wrong.status).toBe(400);
      expect(wrong.body.error).toBe("invalid_code");
      const login = await post(other.app, "/api/v1/login", {
        login_id: "pending.one",
        password: STRONG_PASSWORD,
      });
      expect(login.body).toEqual({ status: "authenticated" });
    } finally {
      other.close();
    }
  });

  it("asks for the second factor after the password, then signs in at acr mfa with amr pwd otp mfa", async () => {
    const token = await passwordStep();
    const login = await post(t.app, "/api/v1/login", { login_id: "taro.mfa", password: STRONG_PASSWORD });
    expect(login.body.methods).toEqual(["totp", "recovery_code"]);
    const res = await post(t.app, "/api/v1/login/totp", { mfa_token: token, code: code() });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({
      status: "authenticated",
      acr: "urn:sekisho:acr:mfa",
      amr: ["pwd", "otp", "mfa"],
    });
    const me = await supertest(t.app).get("/api/v1/me").set("Cookie", sessionCookie(res));
    expect(me.body.mfa.totp).toBe(true);
    expect(me.body.session.acr).toBe("urn:sekisho:acr:mfa");
    // The device that passed a second factor is now known.
    expect(String(res.headers["set-cookie"])).toMatch(
      /sekisho_device=[\w-]{43}; Max-Age=31536000; Path=\/; HttpOnly; SameSite=Lax/,
    );
  });

  it("takes a code typed in full-width digits or with a space, as every other input is folded, and still only once", async () => {
    const fullWidth = (c: string) => c.replace(/\d/g, (d) => String.fromCharCode(0xff10 + Number(d)));
    const c = code();
    const res = await post(t.app, "/api/v1/login/totp", {
      mfa_token: await passwordStep(),
      code: `${fullWidth(c.slice(0, 3))}\u3000${fullWidth(c.slice(3))}`,
    });
    expect(res.status).toBe(200);
    // Its ASCII spelling is the same code: a replay.
    const again = await post(t.app, "/api/v1/login/totp", { mfa_token: await passwordStep(), code: c });
    expect(again.body.error).toBe("invalid_code");
  });

  it("rejects a replayed TOTP code within its window", async () => {
    // Attack: a code seen over the member's shoulder (or phished) is used a second time.
    const c = code();
    const first = await post(t.app, "/api/v1/login/totp", { mfa_token: await passwordStep(), code: c });
    expect(first.status).toBe(200);
    t.clock.advance(5_000); // same 30 s step, still inside ±1 step
    const again = await post(t.app, "/api/v1/login/totp", { mfa_token: await passwordStep(), code: c });
    expect(again.status).toBe(401);
    expect(again.body.error).toBe("invalid_code");
  });

  it("refuses a code from 90 seconds ago but accepts one from 30 seconds ago", async () => {
    t.clock.advance(120_000); // well past the enrolment's step
    const token = await passwordStep();
    const old = await post(t.app, "/api/v1/login/totp", { mfa_token: token, code: code(-90) });
    expect(old.status).toBe(401);
    const drift = await post(t.app, "/api/v1/login/totp", { mfa_token: token, code: code(-30) });
    expect(drift.status).toBe(200);
  });

  it("two parallel verifications of one code: exactly one wins", async () => {
    // Attack: race a stolen code against the member's own use of it.
    const [a, b] = [await passwordStep(), await passwordStep()];
    const c = code();
    const results = await Promise.all([
      post(t.app, "/api/v1/login/totp", { mfa_token: a, code: c }),
      post(t.app, "/api/v1/login/totp", { mfa_token: b, code: c }),
    ]);
    expect(results.map((r) => r.status).sort()).toEqual([200, 401]);
  });

  it("an mfa_token is spent by its sign-in and dies after five wrong codes", async () => {
    // Attack: guess six-digit codes through one password step.
    const token = await passwordStep();
    for (let i = 0; i < 5; i++) {
      const wrong = await post(t.app, "/api/v1/login/totp", { mfa_token: token, code: "000000" });
      expect(wrong.status).toBe(401);
    }
    const right = await post(t.app, "/api/v1/login/totp", { mfa_token: token, code: code() });
    expect(right.status).toBe(401);
    expect(right.body.error).toBe("invalid_mfa_token");

    t.clock.advance(30 * 60_000); // the five failures also slowed this address down for a while
    const fresh = await passwordStep();
    expect((await post(t.app, "/api/v1/login/totp", { mfa_token: fresh, code: code() })).status).toBe(200);
    t.clock.advance(30_000);
    const reuse = await post(t.app, "/api/v1/login/totp", { mfa_token: fresh, code: code() });
    expect(reuse.body.error).toBe("invalid_mfa_token");
  });

  it("an mfa_token expires after five minutes", async () => {
    const token = await passwordStep();
    t.clock.advance(5 * 60_000 + 1);
    const res = await post(t.app, "/api/v1/login/totp", { mfa_token: token, code: code() });
    expect(res.body.error).toBe("invalid_mfa_token");
  });

  it("a second step begun with the old password ends when support requires a new one", async () => {
    // Attack: someone with the member's (leaked) password and phone keeps a second step open
    // across the support action meant to shut them out.
    const token = await passwordStep();
    const id = t.s.db.$client.prepare("SELECT id FROM members WHERE login_id = 'taro.mfa'").pluck().get();
    t.s.recovery.requireNewPassword(id as string, {
      adminId: "m_support",
      reason: "leaked password",
      ip: null,
      requestId: null,
    });
    const res = await post(t.app, "/api/v1/login/totp", { mfa_token: token, code: code() });
    expect(res.status).toBe(401);
    expect(res.headers["set-cookie"]).toBeUndefined();
  });

  it("wrong codes count in the sign-in throttle with wrong passwords", async () => {
    const token = await passwordStep();
    for (let j = 0; j < 5; j++) await post(t.app, "/api/v1/login/totp", { mfa_token: token, code: "000000" });
    // five failures from this address for this login ID: the password step is slowed now
    const res = await post(t.app, "/api/v1/login", { login_id: "taro.mfa", password: STRONG_PASSWORD });
    expect(res.status).toBe(429);
    expect(res.body.error).toBe("too_many_attempts");
  });

  it("recovery codes: each works once, in parallel too, and its use is the member's security event", async () => {
    expect(recovery).toHaveLength(10);
    expect(new Set(recovery).size).toBe(10);
    for (const c of recovery) expect(c).toMatch(/^[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{4}$/);
    const [a, b] = [await passwordStep(), await passwordStep()];
    const results = await Promise.all([
      post(t.app, "/api/v1/login/recovery-code", { mfa_token: a, code: recovery[0] }),
      post(t.app, "/api/v1/login/recovery-code", { mfa_token: b, code: recovery[0] }),
    ]);
    expect(results.map((r) => r.status).sort()).toEqual([200, 401]);
    const winner = results.find((r) => r.status === 200);
    expect(winner?.body.amr).toEqual(["pwd", "otp", "mfa"]);
    const c = sessionCookie(winner as never);
    const again = await post(t.app, "/api/v1/login/recovery-code", {
      mfa_token: await passwordStep(),
      code: recovery[0]?.toUpperCase().replace(/-/g, " "),
    });
    expect(again.status).toBe(401);
    // typed sloppily (upper case, spaces) still works for an unused code
    const sloppy = await post(t.app, "/api/v1/login/recovery-code", {
      mfa_token: await passwordStep(),
      code: ` ${recovery[1]?.toUpperCase().replace(/-/g, " ")} `,
    });
    expect(sloppy.status).toBe(200);
    const events = await supertest(t.app).get("/api/v1/me/events").set("Cookie", c);
    const used = events.body.events.filter((e: { type: string }) => e.type === "mfa.recovery_code_used");
    expect(used).toHaveLength(2);
    expect(used[0].details.remaining).toBe(8);
    const me = await supertest(t.app).get("/api/v1/me").set("Cookie", c);
    expect(me.body.mfa.recovery_codes_remaining).toBe(8);
  });

  it("regenerating recovery codes invalidates the old set (and needs a sign-in that used the factor)", async () => {
    // The enrolling session is recent but at the password level: not enough once a factor exists.
    const weak = await post(t.app, "/api/v1/me/recovery-codes", {}, cookie);
    expect(weak.status).toBe(401);
    expect(weak.body.error).toBe("reauthentication_required");
    const mfaCookie = sessionCookie(
      await post(t.app, "/api/v1/login/totp", { mfa_token: await passwordStep(), code: code() }),
    );
    const fresh = await post(t.app, "/api/v1/me/recovery-codes", {}, mfaCookie);
    expect(fresh.status).toBe(200);
    const next = fresh.body.recovery_codes as string[];
    expect(next).toHaveLength(10);
    const old = await post(t.app, "/api/v1/login/recovery-code", {
      mfa_token: await passwordStep(),
      code: recovery[2],
    });
    expect(old.status).toBe(401);
    const ok = await post(t.app, "/api/v1/login/recovery-code", {
      mfa_token: await passwordStep(),
      code: next[2],
    });
    expect(ok.status).toBe(200);
  });

  it("enrolling again replaces the old secret only after the new one is verified", async () => {
    const mfaCookie = sessionCookie(
      await post(t.app, "/api/v1/login/totp", { mfa_token: await passwordStep(), code: code() }),
    );
    const oldSecret = secret;
    const begin = await post(t.app, "/api/v1/me/totp", {}, mfaCookie);
    const newSecret = begin.body.secret as string;
    t.clock.advance(30_000);
    // Not verified yet: the old app's codes still sign in.
    expect(
      (await post(t.app, "/api/v1/login/totp", { mfa_token: await passwordStep(), code: code() })).status,
    ).toBe(200);
    t.clock.advance(30_000);
    secret = newSecret;
    expect((await post(t.app, "/api/v1/me/totp/verify", { code: code() }, mfaCookie)).status).toBe(200);
    t.clock.advance(30_000);
    secret = oldSecret;
    expect(
      (await post(t.app, "/api/v1/login/totp", { mfa_token: await passwordStep(), code: code() })).status,
    ).toBe(401);
    secret = newSecret;
    t.clock.advance(30_000);
    expect(
      (await post(t.app, "/api/v1/login/totp", { mfa_token: await passwordStep(), code: code() })).status,
    ).toBe(200);
  });

  it("refuses removing TOTP without a recent sign-in, and allows it after one", async () => {
    // Attack: a stolen, hours-old session strips the member's second factor.
    t.clock.advance(11 * 60_000);
    const old = await supertest(t.app)
      .delete("/api/v1/me/totp")
      .set("Origin", "http://localhost:3000")
      .set("Cookie", cookie)
      .set("Content-Type", "application/json");
    expect(old.status).toBe(401);
    expect(old.body.error).toBe("reauthentication_required");
    // Step-up with the session cookie instead of an mfa_token: a fresh sign-in, a new token.
    const stepUp = await post(t.app, "/api/v1/login/totp", { code: code() }, cookie);
    expect(stepUp.status).toBe(200);
    expect(stepUp.body.acr).toBe("urn:sekisho:acr:mfa");
    const fresh = sessionCookie(stepUp);
    expect(fresh).not.toBe(cookie);
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).status).toBe(401); // rotated
    const del = await supertest(t.app)
      .delete("/api/v1/me/totp")
      .set("Origin", "http://localhost:3000")
      .set("Cookie", fresh)
      .set("Content-Type", "application/json");
    expect(del.status).toBe(204);
    const login = await post(t.app, "/api/v1/login", { login_id: "taro.mfa", password: STRONG_PASSWORD });
    expect(login.body).toEqual({ status: "authenticated" });
    const events = await supertest(t.app).get("/api/v1/me/events").set("Cookie", sessionCookie(login));
    const types = events.body.events.map((e: { type: string }) => e.type);
    expect(types).toContain("factor.totp_removed");
    expect(types).toContain("factor.totp_added");
    expect(types).toContain("session.step_up");
  });

  it("knows a device after its first second-factor sign-in, and the member can revoke it", async () => {
    const first = await post(t.app, "/api/v1/login/totp", { mfa_token: await passwordStep(), code: code() });
    const device = String(first.headers["set-cookie"]).match(/sekisho_device=([\w-]{43})/)?.[1];
    expect(device).toBeTruthy();
    t.clock.advance(30_000);
    const token = await passwordStep();
    const second = await post(
      t.app,
      "/api/v1/login/totp",
      { mfa_token: token, code: code() },
      `sekisho_device=${device}`,
    );
    expect(second.status).toBe(200);
    expect(String(second.headers["set-cookie"])).not.toContain("sekisho_device="); // already known
    const c = `${sessionCookie(second)}; sekisho_device=${device}`;
    const events = (await supertest(t.app).get("/api/v1/me/events").set("Cookie", c)).body.events;
    expect(events.filter((e: { type: string }) => e.type === "login.new_device")).toHaveLength(1);
    const list = await supertest(t.app).get("/api/v1/me/devices").set("Cookie", c);
    expect(list.body.devices).toHaveLength(1);
    expect(list.body.devices[0].current).toBe(true);
    const del = await supertest(t.app)
      .delete(`/api/v1/me/devices/${list.body.devices[0].id}`)
      .set("Origin", "http://localhost:3000")
      .set("Content-Type", "application/json")
      .set("Cookie", c);
    expect(del.status).toBe(204);
    // A revoked device is a new device again.
    t.clock.advance(30_000);
    const third = await post(
      t.app,
      "/api/v1/login/totp",
      { mfa_token: await passwordStep(), code: code() },
      `sekisho_device=${device}`,
    );
    expect(String(third.headers["set-cookie"])).toContain("sekisho_device=");
  });
});

describe("hosted TOTP enrolment (account page, no JavaScript)", () => {
  it("shows the otpauth URI as a server-rendered QR code and the key as text, then the recovery codes once", async () => {
    const t = makeApp();
    try {
      await register(t.app, { login_id: "qr.member" });
      const cookie = await signIn(t.app, "qr.member");
      const form = (path: string, body: Record<string, string> = {}) =>
        supertest(t.app)
          .post(path)
          .set("Origin", "http://localhost:3000")
          .set("Cookie", cookie)
          .set("Content-Type", "application/x-www-form-urlencoded")
          .send(new URLSearchParams(body).toString());
      const page = await form("/account/totp");
      expect(page.status).toBe(200);
      expect(page.headers["content-security-policy"]).toContain("script-src 'self'");
      const secret = (/<code class="secret">([A-Z2-7 ]+)<\/code>/.exec(page.text)?.[1] ?? "").replace(
        / /g,
        "",
      );
      expect(secret).toMatch(/^[A-Z2-7]{32}$/);
      const uri = `otpauth://totp/Sekisho:qr.member?secret=${secret}&issuer=Sekisho`;
      const svg = await QRCode.toString(uri, { type: "svg", errorCorrectionLevel: "M", margin: 2 });
      expect(page.text).toContain(svg);
      const wrong = await form("/account/totp/verify", { code: "000000" });
      expect(wrong.status).toBe(400);
      expect(wrong.text).toContain(svg); // the same pending secret, shown again
      const code = generateSync({ secret, epoch: Math.floor(t.clock.now().getTime() / 1000) });
      const done = await form("/account/totp/verify", { code });
      expect(done.status).toBe(200);
      expect(done.text.match(/<li><code>[0-9a-z-]{19}<\/code><\/li>/g)).toHaveLength(10);
      const cross = await supertest(t.app)
        .post("/account/totp")
        .set("Origin", "https://evil.example")
        .set("Cookie", cookie)
        .set("Content-Type", "application/x-www-form-urlencoded")
        .send("");
      expect(cross.status).toBe(403); // a foreign page can't restart the member's enrolment
    } finally {
      t.close();
    }
  });
});
