import { createHash, timingSafeEqual } from "node:crypto";
import { and, eq, gt, inArray, isNull, lt, sql } from "drizzle-orm";
import type { Clock } from "../clock.js";
import type { Db } from "../db/connection.js";
import { memberTokens } from "../db/schema.js";
import { randomBytesPooled } from "../vault/random.js";
import { memberTokenSealValues, type RowSeals } from "../vault/seals.js";

/**
 * Tokens mailed to members (verify an address, confirm a new one, reset a password): 256 random
 * bits, base64url in the link, stored as SHA-256 only. Found by the hash (an index lookup reveals
 * at most bits of a hash, never of the token), compared again in constant time, and spent by a
 * compare-and-swap on `consumed_at`, so two requests racing with one link can't both use it.
 */
export type TokenPurpose = "verify_email" | "change_email" | "reset_password";

export const TOKEN_TTL_MS: Record<TokenPurpose, number> = {
  verify_email: 24 * 3_600_000,
  change_email: 24 * 3_600_000,
  reset_password: 30 * 60_000,
};
/** Wrong second-factor codes during one reset before its link dies. */
export const RESET_MAX_FAILURES = 5;
/** How long a passed second factor stays good for setting the password. */
export const RESET_MFA_WINDOW_MS = 10 * 60_000;
/** Reset links of one member alive at once: a stranger asking again can't kill the member's link. */
const LIVE_RESET_LINKS = 3;

export type MemberToken = typeof memberTokens.$inferSelect;

const TOKEN_SHAPE = /^[A-Za-z0-9_-]{43}$/;
export const hashMailToken = (token: string) =>
  createHash("sha256").update(token, "utf8").digest("base64url");

export class MemberTokens {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #seals: RowSeals;

  constructor(deps: { db: Db; clock: Clock; seals: RowSeals }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#seals = deps.seals;
  }

