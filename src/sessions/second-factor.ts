import { eq } from "drizzle-orm";
import type { AuthenticationResponseJSON } from "@simplewebauthn/server";
import type { AuditLog } from "../audit/log.js";
import type { Clock } from "../clock.js";
import { type Db, inTransaction } from "../db/connection.js";
import { members } from "../db/schema.js";
import { ApiError } from "../errors.js";
import type { Factors } from "../factors/methods.js";
import type { AssertionResult, CeremonyBinding } from "../factors/passkeys.js";
import type { AttemptLimiter } from "../throttle/attempts.js";
import type { DeviceRegistry } from "./devices.js";
import { ACR, type Acr, type Amr, acrRank } from "./levels.js";
import type { MfaTokens, PendingMfa } from "./mfa-tokens.js";
import type { Session, SessionService } from "./sessions.js";

/**
 * The second step of a sign-in, and step-up of an existing session.
 *
 * Who is signing in comes from exactly one of: an `mfa_token` (the password was right a moment
 * ago), the session cookie (step-up: raise a live session's level), or — for passkeys only —
 * nobody (passwordless: the discoverable credential names its member). The order is the house
 * order: identify → throttle → verify → one transaction (spend the token or retire the old
 * session, new session, device, audit) → answer. A step-up never edits a session in place: it
 * issues a new token and revokes the old one, so a token that leaked at the lower level stays low.
 */
export interface FactorContext {
  ip: string;
  requestId: string | null;
  userAgent: string | null;
  /** The `sekisho_device` cookie, if any. */
  deviceToken: string | null;
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
    }
  | { status: "failed" };

/** Failures of one session's step-up before it is revoked (the mfa_token has its own limit). */
const STEP_UP_MAX_FAILURES = 5;

export class SecondFactorSignIn {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #sessions: SessionService;
  readonly #tokens: MfaTokens;
  readonly #factors: Factors;
  readonly #devices: DeviceRegistry;
  readonly #audit: AuditLog;
  readonly #throttle: AttemptLimiter;
  readonly #stepUpFailures = new Map<string, number>();

  constructor(deps: {
    db: Db;
    clock: Clock;
    sessions: SessionService;
    tokens: MfaTokens;
    factors: Factors;
    devices: DeviceRegistry;
    audit: AuditLog;
    throttle: AttemptLimiter;
  }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#sessions = deps.sessions;
    this.#tokens = deps.tokens;
    this.#factors = deps.factors;
    this.#devices = deps.devices;
    this.#audit = deps.audit;
    this.#throttle = deps.throttle;
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

  #loginIdOf(memberId: string): string {
    return (
      this.#db.select({ l: members.loginId }).from(members).where(eq(members.id, memberId)).get()?.l ?? ""
    );
  }

