import fs from "node:fs";
import { eq } from "drizzle-orm";
import supertest from "supertest";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { keyRotations, profiles, totpFactors } from "../src/db/schema.js";
import { fieldContext, PROFILE_FIELDS, ProfileVault } from "../src/members/profile.js";
import { encryptField, keyIdOf } from "../src/vault/fields.js";
import { Keyring, KeyringStore } from "../src/vault/keyring.js";
import { rotateKeys } from "../src/vault/rotation.js";
import { makeApp, PROFILE, register, signIn, type TestApp } from "./support/app.js";
import { runCli } from "./support/cli.js";

const system = { actorType: "system" as const, actorId: null, reason: "test" };

describe("key rotation", () => {
  let t: TestApp;
  let ids: string[];
  beforeEach(async () => {
    t = makeApp();
    ids = [];
    for (let i = 0; i < 7; i++) {
      const res = await register(t.app, {
        login_id: `rotate.${i}`,
        profile: { ...PROFILE, name: `会員 ${i}` },
      });
      ids.push(res.body.member_id);
    }
  });
  afterEach(() => t.close());

  // Rotation as the tests run it: on this app's database and keys, without the settle wait.
  const rotate = (opts: Partial<Parameters<typeof rotateKeys>[0]> = {}) =>
    rotateKeys({ db: t.s.db, keys: t.s.keys, audit: t.s.audit, clock: t.clock, settleMs: 0, ...opts });

  /** Vault values outside profiles and TOTP (the registrations' queued mail, here). */
  const otherSealed = () =>
    [
      ["legacy_passwords", "secret"],
      ["oidc_payloads", "payload"],
      ["outbox", "message"],
      ["member_tokens", "new_email"],
    ].reduce(
      (n, [table, column]) =>
        n +
        (t.s.db.$client
          .prepare(`SELECT count(*) FROM ${table} WHERE ${column} IS NOT NULL`)
          .pluck()
          .get() as number),
      0,
    );

  const rowKeys = () =>
    t.s.db
      .select({ keyId: profiles.keyId })
      .from(profiles)
      .all()
      .map((r) => r.keyId);

  it("re-encrypts TOTP secrets (active and pending) too; codes still verify afterwards", async () => {
    const { generateSync } = await import("otplib");
    let cookie = await signIn(t.app, "rotate.0");
    const post = (url: string, body: unknown) =>
      supertest(t.app)
        .post(url)
        .set("Origin", "http://localhost:3000")
        .set("Content-Type", "application/json")
        .set("Cookie", cookie)
        .send(JSON.stringify(body));
    const secret = (await post("/api/v1/me/totp", {})).body.secret as string;
    const code = () => generateSync({ secret, epoch: Math.floor(t.clock.now().getTime() / 1000) });
    expect((await post("/api/v1/me/totp/verify", { code: code() })).status).toBe(200);
    t.clock.advance(30_000);
    const stepUp = await post("/api/v1/login/totp", { code: code() }); // a session that used the factor
    cookie = String(stepUp.headers["set-cookie"]).match(/sekisho_session=[\w-]{43}/)?.[0] as string;
    expect((await post("/api/v1/me/totp", {})).status).toBe(200); // a pending re-enrolment beside the active secret
    const result = await rotate();
    const row = t.s.db.select().from(totpFactors).get();
    expect(keyIdOf(row?.secret ?? "")).toBe(result.newKeyId);
    expect(keyIdOf(row?.pendingSecret ?? "")).toBe(result.newKeyId);
    t.clock.advance(30_000);
    expect(t.s.factors.totp.verify(row?.memberId as string, code())).toBe(true);
  });

  it("re-encrypts legacy hashes, the provider's payloads and queued mail too, so an old keyring opens nothing newer; they still open afterwards", async () => {
    const member = ids[0] as string;
    t.s.legacyPasswords.put(member, { scheme: "md5", hash: "5f4dcc3b5aa765d61d8327deb882cf99" });
    await t.s.oidcStore.upsert("Grant", "grant-rotation-1", {
      accountId: "sub-1",
      clientId: "c_site",
    } as never);
    const sealed = {
      legacy_passwords: "secret",
      oidc_payloads: "payload",
      outbox: "message",
      member_tokens: "new_email",
    } as const;
    const keysIn = () =>
      Object.entries(sealed).flatMap(([table, column]) =>
        (
          t.s.db.$client
            .prepare(`SELECT ${column} FROM ${table} WHERE ${column} IS NOT NULL`)
            .pluck()
            .all() as string[]
        ).map((v) => `${table}:${keyIdOf(v)}`),
      );
    const before = keysIn();
    for (const table of ["legacy_passwords", "oidc_payloads", "outbox"])
      expect(
        before.some((k) => k.startsWith(`${table}:`)),
        table,
      ).toBe(true);
    // One that no longer opens (tampered): left as it is, counted, and the rotation still ends.
    const oldKey = t.s.keys.get().activeDataKey().id;
    t.s.db.$client
      .prepare("INSERT INTO oidc_payloads (model, id_hash, payload) VALUES ('Grant', 'broken', ?)")
      .run(`v1.${oldKey}.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA`);
    const result = await rotate();
    t.s.db.$client.prepare("DELETE FROM oidc_payloads WHERE id_hash = 'broken'").run();
    const entry = [...t.s.audit.iterate()].find((e) => e.action === "keys.rotated");
    expect(JSON.parse(entry?.details ?? "{}")).toMatchObject({ undecryptable: 1 });
    expect(JSON.parse(entry?.details ?? "{}").left_under_old_keys).toBeUndefined();
    const after = keysIn();
    expect(after).toHaveLength(before.length);
    for (const k of after) expect(k.split(":")[1], k).toBe(result.newKeyId);
    // Everything still opens.
    expect(t.s.legacyPasswords.find(member)).toMatchObject({ scheme: "md5" });
    const fresh = new (t.s.oidcStore.constructor as new (deps: unknown) => typeof t.s.oidcStore)({
      db: t.s.db,
      clock: t.clock,
      keys: t.s.keys,
    });
    expect(fresh.find("Grant", "grant-rotation-1")).toMatchObject({ accountId: "sub-1" });
    await t.s.mailer.runDue();
    expect(t.s.db.$client.prepare("SELECT count(*) FROM outbox WHERE status = 'failed'").pluck().get()).toBe(
      0,
    );
  });

  it("re-encrypts every row under the new key; all rows decrypt and new writes use the new key", async () => {
    const oldKey = t.s.keys.get().activeDataKey().id;
    const others = otherSealed();
    // Two values as written before profile values were padded: their lengths told them apart.
    const unpaddedGender = (id: string, gender: string) =>
      t.s.db
        .update(profiles)
        .set({ gender: encryptField(t.s.keys, fieldContext(id, "gender"), gender) })
        .where(eq(profiles.memberId, id))
        .run();
    unpaddedGender(ids[0] as string, "female");
    unpaddedGender(ids[1] as string, "male");
    const genderLength = (id: string) =>
      t.s.db.select().from(profiles).where(eq(profiles.memberId, id)).get()?.gender?.length;
    expect(genderLength(ids[0] as string)).not.toBe(genderLength(ids[1] as string));
    const result = await rotate({ batchSize: 3 });
    // Rotation pads them on its way.
    expect(genderLength(ids[0] as string)).toBe(genderLength(ids[1] as string));
    const genders = t.s.vault.readMany(ids.slice(0, 2), ["gender"], system);
    expect([genders.get(ids[0] as string)?.gender, genders.get(ids[1] as string)?.gender]).toEqual([
      "female",
      "male",
    ]);
    expect(result).toMatchObject({ resumed: false, rowsDone: 7 + others });
    expect(result.newKeyId).not.toBe(oldKey);
    expect(new Set(rowKeys())).toEqual(new Set([result.newKeyId]));
    for (const row of t.s.db.select().from(profiles).all()) {
      for (const col of [row.name, row.email, row.address]) expect(keyIdOf(col ?? "")).toBe(result.newKeyId);
    }
    const read = t.s.vault.readMany(ids, PROFILE_FIELDS, system);
    expect(ids.map((id) => read.get(id)?.name)).toEqual(ids.map((_, i) => `会員 ${i}`));

    const fresh = await register(t.app, { login_id: "after.rotation" });
    const row = t.s.db.select().from(profiles).where(eq(profiles.memberId, fresh.body.member_id)).get();
    expect(row?.keyId).toBe(result.newKeyId);
    // The old key stays in the keyring for anything still under it.
    expect(t.s.keys.get().dataKey(oldKey)?.active).toBe(false);
    // A new ID-token signing key too; the old one stays, so tokens it signed keep verifying (JWKS).
    const signing = t.s.keys.get().signingKeysActiveFirst();
    expect(signing.map((k) => k.active)).toEqual([true, false]);
    const { createApp } = await import("../src/http/app.js");
    const jwks = await supertest(createApp(t.s)).get("/oidc/jwks");
    // Both published (the new one signs once it has been published a while: test/oidc-keys.test.ts).
    expect(jwks.body.keys.map((k: { kid: string }) => k.kid).sort()).toEqual(
      signing.map((k) => k.kid).sort(),
    );
    expect(JSON.stringify(jwks.body)).not.toMatch(/"d":/); // public parts only
    expect(t.s.audit.verify().ok).toBe(true);
  });

  it("an interrupted rotation resumes where it stopped instead of adding another key", async () => {
    // Simulate a crash after the first committed batch.
    await expect(
      rotate({
        batchSize: 3,
        afterBatch: () => {
          throw new Error("killed");
        },
      }),
    ).rejects.toThrow("killed");
    const newKey = t.s.keys.get().activeDataKey().id;
    expect(rowKeys().filter((k) => k === newKey)).toHaveLength(3);
    // Meanwhile everything still decrypts (old rows under the old key).
    expect(t.s.vault.readMany(ids, ["email"], system).size).toBe(7);
    const dataKeysBefore = t.s.keys.get().dataKeys.length;

    const resumed = await rotate({ batchSize: 3 });
    expect(resumed).toMatchObject({ resumed: true, newKeyId: newKey, rowsDone: 7 + otherSealed() });
    expect(t.s.keys.get().dataKeys.length).toBe(dataKeysBefore);
    expect(new Set(rowKeys())).toEqual(new Set([newKey]));
    expect(
      t.s.db
        .select()
        .from(keyRotations)
        .all()
        .map((r) => r.finishedAt !== null),
    ).toEqual([true]);
  });

  it("a running server picks up a keyring rotated by the CLI and keeps serving every member", async () => {
    const cookie = await signIn(t.app, "rotate.3");
    const others = otherSealed();
    const run = runCli(t, ["keys", "rotate", "--batch-size", "2", "--json"]);
    expect(run.status, run.stderr).toBe(0);
    const { key_id: keyId, rows } = JSON.parse(run.stdout);
    expect(rows).toBe(7 + others);
    const onDisk = Keyring.parse(fs.readFileSync(t.s.config.keyringFile, "utf8"), "file");
    expect(onDisk.activeDataKey().id).toBe(keyId);
    // The server's store has not seen the file yet: reading a row under the unknown key reloads it.
    const me = await supertest(t.app).get("/api/v1/me").set("Cookie", cookie);
    expect(me.status).toBe(200);
    expect(me.body.profile.name).toBe("会員 3");
    expect(t.s.keys.get().activeDataKey().id).toBe(keyId);
  });

  it("stops at a row that fails to decrypt, audits it, and never blanks or skips it", async () => {
    // Attack (or corruption): a ciphertext moved between members before a rotation.
    const [a, b] = t.s.db.select().from(profiles).limit(2).all();
    t.s.db
      .update(profiles)
      .set({ phone: a?.phone })
      .where(eq(profiles.memberId, b?.memberId as string))
      .run();
    await expect(rotate({ batchSize: 50 })).rejects.toThrow(/key rotation stopped: .*authentication failed/);
    const failures = [...t.s.audit.iterate()].filter((e) => e.action === "pii.decrypt_failed");
    expect(failures).toHaveLength(1);
    expect(failures[0]?.memberId).toBe(b?.memberId);
    expect(JSON.parse(failures[0]?.details ?? "{}").field).toBe("phone");
    // The whole batch rolled back: nothing half-rotated, the bad value is still there to inspect.
    const after = t.s.db
      .select()
      .from(profiles)
      .where(eq(profiles.memberId, b?.memberId as string))
      .get();
    expect(after?.phone).toBe(a?.phone);
    expect(after?.keyId).toBe(b?.keyId);
  });

  it("a keyring that lacks the key a row needs gives an error, never empty data", () => {
    const stranger = new KeyringStore(Keyring.generate(t.clock.now()));
    const vault = new ProfileVault({ ...t.s, keys: stranger });
    expect(() => vault.read(ids[0] as string, ["email"], system)).toThrow(/unknown data key/);
  });
});
