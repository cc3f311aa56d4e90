import { eq } from "drizzle-orm";
import type { AuditLog } from "../audit/log.js";
import type { Clock } from "../clock.js";
import { type Db, inTransaction } from "../db/connection.js";
import { members, recoveryCodes, totpFactors, webauthnCredentials } from "../db/schema.js";
import { ApiError } from "../errors.js";
import type { Mailer } from "../mail/outbox.js";
import { updateMember } from "../members/member-row.js";
import type { ProfileVault } from "../members/profile.js";
import type { OidcStore } from "../oidc/adapter.js";
import type { PasswordHasher } from "../passwords/hasher.js";
import { checkPassword } from "../passwords/rules.js";
import type { MemberTokens } from "../recovery/tokens.js";
import type { DeviceRegistry } from "../sessions/devices.js";
import { endAccess, NOTHING_ENDED } from "../sessions/end-access.js";
import type { SessionService } from "../sessions/sessions.js";
import type { LoginGuard } from "../throttle/engine.js";
import type { RowSeals } from "../vault/seals.js";

export interface SupportContext {
  /** The admin acting, or null for the operator on the host (the `sekisho` CLI). */
  adminId: string | null;
  reason: string;
  ip: string | null;
  requestId: string | null;
}

/**
 * What support may do to a member's account: start a recovery. Never see or set a password — the
 * member sets one through the mailed reset link or signs in with the one they have.
 */
export class MemberSupport {
  readonly #db: Db;
  readonly #sessions: SessionService;
  readonly #devices: DeviceRegistry;
  readonly #oidc: OidcStore;
  readonly #tokens: MemberTokens;
  readonly #mailer: Mailer;
  readonly #vault: ProfileVault;
  readonly #audit: AuditLog;
  readonly #hasher: PasswordHasher;
  readonly #guard: LoginGuard;
  readonly #minLength: number;
  readonly #clock: Clock;
  readonly #seals: RowSeals;

  constructor(deps: {
    db: Db;
    sessions: SessionService;
    devices: DeviceRegistry;
    oidc: OidcStore;
    tokens: MemberTokens;
    mailer: Mailer;
    vault: ProfileVault;
    audit: AuditLog;
    hasher: PasswordHasher;
    guard: LoginGuard;
    clock: Clock;
    passwordMinLength: number;
    seals: RowSeals;
  }) {
    this.#db = deps.db;
    this.#sessions = deps.sessions;
    this.#devices = deps.devices;
    this.#oidc = deps.oidc;
    this.#tokens = deps.tokens;
    this.#mailer = deps.mailer;
    this.#vault = deps.vault;
    this.#audit = deps.audit;
    this.#hasher = deps.hasher;
    this.#guard = deps.guard;
    this.#minLength = deps.passwordMinLength;
    this.#clock = deps.clock;
    this.#seals = deps.seals;
  }

  /**
   * A new password set by the operator on the host (`sekisho admins set-password`), for an
   * administrator whose password may be known to someone else: the password rules apply, and every
   * session, member-site token, trusted device and pending link ends with the old password.
   * (Members set their own, through a reset link; admins have no mailbox here.)
   */
  async setPassword(
    memberId: string,
    password: string,
    ctx: SupportContext,
  ): Promise<{ sessions_revoked: number; oidc_rows_revoked: number; devices_revoked: number }> {
    const member = this.#db
      .select({ sub: members.sub, loginId: members.loginId })
      .from(members)
      .where(eq(members.id, memberId))
      .get();
    if (!member) throw new Error(`no member ${memberId}`);
    const reasons = checkPassword(password, { minLength: this.#minLength, loginId: member.loginId });
    if (reasons.length > 0)
      throw new ApiError(
        400,
        "weak_password",
        `The password does not meet the rules: ${reasons.join(", ")}.`,
      );
    const hashed = await this.#hasher.hash(password);
    const result = inTransaction(this.#db, () => {
      updateMember(this.#db, this.#seals, memberId, {
        passwordHash: hashed.hash,
        pepperId: hashed.pepperId,
        passwordChangedAt: this.#clock.now().getTime(),
        passwordResetRequired: false,
      });
      const done = this.#endAccess(memberId, member.sub, "password_set_by_operator");
      this.#tokens.voidAll(memberId, "reset_password", "change_email", "verify_email");
      this.#record("password.set_by_operator", memberId, ctx, done);
      return done;
    });
    this.#guard.lift(member.loginId);
    return result;
  }

