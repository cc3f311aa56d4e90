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

  /** Methods to offer after the password; empty when the member has no second factor. */
  methods(memberId: string): FactorMethod[] {
    const f = this.of(memberId);
    if (!f.totp && f.passkeys === 0) return [];
    const out: FactorMethod[] = [];
    if (f.totp) out.push("totp");
    if (f.passkeys > 0) out.push("webauthn");
    if (f.recoveryCodes > 0) out.push("recovery_code");
    return out;
  }

  /** Recovery codes only make sense beside a factor they stand in for. */
  dropRecoveryCodesIfNoFactorLeft(memberId: string): boolean {
    if (this.totp.enabled(memberId) || this.passkeys.list(memberId).length > 0) return false;
    this.recovery.removeAll(memberId);
    return true;
  }
}
