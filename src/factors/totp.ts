import { and, eq, isNotNull, lt, sql } from "drizzle-orm";
import { generateSecret, generateURI, type HashAlgorithm, verifySync } from "otplib";
import type { Clock } from "../clock.js";
import { type Db, inTransaction } from "../db/connection.js";
import { totpFactors } from "../db/schema.js";
import { decryptField, encryptField, type FieldContext } from "../vault/fields.js";
import type { KeyringStore } from "../vault/keyring.js";

/**
 * TOTP (RFC 6238) as authenticator apps do it: SHA-1, 6 digits, 30-second steps. We accept the
 * current step and one on either side (clock drift and typing time), by the server clock only.
 * Every accepted code moves `last_step` forward by compare-and-swap, and no code for that step or
 * an earlier one is ever accepted again: a shoulder-surfed or phished code is worth one sign-in,
 * not three (its whole ±1 window), and two requests racing with one code cannot both win.
 */
export const TOTP_PERIOD_S = 30;
export const TOTP_DIGITS = 6;
/** ±1 step: otplib checks epoch−30 s … epoch+30 s. A code from 90 s ago is three steps back. */
const TOLERANCE_S = TOTP_PERIOD_S;
const SECRET_BYTES = 20; // 160 bits, RFC 4226's recommended length
/** Pending enrolments older than this must be started again. */
const PENDING_TTL_MS = 15 * 60_000;

export const totpCode = /^\d{6}$/;

/**
 * A code as the member typed it, folded as every other input is (NFKC: full-width digits from a
 * Japanese keyboard's input mode are the same digits) and without white space ("123 456").
 */
export const typedCode = (code: string): string => code.normalize("NFKC").replace(/\s/g, "");

/**
 * One TOTP check: the code for a time step after `afterStep`, within ±1 step of `epochSeconds`.
 * Returns the matched step, or null. Exposed (with digits and algorithm) for the RFC 6238
 * known-answer test; the service below always uses SHA-1 and 6 digits.
 */
export function checkTotp(opts: {
  secret: Uint8Array | string;
  token: string;
  epochSeconds: number;
  afterStep?: number;
  digits?: 6 | 8;
  algorithm?: HashAlgorithm;
  toleranceSeconds?: number;
}): number | null {
  const digits = opts.digits ?? TOTP_DIGITS;
  if (opts.token.length !== digits || !/^\d+$/.test(opts.token)) return null;
  try {
    const result = verifySync({
      secret: opts.secret,
      token: opts.token,
      epoch: opts.epochSeconds,
      period: TOTP_PERIOD_S,
      digits,
      algorithm: opts.algorithm ?? "sha1",
      epochTolerance: opts.toleranceSeconds ?? TOLERANCE_S,
      ...(opts.afterStep ? { afterTimeStep: opts.afterStep } : {}),
    });
    return result.valid && "timeStep" in result ? result.timeStep : null;
  } catch {
    // otplib refuses an afterTimeStep beyond the window (the stored step is in our future: the
    // server clock went back). Refusing the code is the safe answer.
    return null;
  }
}

const ctx = (memberId: string, column: "secret" | "pending_secret"): FieldContext => ({
  table: "totp_factors",
  column,
  rowId: memberId,
});

export class TotpService {
  readonly #db: Db;
  readonly #keys: KeyringStore;
  readonly #clock: Clock;
  readonly #issuer: string;

  constructor(deps: { db: Db; keys: KeyringStore; clock: Clock; issuer: string }) {
    this.#db = deps.db;
    this.#keys = deps.keys;
    this.#clock = deps.clock;
    this.#issuer = deps.issuer;
  }

  #epoch(): number {
    return Math.floor(this.#clock.now().getTime() / 1000);
  }

