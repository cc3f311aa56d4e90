import { eq } from "drizzle-orm";
import supertest from "supertest";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { auditLog, sessions } from "../src/db/schema.js";
import {
  makeApp,
  post,
  register,
  STRONG_PASSWORD,
  sessionCookie,
  signIn,
  type TestApp,
} from "./support/app.js";

describe("password sign-in", () => {
  let t: TestApp;
  beforeEach(async () => {
    t = makeApp();
    expect((await register(t.app, { login_id: "hanako" })).status).toBe(201);
  });
  afterEach(() => t.close());

  const hanakoId = () =>
    t.s.db.$client.prepare("SELECT id FROM members WHERE login_id = 'hanako'").pluck().get() as string;
  /**
   * The next sign-in's argon2 verification runs for real; `meanwhile` runs after it answered,
   * before the sign-in goes on (what another request can do in that time). Restore when done.
   */
  const whileVerifying = (meanwhile: () => unknown) => {
    const verify = t.s.hasher.verify.bind(t.s.hasher);
    return vi.spyOn(t.s.hasher, "verify").mockImplementationOnce(async (stored, password, opts) => {
      const right = await verify(stored, password, opts);
      await meanwhile();
      return right;
    });
  };

  it("signs in and sets an HttpOnly, SameSite=Lax session cookie", async () => {
    const res = await post(t.app, "/api/v1/login", { login_id: "hanako", password: STRONG_PASSWORD });
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ status: "authenticated" });
    const cookie = (res.headers["set-cookie"] as unknown as string[])[0] as string;
    expect(cookie).toMatch(/^sekisho_session=[\w-]{43}; Path=\/; HttpOnly; SameSite=Lax$/);
    const me = await supertest(t.app).get("/api/v1/me").set("Cookie", sessionCookie(res));
    expect(me.status).toBe(200);
    expect(me.body.login_id).toBe("hanako");
    expect(me.body.session.amr).toEqual(["pwd"]);
    expect(me.body.session.acr).toBe("urn:sekisho:acr:password");
  });

  it("answers an unknown login ID and a wrong password with the same status and byte-identical body", async () => {
    // Attack: enumerate which login IDs exist by comparing answers.
    const unknown = await post(t.app, "/api/v1/login", {
      login_id: "no.such.member",
      password: STRONG_PASSWORD,
    });
    const wrong = await post(t.app, "/api/v1/login", {
      login_id: "hanako",
      password: "wrong password entirely",
    });
    expect(unknown.status).toBe(401);
    expect(wrong.status).toBe(401);
    expect(Buffer.from(unknown.text)).toEqual(Buffer.from(wrong.text));
    expect(unknown.body.error).toBe("invalid_credentials");
    const strip = (h: Record<string, string>) => {
      const { date: _d, "x-request-id": _r, ...rest } = h;
      return rest;
    };
    expect(strip(unknown.headers)).toEqual(strip(wrong.headers));
  });

  it("a password set while the old one is being verified wins: the old one signs nothing in, and stays replaced", async () => {
    // Support sets a new password (a reset would do the same) after the sign-in read the member's
    // hash and before argon2 answered: the old password, right a moment ago, must not get a session.
    const spy = whileVerifying(async () => {
      t.clock.advance(60_000); // (support acts a minute after the member registered)
      await t.s.support.setPassword(hanakoId(), "a brand new password 77", {
        adminId: null,
        reason: "ticket 5",
        ip: null,
        requestId: null,
      });
    });
    try {
      const res = await post(t.app, "/api/v1/login", { login_id: "hanako", password: STRONG_PASSWORD });
      expect(res.status).toBe(401);
      expect(res.body.error).toBe("invalid_credentials");
      expect(res.headers["set-cookie"]).toBeUndefined();
    } finally {
      spy.mockRestore();
    }
    expect(
      (await post(t.app, "/api/v1/login", { login_id: "hanako", password: STRONG_PASSWORD })).status,
    ).toBe(401);
    expect(
      (await post(t.app, "/api/v1/login", { login_id: "hanako", password: "a brand new password 77" }))
        .status,
    ).toBe(200);
  });

  it("a new password required while the old one is being verified gets no session", async () => {
    const spy = whileVerifying(() =>
      t.s.recovery.requireNewPassword(hanakoId(), {
        adminId: "m_support",
        reason: "ticket 6",
        ip: null,
        requestId: null,
      }),
    );
    try {
      const res = await post(t.app, "/api/v1/login", { login_id: "hanako", password: STRONG_PASSWORD });
      expect(res.status).toBe(401);
      expect(res.headers["set-cookie"]).toBeUndefined();
    } finally {
      spy.mockRestore();
    }
  });

  it("two right-password sign-ins of one member at once, when a rehash is due, both succeed", async () => {
    // A rehash (new pepper, new argon2 parameters) by the one that finishes first changes the hash
    // under the other: not a new password.
    const rehash = vi.spyOn(t.s.hasher, "needsRehash").mockReturnValue(true);
    let inner = 0;
    const spy = whileVerifying(async () => {
      inner = (await post(t.app, "/api/v1/login", { login_id: "hanako", password: STRONG_PASSWORD })).status;
    });
    try {
      const outer = await post(t.app, "/api/v1/login", { login_id: "hanako", password: STRONG_PASSWORD });
      expect(inner).toBe(200);
      expect(outer.status).toBe(200);
    } finally {
      spy.mockRestore();
      rehash.mockRestore();
    }
    expect(
      (await post(t.app, "/api/v1/login", { login_id: "hanako", password: STRONG_PASSWORD })).status,
    ).toBe(200);
  });

  it("an unknown login ID costs an argon2 verify like a wrong password", async () => {
    const verify = vi.spyOn(t.s.hasher, "verify");
    await post(t.app, "/api/v1/login", { login_id: "no.such.member", password: "whatever it is here" });
    await post(t.app, "/api/v1/login", { login_id: "hanako", password: "whatever it is here" });
    expect(verify).toHaveBeenCalledTimes(2);
  });

  it("records failures in the audit log without the attempted password or unknown ID in clear", async () => {
    await post(t.app, "/api/v1/login", { login_id: "typed-my-secret-here", password: STRONG_PASSWORD });
    await post(t.app, "/api/v1/login", { login_id: "hanako", password: "wrong password entirely" });
    const rows = t.s.db.select().from(auditLog).where(eq(auditLog.action, "login.password")).all();
    expect(rows.map((r) => r.reason)).toEqual(["unknown_login_id", "wrong_password"]);
    const dump = JSON.stringify(rows);
    expect(dump).not.toContain("typed-my-secret-here");
    expect(dump).not.toContain("wrong password entirely");
    expect(JSON.parse(rows[0]?.details ?? "{}").login_id_fp).toMatch(/^[\w-]{22}$/);
  });

  it("a new sign-in revokes the session the browser already had (no session fixation)", async () => {
    const first = await signIn(t.app, "hanako");
    const res = await post(t.app, "/api/v1/login", { login_id: "hanako", password: STRONG_PASSWORD }, first);
    const second = sessionCookie(res);
    expect(second).not.toBe(first);
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", first)).status).toBe(401);
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", second)).status).toBe(200);
  });

  it("refuses a tampered or forged session cookie", async () => {
    const cookie = await signIn(t.app, "hanako");
    const token = cookie.split("=")[1] as string;
    const flipped = `sekisho_session=${token.slice(0, -1)}${token.endsWith("A") ? "B" : "A"}`;
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", flipped)).status).toBe(401);
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", "sekisho_session=../../etc")).status).toBe(
      401,
    );
    // The database holds only the token's hash: presenting the stored value signs nobody in.
    const stored = t.s.db.select().from(sessions).get();
    expect(stored?.tokenHash).not.toBe(token);
    const byHash = await supertest(t.app)
      .get("/api/v1/me")
      .set("Cookie", `sekisho_session=${stored?.tokenHash}`);
    expect(byHash.status).toBe(401);
  });

  it("expires a session after its idle timeout and after its absolute lifetime", async () => {
    const cookie = await signIn(t.app, "hanako");
    const me = () => supertest(t.app).get("/api/v1/me").set("Cookie", cookie);
    t.clock.advance(t.s.sessions.idleMs - 1000);
    expect((await me()).status).toBe(200); // activity extends the idle window
    t.clock.advance(t.s.sessions.idleMs - 1000);
    expect((await me()).status).toBe(200);
    t.clock.advance(t.s.sessions.idleMs + 1);
    expect((await me()).status).toBe(401);

    const busy = await signIn(t.app, "hanako");
    const start = t.clock.now().getTime();
    while (t.clock.now().getTime() - start < t.s.sessions.absoluteMs - t.s.sessions.idleMs) {
      t.clock.advance(t.s.sessions.idleMs / 2);
      expect((await supertest(t.app).get("/api/v1/me").set("Cookie", busy)).status).toBe(200);
    }
    t.clock.set(start + t.s.sessions.absoluteMs);
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", busy)).status).toBe(401);
  });

  it("a one-minute idle timeout is still extended by a member who is active", async () => {
    const short = makeApp({ SEKISHO_SESSION_IDLE_MINUTES: "1" });
    try {
      await register(short.app, { login_id: "quick.member" });
      const cookie = await signIn(short.app, "quick.member");
      for (let i = 0; i < 9; i++) {
        short.clock.advance(20_000);
        expect(
          (await supertest(short.app).get("/api/v1/me").set("Cookie", cookie)).status,
          `after ${(i + 1) * 20} s`,
        ).toBe(200);
      }
      short.clock.advance(61_000);
      expect((await supertest(short.app).get("/api/v1/me").set("Cookie", cookie)).status).toBe(401);
    } finally {
      short.close();
    }
  });

  it("logout revokes the session server-side and clears the cookie", async () => {
    const cookie = await signIn(t.app, "hanako");
    const res = await post(t.app, "/api/v1/logout", {}, cookie);
    expect(res.status).toBe(204);
    expect(String(res.headers["set-cookie"])).toMatch(/sekisho_session=;.*Expires=Thu, 01 Jan 1970/);
    // Replaying the old cookie after logout fails.
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).status).toBe(401);
  });

  it("lists a member's sessions and revokes one, but never another member's", async () => {
    const a = await signIn(t.app, "hanako");
    const b = await signIn(t.app, "hanako");
    const list = await supertest(t.app).get("/api/v1/me/sessions").set("Cookie", b);
    expect(list.body.sessions).toHaveLength(2);
    const other = list.body.sessions.find((x: { current: boolean }) => !x.current);
    const del = await supertest(t.app)
      .delete(`/api/v1/me/sessions/${other.id}`)
      .set("Origin", "http://localhost:3000")
      .set("Content-Type", "application/json")
      .set("Cookie", b);
    expect(del.status).toBe(204);
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", a)).status).toBe(401);

    // Attack: a second member tries to revoke the first member's session by id.
    await register(t.app, { login_id: "intruder" });
    const intruder = await signIn(t.app, "intruder");
    const mine = await supertest(t.app).get("/api/v1/me/sessions").set("Cookie", b);
    const target = mine.body.sessions[0].id;
    const attempt = await supertest(t.app)
      .delete(`/api/v1/me/sessions/${target}`)
      .set("Origin", "http://localhost:3000")
      .set("Content-Type", "application/json")
      .set("Cookie", intruder);
    expect(attempt.status).toBe(404);
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", b)).status).toBe(200);
  });

  it("shows the member their own security events, newest first", async () => {
    await post(t.app, "/api/v1/login", { login_id: "hanako", password: "wrong password entirely" });
    const cookie = await signIn(t.app, "hanako");
    const res = await supertest(t.app).get("/api/v1/me/events").set("Cookie", cookie);
    expect(res.status).toBe(200);
    expect(res.body.events.map((e: { type: string; outcome: string }) => `${e.type}:${e.outcome}`)).toEqual([
      "login.password:success",
      "login.password:failure",
      "member.registered:success",
    ]);
  });
});