  #throttleCheck(ip: string, memberId: string): void {
    const verdict = this.#throttle.check(ip, this.#loginIdOf(memberId));
    if (verdict.allowed) return;
    this.#audit.append({
      action: "login.throttled",
      outcome: "failure",
      actorType: "anonymous",
      memberId,
      ip,
      reason: "too_many_attempts",
      details: { by: verdict.key, step: "second_factor" },
    });
    throw new ApiError(429, "too_many_attempts", "Too many sign-in attempts; try again later.", {
      headers: { "Retry-After": String(verdict.retryAfterSeconds) },
    });
  }

  /** Options for a passkey ceremony: second factor, step-up, or passwordless. */
  async passkeyOptions(subject: Subject) {
    const { memberId, pending, session } = this.#resolve(subject);
    return this.#factors.passkeys.authenticationOptions(this.#binding(memberId, pending, session));
  }

  #binding(memberId: string | null, pending: PendingMfa | null, session: Session | null): CeremonyBinding {
    if (pending)
      return { kind: "second_factor", memberId: pending.memberId, mfaTokenHash: pending.tokenHash };
    if (session && memberId) return { kind: "step_up", memberId, sessionId: session.id };
    return { kind: "passwordless" };
  }

  async complete(subject: Subject, proof: FactorProof, ctx: FactorContext): Promise<FactorResult> {
    const { memberId, pending, session } = this.#resolve(subject);
    if (memberId === null && proof.method !== "webauthn") {
      throw new ApiError(
        401,
        "invalid_mfa_token",
        "Send the mfa_token from the password step, or sign in first.",
      );
    }
    if (memberId) this.#throttleCheck(ctx.ip, memberId);

    let level: { acr: Acr; amr: Amr[] };
    let who = memberId;
    let passkeyId: string | undefined;
    let recoveryLeft: number | undefined;
    if (proof.method === "webauthn") {
      const result = await this.#factors.passkeys.authenticate(
        proof.response,
        this.#binding(memberId, pending, session),
      );
      if (!result.ok) return this.#fail(result, memberId, pending, session, proof.method, ctx);
      who = result.memberId;
      passkeyId = result.passkeyId;
      const passwordless = memberId === null;
      if (passwordless) this.#throttleCheck(ctx.ip, who);
      level = {
        acr: ACR.phishingResistant,
        amr: [
          ...(passwordless ? [] : (["pwd"] as Amr[])),
          result.amr,
          ...(result.userVerified ? (["user"] as Amr[]) : []),
          "mfa",
        ],
      };
    } else {
      const ok =
        proof.method === "totp"
          ? this.#factors.totp.verify(memberId as string, proof.code)
          : this.#factors.recovery.consume(memberId as string, proof.code);
      if (!ok) return this.#fail(null, memberId, pending, session, proof.method, ctx);
      if (proof.method === "recovery_code")
        recoveryLeft = this.#factors.recovery.remaining(memberId as string);
      level = { acr: ACR.mfa, amr: ["pwd", "otp", "mfa"] };
    }
    const memberOf = who as string;

    // A step-up keeps what the session already proved and adds what was just proved.
    if (session) {
      const amr = [...new Set<Amr>([...session.amr, ...level.amr])];
      const acr = acrRank(session.acr) > acrRank(level.acr) ? (session.acr as Acr) : level.acr;
      level = { acr, amr };
    }

    const outcome = inTransaction(this.#db, () => {
      if (pending && !this.#tokens.consume(pending.tokenHash)) return null;
      if (session && !this.#sessions.revoke(session.memberId, session.id, "stepped_up")) return null;
      const { token, session: created } = this.#sessions.create({
        memberId: memberOf,
        acr: level.acr,
        amr: level.amr,
        ip: ctx.ip,
        userAgent: ctx.userAgent,
      });
      const known = this.#devices.recognise(ctx.deviceToken, memberOf);
      let deviceToken: string | null = null;
      if (known) {
        this.#devices.touch(known.id);
      } else {
        const device = this.#devices.issue(memberOf, ctx.userAgent);
        deviceToken = device.token;
        this.#audit.append({
          action: "login.new_device",
          outcome: "info",
          actorType: "member",
          actorId: memberOf,
          memberId: memberOf,
          ip: ctx.ip,
          requestId: ctx.requestId,
          details: { device_id: device.id, session_id: created.id },
        });
      }
      if (proof.method === "recovery_code") {
        this.#audit.append({
          action: "mfa.recovery_code_used",
          outcome: "info",
          actorType: "member",
          actorId: memberOf,
          memberId: memberOf,
          ip: ctx.ip,
          requestId: ctx.requestId,
          details: { remaining: recoveryLeft },
        });
      }
      this.#audit.append({
        action: memberId === null ? "login.passkey" : session ? "session.step_up" : "login.second_factor",
        outcome: "success",
        actorType: "member",
        actorId: memberOf,
        memberId: memberOf,
        ip: ctx.ip,
        requestId: ctx.requestId,
        details: {
          method: proof.method,
          session_id: created.id,
          ...(session ? { replaced_session_id: session.id } : {}),
          ...(passkeyId ? { passkey_id: passkeyId } : {}),
          acr: created.acr,
          amr: created.amr,
        },
      });
      return { token, session: created, deviceToken };
    });
    if (!outcome) {
      // The token was spent, or the session revoked, by a parallel request that won.
      throw new ApiError(
        401,
        "invalid_mfa_token",
        "The sign-in expired or was already completed; sign in again.",
      );
    }
    this.#throttle.recordSuccess(ctx.ip, this.#loginIdOf(memberOf));
    if (session) this.#stepUpFailures.delete(session.id);
    return { status: "authenticated", memberId: memberOf, ...outcome };
  }

  #fail(
    assertion: Extract<AssertionResult, { ok: false }> | null,
    memberId: string | null,
    pending: PendingMfa | null,
    session: Session | null,
    method: FactorProof["method"],
    ctx: FactorContext,
  ): FactorResult {
    const target = memberId ?? assertion?.memberId ?? null;
    if (target) this.#throttle.recordFailure(ctx.ip, this.#loginIdOf(target));
    let remaining: number | undefined;
    if (pending) remaining = this.#tokens.recordFailure(pending.tokenHash);
    if (session) {
      const n = (this.#stepUpFailures.get(session.id) ?? 0) + 1;
      this.#stepUpFailures.set(session.id, n);
      if (this.#stepUpFailures.size > 10_000) this.#stepUpFailures.clear();
      if (n >= STEP_UP_MAX_FAILURES) {
        // Someone holding a password-level session is guessing codes: end the session.
        this.#sessions.revoke(session.memberId, session.id, "step_up_failures");
        this.#stepUpFailures.delete(session.id);
        remaining = 0;
      } else remaining = STEP_UP_MAX_FAILURES - n;
    }
    if (assertion?.reason === "possible_clone") {
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
      reason: assertion?.reason ?? `wrong_${method}`,
      details: {
        method,
        ...(assertion?.passkeyId ? { passkey_id: assertion.passkeyId } : {}),
        ...(remaining !== undefined ? { attempts_left: remaining } : {}),
      },
    });
    return { status: "failed" };
  }
}
