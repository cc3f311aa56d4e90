import { createHash } from "node:crypto";
import { LRUCache } from "lru-cache";
import { type Adapter, type AdapterFactory, type AdapterPayload, errors } from "oidc-provider";
import type { Clock } from "../clock.js";
import { type Db, lazyPrepared, othersCommits } from "../db/connection.js";
import { decryptField, encryptField, type FieldContext } from "../vault/fields.js";
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
 * - The token endpoint's writes are group-committed and committed payloads are cached, decrypted,
 *   in memory (see the class; docs/architecture.md, "OIDC provider").
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

/** The payload to store: without its `jti` when that is the row's id (see Held). */
function withoutId(id: string, payload: AdapterPayload): AdapterPayload {
  // Rows also found by uid or user code (sessions, interactions, device codes) keep theirs.
  if (payload.jti !== id || payload.uid !== undefined || payload.userCode !== undefined) return payload;
  const { jti: _, ...rest } = payload;
  return { ...rest, [ID_IS_JTI]: 1 } as AdapterPayload;
}

/** A stored payload with its `jti` back from the id it was found by ("": not known, left out). */
function withId(id: string, payload: AdapterPayload): AdapterPayload {
  const p = payload as AdapterPayload & { [ID_IS_JTI]?: number };
  if (p[ID_IS_JTI] !== 1) return payload;
  delete p[ID_IS_JTI];
  if (id !== "") p.jti = id;
  return p;
}

const ID_IS_JTI = "__jti_is_id";

/** The grant and member a held payload belongs to, as keys of OidcStore's #owned. */
function ownersOf(held: Held): string[] {
  const owners: string[] = [];
  if (held.grantId) owners.push(`g:${held.grantId}`);
  if (held.accountId) owners.push(`a:${held.accountId}`);
  return owners;
}

const sha256 = (value: string) => createHash("sha256").update(value, "utf8").digest("base64url");

interface Row {
  id_hash: string;
  payload: string;
  expires_at: number | null;
  consumed_at: number | null;
}

/** Models whose writes wait for the next group commit (see OidcStore): the token endpoint's. */
const GROUPED = new Set(["AccessToken", "RefreshToken", "AuthorizationCode", "ClientCredentials"]);

/**
 * What the store keeps decrypted in memory: the token endpoint's models and grants (read on every
 * token request), at most 10,000 of them and 16 MB of JSON. Not interactions or provider sessions:
 * anyone can have those written (an authorization request with a long `state`), and they are read
 * a few times at most.
 */
const CACHED = new Set([...GROUPED, "Grant"]);
const CACHE_ENTRIES = 10_000;
const CACHE_BYTES = 16 * 1024 * 1024;
/**
 * Interactions are kept too, in a cache of their own: the hosted login form reads one on every
 * post (a flood of refused attempts reads the same one again and again), and anyone can have
 * them written (an authorization request with a long `state`), so they can't push out tokens.
 */
const INTERACTION_ENTRIES = 2_000;
const INTERACTION_BYTES = 4 * 1024 * 1024;
/** Revoked grants remembered (by id hash), so that a token of one can't be written afterwards. */
const REVOKED_GRANTS = 100_000;

/**
 * A payload as the store holds it in memory: the JSON, and what the row's columns say. The JSON
 * holds no `jti` when it is the row's id (for tokens and codes the id is the bearer secret): it
 * is put back from the id asked for on read, so neither memory nor the encrypted row keeps it.
 */
interface Held {
  json: string;
  expiresAt: number | null;
  consumedAt: number | null;
  grantId: string | null;
  accountId: string | null;
}

interface Upsert {
  model: string;
  idHash: string;
  payload: string;
  grantId: string | null;
  uidHash: string | null;
  userCodeHash: string | null;
  expiresAt: number | null;
  accountId: string | null;
}

type Write =
  | { kind: "upsert"; key: string; row: Upsert; held: Held }
  | { kind: "consume"; key: string; model: string; idHash: string; at: number; grantId: string | null };