  /**
   * Reset a member's second factors (a lost phone, a lost passkey): every factor and recovery code
   * removed, and — since whoever asked support might not be the member — every session,
   * member-site token, trusted device and pending link revoked, in one transaction; the member is
   * mailed and sees it among their security events.
   */
  resetMfa(
    memberId: string,
    ctx: SupportContext,
  ): {
    factors_removed: number;
    sessions_revoked: number;
    oidc_rows_revoked: number;
    devices_revoked: number;
  } {
    const member = this.#db
      .select({ sub: members.sub, locale: members.locale, loginId: members.loginId })
      .from(members)
      .where(eq(members.id, memberId))
      .get();
    if (!member) throw new Error(`no member ${memberId}`);
    const email = this.#vault.mailAddress(memberId, "mfa_reset", ctx);
    return inTransaction(this.#db, () => {
      const factors =
        this.#db.delete(totpFactors).where(eq(totpFactors.memberId, memberId)).run().changes +
        this.#db.delete(webauthnCredentials).where(eq(webauthnCredentials.memberId, memberId)).run().changes;
      this.#db.delete(recoveryCodes).where(eq(recoveryCodes.memberId, memberId)).run();
      const result = {
        factors_removed: factors,
        ...this.#endAccess(memberId, member.sub, "admin_mfa_reset"),
      };
      this.#tokens.voidAll(memberId, "reset_password", "change_email");
      if (email) {
        this.#mailer.enqueue({
          memberId,
          to: email,
          locale: member.locale,
          mail: { template: "mfa_reset", loginId: member.loginId },
        });
      }
      this.#record("mfa.reset_by_admin", memberId, ctx, result);
      return result;
    });
  }

  /**
   * Disable a member, or enable them again (the operator's `sekisho members disable|enable`). A
   * disabled member can't sign in or recover the account, and every session and member-site token
   * of theirs ends in the same transaction (sessions also check the status on every request).
   * Returns what changed; nothing when the member already had that status.
   */
  setStatus(
    memberId: string,
    status: "active" | "disabled",
    ctx: SupportContext,
  ): { changed: boolean; sessions_revoked: number; oidc_rows_revoked: number; devices_revoked: number } {
    return inTransaction(this.#db, () => {
      const member = this.#db
        .select({ sub: members.sub, status: members.status })
        .from(members)
        .where(eq(members.id, memberId))
        .get();
      if (!member) throw new Error(`no member ${memberId}`);
      if (member.status === status) return { changed: false, ...NOTHING_ENDED };
      updateMember(this.#db, this.#seals, memberId, { status });
      const result = {
        changed: true,
        ...(status === "disabled" ? this.#endAccess(memberId, member.sub, "member_disabled") : NOTHING_ENDED),
      };
      if (status === "disabled") this.#tokens.voidAll(memberId, "reset_password", "change_email");
      this.#record(status === "disabled" ? "member.disabled" : "member.enabled", memberId, ctx, result);
      return result;
    });
  }

  #endAccess(memberId: string, sub: string, reason: string) {
    return endAccess(
      { sessions: this.#sessions, oidc: this.#oidc, devices: this.#devices },
      { id: memberId, sub },
      reason,
    );
  }

  /** Support's audit entry: by the admin, or by the operator on the host (no admin). */
  #record(action: string, memberId: string, ctx: SupportContext, details: Record<string, unknown>): void {
    this.#audit.append({
      action,
      outcome: "info",
      actorType: ctx.adminId ? "admin" : "operator",
      actorId: ctx.adminId,
      memberId,
      reason: ctx.reason,
      ip: ctx.ip,
      requestId: ctx.requestId,
      details,
    });
  }
}
