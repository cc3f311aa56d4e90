import type { Passkeys } from "./passkeys.js";
import type { RecoveryCodes } from "./recovery-codes.js";
import type { TotpService } from "./totp.js";

/** The ways a member can pass the second step, as the API names them (`methods`). */
export type FactorMethod = "totp" | "webauthn" | "recovery_code";

export interface MemberFactors {
  totp: boolean;
  passkeys: number;
  recoveryCodes: number;
}

/** One view over a member's factors: which exist, and which a second step may offer. */
export class Factors {
  constructor(
    readonly totp: TotpService,
    readonly recovery: RecoveryCodes,
    readonly passkeys: Passkeys,
  ) {}

  of(memberId: string): MemberFactors {
    return {
      totp: this.totp.enabled(memberId),
      passkeys: this.passkeys.usableCount(memberId),
      recoveryCodes: this.recovery.remaining(memberId),
    };
  }

  /**
   * Has the member set up a second factor (TOTP, or any passkey, a suspended one included)? Such a
   * member never signs in with the password alone, even when no factor is usable right now: a
   * passkey suspended as a possible clone must not turn MFA off (fail closed).
   */
  enrolled(memberId: string): boolean {
    return this.totp.enabled(memberId) || this.passkeys.list(memberId).length > 0;
  }

  /** Methods to offer after the password: what is usable now (possibly none of an enrolled member's). */
  methods(memberId: string): FactorMethod[] {
    const f = this.of(memberId);
    if (!f.totp && f.passkeys === 0)
      return f.recoveryCodes > 0 && this.enrolled(memberId) ? ["recovery_code"] : [];
    const out: FactorMethod[] = [];
    if (f.totp) out.push("totp");
    if (f.passkeys > 0) out.push("webauthn");
    if (f.recoveryCodes > 0) out.push("recovery_code");
    return out;
  }

  /** Recovery codes only make sense beside a factor they stand in for. */
  dropRecoveryCodesIfNoFactorLeft(memberId: string): boolean {
    if (this.enrolled(memberId)) return false;
    this.recovery.removeAll(memberId);
    return true;
  }
}
