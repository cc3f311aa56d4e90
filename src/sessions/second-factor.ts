import type { AuthenticationResponseJSON } from "@simplewebauthn/server";
import { eq } from "drizzle-orm";
import type { AuditLog } from "../audit/log.js";
import { type Db, inTransaction } from "../db/connection.js";
import { members } from "../db/schema.js";
import { ApiError } from "../errors.js";
import type { Factors } from "../factors/methods.js";
import type { AssertionResult, CeremonyBinding } from "../factors/passkeys.js";
import type { SecurityNotices } from "../mail/notices.js";
import { type MfaPolicies, meets, type PolicyMethod, type Requirement } from "../policy/mfa-policy.js";
import type { Attempt, LoginGuard } from "../throttle/engine.js";
import type { DeviceRegistry } from "./devices.js";
import { ACR, type Acr, type Amr, acrRank } from "./levels.js";
import type { MfaTokens, PendingMfa } from "./mfa-tokens.js";
import type { Session, SessionService } from "./sessions.js";
import { tooManyAttempts } from "./sign-in.js";

/**
 * The second step of a sign-in, step-up of an existing session, and passwordless passkeys.
 *
 * Who is signing in comes from exactly one of: an `mfa_token` (the password was right a moment
 * ago), the session cookie (step-up: raise a live session's level), or — for passkeys only —
 * nobody (passwordless: the discoverable credential names its member; with a session cookie
 * present, the stored challenge says whether it was a step-up or a passwordless ceremony). The
 * order is the house order: identify → throttle → verify → one transaction (spend the code, the
 * token or the old session; check the member is still active; new session; device; audit) →
 * answer. A step-up never edits a session in place: it issues a new token and revokes the old
 * one, so a token that leaked at the lower level stays low.
 */
export interface FactorContext {
  ip: string;
  requestId: string | null;
  userAgent: string | null;
  /** The `sekisho_device` cookie, if any. */
  deviceToken: string | null;
  /** A session token the browser already had: revoked by a new sign-in (not by a step-up of it). */
  previousToken?: string | null;
}

export type Subject = { mfaToken: string } | { session: Session } | { passwordless: true };

export type FactorProof =
  | { method: "totp"; code: string }
  | { method: "recovery_code"; code: string }
  | { method: "webauthn"; response: AuthenticationResponseJSON };

export type FactorResult =
  | {
      status: "authenticated";
      token: string;
      session: Session;
      memberId: string;
      /** A new `sekisho_device` cookie to set (first factor sign-in from this device). */
      deviceToken: string | null;
      /**
       * The MFA policy wants a factor this sign-in didn't use (only passkeys are phishing-resistant):
       * the session is limited to adding one of these.
       */
      enrolmentRequired?: PolicyMethod[];
    }
  | { status: "failed" };

/** Failures of one session's step-up before it is revoked (the mfa_token has its own limit). */
const STEP_UP_MAX_FAILURES = 5;
/** Passwordless option requests per client IP in 10 minutes (each writes a challenge row). */
const PASSWORDLESS_OPTIONS_PER_IP = 300;

class Rollback extends Error {
  constructor(readonly why: "wrong" | "race" | "disabled") {
    super(why);
  }
}

export class SecondFactorSignIn {
  readonly #db: Db;
  readonly #sessions: SessionService;
  readonly #tokens: MfaTokens;
  readonly #factors: Factors;
  readonly #devices: DeviceRegistry;
  readonly #audit: AuditLog;
  readonly #guard: LoginGuard;
  readonly #stepUpFailures = new Map<string, number>();
  readonly #notices: SecurityNotices | undefined;
  readonly #policy: MfaPolicies | undefined;
  readonly #onCloneSuspected: ((memberId: string, ctx: FactorContext) => void) | undefined;