interface Queued {
  write: Write;
  done: (result: boolean) => void;
  failed: (err: unknown) => void;
}

/** What a provider payload is encrypted bound to: its model and id hash (also key rotation's). */
export const payloadContext = (model: string, idHash: string): FieldContext => ({
  table: "oidc_payloads",
  column: model,
  rowId: idHash,
});

export class OidcStore {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #keys: KeyringStore;
  /**
   * Group commit: the token endpoint's writes (a refresh rotates its token and issues an access
   * token: three writes) are queued and committed together in one transaction once the event
   * loop has taken in what it has (setImmediate), and each write's promise settles only after
   * that commit, so no answer goes out before what it reports is on disk. One commit per batch
   * instead of one per write: a commit is most of a write's cost.
   */
  #queue: Queued[] = [];
  #flushing: NodeJS.Immediate | null = null;
  /** Queued upserts by key, and queued consumes: what `find` must see before the commit. */
  readonly #pendingRows = new Map<string, Held>();
  readonly #pendingConsumes = new Map<string, number>();
  /**
   * Committed payloads, decrypted, most recently used last: a token is usually read soon after
   * it is written (a code within seconds, a refresh token when its access token runs out) and a
   * grant on every use. Every write here updates it; a write by another process (the CLI) is
   * noticed by SQLite's `data_version` and empties it.
   */
  readonly #cache = new LRUCache<string, Held>({
    max: CACHE_ENTRIES,
    maxSize: CACHE_BYTES,
    sizeCalculation: (held) => held.json.length + 100,
    dispose: (held, key) => {
      for (const owner of ownersOf(held)) {
        const keys = this.#owned.get(owner);
        keys?.delete(key);
        if (keys?.size === 0) this.#owned.delete(owner);
      }
    },
  });
  /** Interactions, decrypted (see INTERACTION_ENTRIES); emptied with the cache. */
  readonly #interactions = new LRUCache<string, Held>({
    max: INTERACTION_ENTRIES,
    maxSize: INTERACTION_BYTES,
    sizeCalculation: (held) => held.json.length + 100,
  });
  /** The cached keys of each grant and member (`g:<grant id>`, `a:<sub>`), for revocations. */
  readonly #owned = new Map<string, Set<string>>();
  /**
   * Grants revoked in this process (id hashes; revocations from the CLI are seen in the database).
   * A token endpoint request spans several turns of the event loop: one that read its grant
   * before a revocation may try to write a token of it after. That write is refused here.
   */
  readonly #revokedGrants = new LRUCache<string, true>({ max: REVOKED_GRANTS });
  /** The member (sub) of each grant revoked lately, for the revocation's audit entry. */
  readonly #revokedAccounts = new LRUCache<string, string>({ max: 1_000 });
  #dataVersion = -1;
  /**
   * Deferred durability within a provider request (see `deferWithin`): the request a write is
   * made in, and the commits each request's writes wait for (each settles to null or the error
   * the request must answer with; never rejects, so none is left unhandled).
   */
  #requestOf: (() => object | undefined) | null = null;
  readonly #commits = new WeakMap<object, { outcomes: Promise<Error | null>[]; grants: Set<string> }>();
  /** Provider requests that lost a consume race (see lostConsume). */
  readonly #lostConsume = new WeakSet<object>();

  constructor(deps: { db: Db; clock: Clock; keys: KeyringStore }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#keys = deps.keys;
    // As of now: what this store caches from here on is current (reading it needs no table).
    this.#dataVersion = othersCommits(this.#db)();
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
      "SELECT id_hash, payload, expires_at, consumed_at, grant_id, account_id FROM oidc_payloads WHERE model = ? AND id_hash = ?",
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
  readonly #accountOfGrant = lazyPrepared(() =>
    this.#db.$client
      .prepare(
        `SELECT account_id FROM oidc_payloads
          WHERE ((model = 'Grant' AND id_hash = ?) OR grant_id = ?) AND account_id IS NOT NULL LIMIT 1`,
      )
      .pluck(),
  );
  readonly #expired = lazyPrepared(() =>
    this.#db.$client.prepare("DELETE FROM oidc_payloads WHERE expires_at IS NOT NULL AND expires_at <= ?"),
  );
  readonly #version = lazyPrepared(() => othersCommits(this.#db));
  /** A member's grants: the Grant rows' id hashes, and the grant ids their tokens carry. */
  readonly #accountGrants = lazyPrepared(() => ({
    rows: this.#db.$client
      .prepare("SELECT id_hash FROM oidc_payloads WHERE account_id = ? AND model = 'Grant'")
      .pluck(),
    tokens: this.#db.$client
      .prepare("SELECT DISTINCT grant_id FROM oidc_payloads WHERE account_id = ? AND grant_id IS NOT NULL")
      .pluck(),
  }));

  /** Empty the cache when another connection (another process) has committed since last time. */
  #checkOthers(): void {
    const v = this.#version()();
    if (v !== this.#dataVersion) {
      this.#dataVersion = v;
      this.#cache.clear();
      this.#owned.clear();
      this.#interactions.clear();
    }
  }

  /** How many payloads are kept in memory, and their size (JSON bytes, plus 100 each). */
  memory(): { tokens: number; tokenBytes: number; interactions: number; interactionBytes: number } {
    return {
      tokens: this.#cache.size,
      tokenBytes: this.#cache.calculatedSize,
      interactions: this.#interactions.size,
      interactionBytes: this.#interactions.calculatedSize,
    };
  }

  /** Where a model's payloads are kept in memory, if they are. */
  #memoryFor(model: string): LRUCache<string, Held> | null {
    if (CACHED.has(model)) return this.#cache;
    return model === "Interaction" ? this.#interactions : null;
  }

  #live(model: string, id: string, row: Row | undefined): AdapterPayload | undefined {
    if (!row) return undefined;
    if (row.expires_at !== null && row.expires_at <= this.#clock.now().getTime()) return undefined;
    const json = decryptField(this.#keys, payloadContext(model, row.id_hash), row.payload);
    const payload = withId(id, JSON.parse(json) as AdapterPayload);
    if (row.consumed_at !== null) payload.consumed = Math.floor(row.consumed_at / 1000);
    return payload;
  }

  /** The payload of a held row, unless it has expired; consumed as of `consumedAt`. */
  #payloadOf(id: string, held: Held, consumedAt: number | null): AdapterPayload | undefined {
    if (held.expiresAt !== null && held.expiresAt <= this.#clock.now().getTime()) return undefined;
    const payload = withId(id, JSON.parse(held.json) as AdapterPayload);
    if (consumedAt !== null) payload.consumed = Math.floor(consumedAt / 1000);
    return payload;
  }

  /**
   * Let the token endpoint's writes settle at once when they are made within a provider request
   * (`requestOf` names it), instead of at their commit: the request goes on, its later writes join
   * the same group commit, and the provider middleware awaits `committed(request)` before any
   * answer goes out. So a refresh — consume the old token, store the new one, store an access
   * token — costs one commit shared with every other request of that turn, not three in a row, and
   * still answers nothing that is not on disk. Reads see queued writes, as they always did.
   */
  deferWithin(requestOf: () => object | undefined): void {
    this.#requestOf = requestOf;
  }

  /**
   * Settles when every write made within `request` is committed: null, or the error to answer
   * with instead of what the request computed — `invalid_grant` when its token was found consumed
   * by someone else at the commit, or its grant was revoked at any time before the answer (a
   * password reset landing between the request's writes and its answer: the tokens it computed
   * are gone); the commit's own error otherwise.
   */
  async committed(request: object): Promise<Error | null> {
    const writes = this.#commits.get(request);
    if (!writes) return null;
    this.#commits.delete(request);
    for (const error of await Promise.all(writes.outcomes)) if (error) return error;
    for (const grantId of writes.grants)
      if (this.#revokedGrants.has(sha256(grantId))) return new errors.InvalidGrant("grant revoked");
    return null;
  }

  /** The request a write is deferred for, or undefined when the writer waits for its commit. */
  #deferredFor(): object | undefined {
    return this.#requestOf?.();
  }

  #track(request: object, committed: Promise<boolean>, grantId: string | null, refused: () => Error): void {
    const outcome = committed.then(
      (ok) => (ok ? null : refused()),
      (err: unknown) => (err instanceof Error ? err : new Error(String(err))),
    );
    let writes = this.#commits.get(request);
    if (!writes) {
      writes = { outcomes: [], grants: new Set() };
      this.#commits.set(request, writes);
    }
    writes.outcomes.push(outcome);
    if (grantId) writes.grants.add(grantId);
  }

  #enqueue(write: Write): Promise<boolean> {
    return new Promise((done, failed) => {
      this.#queue.push({ write, done, failed });
      this.#flushing ??= setImmediate(() => this.flush());
    });
  }

  /**
   * Commit the queued writes in one transaction, in the order they were made (a second consume
   * of the same token in a batch finds it consumed, as it would one commit later), then settle
   * their promises. Also run directly before a lookup that must see every write (`grantIdOf`)
   * and when the server stops.
   */
  flush(): void {
    if (this.#flushing) clearImmediate(this.#flushing);
    this.#flushing = null;
    const batch = this.#queue;
    if (batch.length === 0) return;
    this.#queue = [];
    let results: boolean[];
    // Grants whose token was found already consumed (or gone) here: the batch's later writes of
    // them are not made, and the grant is revoked after the commit (as a lost consume race is).
    const lost = new Set<string>();
    try {
      results = this.#db.$client
        .transaction(() =>
          batch.map(({ write }) => {
            if (write.kind === "upsert") {
              if (write.row.grantId !== null && lost.has(write.row.grantId)) return false;
              return this.#upsert().run(write.row).changes > 0;
            }
            if (this.#consume().run(write.at, write.model, write.idHash).changes > 0) return true;
            const grantId =
              write.grantId ??
              (this.#grantOf().get(write.model, write.idHash) as { grant_id: string | null } | undefined)
                ?.grant_id;
            if (grantId) lost.add(grantId);
            return false;
          }),
        )
        .immediate();
    } catch (err) {
      this.#pendingRows.clear();
      this.#pendingConsumes.clear();
      for (const q of batch) q.failed(err);
      return;
    }
    this.#pendingRows.clear();
    this.#pendingConsumes.clear();
    this.#checkOthers();
    for (const grantId of lost) {
      this.revokeByGrantId(grantId);
      this.destroy("Grant", grantId);
    }
    batch.forEach(({ write, done, failed }, i) => {
      const ok = results[i] === true;
      if (write.kind === "upsert") {
        if (!ok) {
          failed(new errors.InvalidGrant("grant revoked"));
          return;
        }
        this.#remember(write.key, write.held);
      } else if (ok) {
        const held = this.#cache.get(write.key);
        if (held) held.consumedAt = write.at;
      }
      done(ok);
    });
  }

  /** Settles once the row is committed (at the next group commit, for the token endpoint's models). */
  async upsert(model: string, id: string, payload: AdapterPayload, expiresIn?: number): Promise<void> {
    const idHash = sha256(id);
    const key = `${model} ${idHash}`;
    if (GRANTABLE.has(model) && payload.grantId && this.#revokedGrants.has(sha256(payload.grantId)))
      throw new errors.InvalidGrant("grant revoked");
    const json = JSON.stringify(withoutId(id, payload));
    const row: Upsert = {
      model,
      idHash,
      payload: encryptField(this.#keys, payloadContext(model, idHash), json),
      grantId: GRANTABLE.has(model) ? (payload.grantId ?? null) : null,
      uidHash: payload.uid ? sha256(payload.uid) : null,
      userCodeHash: payload.userCode ? sha256(payload.userCode) : null,
      expiresAt: typeof expiresIn === "number" ? this.#clock.now().getTime() + expiresIn * 1000 : null,
      accountId: typeof payload.accountId === "string" ? payload.accountId : null,
    };
    const held: Held = {
      json,
      expiresAt: row.expiresAt,
      consumedAt: null,
      grantId: row.grantId,
      accountId: row.accountId,
    };
    if (GROUPED.has(model) && row.uidHash === null && row.userCodeHash === null) {
      this.#pendingRows.set(key, held);
      this.#pendingConsumes.delete(key);
      const committed = this.#enqueue({ kind: "upsert", key, row, held });
      const request = this.#deferredFor();
      if (!request) {
        await committed;
        return;
      }
      this.#track(request, committed, row.grantId, () => new errors.InvalidGrant("grant revoked"));
      return;
    }
    this.#upsert().run(row);
    if (CACHED.has(model)) this.#remember(key, held);
    else if (model === "Interaction") this.#interactions.set(key, held);
  }

  #remember(key: string, held: Held): void {
    this.#cache.set(key, held);
    for (const owner of ownersOf(held)) {
      const keys = this.#owned.get(owner);
      if (keys) keys.add(key);
      else this.#owned.set(owner, new Set([key]));
    }
  }

  find(model: string, id: string): AdapterPayload | undefined {
    const idHash = sha256(id);
    const key = `${model} ${idHash}`;
    const pendingConsume = this.#pendingConsumes.get(key) ?? null;
    const pending = this.#pendingRows.get(key);
    if (pending) return this.#payloadOf(id, pending, pendingConsume);
    this.#checkOthers();
    const memory = this.#memoryFor(model);
    let held = memory?.get(key);
    if (!held) {
      const row = this.#find().get(model, idHash) as
        | (Row & { grant_id: string | null; account_id: string | null })
        | undefined;
      if (!row) return undefined;
      held = {
        json: decryptField(this.#keys, payloadContext(model, row.id_hash), row.payload),
        expiresAt: row.expires_at,
        consumedAt: row.consumed_at,
        grantId: row.grant_id,
        accountId: row.account_id,
      };
      if (memory === this.#cache) this.#remember(key, held);
      else memory?.set(key, held);
    }
    return this.#payloadOf(id, held, held.consumedAt ?? pendingConsume);
  }

  // By uid or user code the id is not known: these models' payloads keep their jti (see withoutId).
  findByUid(model: string, uid: string): AdapterPayload | undefined {
    return this.#live(model, "", this.#findBy().uid.get(model, sha256(uid)) as Row | undefined);
  }

  findByUserCode(model: string, userCode: string): AdapterPayload | undefined {
    return this.#live(model, "", this.#findBy().userCode.get(model, sha256(userCode)) as Row | undefined);
  }

  /**
   * Mark consumed; false when it already was (or is gone): the caller lost the race. Within a
   * provider request (see `deferWithin`) the answer comes at once from what this process knows —
   * a consume of the same token queued or committed here — and the commit checks it again: if the
   * row turns out consumed or gone after all, the grant is revoked then and the request answers
   * `invalid_grant` instead of its tokens (`committed`).
   */
  consume(model: string, id: string): Promise<boolean> {
    const idHash = sha256(id);
    const key = `${model} ${idHash}`;
    const at = this.#clock.now().getTime();
    const request = this.#deferredFor();
    const known = this.#pendingRows.get(key) ?? this.#cache.peek(key);
    if (request && (this.#pendingConsumes.has(key) || (known && known.consumedAt !== null)))
      return Promise.resolve(false);
    if (!this.#pendingConsumes.has(key)) this.#pendingConsumes.set(key, at);
    const committed = this.#enqueue({
      kind: "consume",
      key,
      model,
      idHash,
      at,
      grantId: known?.grantId ?? null,
    });
    if (!request) return committed;
    this.#track(request, committed, known?.grantId ?? null, () => {
      this.#lostConsume.add(request);
      return new errors.InvalidGrant(`${model} already consumed`);
    });
    return Promise.resolve(true);
  }

  grantIdOf(model: string, id: string): string | null {
    this.flush();
    return (
      (this.#grantOf().get(model, sha256(id)) as { grant_id: string | null } | undefined)?.grant_id ?? null
    );
  }

  destroy(model: string, id: string): void {
    const idHash = sha256(id);
    const key = `${model} ${idHash}`;
    this.#drop((k) => k === key, false);
    this.#cache.delete(key);
    this.#interactions.delete(key);
    this.#destroy().run(model, idHash);
  }

  /**
   * Drop the queued upserts that match: one queued before a delete would otherwise bring its row
   * back when it commits (a token issued, then its grant revoked, must stay revoked). For a
   * revocation the write fails (`invalid_grant`): the request that made it must not answer with
   * a token that was never stored; for a destroy of the same row it is done (written, then
   * deleted). Returns how many.
   */
  #drop(matches: (key: string, held: Held) => boolean, revoked: boolean): number {
    let dropped = 0;
    this.#queue = this.#queue.filter((q) => {
      if (q.write.kind !== "upsert" || !matches(q.write.key, q.write.held)) return true;
      this.#pendingRows.delete(q.write.key);
      dropped++;
      if (revoked) q.failed(new errors.InvalidGrant("grant revoked"));
      else q.done(true);
      return false;
    });
    return dropped;
  }

  /**
   * Drop matching queued upserts and cached payloads of one grant or member (`owner`, see
   * #owned): a revocation. Returns how many were queued.
   */
  #forget(owner: string, matches: (key: string, held: Held) => boolean): number {
    const dropped = this.#drop(matches, true);
    const stale: string[] = [];
    for (const key of this.#owned.get(owner) ?? []) {
      const held = this.#cache.peek(key);
      if (held && matches(key, held)) stale.push(key);
    }
    for (const key of stale) this.#cache.delete(key);
    return dropped;
  }

  revokeByGrantId(grantId: string): number {
    const idHash = sha256(grantId);
    this.#revokedGrants.set(idHash, true);
    const account = this.#queue.find(
      (q) => q.write.kind === "upsert" && q.write.held.grantId === grantId && q.write.held.accountId,
    )?.write as { held: Held } | undefined;
    const sub =
      account?.held.accountId ?? (this.#accountOfGrant().get(idHash, grantId) as string | undefined) ?? null;
    if (sub) this.#revokedAccounts.set(grantId, sub);
    const dropped = this.#forget(
      `g:${grantId}`,
      (key, held) => held.grantId === grantId && GRANTABLE.has(key.slice(0, key.indexOf(" "))),
    );
    return this.#revokeGrant().run(grantId).changes + dropped;
  }

  /**
   * Whether `request` lost a consume race: its code or refresh token was found used by someone
   * else (at once, or at the commit). Only such a request is the reuse; the other one of the pair,
   * refused because the loser's revocation ended the grant, is not.
   */
  lostConsume(request: object): boolean {
    return this.#lostConsume.has(request);
  }

  /** Whether this process has revoked the grant (or seen it revoked). */
  isRevoked(grantId: string): boolean {
    return this.#revokedGrants.has(sha256(grantId));
  }

  /** The member (sub) a grant revoked in this process belonged to, if it is known. */
  accountOfRevokedGrant(grantId: string): string | null {
    return this.#revokedAccounts.get(grantId) ?? null;
  }

  /**
   * Everything a member holds at the provider — grants, refresh and access tokens, codes, provider
   * sessions — deleted at once (a password reset or an admin's revoke). Returns how many rows.
   */
  revokeAccount(sub: string): number {
    // Its grants are remembered as revoked: those with rows (the Grant's own row, by its id hash;
    // tokens, by the grant id they carry) and those of tokens still queued or cached.
    const grants = this.#accountGrants();
    for (const h of grants.rows.all(sub) as string[]) this.#revokedGrants.set(h, true);
    for (const g of grants.tokens.all(sub) as string[]) this.#revokedGrants.set(sha256(g), true);
    for (const q of this.#queue)
      if (q.write.kind === "upsert" && q.write.held.accountId === sub && q.write.held.grantId)
        this.#revokedGrants.set(sha256(q.write.held.grantId), true);
    const models = new Set([...GRANTABLE, ...ACCOUNT_MODELS]);
    const dropped = this.#forget(
      `a:${sub}`,
      (key, held) => held.accountId === sub && models.has(key.slice(0, key.indexOf(" "))),
    );
    return this.#revokeAccount().run(sub).changes + dropped;
  }

  /**
   * Everything issued to one client — its grants, their codes and tokens, its client-credentials
   * tokens — deleted (`clients remove`). Rows don't name their client outside the encrypted
   * payload, so the grants and client-credentials tokens are decrypted to find it: a scan, fine for
   * an operator's command. Returns how many rows.
   */
  revokeClient(clientId: string): number {
    const { grants, tokens } = this.#rowsOfClient(clientId);
    let deleted = 0;
    const issued = this.#db.$client
      .prepare<[], string>("SELECT DISTINCT grant_id FROM oidc_payloads WHERE grant_id IS NOT NULL")
      .pluck()
      .all();
    for (const grantId of issued) if (grants.has(sha256(grantId))) deleted += this.revokeByGrantId(grantId);
    for (const idHash of grants) {
      this.#revokedGrants.set(idHash, true);
      deleted += this.#destroy().run("Grant", idHash).changes;
    }
    for (const idHash of tokens) deleted += this.#destroy().run("ClientCredentials", idHash).changes;
    this.#cache.clear();
    this.#owned.clear();
    return deleted;
  }

  /**
   * The client-credentials tokens of one client deleted (`clients rotate-secret`: tokens minted
   * with a leaked secret must not outlive it). Returns how many.
   */
  revokeClientCredentials(clientId: string): number {
    let deleted = 0;
    for (const idHash of this.#rowsOfClient(clientId).tokens)
      deleted += this.#destroy().run("ClientCredentials", idHash).changes;
    this.#cache.clear();
    this.#owned.clear();
    return deleted;
  }

  /** A client's Grant rows and client-credentials tokens (id hashes), found by decrypting them. */
  #rowsOfClient(clientId: string): { grants: Set<string>; tokens: string[] } {
    const rows = this.#db.$client
      .prepare<[], { model: string; id_hash: string; payload: string }>(
        "SELECT model, id_hash, payload FROM oidc_payloads WHERE model IN ('Grant', 'ClientCredentials')",
      )
      .all();
    const grants = new Set<string>();
    const tokens: string[] = [];
    for (const row of rows) {
      let owner: unknown;
      try {
        owner = (
          JSON.parse(
            decryptField(this.#keys, payloadContext(row.model, row.id_hash), row.payload),
          ) as AdapterPayload
        ).clientId;
      } catch {
        continue; // undecryptable: unusable as well
      }
      if (owner !== clientId) continue;
      if (row.model === "Grant") grants.add(row.id_hash);
      else tokens.push(row.id_hash);
    }
    return { grants, tokens };
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
              decryptField(this.#keys, payloadContext(row.model, row.id_hash), row.payload),
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
      const grant = this.#live("Grant", "", row) as
        | { clientId?: string; accountId?: string; openid?: { scope?: string } }
        | undefined;
      // The member a grant is of is the one its (encrypted, bound) payload names: the plain
      // account_id column, moved to another member in the database, would lend that member's
      // profile to a site they never signed in to.
      if (grant?.clientId !== clientId || grant.accountId !== sub) continue;
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
        if (await this.consume(model, id)) return;
        // Lost a consume race: the same code or refresh token is being redeemed twice at once.
        const request = this.#deferredFor();
        if (request) this.#lostConsume.add(request);
        const grantId = this.grantIdOf(model, id);
        if (grantId) {
          this.revokeByGrantId(grantId);
          this.destroy("Grant", grantId);
        }
        throw new errors.InvalidGrant(`${model} already consumed`);
      },
    });
  }
}
