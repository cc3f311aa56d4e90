import type { RegistrationResponseJSON } from "@simplewebauthn/server";
import { eq } from "drizzle-orm";
import type { Alerts } from "../audit/alerts.js";
import type { AuditLog } from "../audit/log.js";
import type { Clock } from "../clock.js";
import { type Db, inTransaction } from "../db/connection.js";
import { members } from "../db/schema.js";
import { ApiError } from "../errors.js";
import type { SecurityNotices } from "../mail/notices.js";
import type { SecurityNoticeKind } from "../mail/templates.js";
import { type MfaPolicies, meets, type PolicyMethod } from "../policy/mfa-policy.js";
import type { Amr } from "../sessions/levels.js";
import { ACR, satisfies } from "../sessions/levels.js";
import type { Session, SessionService } from "../sessions/sessions.js";
import type { Factors } from "./methods.js";

/** Factor changes a member is mailed about. */
const NOTICE_OF: Record<string, SecurityNoticeKind> = {
  "factor.totp_added": "totp_added",
  "factor.totp_removed": "totp_removed",
  "factor.passkey_added": "passkey_added",
  "factor.passkey_removed": "passkey_removed",
  "factor.recovery_codes_generated": "recovery_codes_generated",
};

export interface ActionContext {
  ip: string;
  requestId: string | null;
}

/**
 * A signed-in member adding, renaming and removing their own factors. The JSON API and the hosted
 * account page both call these, so the rules (a recent sign-in to remove anything or to make new
 * recovery codes; one transaction per change; every change audited as the member's security
 * event) live in one place.
 */
/** What adding a passkey proved (see PasskeyRegistry.register). */
export interface PasskeyProof {
  amr: "swk" | "hwk";
  userVerified: boolean;
}

export class FactorEnrolment {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #factors: Factors;
  readonly #audit: AuditLog;
  readonly #reauthMs: number;

  readonly #notices: SecurityNotices | undefined;
  readonly #policy: MfaPolicies | undefined;
  readonly #alerts: Alerts | undefined;
  readonly #sessions: SessionService | undefined;
  /** Ends a member's member-site grants and tokens (OidcStore.revokeAccount), by their sub. */
  readonly #revokeSites: ((sub: string) => number) | undefined;

  constructor(deps: {
    db: Db;
    clock: Clock;
    factors: Factors;
    audit: AuditLog;
    reauthMs: number;
    notices?: SecurityNotices;
    policy?: MfaPolicies;
    alerts?: Alerts;
    sessions?: SessionService;
    revokeSites?: (sub: string) => number;
  }) {
    this.#revokeSites = deps.revokeSites;
    this.#notices = deps.notices;
    this.#policy = deps.policy;
    this.#alerts = deps.alerts;
    this.#sessions = deps.sessions;
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#factors = deps.factors;
    this.#audit = deps.audit;
    this.#reauthMs = deps.reauthMs;
  }

  member(session: Session): {
    id: string;
    sub: string;
    loginId: string;
    role: "member" | "admin";
    createdAt: number;
    mfaRequired: boolean;
  } {
    const m = this.#db
      .select({
        id: members.id,
        sub: members.sub,
        loginId: members.loginId,
        role: members.role,
        createdAt: members.createdAt,
        mfaRequired: members.mfaRequired,
      })
      .from(members)
      .where(eq(members.id, session.memberId))
      .get();
    if (!m) throw new ApiError(401, "unauthenticated", "Sign in first.");
    return m;
  }

  /** Is the session's last sign-in (or step-up) recent enough for sensitive changes? */
  isRecent(session: Session): boolean {
    return this.#clock.now().getTime() - session.authTime <= this.#reauthMs;
  }