  /**
   * A new token (inside the caller's transaction). For verification and e-mail change only the
   * newest link counts; for password resets the newest three stay alive (and one whose second
   * factor was passed is never voided by a newer one), so someone else asking for resets can't
   * kill the link the member is using.
   */
  issue(
    purpose: TokenPurpose,
    memberId: string,
    bound: { emailIndex: string | null; newEmail?: (tokenHash: string) => string },
  ): { token: string; tokenHash: string } {
    const token = randomBytesPooled(32).toString("base64url");
    const tokenHash = hashMailToken(token);
    const now = this.#clock.now().getTime();
    const keep = purpose === "reset_password" ? LIVE_RESET_LINKS - 1 : 0;
    this.#db.$client
      .prepare(
        `UPDATE member_tokens SET consumed_at = ?
          WHERE member_id = ? AND purpose = ? AND consumed_at IS NULL AND mfa_passed_at IS NULL
            AND token_hash NOT IN (SELECT token_hash FROM member_tokens
                                    WHERE member_id = ? AND purpose = ? AND consumed_at IS NULL AND expires_at > ?
                                    ORDER BY created_at DESC, rowid DESC LIMIT ?)`,
      )
      .run(now, memberId, purpose, memberId, purpose, now, keep);
    const expiresAt = now + TOKEN_TTL_MS[purpose];
    this.#db
      .insert(memberTokens)
      .values({
        tokenHash,
        purpose,
        memberId,
        emailIndex: bound.emailIndex,
        newEmail: bound.newEmail ? bound.newEmail(tokenHash) : null,
        createdAt: now,
        expiresAt,
        seal: this.#seals.seal(
          "member_tokens",
          memberTokenSealValues({ tokenHash, memberId, purpose, emailIndex: bound.emailIndex, expiresAt }),
        ),
      })
      .run();
    return { token, tokenHash };
  }

  /** The live token of this purpose, or null (malformed, unknown, spent, expired, dead). */
  find(token: unknown, purpose: TokenPurpose): MemberToken | null {
    if (typeof token !== "string" || !TOKEN_SHAPE.test(token)) return null;
    const hash = hashMailToken(token);
    const row = this.#db.select().from(memberTokens).where(eq(memberTokens.tokenHash, hash)).get();
    if (!row) return null;
    if (!timingSafeEqual(Buffer.from(row.tokenHash), Buffer.from(hash))) return null;
    if (row.purpose !== purpose || row.consumedAt !== null) return null;
    if (row.expiresAt <= this.#clock.now().getTime() || row.failures >= RESET_MAX_FAILURES) return null;
    // A link written into the database by someone without the keyring (their own token, for
    // someone else's account) opens nothing (src/vault/seals.ts).
    if (!this.#seals.holds("member_tokens", memberTokenSealValues(row), row.seal, row.tokenHash.slice(0, 12)))
      return null;
    return row;
  }

  /**
   * Spend the token (CAS, inside the transaction that acts on it): true exactly once. With
   * `mfaProof`, only if that proof is the one handed out when the second factor passed, at most
   * RESET_MFA_WINDOW_MS ago.
   */
  consume(tokenHash: string, opts: { mfaProof?: string | null } = {}): boolean {
    const now = this.#clock.now().getTime();
    const proof = opts.mfaProof;
    if (proof !== undefined && (typeof proof !== "string" || !TOKEN_SHAPE.test(proof))) return false;
    return (
      this.#db
        .update(memberTokens)
        .set({ consumedAt: now })
        .where(
          and(
            eq(memberTokens.tokenHash, tokenHash),
            isNull(memberTokens.consumedAt),
            gt(memberTokens.expiresAt, now),
            lt(memberTokens.failures, RESET_MAX_FAILURES),
            proof !== undefined ? eq(memberTokens.mfaProofHash, hashMailToken(proof as string)) : undefined,
            proof !== undefined ? gt(memberTokens.mfaPassedAt, now - RESET_MFA_WINDOW_MS) : undefined,
          ),
        )
        .run().changes === 1
    );
  }

  /**
   * Record that the reset's second factor passed (CAS on a live token) and return the proof for
   * the browser that passed it (null if the token is no longer live).
   */
  markMfaPassed(tokenHash: string): string | null {
    const now = this.#clock.now().getTime();
    const proof = randomBytesPooled(32).toString("base64url");
    const changed = this.#db
      .update(memberTokens)
      .set({ mfaPassedAt: now, mfaProofHash: hashMailToken(proof) })
      .where(
        and(
          eq(memberTokens.tokenHash, tokenHash),
          isNull(memberTokens.consumedAt),
          gt(memberTokens.expiresAt, now),
          lt(memberTokens.failures, RESET_MAX_FAILURES),
        ),
      )
      .run().changes;
    return changed === 1 ? proof : null;
  }

  /** Is `proof` the current proof of this token's passed second factor (still in its window)? */
  proofHolds(row: MemberToken, proof: unknown): boolean {
    if (typeof proof !== "string" || !TOKEN_SHAPE.test(proof) || row.mfaProofHash === null) return false;
    if (row.mfaPassedAt === null || row.mfaPassedAt <= this.#clock.now().getTime() - RESET_MFA_WINDOW_MS)
      return false;
    return timingSafeEqual(Buffer.from(row.mfaProofHash), Buffer.from(hashMailToken(proof)));
  }

  /** Count a wrong code against the token; returns how many tries remain. */
  recordFailure(tokenHash: string): number {
    const row = this.#db
      .update(memberTokens)
      .set({ failures: sql`${memberTokens.failures} + 1` })
      .where(eq(memberTokens.tokenHash, tokenHash))
      .returning({ failures: memberTokens.failures })
      .get();
    return Math.max(0, RESET_MAX_FAILURES - (row?.failures ?? RESET_MAX_FAILURES));
  }

  /** Void every unspent token of the member of these purposes (e.g. all links once the password was reset). */
  voidAll(memberId: string, ...purposes: TokenPurpose[]): void {
    this.#db
      .update(memberTokens)
      .set({ consumedAt: this.#clock.now().getTime() })
      .where(
        and(
          eq(memberTokens.memberId, memberId),
          inArray(memberTokens.purpose, purposes),
          isNull(memberTokens.consumedAt),
        ),
      )
      .run();
  }

  /** Drop tokens that expired more than a day ago. */
  sweep(): number {
    return this.#db
      .delete(memberTokens)
      .where(lt(memberTokens.expiresAt, this.#clock.now().getTime() - 24 * 3_600_000))
      .run().changes;
  }
}