describe("interim sign-in throttle", () => {
  let t: TestApp;
  beforeEach(async () => {
    t = makeApp();
    await register(t.app, { login_id: "hanako" });
  });
  afterEach(() => t.close());

  it("answers 429 with Retry-After after repeated failures, before any argon2 work", async () => {
    // Attack: guess one member's password from one address as fast as possible.
    for (let i = 0; i < 5; i++) {
      expect(
        (await post(t.app, "/api/v1/login", { login_id: "hanako", password: `guess number ${i}!` })).status,
      ).toBe(401);
    }
    const verify = vi.spyOn(t.s.hasher, "verify");
    const res = await post(t.app, "/api/v1/login", { login_id: "hanako", password: STRONG_PASSWORD });
    expect(res.status).toBe(429);
    expect(res.body.error).toBe("too_many_attempts");
    expect(Number(res.headers["retry-after"])).toBeGreaterThan(0);
    expect(verify).not.toHaveBeenCalled();
    // The member sees the throttled attempt among their own security events.
    t.clock.advance(15 * 60_000);
    const cookie = await signIn(t.app, "hanako");
    const events = await supertest(t.app).get("/api/v1/me/events").set("Cookie", cookie);
    expect(events.body.events.map((e: { type: string }) => e.type)).toContain("login.throttled");
    // The window passes: the member can sign in again (no permanent lock).
    t.clock.advance(15 * 60_000);
    expect(
      (await post(t.app, "/api/v1/login", { login_id: "hanako", password: STRONG_PASSWORD })).status,
    ).toBe(200);
  });
});
