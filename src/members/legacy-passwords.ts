import { eq } from "drizzle-orm";
import type { Clock } from "../clock.js";
import type { Db } from "../db/connection.js";
import { legacyPasswords } from "../db/schema.js";
import { type LegacyHash, WEAK_SCHEMES } from "../passwords/legacy.js";
import { decryptField, encryptField } from "../vault/fields.js";
import type { KeyringStore } from "../vault/keyring.js";

/** Legacy password hashes, stored only as vault ciphertexts bound to their member (see schema). */
export class LegacyPasswords {
  readonly #db: Db;
  readonly #keys: KeyringStore;
  readonly #clock: Clock;

  constructor(deps: { db: Db; keys: KeyringStore; clock: Clock }) {
    this.#db = deps.db;
    this.#keys = deps.keys;
    this.#clock = deps.clock;
  }

  #context(memberId: string) {
    return { table: "legacy_passwords", column: "secret", rowId: memberId };
  }

  /** Store (inside the caller's transaction). */
  put(memberId: string, h: LegacyHash): void {
    const row = {
      memberId,
      secret: encryptField(this.#keys, this.#context(memberId), JSON.stringify(h)),
      weak: WEAK_SCHEMES.has(h.scheme),
      wrapped: !!h.wrapped,
      updatedAt: this.#clock.now().getTime(),
    };
    this.#db
      .insert(legacyPasswords)
      .values(row)
      .onConflictDoUpdate({ target: legacyPasswords.memberId, set: row })
      .run();
  }

  find(memberId: string): LegacyHash | null {
    const row = this.#db.select().from(legacyPasswords).where(eq(legacyPasswords.memberId, memberId)).get();
    if (!row) return null;
    return JSON.parse(decryptField(this.#keys, this.#context(memberId), row.secret)) as LegacyHash;
  }

  /** Gone once the member has an argon2id hash (inside the upgrade's transaction). */
  delete(memberId: string): void {
    this.#db.delete(legacyPasswords).where(eq(legacyPasswords.memberId, memberId)).run();
  }
}
