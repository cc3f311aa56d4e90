import argon2 from "argon2";
import { eq } from "drizzle-orm";
import { afterEach, describe, expect, it } from "vitest";
import { members } from "../src/db/schema.js";
import { blocklist } from "../src/passwords/blocklist.js";
import { PasswordHasher } from "../src/passwords/hasher.js";
import { parseArgon2Phc } from "../src/passwords/phc.js";
import { HashQueue } from "../src/passwords/queue.js";
import { checkPassword } from "../src/passwords/rules.js";
import { buildServices } from "../src/services.js";
import { Keyring, KeyringStore } from "../src/vault/keyring.js";
import { makeApp, post, register, STRONG_PASSWORD, type TestApp } from "./support/app.js";
import { referenceVerifier, referenceVerify } from "./support/libargon2.js";

const rules = (pw: string, loginId?: string) =>
  checkPassword(pw, { minLength: 12, loginId: loginId ?? null });

describe("password rules (NIST SP 800-63B style)", () => {
  it("ships a blocklist of at least 10,000 common and breached passwords", () => {
    expect(blocklist().size).toBeGreaterThanOrEqual(10_000);
    expect(blocklist().has("password")).toBe(true);
  });

  it("accepts a long passphrase with no composition rules", () => {
    expect(rules("correct horse battery staple")).toEqual([]);
    expect(rules("すべての人間は生まれながらにして自由")).toEqual([]);
  });

  it("refuses short, common, context-word and repetitive passwords with machine-readable reasons", () => {
    expect(rules("short pw")).toContain("too_short");
    expect(rules("x".repeat(257))).toContain("too_long");
    expect(rules("password1234")).toContain("common_password");
    expect(rules("qwertyuiop123!")).toContain("common_password");
    expect(rules("iloveyou2026!!")).toContain("common_password");
    expect(rules("my name is taro.yamada ok", "taro.yamada")).toEqual(["contains_login_id"]);
    expect(rules("I really like Sekisho a lot")).toEqual(["contains_service_name"]);
    expect(rules("abababababababab")).toContain("repetitive");
    expect(rules("bad\u0000password here")).toContain("invalid_characters");
    expect(rules("lone \ud800 surrogate pw")).toContain("invalid_characters");
  });

  it("normalises with NFKC: a full-width password is the same password", () => {
    expect(rules("ｐａｓｓｗｏｒｄ１２３４")).toContain("common_password");
  });

  it("answers weak_password with the reasons over HTTP", async () => {
    const t = makeApp();
    try {
      const res = await register(t.app, { login_id: "weak.member", password: "weak.member-password" });
      expect(res.status).toBe(400);
      expect(res.body.error).toBe("weak_password");
      expect(res.body.reasons).toEqual(expect.arrayContaining(["contains_login_id"]));
      expect(t.s.db.select().from(members).all()).toHaveLength(0);
    } finally {
      t.close();
    }
  });
});

