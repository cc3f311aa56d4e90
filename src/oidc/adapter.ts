import { createHash } from "node:crypto";
import { errors, type Adapter, type AdapterFactory, type AdapterPayload } from "oidc-provider";
import type { Clock } from "../clock.js";
import { type Db, lazyPrepared } from "../db/connection.js";
import { decryptField, encryptField } from "../vault/fields.js";
import type { KeyringStore } from "../vault/keyring.js";

/**
 * oidc-provider's storage adapter on our SQLite database (one table, `oidc_payloads`).
 *
 * - Every id (and interaction uid, device user code) is stored as its SHA-256, and every payload
 *   is encrypted by the vault (AES-256-GCM, bound to its model and id hash). For access tokens,
 *   refresh tokens, codes and sessions the id is the bearer secret itself (and payloads repeat it
 *   as `jti`), so a copy of the database holds none that works.
 * - Expiry is enforced on read (with the injected clock) and expired rows are deleted by
 *   `deleteExpired`, run periodically.
 * - `consume` is a compare-and-swap: the first caller marks the row consumed; a second one (two
 *   token requests racing with the same code or refresh token) finds it already marked, revokes
 *   the whole grant and fails with `invalid_grant`, so a race can't yield two token sets.
 * - `revokeByGrantId` deletes every code and token issued under the grant; `revokeAccount` deletes
 *   every grant, token, code and provider session of one member (rows carry the opaque `sub`).
 */
const GRANTABLE = new Set([
  "AccessToken",
  "AuthorizationCode",
  "RefreshToken",
  "DeviceCode",
  "BackchannelAuthenticationRequest",
  "PreAuthorizedCode",
]);

/** Models whose rows belong to a member without being issued under a grant. */
const ACCOUNT_MODELS = ["Grant", "Session"];

const sha256 = (value: string) => createHash("sha256").update(value, "utf8").digest("base64url");

interface Row {
  id_hash: string;
  payload: string;
  expires_at: number | null;
  consumed_at: number | null;
}

export class OidcStore {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #keys: KeyringStore;

  constructor(deps: { db: Db; clock: Clock; keys: KeyringStore }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#keys = deps.keys;
  }

