import { createHash } from "node:crypto";
import fs from "node:fs";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { OidcStore } from "../src/oidc/adapter.js";
import { decryptField } from "../src/vault/fields.js";
import { makeApp, type TestApp } from "./support/app.js";

/**
 * The storage-adapter contract oidc-provider relies on (modelled on its memory adapter):
 * upsert/find round-trip, lookups by uid and user code, expiry, consume, destroy, revokeByGrantId.
 */
describe("OIDC storage adapter", () => {
  let t: TestApp;
  let store: OidcStore;
  const adapter = (model: string) => store.adapterFactory()(model);
  beforeEach(() => {
    t = makeApp();
    store = new OidcStore({ db: t.s.db, clock: t.clock, keys: t.s.keys });
  });
  afterEach(() => t.close());

  it("round-trips a payload by model and id, and upsert replaces it", async () => {
    const codes = adapter("AuthorizationCode");
    await codes.upsert("code-1", { jti: "code-1", grantId: "g1", clientId: "c1" }, 60);
    expect(await codes.find("code-1")).toEqual({ jti: "code-1", grantId: "g1", clientId: "c1" });
    expect(await adapter("AccessToken").find("code-1")).toBeUndefined(); // models are separate
    await codes.upsert("code-1", { jti: "code-1", grantId: "g1", clientId: "c2" }, 60);
    expect((await codes.find("code-1"))?.clientId).toBe("c2");
    expect(await codes.find("nope")).toBeUndefined();
  });

  it("finds a session by uid and a device code by user code", async () => {
    await adapter("Session").upsert("sess-1", { uid: "uid-1", accountId: "sub-1" }, 3600);
    expect((await adapter("Session").findByUid("uid-1"))?.accountId).toBe("sub-1");
    await adapter("DeviceCode").upsert("dc-1", { userCode: "ABCD-EFGH", grantId: "g9" }, 600);
    expect((await adapter("DeviceCode").findByUserCode("ABCD-EFGH"))?.grantId).toBe("g9");
    expect(await adapter("Session").findByUid("uid-2")).toBeUndefined();
  });

  it("stops returning a payload once it expires, and deleteExpired removes it (clock moved, not slept)", async () => {
    const codes = adapter("AuthorizationCode");
    await codes.upsert("short", { jti: "short" }, 60);
    await adapter("Grant").upsert("forever", { jti: "forever" });
    t.clock.advance(59_000);
    expect(await codes.find("short")).toBeDefined();
    t.clock.advance(1_000);
    expect(await codes.find("short")).toBeUndefined();
    expect(store.deleteExpired()).toBe(1);
    expect(await adapter("Grant").find("forever")).toBeDefined();
  });

  it("consume marks the payload consumed with a timestamp", async () => {
    const codes = adapter("AuthorizationCode");
    await codes.upsert("c", { jti: "c", grantId: "g" }, 60);
    await codes.consume("c");
    expect((await codes.find("c"))?.consumed).toBe(Math.floor(t.clock.now().getTime() / 1000));
  });

  it("a second consume of the same code fails and revokes everything issued under its grant", async () => {
    // Attack: redeem one authorization code from two token requests at the same moment.
    const codes = adapter("AuthorizationCode");
    await codes.upsert("c", { jti: "c", grantId: "g" }, 60);
    await adapter("AccessToken").upsert("at", { jti: "at", grantId: "g" }, 600);
    const results = await Promise.allSettled([codes.consume("c"), codes.consume("c")]);
    expect(results.map((r) => r.status).sort()).toEqual(["fulfilled", "rejected"]);
    const rejected = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
    expect(rejected.reason).toMatchObject({ error: "invalid_grant" });
    expect(await adapter("AccessToken").find("at")).toBeUndefined();
    expect(await codes.find("c")).toBeUndefined();
  });

  it("revokeByGrantId removes every code and token of that grant and nothing else", async () => {
    for (const model of ["AuthorizationCode", "AccessToken", "RefreshToken"]) {
      await adapter(model).upsert(`${model}-g1`, { jti: `${model}-g1`, grantId: "g1" }, 600);
      await adapter(model).upsert(`${model}-g2`, { jti: `${model}-g2`, grantId: "g2" }, 600);
    }
    await adapter("Grant").upsert("g1", { jti: "g1" }, 600);
    await adapter("RefreshToken").revokeByGrantId("g1");
    for (const model of ["AuthorizationCode", "AccessToken", "RefreshToken"]) {
      expect(await adapter(model).find(`${model}-g1`)).toBeUndefined();
      expect(await adapter(model).find(`${model}-g2`)).toBeDefined();
    }
    expect(await adapter("Grant").find("g1")).toBeDefined(); // the provider destroys the grant itself
  });

  it("destroy removes one payload", async () => {
    await adapter("Interaction").upsert("i1", { uid: "i1" }, 600);
    await adapter("Interaction").destroy("i1");
    expect(await adapter("Interaction").find("i1")).toBeUndefined();
  });

  it("stores ids as hashes: a copy of the database holds no usable token or session id", async () => {
    // Attack: read bearer tokens and session ids out of a stolen database file.
    const token = "AT-secret-value-0123456789abcdefghijklmnop";
    await adapter("AccessToken").upsert(token, { jti: token, grantId: "g" }, 600);
    await adapter("Session").upsert("session-cookie-value-xyz", { uid: "uid-secret-value" }, 600);
    t.s.db.$client.pragma("wal_checkpoint(TRUNCATE)");
    const bytes = fs.readFileSync(t.s.config.dbFile);
    for (const secret of [token, "session-cookie-value-xyz", "uid-secret-value"]) {
      expect(bytes.includes(Buffer.from(secret)), secret).toBe(false);
    }
    // ...while the adapter still finds both by their ids.
    expect((await adapter("AccessToken").find(token))?.jti).toBe(token);
    expect(await adapter("Session").findByUid("uid-secret-value")).toBeDefined();
  });

  describe("group commit and the payload cache", () => {
    const committed = (model: string, id: string) =>
      t.s.db.$client
        .prepare("SELECT count(*) AS n FROM oidc_payloads WHERE model = ? AND id_hash = ?")
        .get(model, createHash("sha256").update(id).digest("base64url")) as { n: number };

    it("commits the token endpoint's writes together, and settles each only after the commit", async () => {
      const tokens = adapter("RefreshToken");
      let settled = 0;
      const writes = ["rt-1", "rt-2", "rt-3"].map((id) =>
        tokens.upsert(id, { jti: id, grantId: "g" }, 600).then(() => settled++),
      );
      // Queued, not yet committed: nothing on disk, nobody told it is done...
      expect(committed("RefreshToken", "rt-1").n).toBe(0);
      expect(settled).toBe(0);
      // ...but a read in the meantime sees them, as it would a committed row.
      expect((await tokens.find("rt-2"))?.jti).toBe("rt-2");
      await Promise.all(writes);
      for (const id of ["rt-1", "rt-2", "rt-3"]) expect(committed("RefreshToken", id).n).toBe(1);
    });

    it("fails every write of a batch whose commit fails, and keeps none of it", async () => {
      const tokens = adapter("AccessToken");
      t.s.db.$client.exec(
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON oidc_payloads WHEN NEW.id_hash IS NOT NULL BEGIN SELECT RAISE(ABORT, 'disk says no'); END",
      );
      const results = await Promise.allSettled([
        tokens.upsert("at-1", { jti: "at-1", grantId: "g" }, 600),
        tokens.upsert("at-2", { jti: "at-2", grantId: "g" }, 600),
      ]);
      expect(results.map((r) => r.status)).toEqual(["rejected", "rejected"]);
      t.s.db.$client.exec("DROP TRIGGER temp.refuse");
      expect(await tokens.find("at-1")).toBeUndefined();
      expect(committed("AccessToken", "at-2").n).toBe(0);
    });

    it("a consume waiting for the commit already shows the token as used (a replay in the same moment is caught)", async () => {
      const tokens = adapter("RefreshToken");
      await tokens.upsert("rt", { jti: "rt", grantId: "g" }, 600);
      const consumed = tokens.consume("rt");
      expect((await tokens.find("rt"))?.consumed).toBe(Math.floor(t.clock.now().getTime() / 1000));
      await consumed;
      expect((await tokens.find("rt"))?.consumed).toBeDefined();
    });

    it("keeps a grant revoked even when a token of it was still waiting for the commit", async () => {
      // Attack: a refresh whose new tokens are queued while the member's grant is revoked in the
      // same moment; committing the queue afterwards must not bring the tokens back, and the
      // request must fail rather than answer with a token that was never stored.
      const tokens = adapter("RefreshToken");
      const write = tokens.upsert("rt-new", { jti: "rt-new", grantId: "g-revoked", accountId: "sub-1" }, 600);
      const other = tokens.upsert("rt-other", { jti: "rt-other", grantId: "g-kept" }, 600);
      expect(store.revokeByGrantId("g-revoked")).toBe(1);
      await expect(write).rejects.toMatchObject({ error: "invalid_grant" });
      await other;
      expect(await tokens.find("rt-new")).toBeUndefined();
      expect(committed("RefreshToken", "rt-new").n).toBe(0);
      expect(await tokens.find("rt-other")).toBeDefined();
      // ...and a token of it written later (a request that read the grant before) is refused.
      await expect(
        adapter("AccessToken").upsert("at-late", { jti: "at-late", grantId: "g-revoked" }, 600),
      ).rejects.toMatchObject({ error: "invalid_grant" });
      // The same for a member's whole account (a password reset), queued, cached or later.
      await adapter("Grant").upsert("g2", { jti: "g2", accountId: "sub-2" }, 600);
      await tokens.upsert("rt-cached", { jti: "rt-cached", grantId: "g2", accountId: "sub-2" }, 600);
      expect(await tokens.find("rt-cached")).toBeDefined();
      const queued = tokens.upsert("rt-queued", { jti: "rt-queued", grantId: "g3", accountId: "sub-2" }, 600);
      expect(store.revokeAccount("sub-2")).toBe(3);
      await expect(queued).rejects.toMatchObject({ error: "invalid_grant" });
      expect(await tokens.find("rt-cached")).toBeUndefined();
      expect(await tokens.find("rt-queued")).toBeUndefined();
      for (const [grantId, id] of [
        ["g2", "at-g2"],
        ["g3", "at-g3"],
      ])
        await expect(
          adapter("AccessToken").upsert(id as string, { jti: id, grantId, accountId: "sub-2" }, 600),
        ).rejects.toMatchObject({ error: "invalid_grant" });
      // A new sign-in's new grant is not affected.
      await adapter("AccessToken").upsert(
        "at-new",
        { jti: "at-new", grantId: "g4", accountId: "sub-2" },
        600,
      );
      expect(await adapter("AccessToken").find("at-new")).toBeDefined();
    });

    describe("within a provider request (deferred: one commit for the request's writes)", () => {
      let request: object | undefined;
      beforeEach(() => {
        request = undefined;
        store.deferWithin(() => request);
      });
      const settledYet = async (p: Promise<unknown>) => {
        let done = false;
        void p.then(() => {
          done = true;
        });
        for (let i = 0; i < 5; i++) await Promise.resolve();
        return done;
      };

      it("settles the writes at once, but the request's answer waits until they are on disk", async () => {
        const tokens = adapter("RefreshToken");
        await tokens.upsert("rt-old", { jti: "rt-old", grantId: "g" }, 600);
        request = {};
        const req = request;
        await tokens.consume("rt-old");
        await tokens.upsert("rt-new", { jti: "rt-new", grantId: "g" }, 600);
        await adapter("AccessToken").upsert("at-new", { jti: "at-new", grantId: "g" }, 600);
        request = undefined;
        // Nothing committed yet, and the answer may not go out...
        expect(committed("RefreshToken", "rt-new").n).toBe(0);
        const answer = store.committed(req);
        expect(await settledYet(answer)).toBe(false);
        // ...while reads already see the request's writes.
        expect((await tokens.find("rt-old"))?.consumed).toBeDefined();
        expect((await tokens.find("rt-new"))?.jti).toBe("rt-new");
        store.flush();
        expect(await answer).toBeNull();
        expect(committed("RefreshToken", "rt-new").n).toBe(1);
        expect(committed("AccessToken", "at-new").n).toBe(1);
      });

      it("a second consume of the token in the same moment loses at once", async () => {
        const tokens = adapter("RefreshToken");
        await tokens.upsert("rt", { jti: "rt", grantId: "g" }, 600);
        await tokens.find("rt");
        request = {};
        expect(await store.consume("RefreshToken", "rt")).toBe(true);
        request = {};
        expect(await store.consume("RefreshToken", "rt")).toBe(false);
      });

      it("refuses the request's tokens and revokes the grant when the commit finds its token consumed by another process", async () => {
        // Attack: the same refresh token redeemed by another process between this one's read and
        // its commit. This process still believes the token unused; the commit must not.
        const tokens = adapter("RefreshToken");
        await adapter("Grant").upsert("g-raced", { jti: "g-raced", accountId: "sub-1" });
        await tokens.upsert("rt-raced", { jti: "rt-raced", grantId: "g-raced", accountId: "sub-1" }, 600);
        expect(await tokens.find("rt-raced")).toBeDefined();
        const other = new Database(t.s.config.dbFile);
        other
          .prepare("UPDATE oidc_payloads SET consumed_at = 1 WHERE model = 'RefreshToken' AND id_hash = ?")
          .run(createHash("sha256").update("rt-raced").digest("base64url"));
        other.close();
        request = {};
        const req = request;
        expect(await store.consume("RefreshToken", "rt-raced")).toBe(true); // what this process knew
        await tokens.upsert("rt-next", { jti: "rt-next", grantId: "g-raced", accountId: "sub-1" }, 600);
        request = undefined;
        store.flush();
        expect(await store.committed(req)).toMatchObject({ error: "invalid_grant" });
        expect(committed("RefreshToken", "rt-next").n).toBe(0);
        expect(committed("RefreshToken", "rt-raced").n).toBe(0);
        expect(committed("Grant", "g-raced").n).toBe(0);
      });
    });

    it("keeps interactions apart, so a flood of them (anyone can have those written) can't push tokens out; sessions not at all", async () => {
      await adapter("Grant").upsert("g1", { jti: "g1", accountId: "s" }, 600);
      // 2,300 interactions of 7.5 KB: more than the whole token cache holds (16 MB).
      const state = "x".repeat(7_500);
      for (let i = 0; i < 2_300; i++)
        await adapter("Interaction").upsert(`i${i}`, { jti: `i${i}`, uid: `i${i}`, params: { state } }, 600);
      const held = store.memory();
      expect(held.tokens).toBe(1); // the grant is still held
      expect(held.interactions).toBeGreaterThan(0);
      expect(held.interactionBytes).toBeLessThanOrEqual(4 * 1024 * 1024); // bounded
      // Read back from memory: the row is gone from the database.
      t.s.db.$client.prepare("DELETE FROM oidc_payloads WHERE model IN ('Grant', 'Interaction')").run();
      expect(await adapter("Interaction").find("i2299")).toBeDefined();
      expect(await adapter("Interaction").find("i0")).toBeUndefined(); // the oldest went
      await adapter("Session").upsert("s1", { jti: "s1", uid: "u1", accountId: "s" }, 600);
      t.s.db.$client.prepare("DELETE FROM oidc_payloads WHERE model = 'Session'").run();
      expect(await adapter("Session").find("s1")).toBeUndefined(); // read from the database
    });

    it("keeps no bearer token in a row's payload, and gives it back by the id it is found by", async () => {
      const token = "RT-secret-value-0123456789abcdefghijklmnop";
      await adapter("RefreshToken").upsert(token, { jti: token, grantId: "g" }, 600);
      const row = t.s.db.$client.prepare("SELECT model, id_hash, payload FROM oidc_payloads").get() as {
        model: string;
        id_hash: string;
        payload: string;
      };
      const plain = decryptField(
        t.s.keys,
        { table: "oidc_payloads", column: row.model, rowId: row.id_hash },
        row.payload,
      );
      expect(plain).not.toContain(token);
      expect((await adapter("RefreshToken").find(token))?.jti).toBe(token);
      // Read from the database rather than memory, the same.
      const fresh = new OidcStore({ db: t.s.db, clock: t.clock, keys: t.s.keys });
      expect(fresh.find("RefreshToken", token)?.jti).toBe(token);
    });

    it("forgets what it holds when another process changes the database (a revocation from the CLI)", async () => {
      vi.useFakeTimers({ toFake: ["performance"] });
      try {
        const tokens = adapter("RefreshToken");
        await tokens.upsert("rt", { jti: "rt", grantId: "g" }, 600);
        expect(await tokens.find("rt")).toBeDefined(); // now held in memory
        const other = new Database(t.s.config.dbFile);
        other.prepare("DELETE FROM oidc_payloads WHERE model = 'RefreshToken'").run();
        other.close();
        vi.advanceTimersByTime(10); // data_version is looked at every 5 ms at most
        expect(await tokens.find("rt")).toBeUndefined();
      } finally {
        vi.useRealTimers();
      }
    });
  });
});