describe("argon2id hashing", () => {
  let t: TestApp | undefined;
  afterEach(() => t?.close());

  it("matches the RFC 9106 Argon2id known-answer vector", async () => {
    const tag = await argon2.hash(Buffer.alloc(32, 0x01), {
      type: argon2.argon2id,
      salt: Buffer.alloc(16, 0x02),
      secret: Buffer.alloc(8, 0x03),
      associatedData: Buffer.alloc(12, 0x04),
      memoryCost: 32,
      timeCost: 3,
      parallelism: 4,
      hashLength: 32,
      raw: true,
    });
    expect(tag.toString("hex")).toBe("0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659");
  });

  it("stores a standard PHC string (m,t,p order) with the default parameters", async () => {
    const keys = new KeyringStore(Keyring.generate(new Date()));
    const hasher = new PasswordHasher({
      params: { memoryCost: 19456, timeCost: 2, parallelism: 1 },
      keys,
      queue: new HashQueue(2, 10),
    });
    const stored = await hasher.hash(STRONG_PASSWORD);
    expect(stored.hash).toMatch(/^\$argon2id\$v=19\$m=19456,t=2,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/);
    expect(stored.pepperId).toBe(keys.get().activePepper()?.id);
    expect(await hasher.verify(stored, STRONG_PASSWORD)).toBe(true);
    expect(await hasher.verify(stored, `${STRONG_PASSWORD}x`)).toBe(false);
    // The pepper is argon2's secret: without it the hash does not verify.
    expect(await argon2.verify(stored.hash, STRONG_PASSWORD)).toBe(false);
  });

  it.skipIf(!referenceVerifier() && !process.env.CI)(
    "the reference libargon2 verifies a stored hash (and refuses node-argon2's m,p,t order)",
    async () => {
      expect(referenceVerifier(), "libargon2-dev and cc are needed (installed by .ci/run)").not.toBeNull();
      const keys = new KeyringStore(Keyring.generate(new Date(), { pepper: false }));
      const hasher = new PasswordHasher({
        params: { memoryCost: 19456, timeCost: 2, parallelism: 1 },
        keys,
        queue: new HashQueue(1, 10),
      });
      const stored = await hasher.hash(STRONG_PASSWORD);
      expect(referenceVerify(stored.hash, STRONG_PASSWORD)).toEqual({ ok: true, message: "OK" });
      expect(referenceVerify(stored.hash, "another password").ok).toBe(false);
      // Negative control: the order the argon2 package writes is refused by the reference decoder.
      const raw = await argon2.hash(STRONG_PASSWORD, {
        type: argon2.argon2id,
        memoryCost: 1024,
        timeCost: 1,
      });
      expect(raw).toMatch(/m=1024,p=\d+,t=1/);
      expect(referenceVerify(raw, STRONG_PASSWORD)).toEqual({ ok: false, message: "Decoding failed" });
    },
  );

  it("re-hashes with the new parameters at the next sign-in after they are raised", async () => {
    t = makeApp();
    await register(t.app, { login_id: "rehash.me" });
    const before = t.s.db.select().from(members).where(eq(members.loginId, "rehash.me")).get();
    expect(parseArgon2Phc(before?.passwordHash ?? "")).toMatchObject({ m: 1024, t: 1, p: 1 });

    // The operator raises the cost; the same database and keys are opened with the new config.
    const raised = buildServices({
      ...t.s,
      config: { ...t.s.config, argon2: { memoryCost: 2048, timeCost: 2, parallelism: 1 } },
    });
    const { createApp } = await import("../src/http/app.js");
    const app = createApp(raised);
    expect(
      (await post(app, "/api/v1/login", { login_id: "rehash.me", password: STRONG_PASSWORD })).status,
    ).toBe(200);
    const after = t.s.db.select().from(members).where(eq(members.loginId, "rehash.me")).get();
    expect(parseArgon2Phc(after?.passwordHash ?? "")).toMatchObject({
      variant: "argon2id",
      m: 2048,
      t: 2,
      p: 1,
    });
    expect(after?.passwordHash).not.toBe(before?.passwordHash);
    // And the new hash still signs in (with the raised parameters and the old ones' app alike).
    expect(
      (await post(app, "/api/v1/login", { login_id: "rehash.me", password: STRONG_PASSWORD })).status,
    ).toBe(200);
  });

  it("refuses new hashing work with 503 server_busy when the queue is full", async () => {
    const queue = new HashQueue(1, 1);
    let release: () => void = () => {};
    const blocker = queue.run(() => new Promise<void>((r) => (release = r)));
    const waiting = queue.run(async () => "second");
    await expect(queue.run(async () => "third")).rejects.toMatchObject({ status: 503, code: "server_busy" });
    release();
    await blocker;
    expect(await waiting).toBe("second");
    expect(queue.inFlight).toBe(0);
  });
});