  /** Start (or restart) an enrolment: a new pending secret; an active one stays until this is verified. */
  begin(memberId: string, label: string): { secret: string; otpauthUri: string } {
    const secret = generateSecret({ length: SECRET_BYTES });
    const now = this.#clock.now().getTime();
    const pending = encryptField(this.#keys, ctx(memberId, "pending_secret"), secret);
    this.#db
      .insert(totpFactors)
      .values({ memberId, pendingSecret: pending, pendingCreatedAt: now, updatedAt: now })
      .onConflictDoUpdate({
        target: totpFactors.memberId,
        set: { pendingSecret: pending, pendingCreatedAt: now, updatedAt: now },
      })
      .run();
    return { secret, otpauthUri: generateURI({ issuer: this.#issuer, label, secret }) };
  }

  /** The pending enrolment's secret and URI (to show the QR code again), or null. */
  pending(memberId: string, label: string): { secret: string; otpauthUri: string } | null {
    const row = this.#db.select().from(totpFactors).where(eq(totpFactors.memberId, memberId)).get();
    if (!row?.pendingSecret || row.pendingCreatedAt === null) return null;
    if (this.#clock.now().getTime() - row.pendingCreatedAt > PENDING_TTL_MS) return null;
    const secret = decryptField(this.#keys, ctx(memberId, "pending_secret"), row.pendingSecret);
    return { secret, otpauthUri: generateURI({ issuer: this.#issuer, label, secret }) };
  }

  /**
   * Verify the pending secret with a code and make it the active one (replacing any earlier
   * secret). Compare-and-swap on the exact pending ciphertext: a restarted enrolment in between
   * makes this one fail rather than activate a secret the member's app no longer shows.
   */
  activate(memberId: string, typed: string): boolean {
    const code = typedCode(typed);
    const row = this.#db.select().from(totpFactors).where(eq(totpFactors.memberId, memberId)).get();
    if (!row?.pendingSecret || row.pendingCreatedAt === null) return false;
    if (this.#clock.now().getTime() - row.pendingCreatedAt > PENDING_TTL_MS) return false;
    const secret = decryptField(this.#keys, ctx(memberId, "pending_secret"), row.pendingSecret);
    const step = checkTotp({ secret, token: code, epochSeconds: this.#epoch() });
    if (step === null) return false;
    const now = this.#clock.now().getTime();
    return inTransaction(this.#db, () => {
      const active = encryptField(this.#keys, ctx(memberId, "secret"), secret);
      return (
        this.#db
          .update(totpFactors)
          .set({
            secret: active,
            pendingSecret: null,
            pendingCreatedAt: null,
            lastStep: step,
            enabledAt: now,
            updatedAt: now,
          })
          .where(
            and(eq(totpFactors.memberId, memberId), eq(totpFactors.pendingSecret, row.pendingSecret ?? "")),
          )
          .run().changes === 1
      );
    });
  }

  /**
   * An active secret brought in by `members import` (the member's app keeps working). Inside the
   * import's transaction. Base32, at least 80 bits (16 characters).
   */
  importActive(memberId: string, secret: string): void {
    const now = this.#clock.now().getTime();
    this.#db
      .insert(totpFactors)
      .values({
        memberId,
        secret: encryptField(this.#keys, ctx(memberId, "secret"), secret),
        lastStep: 0,
        enabledAt: now,
        updatedAt: now,
      })
      .run();
  }

  /** Check a sign-in code against the active secret; accepted at most once per time step. */
  verify(memberId: string, typed: string): boolean {
    const code = typedCode(typed);
    if (!totpCode.test(code)) return false;
    const row = this.#db
      .select({ secret: totpFactors.secret, lastStep: totpFactors.lastStep })
      .from(totpFactors)
      .where(eq(totpFactors.memberId, memberId))
      .get();
    if (!row?.secret) return false;
    const secret = decryptField(this.#keys, ctx(memberId, "secret"), row.secret);
    const step = checkTotp({ secret, token: code, epochSeconds: this.#epoch(), afterStep: row.lastStep });
    if (step === null) return false;
    // The CAS: only one request can move last_step past this step.
    return (
      this.#db
        .update(totpFactors)
        .set({ lastStep: step, updatedAt: this.#clock.now().getTime() })
        .where(and(eq(totpFactors.memberId, memberId), lt(totpFactors.lastStep, step)))
        .run().changes === 1
    );
  }

  enabled(memberId: string): boolean {
    return !!this.#db
      .select({ m: totpFactors.memberId })
      .from(totpFactors)
      .where(and(eq(totpFactors.memberId, memberId), isNotNull(totpFactors.secret)))
      .get();
  }

  /** Remove the factor (active and pending). */
  remove(memberId: string): boolean {
    return this.#db.delete(totpFactors).where(eq(totpFactors.memberId, memberId)).run().changes > 0;
  }

  /** Rows whose secrets are not under `keyId` (key rotation). */
  staleRows(keyId: string, limit: number): Array<typeof totpFactors.$inferSelect> {
    const prefix = `v1.${keyId}.`;
    return this.#db
      .select()
      .from(totpFactors)
      .where(
        sql`(${totpFactors.secret} IS NOT NULL AND substr(${totpFactors.secret}, 1, ${prefix.length}) != ${prefix})
          OR (${totpFactors.pendingSecret} IS NOT NULL AND substr(${totpFactors.pendingSecret}, 1, ${prefix.length}) != ${prefix})`,
      )
      .limit(limit)
      .all();
  }
}

/** Re-encrypt one row's secrets under the active key (used by key rotation). */
export function reencryptTotpRow(
  keys: KeyringStore,
  row: typeof totpFactors.$inferSelect,
): { secret: string | null; pendingSecret: string | null } {
  const again = (column: "secret" | "pending_secret", value: string | null) =>
    value === null
      ? null
      : encryptField(keys, ctx(row.memberId, column), decryptField(keys, ctx(row.memberId, column), value));
  return { secret: again("secret", row.secret), pendingSecret: again("pending_secret", row.pendingSecret) };
}
