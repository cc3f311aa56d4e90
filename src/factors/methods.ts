import { type Db, lazyPrepared } from "../db/connection.js";
import type { Passkeys } from "./passkeys.js";
import type { RecoveryCodes } from "./recovery-codes.js";
import type { TotpService } from "./totp.js";

/** The ways a member can pass the second step, as the API names them (`methods`). */
export type FactorMethod = "totp" | "webauthn" | "recovery_code";

export interface MemberFactors {
  totp: boolean;
  /** Passkeys that can sign in (not suspended as possible clones). */
  passkeys: number;
  /** All passkeys, suspended ones included. */
  passkeysTotal: number;
  recoveryCodes: number;
  /**
   * Has the member set up a second factor (TOTP, or any passkey, a suspended one included)? Such a
   * member never signs in with the password alone, even when no factor is usable right now: a
   * passkey suspended as a possible clone must not turn MFA off (fail closed).
   */
  enrolled: boolean;
}

/** Methods to offer after the password: what is usable now (possibly none of an enrolled member's). */
export function methodsOf(f: MemberFactors): FactorMethod[] {
  if (!f.enrolled) return [];
  const out: FactorMethod[] = [];
  if (f.totp) out.push("totp");
  if (f.passkeys > 0) out.push("webauthn");
  if (f.recoveryCodes > 0) out.push("recovery_code");
  return out;
}

/** One view over a member's factors: which exist, and which a second step may offer. */
export class Factors {
  readonly #db: Db;

  constructor(
    db: Db,
    readonly totp: TotpService,
    readonly recovery: RecoveryCodes,
    readonly passkeys: Passkeys,
  ) {
    this.#db = db;
  }

  // One prepared query for the whole picture: it runs on every successful password sign-in.
  readonly #summary = lazyPrepared(() =>
    this.#db.$client.prepare<{ m: string }, { totp: number; usable: number; total: number; codes: number }>(
      `SELECT
         EXISTS (SELECT 1 FROM totp_factors WHERE member_id = @m AND secret IS NOT NULL) AS totp,
         (SELECT count(*) FROM webauthn_credentials WHERE member_id = @m AND suspected_clone_at IS NULL) AS usable,
         (SELECT count(*) FROM webauthn_credentials WHERE member_id = @m) AS total,
         (SELECT count(*) FROM recovery_codes WHERE member_id = @m AND used_at IS NULL) AS codes`,
    ),
  );

  of(memberId: string): MemberFactors {
    const r = this.#summary().get({ m: memberId }) as {
      totp: number;
      usable: number;
      total: number;
      codes: number;
    };
    return {
      totp: r.totp === 1,
      passkeys: r.usable,
      passkeysTotal: r.total,
      recoveryCodes: r.codes,
      enrolled: r.totp === 1 || r.total > 0,
    };
  }

  enrolled(memberId: string): boolean {
    return this.of(memberId).enrolled;
  }

  methods(memberId: string): FactorMethod[] {
    return methodsOf(this.of(memberId));
  }

  /** Recovery codes only make sense beside a factor they stand in for. */
  dropRecoveryCodesIfNoFactorLeft(memberId: string): boolean {
    if (this.enrolled(memberId)) return false;
    this.recovery.removeAll(memberId);
    return true;
  }
}