describe("HashQueue withdrawal", () => {
  it("asks a job that waited whether it is still wanted; one that isn't doesn't run, and the next job gets the slot", async () => {
    const { HashQueue, WithdrawnJob } = await import("../src/passwords/queue.js");
    const q = new HashQueue(1, 100);
    const ran: string[] = [];
    let release!: () => void;
    const first = q.run(() => new Promise<void>((r) => (release = r)), { stillWanted: () => false });
    const asked: string[] = [];
    const unwanted = q.run(async () => void ran.push("unwanted"), {
      stillWanted: () => asked.push("unwanted") < 0,
    });
    const wanted = q.run(async () => void ran.push("wanted"), {
      stillWanted: () => asked.push("wanted") > 0,
    });
    release();
    await first; // it did not wait: it was not asked
    await expect(unwanted).rejects.toBeInstanceOf(WithdrawnJob);
    await wanted;
    expect(asked).toEqual(["unwanted", "wanted"]);
    expect(ran).toEqual(["wanted"]);
    expect(q.inFlight).toBe(0);
  });

  it("reconsider: waiting jobs that are no longer wanted leave at once, without a slot; the rest keep their places", async () => {
    const { HashQueue, WithdrawnJob } = await import("../src/passwords/queue.js");
    const q = new HashQueue(1, 100);
    const ran: string[] = [];
    let release!: () => void;
    const running = q.run(() => new Promise<void>((r) => (release = r)));
    let alarm = false;
    const jobs = ["a", "b", "c", "d"].map((name) =>
      q.run(async () => void ran.push(name), {
        // b and c would be refused once the alarm goes off; a and d not.
        stillWanted: () => !(alarm && (name === "b" || name === "c")),
      }),
    );
    // Work nothing may refuse (a registration) and a member's own device wait too, uncounted as attempts.
    const registration = q.run(async () => void ran.push("registration"));
    const member = q.run(async () => void ran.push("member"), { priority: true, stillWanted: () => true });
    expect(q.depth).toBe(6);
    expect(q.waitingAttempts).toBe(4);
    // A job whose question fails stays in line: its own turn asks again (an error there reaches its caller).
    let broken = true;
    const e = q.run(async () => void ran.push("e"), {
      stillWanted: () => {
        if (broken) throw new Error("the throttle failed");
        return true;
      },
    });
    const settled: string[] = [];
    for (const [i, p] of jobs.entries()) {
      p.then(
        () => settled.push(`ran ${i}`),
        () => settled.push(`withdrawn ${i}`),
      );
    }
    expect(q.reconsider()).toBe(0); // nothing changed: nobody leaves
    alarm = true;
    expect(q.reconsider()).toBe(2);
    await expect(jobs[1]).rejects.toBeInstanceOf(WithdrawnJob);
    await expect(jobs[2]).rejects.toBeInstanceOf(WithdrawnJob);
    // Withdrawn while the slot is still busy: nothing ran, the others still wait.
    expect(settled).toEqual(["withdrawn 1", "withdrawn 2"]);
    expect(q.waitingAttempts).toBe(3);
    expect(q.depth).toBe(5);
    expect(q.inFlight).toBe(1);
    broken = false;
    release();
    await Promise.all([running, jobs[0], jobs[3], e, registration, member]);
    expect(ran).toEqual(["member", "a", "d", "registration", "e"]);
    expect(q.waitingAttempts).toBe(0);
    expect(q.inFlight).toBe(0);
    expect(q.depth).toBe(0);
  });
});

describe("HashQueue priority line", () => {
  it("serves a member's own device before the work already waiting (a flood can't starve them)", async () => {
    const { HashQueue } = await import("../src/passwords/queue.js");
    const q = new HashQueue(1, 100);
    const order: string[] = [];
    let release!: () => void;
    const first = q.run(() => new Promise<void>((r) => (release = r)).then(() => void order.push("running")));
    const flood = Array.from({ length: 5 }, (_, i) => q.run(async () => void order.push(`flood${i}`)));
    const member = q.run(async () => void order.push("member"), { priority: true });
    release();
    await Promise.all([first, member, ...flood]);
    expect(order).toEqual(["running", "member", "flood0", "flood1", "flood2", "flood3", "flood4"]);
  });
});
