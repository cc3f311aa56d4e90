import { createHash } from "node:crypto";
import { and, count, eq, isNull } from "drizzle-orm";
import type { Clock } from "../clock.js";
import type { Db } from "../db/connection.js";
import { recoveryCodes } from "../db/schema.js";
import { randomBytesPooled } from "../vault/random.js";
import { type RowSeals, recoveryCodeSealValues } from "../vault/seals.js";

/**
 * Recovery codes: ten one-time codes, shown once, for a member who lost their authenticator.
 * Each is 80 random bits in Crockford base32 (16 characters, `xxxx-xxxx-xxxx-xxxx`). With 80 bits
 * a plain SHA-256 is enough at rest: there is nothing to brute-force that a slow hash would save.
 * A code is spent by one compare-and-swap UPDATE, so two parallel uses of one code can't both win.
 */
export const RECOVERY_CODE_COUNT = 10;
const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"; // Crockford: no i, l, o, u

export function newRecoveryCode(): string {
  const bytes = randomBytesPooled(10);
  let bits = 0n;
  for (const b of bytes) bits = (bits << 8n) | BigInt(b);
  let out = "";
  for (let i = 0; i < 16; i++) {
    out = ALPHABET[Number(bits & 31n)] + out;
    bits >>= 5n;
  }
  return out.match(/.{4}/g)?.join("-") ?? out;
}

/** Forgive what people do when typing a code: spaces, hyphens, case, and Crockford's look-alikes. */
export function normaliseRecoveryCode(input: string): string | null {
  const s = input
    .normalize("NFKC")
    .toLowerCase()
    .replace(/[\s-]/g, "")
    .replace(/o/g, "0")
    .replace(/[il]/g, "1");
  return /^[0-9a-hjkmnp-tv-z]{16}$/.test(s) ? s : null;
}

const hashCode = (normalised: string) =>
  createHash("sha256").update(`sekisho-recovery-code\u0000${normalised}`).digest("base64url");

export class RecoveryCodes {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #seals: RowSeals;

  constructor(deps: { db: Db; clock: Clock; seals: RowSeals }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#seals = deps.seals;
  }

  /** A fresh set; every earlier code (used or not) stops working. Call inside a transaction. */
  replace(memberId: string): string[] {
    const now = this.#clock.now().getTime();
    const codes = Array.from({ length: RECOVERY_CODE_COUNT }, newRecoveryCode);
    this.#db.delete(recoveryCodes).where(eq(recoveryCodes.memberId, memberId)).run();
    this.#db
      .insert(recoveryCodes)
      .values(
        codes.map((c) => {
          const codeHash = hashCode(c.replace(/-/g, ""));
          return {
            memberId,
            codeHash,
            createdAt: now,
            seal: this.#seals.seal("recovery_codes", recoveryCodeSealValues({ memberId, codeHash })),
          };
        }),
      )
      .run();
    return codes;
  }

  /** Spend a code: true exactly once per code, also under races. */
  consume(memberId: string, input: string): boolean {
    const normalised = normaliseRecoveryCode(input);
    if (!normalised) return false;
    const codeHash = hashCode(normalised);
    const row = this.#db
      .select({ id: recoveryCodes.id, seal: recoveryCodes.seal })
      .from(recoveryCodes)
      .where(and(eq(recoveryCodes.memberId, memberId), eq(recoveryCodes.codeHash, codeHash)))
      .get();
    // A code written into the database without the keyring is no code (src/vault/seals.ts).
    if (
      !row ||
      !this.#seals.holds(
        "recovery_codes",
        recoveryCodeSealValues({ memberId, codeHash }),
        row.seal,
        String(row.id),
      )
    )
      return false;
    return (
      this.#db
        .update(recoveryCodes)
        .set({ usedAt: this.#clock.now().getTime() })
        .where(and(eq(recoveryCodes.id, row.id), isNull(recoveryCodes.usedAt)))
        .run().changes === 1
    );
  }

  remaining(memberId: string): number {
    return (
      this.#db
        .select({ n: count() })
        .from(recoveryCodes)
        .where(and(eq(recoveryCodes.memberId, memberId), isNull(recoveryCodes.usedAt)))
        .get()?.n ?? 0
    );
  }

  removeAll(memberId: string): void {
    this.#db.delete(recoveryCodes).where(eq(recoveryCodes.memberId, memberId)).run();
  }
}
