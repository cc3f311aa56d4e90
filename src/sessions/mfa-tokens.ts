import { and, eq, gt, isNull, lt, sql } from "drizzle-orm";
import type { Clock } from "../clock.js";
import type { Db } from "../db/connection.js";
import { mfaTokens } from "../db/schema.js";
import { randomBytesPooled } from "../vault/random.js";
import { mfaTokenSealValues, type RowSeals } from "../vault/seals.js";
import { hashToken } from "./sessions.js";

/**
 * The half-way state of a sign-in: the password was right, a second factor is still due.
 * `mfa_token` is 256 random bits, stored as SHA-256, alive five minutes, spent by the one
 * successful second factor (compare-and-swap), and dead after five wrong codes, so it can't be
 * used to guess a six-digit code (5 tries in 10^6, and each also counts in the sign-in throttle).
 */
export const MFA_TOKEN_TTL_MS = 5 * 60_000;
export const MFA_TOKEN_MAX_FAILURES = 5;

export interface PendingMfa {
  tokenHash: string;
  memberId: string;
  failures: number;
}

export class MfaTokens {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #seals: RowSeals;

  constructor(deps: { db: Db; clock: Clock; seals: RowSeals }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#seals = deps.seals;
  }

  /** Call inside the sign-in transaction. */
  issue(memberId: string): string {
    const token = randomBytesPooled(32).toString("base64url");
    const now = this.#clock.now().getTime();
    const row = { tokenHash: hashToken(token), memberId, expiresAt: now + MFA_TOKEN_TTL_MS };
    this.#db
      .insert(mfaTokens)
      .values({ ...row, createdAt: now, seal: this.#seals.seal("mfa_tokens", mfaTokenSealValues(row)) })
      .run();
    return token;
  }

  /** The live pending sign-in for a token, or null (unknown, spent, expired, too many failures). */
  find(token: string): PendingMfa | null {
    if (!/^[A-Za-z0-9_-]{43}$/.test(token)) return null;
    const row = this.#db
      .select()
      .from(mfaTokens)
      .where(eq(mfaTokens.tokenHash, hashToken(token)))
      .get();
    if (!row || row.consumedAt !== null || row.expiresAt <= this.#clock.now().getTime()) return null;
    if (row.failures >= MFA_TOKEN_MAX_FAILURES) return null;
    // Written into the database without the keyring (a second step for someone else's account,
    // skipping their password): no such step (src/vault/seals.ts).
    if (!this.#seals.holds("mfa_tokens", mfaTokenSealValues(row), row.seal, row.tokenHash.slice(0, 12)))
      return null;
    return { tokenHash: row.tokenHash, memberId: row.memberId, failures: row.failures };
  }

  /** Count a wrong code; returns how many tries remain. */
  recordFailure(tokenHash: string): number {
    const row = this.#db
      .update(mfaTokens)
      .set({ failures: sql`${mfaTokens.failures} + 1` })
      .where(eq(mfaTokens.tokenHash, tokenHash))
      .returning({ failures: mfaTokens.failures })
      .get();
    return Math.max(0, MFA_TOKEN_MAX_FAILURES - (row?.failures ?? MFA_TOKEN_MAX_FAILURES));
  }

  /** Spend the token (CAS): true once. Call inside the transaction that creates the session. */
  consume(tokenHash: string): boolean {
    const now = this.#clock.now().getTime();
    return (
      this.#db
        .update(mfaTokens)
        .set({ consumedAt: now })
        .where(
          and(
            eq(mfaTokens.tokenHash, tokenHash),
            isNull(mfaTokens.consumedAt),
            gt(mfaTokens.expiresAt, now),
            lt(mfaTokens.failures, MFA_TOKEN_MAX_FAILURES),
          ),
        )
        .run().changes === 1
    );
  }

  /** Drop tokens that expired more than an hour ago (periodic clean-up). */
  sweep(): number {
    return this.#db
      .delete(mfaTokens)
      .where(lt(mfaTokens.expiresAt, this.#clock.now().getTime() - 3_600_000))
      .run().changes;
  }
}