  #context(model: string, idHash: string) {
    return { table: "oidc_payloads", column: model, rowId: idHash };
  }

  readonly #upsert = lazyPrepared(() =>
    this.#db.$client.prepare(
      `INSERT INTO oidc_payloads (model, id_hash, payload, grant_id, uid_hash, user_code_hash, expires_at, consumed_at, account_id)
       VALUES (@model, @idHash, @payload, @grantId, @uidHash, @userCodeHash, @expiresAt, NULL, @accountId)
       ON CONFLICT (model, id_hash) DO UPDATE SET payload = excluded.payload, grant_id = excluded.grant_id,
         uid_hash = excluded.uid_hash, user_code_hash = excluded.user_code_hash,
         expires_at = excluded.expires_at, consumed_at = NULL, account_id = excluded.account_id`,
    ),
  );
  readonly #find = lazyPrepared(() =>
    this.#db.$client.prepare(
      "SELECT id_hash, payload, expires_at, consumed_at FROM oidc_payloads WHERE model = ? AND id_hash = ?",
    ),
  );
  readonly #findBy = lazyPrepared(() => ({
    uid: this.#db.$client.prepare(
      "SELECT id_hash, payload, expires_at, consumed_at FROM oidc_payloads WHERE model = ? AND uid_hash = ? ORDER BY rowid DESC LIMIT 1",
    ),
    userCode: this.#db.$client.prepare(
      "SELECT id_hash, payload, expires_at, consumed_at FROM oidc_payloads WHERE model = ? AND user_code_hash = ? ORDER BY rowid DESC LIMIT 1",
    ),
  }));
  readonly #consume = lazyPrepared(() =>
    this.#db.$client.prepare(
      "UPDATE oidc_payloads SET consumed_at = ? WHERE model = ? AND id_hash = ? AND consumed_at IS NULL",
    ),
  );
  readonly #grantOf = lazyPrepared(() =>
    this.#db.$client.prepare("SELECT grant_id FROM oidc_payloads WHERE model = ? AND id_hash = ?"),
  );
  readonly #destroy = lazyPrepared(() =>
    this.#db.$client.prepare("DELETE FROM oidc_payloads WHERE model = ? AND id_hash = ?"),
  );
  readonly #revokeGrant = lazyPrepared(() =>
    this.#db.$client.prepare(
      `DELETE FROM oidc_payloads WHERE grant_id = ? AND model IN (${[...GRANTABLE].map((m) => `'${m}'`).join(",")})`,
    ),
  );
  readonly #revokeAccount = lazyPrepared(() =>
    this.#db.$client.prepare(
      `DELETE FROM oidc_payloads WHERE account_id = ? AND model IN (${[...GRANTABLE, ...ACCOUNT_MODELS].map((m) => `'${m}'`).join(",")})`,
    ),
  );
  readonly #expired = lazyPrepared(() =>
    this.#db.$client.prepare("DELETE FROM oidc_payloads WHERE expires_at IS NOT NULL AND expires_at <= ?"),
  );

  #live(model: string, row: Row | undefined): AdapterPayload | undefined {
    if (!row) return undefined;
    if (row.expires_at !== null && row.expires_at <= this.#clock.now().getTime()) return undefined;
    const json = decryptField(this.#keys, this.#context(model, row.id_hash), row.payload);
    const payload = JSON.parse(json) as AdapterPayload;
    if (row.consumed_at !== null) payload.consumed = Math.floor(row.consumed_at / 1000);
    return payload;
  }

  upsert(model: string, id: string, payload: AdapterPayload, expiresIn?: number): void {
    const idHash = sha256(id);
    this.#upsert().run({
      model,
      idHash,
      payload: encryptField(this.#keys, this.#context(model, idHash), JSON.stringify(payload)),
      grantId: GRANTABLE.has(model) ? (payload.grantId ?? null) : null,
      uidHash: payload.uid ? sha256(payload.uid) : null,
      userCodeHash: payload.userCode ? sha256(payload.userCode) : null,
      expiresAt: typeof expiresIn === "number" ? this.#clock.now().getTime() + expiresIn * 1000 : null,
      accountId: typeof payload.accountId === "string" ? payload.accountId : null,
    });
  }

  find(model: string, id: string): AdapterPayload | undefined {
    return this.#live(model, this.#find().get(model, sha256(id)) as Row | undefined);
  }

  findByUid(model: string, uid: string): AdapterPayload | undefined {
    return this.#live(model, this.#findBy().uid.get(model, sha256(uid)) as Row | undefined);
  }

  findByUserCode(model: string, userCode: string): AdapterPayload | undefined {
    return this.#live(model, this.#findBy().userCode.get(model, sha256(userCode)) as Row | undefined);
  }

  /** Mark consumed; false when it already was (or is gone): the caller lost the race. */
  consume(model: string, id: string): boolean {
    return this.#consume().run(this.#clock.now().getTime(), model, sha256(id)).changes > 0;
  }

  grantIdOf(model: string, id: string): string | null {
    return (
      (this.#grantOf().get(model, sha256(id)) as { grant_id: string | null } | undefined)?.grant_id ?? null
    );
  }

  destroy(model: string, id: string): void {
    this.#destroy().run(model, sha256(id));
  }

  revokeByGrantId(grantId: string): number {
    return this.#revokeGrant().run(grantId).changes;
  }

  /**
   * Everything a member holds at the provider — grants, refresh and access tokens, codes, provider
   * sessions — deleted at once (a password reset or an admin's revoke). Returns how many rows.
   */
  revokeAccount(sub: string): number {
    return this.#revokeAccount().run(sub).changes;
  }

  /**
   * Fill `account_id` on rows written before it existed (migration 0009): their payloads are
   * encrypted, so SQL alone can't. Rows without an account get '' (never looked at again).
   * Idempotent; run at start.
   */
  backfillAccountIds(batch = 500): number {
    const models = [...GRANTABLE, ...ACCOUNT_MODELS].map((m) => `'${m}'`).join(",");
    const select = this.#db.$client.prepare<[number], Row & { rowid: number; model: string }>(
      `SELECT rowid, model, id_hash, payload, expires_at, consumed_at FROM oidc_payloads
        WHERE account_id IS NULL AND model IN (${models}) LIMIT ?`,
    );
    const update = this.#db.$client.prepare("UPDATE oidc_payloads SET account_id = ? WHERE rowid = ?");
    let total = 0;
    for (;;) {
      const rows = select.all(batch);
      if (rows.length === 0) return total;
      this.#db.$client.transaction(() => {
        for (const row of rows) {
          let account = "";
          try {
            const payload = JSON.parse(
              decryptField(this.#keys, this.#context(row.model, row.id_hash), row.payload),
            ) as AdapterPayload;
            if (typeof payload.accountId === "string") account = payload.accountId;
          } catch {
            // undecryptable: it can't be used either; leave it to expire
          }
          update.run(account, row.rowid);
        }
      })();
      total += rows.length;
    }
  }

  /**
   * The OpenID scopes a member granted a member site (every live grant of theirs to it), or null
   * when there is none: a member-site backend reads only members who signed in to that site.
   */
  grantedScopes(sub: string, clientId: string): Set<string> | null {
    const rows = this.#db.$client
      .prepare<[string], Row>(
        "SELECT id_hash, payload, expires_at, consumed_at FROM oidc_payloads WHERE account_id = ? AND model = 'Grant'",
      )
      .all(sub);
    let scopes: Set<string> | null = null;
    for (const row of rows) {
      const grant = this.#live("Grant", row) as
        | { clientId?: string; openid?: { scope?: string } }
        | undefined;
      if (grant?.clientId !== clientId) continue;
      scopes ??= new Set();
      for (const sc of String(grant.openid?.scope ?? "").split(" ")) if (sc) scopes.add(sc);
    }
    return scopes;
  }

  /** Delete every expired row; returns how many. */
  deleteExpired(): number {
    return this.#expired().run(this.#clock.now().getTime()).changes;
  }

  /** The adapter factory oidc-provider's `adapter` option takes. */
  adapterFactory(): AdapterFactory {
    return (model: string): Adapter => ({
      upsert: async (id, payload, expiresIn) => this.upsert(model, id, payload, expiresIn),
      find: async (id) => this.find(model, id),
      findByUid: async (uid) => this.findByUid(model, uid),
      findByUserCode: async (userCode) => this.findByUserCode(model, userCode),
      destroy: async (id) => this.destroy(model, id),
      revokeByGrantId: async (grantId) => {
        this.revokeByGrantId(grantId);
      },
      consume: async (id) => {
        if (this.consume(model, id)) return;
        // Lost a consume race: the same code or refresh token is being redeemed twice at once.
        const grantId = this.grantIdOf(model, id);
        if (grantId) this.revokeByGrantId(grantId);
        throw new errors.InvalidGrant(`${model} already consumed`);
      },
    });
  }
}
