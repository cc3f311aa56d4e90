import { createHash, timingSafeEqual } from "node:crypto";
import { and, eq, gt, isNull, lt, sql } from "drizzle-orm";
import type { Clock } from "../clock.js";
import type { Db } from "../db/connection.js";
import { memberTokens } from "../db/schema.js";
import { randomBytesPooled } from "../vault/random.js";

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

export type MemberToken = typeof memberTokens.$inferSelect;

const TOKEN_SHAPE = /^[A-Za-z0-9_-]{43}$/;
export const hashMailToken = (token: string) =>
  createHash("sha256").update(token, "utf8").digest("base64url");

export class MemberTokens {
  readonly #db: Db;
  readonly #clock: Clock;

  constructor(deps: { db: Db; clock: Clock }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
  }

  /**
   * A new token (inside the caller's transaction). Earlier unspent tokens of the same purpose for
   * the member stop working: only the newest link counts.
   */
  issue(
    purpose: TokenPurpose,
    memberId: string,
    bound: { emailIndex: string | null; newEmail?: (tokenHash: string) => string },
  ): { token: string; tokenHash: string } {
    const token = randomBytesPooled(32).toString("base64url");
    const tokenHash = hashMailToken(token);
    const now = this.#clock.now().getTime();
    this.#db
      .update(memberTokens)
      .set({ consumedAt: now })
      .where(
        and(
          eq(memberTokens.memberId, memberId),
          eq(memberTokens.purpose, purpose),
          isNull(memberTokens.consumedAt),
        ),
      )
      .run();
    this.#db
      .insert(memberTokens)
      .values({
        tokenHash,
        purpose,
        memberId,
        emailIndex: bound.emailIndex,
        newEmail: bound.newEmail ? bound.newEmail(tokenHash) : null,
        createdAt: now,
        expiresAt: now + TOKEN_TTL_MS[purpose],
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
    return row;
  }

  /** Spend the token (CAS, inside the transaction that acts on it): true exactly once. */
  consume(tokenHash: string, opts: { requireMfa?: boolean } = {}): boolean {
    const now = this.#clock.now().getTime();
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
            opts.requireMfa ? sql`${memberTokens.mfaPassedAt} IS NOT NULL` : undefined,
          ),
        )
        .run().changes === 1
    );
  }

  /** Record that the reset's second factor passed (CAS on a live token). */
  markMfaPassed(tokenHash: string): boolean {
    const now = this.#clock.now().getTime();
    return (
      this.#db
        .update(memberTokens)
        .set({ mfaPassedAt: now })
        .where(
          and(
            eq(memberTokens.tokenHash, tokenHash),
            isNull(memberTokens.consumedAt),
            gt(memberTokens.expiresAt, now),
            lt(memberTokens.failures, RESET_MAX_FAILURES),
          ),
        )
        .run().changes === 1
    );
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

  /** Void every unspent token of the member (e.g. all reset links once the password was reset). */
  voidAll(memberId: string, purpose: TokenPurpose): void {
    this.#db
      .update(memberTokens)
      .set({ consumedAt: this.#clock.now().getTime() })
      .where(
        and(
          eq(memberTokens.memberId, memberId),
          eq(memberTokens.purpose, purpose),
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