  /** Removing a factor needs a recent sign-in: a stolen, old session can't strip a member's MFA. */
  requireRecent(session: Session): void {
    if (!this.isRecent(session)) {
      throw new ApiError(401, "reauthentication_required", "Sign in again to make this change.", {
        extra: { max_age: Math.floor(this.#reauthMs / 1000) },
      });
    }
  }

  #event(
    session: Session,
    ctx: ActionContext,
    action: string,
    details: Record<string, unknown>,
    opts: { notify?: boolean } = {},
  ): void {
    // The member hears of every change to their factors (renames excepted), by mail.
    const notice = NOTICE_OF[action];
    if (notice && opts.notify !== false) this.#notices?.send(session.memberId, notice, ctx);
    // An admin's factors are the keys to the admin API, and admins have no mailbox here: every
    // change to them is an alert (the other admins and the webhook see it).
    if (notice && this.member(session).role === "admin")
      this.#alerts?.raise(
        "admin_factor_changed",
        "warning",
        {
          member_id: session.memberId,
          // The admin it is about, as the principal: not shown to that admin (a thief on the
          // account must not see it or mark it handled), shown to the others.
          principal: "admin",
          principal_id: session.memberId,
          change: action,
          ip: ctx.ip,
          request_id: ctx.requestId,
        },
        // Once per admin and kind of change in ten minutes: making new recovery codes again and
        // again must not be a way to push other alerts off the admins' list.
        `${session.memberId}|${action}`,
      );
    this.#audit.append({
      action,
      outcome: "success",
      actorType: "member",
      actorId: session.memberId,
      memberId: session.memberId,
      ip: ctx.ip,
      requestId: ctx.requestId,
      details: { session_id: session.id, ...details },
    });
  }

  /**
   * Adding a factor is as sensitive as removing one: a stolen session that could add the thief's
   * passkey or authenticator app would keep the account even after a password change. So it needs
   * a recent sign-in, and, for a member who already has a factor, one that used it (acr ≥ mfa).
   */
  requireStrongRecent(session: Session): void {
    this.requireRecent(session);
    if (this.#factors.enrolled(session.memberId) && !satisfies(session.acr, ACR.mfa)) {
      throw new ApiError(
        401,
        "reauthentication_required",
        "Sign in again with your second factor to make this change.",
        {
          extra: { max_age: Math.floor(this.#reauthMs / 1000), acr: ACR.mfa },
        },
      );
    }
  }

  /**
   * The MFA policy may restrict which factors can be added (`methods`), or all of them (`off`).
   * A limited session (one that must add a factor before anything else) may only add a factor
   * the policy counts, and never replace one the member has: it exists to add what is missing.
   */
  #allowed(session: Session, method: PolicyMethod): void {
    const refuse = () =>
      new ApiError(403, "method_not_allowed", "The MFA policy doesn't allow adding this kind of factor.");
    if (!this.#policy) return;
    const m = this.member(session);
    if (
      !this.#policy.enrolmentAllowed(method, m.role, {
        required: session.kind === "limited" || m.mfaRequired,
      })
    )
      throw refuse();
    if (session.kind === "limited") {
      const factors = this.#factors.of(m.id);
      if (method === "totp" && factors.totp) throw refuse();
      const need = this.#policy.requirement(m, factors);
      if (method === "totp" && !need.methods.includes("totp")) throw refuse();
    }
  }

  /**
   * A limited session (a sign-in that had to add a factor first) that just added one becomes a
   * full session at the level of the factor it proved: the old token is revoked, a new one issued.
   */
  upgradeLimited(session: Session, via: "totp" | PasskeyProof): { token: string; session: Session } | null {
    if (session.kind !== "limited" || !this.#sessions) return null;
    // A passkey's amr as its sign-in would say it: synced (swk) or device-bound (hwk), and `user`
    // only when the authenticator verified the user.
    const level =
      via === "totp"
        ? { acr: ACR.mfa, amr: [...new Set<Amr>([...session.amr, "otp", "mfa"])] }
        : {
            acr: ACR.phishingResistant,
            amr: [
              ...new Set<Amr>([
                ...session.amr,
                via.amr,
                ...(via.userVerified ? (["user"] as const) : []),
                "mfa",
              ]),
            ],
          };
    // Only if the new level is what the policy wants; otherwise the session stays limited.
    if (this.#policy) {
      const m = this.member(session);
      if (!meets(this.#policy.requirement(m, this.#factors.of(m.id)), level.acr, level.amr)) return null;
    }
    return inTransaction(this.#db, () => {
      this.#sessions?.revoke(session.memberId, session.id, "enrolled");
      const created = this.#sessions?.create({
        memberId: session.memberId,
        acr: level.acr,
        amr: level.amr,
        ip: session.ip,
        userAgent: session.userAgent,
      }) as { token: string; session: Session };
      this.#audit.append({
        action: "session.enrolled",
        outcome: "success",
        actorType: "member",
        actorId: session.memberId,
        memberId: session.memberId,
        details: {
          replaced_session_id: session.id,
          session_id: created.session.id,
          acr: level.acr,
          amr: level.amr,
        },
      });
      return created;
    });
  }

  /**
   * A member's first factor ends their other sessions and their member-site grants and tokens:
   * access taken with a phished password must not go on (at `acr` password: a session for up to
   * its absolute lifetime, a site's refresh token for much longer) once the member has moved to
   * two steps. This browser's session stays. Returns how many sessions ended.
   */
  #endOthers(session: Session): number {
    this.#revokeSites?.(this.member(session).sub);
    return this.#sessions?.revokeAll(session.memberId, "first_factor_enrolled", session.id) ?? 0;
  }

  beginTotp(session: Session): { secret: string; otpauthUri: string } {
    this.#allowed(session, "totp");
    this.requireStrongRecent(session);
    const m = this.member(session);
    return this.#factors.totp.begin(m.id, m.loginId);
  }

  /** The pending enrolment again (to re-show the QR code after a mistyped code), or null. */
  pendingTotp(session: Session): { secret: string; otpauthUri: string } | null {
    const m = this.member(session);
    return this.#factors.totp.pending(m.id, m.loginId);
  }

  /** Verify the pending secret; the new recovery codes, or null for a wrong code. */
  activateTotp(session: Session, code: string, ctx: ActionContext): string[] | null {
    this.#allowed(session, "totp"); // again: the policy may have changed since the enrolment began
    this.requireStrongRecent(session);
    const replaced = this.#factors.totp.enabled(session.memberId);
    const first = !this.#factors.enrolled(session.memberId);
    return inTransaction(this.#db, () => {
      if (!this.#factors.totp.activate(session.memberId, code.replace(/\s/g, ""))) return null;
      const ended = first ? this.#endOthers(session) : 0;
      // The "new recovery codes, the old ones no longer work" mail only when there were old ones:
      // a first factor's codes come with the factor's own notice.
      const hadCodes = this.#factors.recovery.remaining(session.memberId) > 0;
      const fresh = this.#factors.recovery.replace(session.memberId);
      this.#event(session, ctx, "factor.totp_added", {
        replaced,
        ...(ended ? { other_sessions_ended: ended } : {}),
      });
      this.#event(
        session,
        ctx,
        "factor.recovery_codes_generated",
        { count: fresh.length, replaced_unused: hadCodes },
        { notify: hadCodes },
      );
      return fresh;
    });
  }

  /**
   * Refuse (and roll back) a removal that leaves a member the MFA policy requires a factor of
   * without one: their session would go on at a level their account can no longer reach.
   */
  #keepsRequiredFactor(session: Session): void {
    if (!this.#policy) return;
    // What is left must still reach what the policy requires (a passkeys-only policy is not met
    // by an authenticator app); a member in a grace period may remove what they like.
    const need = this.#policy.requirement(this.member(session), this.#factors.of(session.memberId));
    if (need.enrol)
      throw new ApiError(
        409,
        "factor_required",
        "The MFA policy requires a second factor: add another one before removing this one.",
      );
  }

  removeTotp(session: Session, ctx: ActionContext): boolean {
    this.requireStrongRecent(session);
    return inTransaction(this.#db, () => {
      if (!this.#factors.totp.remove(session.memberId)) return false;
      this.#keepsRequiredFactor(session);
      const dropped = this.#factors.dropRecoveryCodesIfNoFactorLeft(session.memberId);
      this.#event(session, ctx, "factor.totp_removed", { recovery_codes_removed: dropped });
      return true;
    });
  }

  regenerateRecoveryCodes(session: Session, ctx: ActionContext): string[] {
    this.requireStrongRecent(session);
    const f = this.#factors.of(session.memberId);
    if (!f.totp && f.passkeys === 0) {
      throw new ApiError(409, "no_second_factor", "Set up an authenticator app or a passkey first.");
    }
    return inTransaction(this.#db, () => {
      const fresh = this.#factors.recovery.replace(session.memberId);
      this.#event(session, ctx, "factor.recovery_codes_generated", { count: fresh.length });
      return fresh;
    });
  }

  async passkeyOptions(session: Session) {
    this.#allowed(session, "webauthn");
    this.requireStrongRecent(session);
    const m = this.member(session);
    // Admins' passkeys must verify the user (PIN or biometrics); members' should.
    return this.#factors.passkeys.registrationOptions(m, session.id, {
      requireUserVerification: m.role === "admin",
    });
  }

  /**
   * Register a passkey. When it is the member's first factor, recovery codes come with it (as with
   * TOTP): a member whose only passkey is lost must still have a way in that doesn't skip MFA.
   */
  async addPasskey(
    session: Session,
    response: RegistrationResponseJSON,
    name: string,
    ctx: ActionContext,
  ): Promise<{ id: string; recoveryCodes: string[] | null; proved: PasskeyProof }> {
    this.requireStrongRecent(session);
    const first = !this.#factors.enrolled(session.memberId);
    const result = await this.#factors.passkeys.register(session.memberId, session.id, response, name);
    if (!result.ok) {
      if (result.reason === "credential_exists")
        throw new ApiError(409, "passkey_exists", "This passkey is already registered.");
      throw new ApiError(400, "invalid_passkey", "The passkey could not be verified; start again.", {
        detail: result.reason,
      });
    }
    return inTransaction(this.#db, () => {
      const ended = first ? this.#endOthers(session) : 0;
      this.#event(session, ctx, "factor.passkey_added", {
        passkey_id: result.passkeyId,
        ...(ended ? { other_sessions_ended: ended } : {}),
      });
      let codes: string[] | null = null;
      if (this.#factors.recovery.remaining(session.memberId) === 0) {
        codes = this.#factors.recovery.replace(session.memberId);
        // No unused codes were left: nothing old stops working, the passkey's notice says enough.
        this.#event(
          session,
          ctx,
          "factor.recovery_codes_generated",
          { count: codes.length, replaced_unused: false },
          { notify: false },
        );
      }
      return {
        id: result.passkeyId,
        recoveryCodes: codes,
        proved: { amr: result.amr, userVerified: result.userVerified },
      };
    });
  }

  renamePasskey(session: Session, passkeyId: string, name: string, ctx: ActionContext): boolean {
    if (!this.#factors.passkeys.rename(session.memberId, passkeyId, name)) return false;
    this.#event(session, ctx, "factor.passkey_renamed", { passkey_id: passkeyId });
    return true;
  }

  removePasskey(session: Session, passkeyId: string, ctx: ActionContext): boolean {
    this.requireStrongRecent(session);
    return inTransaction(this.#db, () => {
      if (!this.#factors.passkeys.remove(session.memberId, passkeyId)) return false;
      this.#keepsRequiredFactor(session);
      const dropped = this.#factors.dropRecoveryCodesIfNoFactorLeft(session.memberId);
      this.#event(session, ctx, "factor.passkey_removed", {
        passkey_id: passkeyId,
        recovery_codes_removed: dropped,
      });
      return true;
    });
  }
}
