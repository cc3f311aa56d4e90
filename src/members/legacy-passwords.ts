import { eq } from "drizzle-orm";
import type { Clock } from "../clock.js";
import { type Db, lazyPrepared } from "../db/connection.js";
import { legacyPasswords } from "../db/schema.js";
import { type LegacyHash, WEAK_SCHEMES } from "../passwords/legacy.js";
import { decryptField, encryptField, type FieldContext } from "../vault/fields.js";
import type { KeyringStore } from "../vault/keyring.js";

/** Legacy password hashes, stored only as vault ciphertexts bound to their member (see schema). */
/** What an imported member's legacy hash is encrypted bound to (also key rotation's). */
export const legacyPasswordContext = (memberId: string): FieldContext => ({
  table: "legacy_passwords",
  column: "secret",
  rowId: memberId,
});

export class LegacyPasswords {
  readonly #db: Db;
  readonly #keys: KeyringStore;
  readonly #clock: Clock;

  constructor(deps: { db: Db; keys: KeyringStore; clock: Clock }) {
    this.#db = deps.db;
    this.#keys = deps.keys;
    this.#clock = deps.clock;
  }

  readonly #upsert = lazyPrepared(() =>
    this.#db.$client.prepare(
      `INSERT INTO legacy_passwords (member_id, secret, weak, wrapped, change_after, updated_at) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT (member_id) DO UPDATE SET secret = excluded.secret, weak = excluded.weak,
         wrapped = excluded.wrapped, change_after = excluded.change_after, updated_at = excluded.updated_at`,
    ),
  );

  /**
   * Store (inside the caller's transaction). `changeAfter`: from then on the legacy password no
   * longer signs in by itself (see PasswordSignIn).
   */
  put(memberId: string, h: LegacyHash, changeAfter: number | null = null): void {
    const row = {
      memberId,
      secret: encryptField(this.#keys, legacyPasswordContext(memberId), JSON.stringify(h)),
      weak: WEAK_SCHEMES.has(h.scheme),
      wrapped: !!h.wrapped,
      updatedAt: this.#clock.now().getTime(),
    };
    this.#upsert().run(
      row.memberId,
      row.secret,
      row.weak ? 1 : 0,
      row.wrapped ? 1 : 0,
      changeAfter,
      row.updatedAt,
    );
  }

  find(memberId: string): LegacyHash | null {
    return this.entry(memberId)?.hash ?? null;
  }

  /** The hash and the date after which it no longer signs in by itself (null: none). */
  entry(memberId: string): { hash: LegacyHash; changeAfter: number | null } | null {
    const row = this.#db.select().from(legacyPasswords).where(eq(legacyPasswords.memberId, memberId)).get();
    if (!row) return null;
    return {
      hash: JSON.parse(decryptField(this.#keys, legacyPasswordContext(memberId), row.secret)) as LegacyHash,
      changeAfter: row.changeAfter,
    };
  }

  /**
   * Replace an unwrapped weak hash by its argon2id wrapping — only if it is still there and still
   * unwrapped (a sign-in may have upgraded the member meanwhile: then there is nothing to wrap).
   */
  replaceWithWrapped(memberId: string, h: LegacyHash): boolean {
    return (
      this.#db.$client
        .prepare(
          "UPDATE legacy_passwords SET secret = ?, wrapped = 1, updated_at = ? WHERE member_id = ? AND wrapped = 0",
        )
        .run(
          encryptField(this.#keys, legacyPasswordContext(memberId), JSON.stringify(h)),
          this.#clock.now().getTime(),
          memberId,
        ).changes === 1
    );
  }

  /** Members whose weak legacy hash is not wrapped yet, after `afterId` (for a resumable walk). */
  unwrappedWeak(afterId: string, limit: number): string[] {
    return this.#db.$client
      .prepare<[string, number], string>(
        "SELECT member_id FROM legacy_passwords WHERE weak = 1 AND wrapped = 0 AND member_id > ? ORDER BY member_id LIMIT ?",
      )
      .pluck()
      .all(afterId, limit);
  }

  countUnwrappedWeak(): number {
    return this.#db.$client
      .prepare("SELECT count(*) FROM legacy_passwords WHERE weak = 1 AND wrapped = 0")
      .pluck()
      .get() as number;
  }

  /** Gone once the member has an argon2id hash (inside the upgrade's transaction). */
  delete(memberId: string): void {
    this.#db.delete(legacyPasswords).where(eq(legacyPasswords.memberId, memberId)).run();
  }
}