  constructor(deps: {
    notices?: SecurityNotices;
    policy?: MfaPolicies;
    db: Db;
    sessions: SessionService;
    tokens: MfaTokens;
    factors: Factors;
    devices: DeviceRegistry;
    audit: AuditLog;
    guard: LoginGuard;
    /** A member's passkey looks cloned: end what the copy may have opened, tell the member and admins. */
    onCloneSuspected?: (memberId: string, ctx: FactorContext) => void;
  }) {
    this.#db = deps.db;
    this.#sessions = deps.sessions;
    this.#tokens = deps.tokens;
    this.#factors = deps.factors;
    this.#devices = deps.devices;
    this.#audit = deps.audit;
    this.#guard = deps.guard;
    this.#notices = deps.notices;
    this.#policy = deps.policy;
    this.#onCloneSuspected = deps.onCloneSuspected;
  }

  /** Resolve the subject of a TOTP / recovery-code / passkey second step. */
  #resolve(subject: Subject): {
    memberId: string | null;
    pending: PendingMfa | null;
    session: Session | null;
  } {
    if ("mfaToken" in subject) {
      const pending = this.#tokens.find(subject.mfaToken);
      if (!pending) {
        throw new ApiError(
          401,
          "invalid_mfa_token",
          "The sign-in expired or was already completed; sign in again.",
        );
      }
      return { memberId: pending.memberId, pending, session: null };
    }
    if ("session" in subject)
      return { memberId: subject.session.memberId, pending: null, session: subject.session };
    return { memberId: null, pending: null, session: null };
  }

  #member(memberId: string): { loginId: string; status: string } | undefined {
    return this.#db
      .select({ loginId: members.loginId, status: members.status })
      .from(members)
      .where(eq(members.id, memberId))
      .get();
  }

  #loginIdOf(memberId: string): string {
    return this.#member(memberId)?.loginId ?? "";
  }

  /**
   * Ask the login-anomaly engine (the same counters as the password step: wrong codes count with
   * wrong passwords, per address and per account; the member's own device is trusted).
   */
  #admit(ctx: FactorContext, memberId: string | null, kind: Attempt["kind"], passkey: boolean): Attempt {
    const attempt: Attempt = {
      ip: ctx.ip,
      loginId: memberId ? this.#loginIdOf(memberId) : null,
      trustedDevice: memberId ? this.#devices.recognise(ctx.deviceToken, memberId) !== null : false,
      kind,
      ...(passkey ? { passkey: true } : {}),
    };
    const decision = this.#guard.assess(attempt);
    if (decision.action === "allow") return attempt;
    if (this.#guard.recordRefusal(attempt, decision.action) === null)
      throw tooManyAttempts(decision.retryAfterSeconds);
    this.#audit.append({
      action: "login.throttled",
      outcome: "failure",
      actorType: "anonymous",
      memberId,
      ip: ctx.ip,
      requestId: ctx.requestId,
      reason: decision.action,
      details: { reasons: decision.reasons, step: kind },
    });
    throw tooManyAttempts(decision.retryAfterSeconds);
  }

  /**
   * Options for a passkey ceremony: the second step (mfa_token), a step-up (session cookie), or
   * passwordless (neither, or `passwordless` asked for explicitly, as the login pages do: a
   * member signing in there may be switching accounts in a browser that has a session).
   */
  async passkeyOptions(subject: Subject, ip: string) {
    const { pending, session } = this.#resolve(subject);
    if (!pending && !session) {
      const rate = this.#guard.overRate(`passwordless_options|${ip}`, PASSWORDLESS_OPTIONS_PER_IP);
      if (rate.over) throw tooManyAttempts(rate.retryAfterSeconds);
    }
    const binding: CeremonyBinding = pending
      ? { kind: "second_factor", memberId: pending.memberId, mfaTokenHash: pending.tokenHash }
      : session
        ? { kind: "step_up", memberId: session.memberId, sessionId: session.id }
        : { kind: "passwordless" };
    return this.#factors.passkeys.authenticationOptions(binding);
  }

  /**
   * The policy in force for this second step, and refusal of a one-time code where the policy
   * counts only passkeys and the member has one (otherwise a phished password and code — or a
   * recovery code — would buy a session that can add the thief's passkey). Admins never recover
   * with codes: another admin or the operator resets them.
   */
  #policyFor(memberId: string | null, pending: PendingMfa | null, proof: FactorProof): Requirement | null {
    if (!memberId) return null;
    const m = this.#db
      .select({ createdAt: members.createdAt, role: members.role, mfaRequired: members.mfaRequired })
      .from(members)
      .where(eq(members.id, memberId))
      .get();
    if (!m) return null;
    // An admin's recovery code signs nothing in, nor steps a session up, whatever
    // SEKISHO_ADMIN_ACR allows: a code on paper would otherwise open the admin API (an admin who
    // lost their factors is reset by the operator: `sekisho admins reset-mfa`).
    if (m.role === "admin" && proof.method === "recovery_code")
      throw new ApiError(
        403,
        "method_not_allowed",
        "Administrators can't sign in with recovery codes; the operator resets an administrator's factors.",
      );
    if (!pending || !this.#policy) return null;
    const factors = this.#factors.of(memberId);
    const need = this.#policy.requirement(m, factors);
    const code = proof.method !== "webauthn";
    if (code && need.acr !== ACR.password && !need.methods.includes("totp") && factors.passkeys > 0)
      throw new ApiError(
        403,
        "method_not_allowed",
        "Sign in with your passkey: a one-time code is not enough here.",
      );
    return need;
  }

  async complete(subject: Subject, proof: FactorProof, ctx: FactorContext): Promise<FactorResult> {
    const { memberId, pending, session } = this.#resolve(subject);
    const need = this.#policyFor(memberId, pending, proof);
    if (memberId === null && proof.method !== "webauthn") {
      throw new ApiError(
        401,
        "invalid_mfa_token",
        "Send the mfa_token from the password step, or sign in first.",
      );
    }
    const attempt = this.#admit(
      ctx,
      memberId,
      memberId ? "second_factor" : "passkey",
      proof.method === "webauthn",
    );
    let settled = false;
    const settle = (outcome: "success" | "failure" | "neither") => {
      if (!settled) this.#guard.settle(attempt, outcome);
      settled = true;
    };
    try {
      return await this.#complete(memberId, pending, session, proof, ctx, settle, need);
    } finally {
      settle("neither");
    }
  }

  async #complete(
    memberId: string | null,
    pending: PendingMfa | null,
    session: Session | null,
    proof: FactorProof,
    ctx: FactorContext,
    settle: (outcome: "success" | "failure" | "neither") => void,
    need: Requirement | null,
  ): Promise<FactorResult> {
    // What this proof adds. `pwd` only when the password was part of this sign-in (the mfa_token).
    const pwd: Amr[] = pending ? ["pwd"] : [];
    let level: { acr: Acr; amr: Amr[] };
    let who: string;
    let stepUp: Session | null = session;
    let passkeyId: string | undefined;
    if (proof.method === "webauthn") {
      const accept: CeremonyBinding[] = pending
        ? [{ kind: "second_factor", memberId: pending.memberId, mfaTokenHash: pending.tokenHash }]
        : session
          ? [{ kind: "step_up", memberId: session.memberId, sessionId: session.id }, { kind: "passwordless" }]
          : [{ kind: "passwordless" }];
      const result = await this.#factors.passkeys.authenticate(proof.response, accept);
      if (!result.ok) {
        settle("failure");
        return this.#fail(result, memberId, pending, session, proof.method, ctx);
      }
      who = result.memberId;
      passkeyId = result.passkeyId;
      if (result.binding.kind === "passwordless") {
        stepUp = null; // a passwordless sign-in, even in a browser that had a session
      }
      const uv: Amr[] = result.userVerified ? ["user"] : [];
      level = { acr: ACR.phishingResistant, amr: [...pwd, result.amr, ...uv, "mfa"] };
    } else {
      who = memberId as string;
      level = { acr: ACR.mfa, amr: [...pwd, "otp", "mfa"] };
    }

    // A step-up keeps what the session already proved and adds what was just proved, when what
    // was just proved is at least as strong. A weaker proof (a one-time code on a stale
    // phishing-resistant session) makes a session as strong as that proof, at its time, not a fresh
    // phishing-resistant one that would pass every recency check a passkey is asked for; the
    // password, if the session had it, still counts in amr.
    if (stepUp) {
      const weaker = acrRank(level.acr) < acrRank(stepUp.acr);
      const kept = weaker ? stepUp.amr.filter((a) => a === "pwd") : stepUp.amr;
      level = { acr: level.acr, amr: [...new Set<Amr>([...kept, ...level.amr])] };
    }
    const kind = stepUp ? "step_up" : pending ? "second_factor" : "passwordless";
    // The global MFA policy (or the admins' own) may want more than this factor gives (a passkey
    // where TOTP was used). A member who can't give more yet gets a limited session to add it
    // (they passed a factor); one who can — who has a passkey — must use it (checked before the
    // code is spent, in #refuseWeakerFactor).
    let enrolmentRequired: PolicyMethod[] | undefined;
    if (kind === "second_factor" && need && !meets(need, level.acr, level.amr))
      enrolmentRequired = need.methods;

    let outcome: { token: string; session: Session; deviceToken: string | null };
    try {
      outcome = inTransaction(this.#db, () => {
        // Codes are spent inside the transaction: if the sign-in loses a race below, the code
        // stays unspent for the member.
        if (proof.method === "totp" && !this.#factors.totp.verify(who, proof.code))
          throw new Rollback("wrong");
        if (proof.method === "recovery_code" && !this.#factors.recovery.consume(who, proof.code))
          throw new Rollback("wrong");
        if (this.#member(who)?.status !== "active") throw new Rollback("disabled");
        if (pending && !this.#tokens.consume(pending.tokenHash)) throw new Rollback("race");
        if (stepUp && !this.#sessions.revoke(stepUp.memberId, stepUp.id, "stepped_up"))
          throw new Rollback("race");
        if (!stepUp && ctx.previousToken) this.#revokePrevious(ctx.previousToken);
        return this.#establish(who, level, kind, proof, ctx, {
          stepUp,
          passkeyId,
          limited: !!enrolmentRequired,
        });
      });
    } catch (err) {
      if (!(err instanceof Rollback)) throw err;
      if (err.why === "race") {
        // The token was spent, or the session revoked, by a parallel request that won.
        throw new ApiError(
          401,
          "invalid_mfa_token",
          "The sign-in expired or was already completed; sign in again.",
        );
      }
      const reason = err.why === "disabled" ? "account_disabled" : `wrong_${proof.method}`;
      settle("failure");
      return this.#fail({ ok: false, reason } as never, memberId, pending, stepUp, proof.method, ctx, who);
    }
    settle("success");
    if (stepUp) this.#stepUpFailures.delete(stepUp.id);
    return {
      status: "authenticated",
      memberId: who,
      ...outcome,
      ...(enrolmentRequired ? { enrolmentRequired } : {}),
    };
  }

  #revokePrevious(token: string): void {
    const previous = this.#sessions.authenticate(token);
    if (previous) this.#sessions.revoke(previous.memberId, previous.id, "replaced_by_sign_in");
  }

  /** Inside the transaction: the session, the device, and the audit entries. */
  #establish(
    who: string,
    level: { acr: Acr; amr: Amr[] },
    kind: "passwordless" | "step_up" | "second_factor",
    proof: FactorProof,
    ctx: FactorContext,
    extra: { stepUp: Session | null; passkeyId: string | undefined; limited?: boolean },
  ) {
    const { token, session: created } = this.#sessions.create({
      memberId: who,
      acr: level.acr,
      amr: level.amr,
      ip: ctx.ip,
      userAgent: ctx.userAgent,
      ...(extra.limited ? { kind: "limited" as const } : {}),
    });
    const base = {
      actorType: "member" as const,
      actorId: who,
      memberId: who,
      ip: ctx.ip,
      requestId: ctx.requestId,
    };
    const known = this.#devices.recognise(ctx.deviceToken, who);
    let deviceToken: string | null = null;
    if (known) {
      this.#devices.touch(known.id);
    } else {
      const device = this.#devices.issue(who, ctx.userAgent);
      deviceToken = device.token;
      this.#audit.append({
        ...base,
        action: "login.new_device",
        outcome: "info",
        details: { device_id: device.id, session_id: created.id },
      });
      this.#notices?.send(who, "new_device", ctx);
    }
    if (proof.method === "recovery_code") {
      this.#audit.append({
        ...base,
        action: "mfa.recovery_code_used",
        outcome: "info",
        details: { remaining: this.#factors.recovery.remaining(who) },
      });
    }
    this.#audit.append({
      ...base,
      action:
        kind === "passwordless"
          ? "login.passkey"
          : kind === "step_up"
            ? "session.step_up"
            : "login.second_factor",
      outcome: "success",
      details: {
        method: proof.method,
        session_id: created.id,
        ...(extra.stepUp ? { replaced_session_id: extra.stepUp.id } : {}),
        ...(extra.passkeyId ? { passkey_id: extra.passkeyId } : {}),
        acr: created.acr,
        amr: created.amr,
      },
    });
    return { token, session: created, deviceToken };
  }

  #fail(
    assertion:
      | Extract<AssertionResult, { ok: false }>
      | { ok: false; reason: string; memberId?: string; passkeyId?: string },
    memberId: string | null,
    pending: PendingMfa | null,
    session: Session | null,
    method: FactorProof["method"],
    ctx: FactorContext,
    credentialOwner?: string,
  ): FactorResult {
    const target = memberId ?? assertion.memberId ?? credentialOwner ?? null;
    let remaining: number | undefined;
    if (pending) remaining = this.#tokens.recordFailure(pending.tokenHash);
    if (session && assertion.reason !== "wrong_ceremony") {
      const n = (this.#stepUpFailures.get(session.id) ?? 0) + 1;
      this.#stepUpFailures.set(session.id, n);
      if (this.#stepUpFailures.size > 10_000) this.#stepUpFailures.clear();
      if (n >= STEP_UP_MAX_FAILURES) {
        // Someone holding a session is guessing codes: end the session.
        this.#sessions.revoke(session.memberId, session.id, "step_up_failures");
        this.#stepUpFailures.delete(session.id);
        remaining = 0;
      } else remaining = STEP_UP_MAX_FAILURES - n;
    }
    if (assertion.reason === "possible_clone") {
      // Whoever signed in with the copy may hold a session, a device and member-site tokens:
      // they all end, and the member and the admins are told.
      if (target) this.#onCloneSuspected?.(target, ctx);
      this.#audit.append({
        action: "mfa.passkey_clone_suspected",
        outcome: "failure",
        actorType: "anonymous",
        memberId: target,
        ip: ctx.ip,
        requestId: ctx.requestId,
        reason: "counter_not_increased",
        details: { passkey_id: assertion.passkeyId },
      });
    }
    this.#audit.append({
      action: memberId === null ? "login.passkey" : session ? "session.step_up" : "login.second_factor",
      outcome: "failure",
      actorType: "anonymous",
      memberId: target,
      ip: ctx.ip,
      requestId: ctx.requestId,
      reason: assertion.reason,
      details: {
        method,
        ...(assertion.passkeyId ? { passkey_id: assertion.passkeyId } : {}),
        ...(remaining !== undefined ? { attempts_left: remaining } : {}),
      },
    });
    return { status: "failed" };
  }
}
