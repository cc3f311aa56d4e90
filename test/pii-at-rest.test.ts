import fs from "node:fs";
import { eq } from "drizzle-orm";
import supertest from "supertest";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { auditLog, profiles } from "../src/db/schema.js";
import { makeApp, PROFILE, register, signIn, type TestApp } from "./support/app.js";

function fileBytes(t: TestApp): Buffer {
  const base = t.s.config.dbFile;
  return Buffer.concat(
    [base, `${base}-wal`, `${base}-shm`].filter((f) => fs.existsSync(f)).map((f) => fs.readFileSync(f)),
  );
}

describe("member PII at rest", () => {
  let t: TestApp;
  beforeEach(() => {
    t = makeApp();
  });
  afterEach(() => t.close());

  it("a copy of the database file and its WAL contains none of the profile values", async () => {
    // Attack: steal sekisho.db (+ -wal, -shm) and grep it for personal data.
    expect((await register(t.app, { login_id: "taro.yamada" })).status).toBe(201);
    const cookie = await signIn(t.app, "taro.yamada");
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).status).toBe(200);

    const check = () => {
      const bytes = fileBytes(t);
      // Positive control: the search does find what is stored in clear (the login ID).
      expect(bytes.includes(Buffer.from("taro.yamada"))).toBe(true);
      for (const value of Object.values(PROFILE)) {
        for (const encoding of ["utf8", "utf16le"] as const) {
          expect(
            bytes.includes(Buffer.from(value, encoding)),
            `${value} (${encoding}) found in the file`,
          ).toBe(false);
        }
      }
      // The login ID is an identifier, not profile data; the e-mail's local part must not leak either.
      expect(bytes.includes(Buffer.from("taro.yamada@"))).toBe(false);
    };
    check(); // while the data still sits in the WAL
    t.s.db.$client.pragma("wal_checkpoint(TRUNCATE)");
    check(); // and after it was copied into the main file
    // The files themselves are owner-only.
    for (const f of [t.s.config.dbFile, `${t.s.config.dbFile}-wal`]) {
      if (fs.existsSync(f)) expect(fs.statSync(f).mode & 0o077, f).toBe(0);
    }
  });

  it("a copy of the database holds no TOTP secret, recovery code or session, mfa or device token", async () => {
    // Attack: steal the files and sign in as a member with their second factor.
    const { generateSync } = await import("otplib");
    await register(t.app, { login_id: "factor.owner" });
    const cookie = await signIn(t.app, "factor.owner");
    const post = (url: string, body: unknown, c = cookie) =>
      supertest(t.app)
        .post(url)
        .set("Origin", "http://localhost:3000")
        .set("Content-Type", "application/json")
        .set("Cookie", c)
        .send(JSON.stringify(body));
    const secret = (await post("/api/v1/me/totp", {})).body.secret as string;
    const code = () => generateSync({ secret, epoch: Math.floor(t.clock.now().getTime() / 1000) });
    const codes = (await post("/api/v1/me/totp/verify", { code: code() })).body.recovery_codes as string[];
    t.clock.advance(30_000);
    const token = (
      await post(
        "/api/v1/login",
        { login_id: "factor.owner", password: "correct horse battery staple 42" },
        "",
      )
    ).body.mfa_token as string;
    const done = await post("/api/v1/login/totp", { mfa_token: token, code: code() }, "");
    const cookies = String(done.headers["set-cookie"]);
    const session = /sekisho_session=([\w-]{43})/.exec(cookies)?.[1] as string;
    const device = /sekisho_device=([\w-]{43})/.exec(cookies)?.[1] as string;
    const secretBytes = Buffer.from(secret.replace(/=+$/, ""), "utf8");
    const inWal = fileBytes(t);
    t.s.db.$client.pragma("wal_checkpoint(TRUNCATE)");
    for (const bytes of [inWal, fileBytes(t)]) {
      expect(bytes.includes(Buffer.from("factor.owner"))).toBe(true); // positive control
      expect(bytes.includes(secretBytes)).toBe(false);
      for (const c of codes) {
        expect(bytes.includes(Buffer.from(c))).toBe(false);
        expect(bytes.includes(Buffer.from(c.replace(/-/g, "")))).toBe(false);
      }
      for (const tok of [session, device, token]) expect(bytes.includes(Buffer.from(tok))).toBe(false);
    }
  });

  it("a ciphertext's length doesn't tell the value: every gender, and names of different lengths, encrypt to one length", async () => {
    // Attack: with the file alone, tell members apart by the lengths of their ciphertexts
    // (AES-GCM adds a fixed amount: "male" and "female" would differ by two).
    const people = [
      { gender: "male", name: "李 明" },
      { gender: "female", name: "山田 花子" },
      { gender: "other", name: "Alexandria Montgomery" },
      { gender: "prefer_not_to_say", name: "Bo" },
    ] as const;
    for (const [i, p] of people.entries())
      await register(t.app, { login_id: `length.${i}`, profile: { ...PROFILE, ...p } });
    const rows = t.s.db.select().from(profiles).all();
    expect(new Set(rows.map((r) => r.gender?.length)).size).toBe(1);
    expect(new Set(rows.map((r) => r.name?.length)).size).toBe(1);
    // ...and each value reads back exactly as it was given.
    for (const [i, p] of people.entries()) {
      const cookie = await signIn(t.app, `length.${i}`);
      const me = await supertest(t.app).get("/api/v1/me").set("Cookie", cookie);
      expect(me.body.profile).toMatchObject({ gender: p.gender, name: p.name, email: PROFILE.email });
    }
  });

  it("two members with the same name and e-mail get different ciphertexts", async () => {
    const a = await register(t.app, { login_id: "member.one" });
    const b = await register(t.app, { login_id: "member.two" });
    const rows = t.s.db.select().from(profiles).all();
    const ra = rows.find((r) => r.memberId === a.body.member_id);
    const rb = rows.find((r) => r.memberId === b.body.member_id);
    expect(ra?.name).toBeTruthy();
    expect(ra?.name).not.toBe(rb?.name);
    expect(ra?.email).not.toBe(rb?.email);
    // The blind index is deterministic by design (it finds members by e-mail).
    expect(ra?.emailIndex).toBe(rb?.emailIndex);
    expect(t.s.vault.memberIdsByEmail(" TARO.YAMADA@example.jp ").sort()).toEqual(
      [a.body.member_id, b.body.member_id].sort(),
    );
  });

  it("a ciphertext moved to another member's row fails to decrypt, is audited, and is never shown empty", async () => {
    // Attack: an insider with database access copies the victim's e-mail ciphertext into their own row.
    const victim = await register(t.app, {
      login_id: "victim.member",
      profile: { ...PROFILE, email: "victim@example.jp" },
    });
    await register(t.app, { login_id: "thief.member", profile: { ...PROFILE, email: "thief@example.jp" } });
    const thief = t.s.db
      .select()
      .from(profiles)
      .all()
      .find((r) => r.memberId !== victim.body.member_id);
    const victimRow = t.s.db
      .select()
      .from(profiles)
      .where(eq(profiles.memberId, victim.body.member_id))
      .get();
    t.s.db
      .update(profiles)
      .set({ email: victimRow?.email })
      .where(eq(profiles.memberId, thief?.memberId as string))
      .run();

    const cookie = await signIn(t.app, "thief.member");
    const res = await supertest(t.app).get("/api/v1/me").set("Cookie", cookie);
    expect(res.status).toBe(500);
    expect(res.body.error).toBe("server_error");
    expect(res.text).not.toContain("victim@example.jp");
    const failures = t.s.db.select().from(auditLog).where(eq(auditLog.action, "pii.decrypt_failed")).all();
    expect(failures).toHaveLength(1);
    expect(failures[0]?.memberId).toBe(thief?.memberId);
    expect(JSON.parse(failures[0]?.details ?? "{}").field).toBe("email");
    expect(t.logs.join("")).toContain("profile field failed to decrypt");
  });

  it("a ciphertext moved to another column of the same row fails to decrypt", async () => {
    const res = await register(t.app, { login_id: "column.swap" });
    const id = res.body.member_id as string;
    const row = t.s.db.select().from(profiles).where(eq(profiles.memberId, id)).get();
    t.s.db.update(profiles).set({ name: row?.address }).where(eq(profiles.memberId, id)).run();
    expect(() =>
      t.s.vault.read(id, ["name"], { actorType: "system", actorId: null, reason: "test" }),
    ).toThrow(/authentication failed/);
  });

  it("every decryption is audited with who, whose, which fields and why, never the values", async () => {
    await register(t.app, { login_id: "audited.member" });
    const cookie = await signIn(t.app, "audited.member");
    await supertest(t.app).get("/api/v1/me").set("Cookie", cookie);
    const reads = t.s.db.select().from(auditLog).where(eq(auditLog.action, "pii.read")).all();
    expect(reads).toHaveLength(1);
    const read = reads[0];
    expect(read?.actorType).toBe("member");
    expect(read?.actorId).toBe(read?.memberId);
    expect(read?.reason).toBe("self_view");
    expect(JSON.parse(read?.details ?? "{}").fields).toEqual(Object.keys(PROFILE));
    const everything = JSON.stringify(t.s.db.select().from(auditLog).all());
    for (const value of Object.values(PROFILE)) expect(everything).not.toContain(value);
  });
});
