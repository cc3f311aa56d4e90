import { eq, isNull, sql } from "drizzle-orm";
import type { Honeytokens } from "../audit/honeytokens.js";
import type { AuditLog } from "../audit/log.js";
import type { Clock } from "../clock.js";
import { type Db, inTransaction, lazyPrepared } from "../db/connection.js";
import { members } from "../db/schema.js";
import { ApiError } from "../errors.js";
import { type FactorMethod, type Factors, methodsOf } from "../factors/methods.js";
import type { LegacyPasswords } from "../members/legacy-passwords.js";
import { resolveLoginInput } from "../members/login-id.js";
import { updateMember } from "../members/member-row.js";
import type { PasswordHasher } from "../passwords/hasher.js";
import { type LegacyHash, verifyLegacy } from "../passwords/legacy.js";
import { WithdrawnJob } from "../passwords/queue.js";
import type { MfaPolicies, PolicyMethod } from "../policy/mfa-policy.js";
import type { Attempt, Decision, LoginGuard } from "../throttle/engine.js";
import type { ProofOfWork } from "../throttle/proof-of-work.js";
import { blindIndex } from "../vault/blind-index.js";
import type { KeyringStore } from "../vault/keyring.js";
import { memberSealValues, type RowSeals } from "../vault/seals.js";
import type { DeviceRegistry } from "./devices.js";
import { ACR } from "./levels.js";
import type { MfaTokens } from "./mfa-tokens.js";
import type { Session, SessionService } from "./sessions.js";

export interface SignInContext {
  ip: string;
  requestId: string | null;
  userAgent: string | null;
  /** A session token the browser already had: it is revoked, never upgraded (no fixation). */
  previousToken: string | null;
  /** The `sekisho_device` cookie: a member's own device is trusted by the throttle. */
  deviceToken?: string | null;
  /** The member site the sign-in is for (an OIDC interaction), for its MFA policy. */
  clientId?: string | null;
  /** The level the site asked for (`acr_values`). */
  acrValues?: string | null;
}

export type SignInResult =
  | { status: "authenticated"; token: string; session: Session; memberId: string; graceEndsAt: number | null }
  | {
      status: "mfa_enrollment_required";
      /** A limited session: it can add a factor (and read /me), nothing else. */
      token: string;
      session: Session;
      memberId: string;
      methods: PolicyMethod[];
    }
  | { status: "mfa_required"; mfaToken: string; methods: FactorMethod[]; memberId: string }
  | { status: "failed" }
  /** The password is right, but support requires a new one first (set through the mailed link). */
  | { status: "password_reset_required" };

const invalidLoginId = () =>
  new ApiError(400, "invalid_login_id", "That is not a valid login ID or member number (check for a typo).");

/** The answer to every throttled credential check. */
export function tooManyAttempts(retryAfterSeconds: number): ApiError {
  return new ApiError(429, "too_many_attempts", "Too many sign-in attempts; try again later.", {
    headers: { "Retry-After": String(retryAfterSeconds) },
  });
}

/** The answer to a credential check the throttle challenges: solve the proof of work first. */
export function challengeRequired(challenge: unknown): ApiError {
  return new ApiError(
    403,
    "challenge_required",
    "Solve the challenge and send the solution as challenge_solution.",
    {
      extra: { challenge },
    },
  );
}

type LegacyExpired = (memberId: string, ctx: { ip: string | null; requestId: string | null }) => void;

/**
 * Password sign-in: parse → throttle (before any hashing) → look up → verify (argon2, or a dummy
 * verify for an unknown ID) → one transaction: rehash if needed, new session, audit → answer.
 * The answer for an unknown login ID and a wrong password is the same value, so the HTTP layer
 * can only send the same bytes.
 */
export class PasswordSignIn {
  readonly #db: Db;
  readonly #hasher: PasswordHasher;
  readonly #sessions: SessionService;
  readonly #audit: AuditLog;
  readonly #guard: LoginGuard;
  readonly #devices: DeviceRegistry;
  readonly #pow: ProofOfWork;
  readonly #keys: KeyringStore;
  readonly #factors: Factors;
  readonly #mfaTokens: MfaTokens;
  readonly #honeytokens: Honeytokens | undefined;
  readonly #policy: MfaPolicies | undefined;
  readonly #legacy: LegacyPasswords | undefined;
  readonly #legacyExpired: LegacyExpired | undefined;
  readonly #clock: Clock;
  readonly #seals: RowSeals;

  constructor(deps: {
    legacy?: LegacyPasswords;
    /** Called when a legacy password past its date was right (requires a new one, mails a link). */
    legacyExpired?: LegacyExpired;
    clock: Clock;
    honeytokens?: Honeytokens;
    policy?: MfaPolicies;
    db: Db;
    hasher: PasswordHasher;
    sessions: SessionService;
    audit: AuditLog;
    guard: LoginGuard;
    devices: DeviceRegistry;
    pow: ProofOfWork;
    keys: KeyringStore;
    factors: Factors;
    mfaTokens: MfaTokens;
    seals: RowSeals;
  }) {
    this.#db = deps.db;
    this.#hasher = deps.hasher;
    this.#sessions = deps.sessions;
    this.#audit = deps.audit;
    this.#guard = deps.guard;
    this.#devices = deps.devices;
    this.#pow = deps.pow;
    this.#keys = deps.keys;
    this.#factors = deps.factors;
    this.#mfaTokens = deps.mfaTokens;
    this.#honeytokens = deps.honeytokens;
    this.#policy = deps.policy;
    this.#legacy = deps.legacy;
    this.#legacyExpired = deps.legacyExpired;
    this.#clock = deps.clock;
    this.#seals = deps.seals;
  }

  async signIn(
    input: { loginId: string; password: string; challengeSolution?: string | undefined },
    ctx: SignInContext,
  ): Promise<SignInResult> {
    const loginId = resolveLoginInput(input.loginId);
    if (loginId === null) throw invalidLoginId();
    // The lookup is cheap (an index), and the engine needs to know whose device this is.
    const member = this.#findMember().get({ loginId });
    if (member) this.#honeytokens?.check([member.id], "sign_in", { ip: ctx.ip, requestId: ctx.requestId });
    // Checking a solution is a few SHA-256s: cheap enough to do before deciding.
    const solution = input.challengeSolution ? await this.#pow.check(input.challengeSolution, loginId) : null;
    // Spent here, synchronously with the decision below: of parallel requests carrying one
    // solution, only the first counts it as solved.
    const attempt = this.#attempt(
      input.password,
      ctx,
      loginId,
      member,
      solution !== null && this.#pow.spend(solution),
    );
    const decision = this.#guard.assess(attempt);
    if (decision.action !== "allow") throw this.#refused(attempt, decision, member, ctx);
    let settled = false;
    const settle = (outcome: "success" | "failure" | "neither") => {
      if (!settled) this.#guard.settle(attempt, outcome);
      settled = true;
    };
    // An attempt that waits for its hash is decided again when its turn comes (a flood admitted
    // before the alarm is then challenged instead of hashed); refused then, it is over.
    let later: Decision | null = null;
    const stillAdmitted = () => {
      const again = this.#guard.reassess(attempt);
      if (again.action === "allow") return true;
      later = again;
      settled = true; // reassess freed the slot
      return false;
    };
    try {
      // A trusted device goes first in the hashing queue, while its failure budget lasts; so does
      // an address the member signed in from lately, while it has failures to spare.
      // (A known address's counted turns are spent only when the hashing queue has a line.)
      const first =
        (attempt.trustedDevice && this.#guard.trustedBudgetLeft(attempt.loginId as string)) ||
        (this.#hasher.queue.depth > 0 &&
          this.#guard.fromKnownAddress(attempt.ip, attempt.loginId as string, { queue: "hash", own: true }));
      return await this.#verify(input, ctx, loginId, member, settle, first, stillAdmitted);
    } catch (err) {
      if (err instanceof WithdrawnJob && later) throw this.#refused(attempt, later, member, ctx);
      throw err;
    } finally {
      settle("neither"); // an exception (a full hash queue, a bug): free the slot, count nothing
    }
  }

  /**
   * The throttle's refusal of a password attempt, decided and recorded exactly as `signIn` would
   * (audit entry, challenge issued), or null when the attempt would be admitted — then nothing is
   * recorded or reserved, and the caller goes on to `signIn`, which decides again. An attempt with
   * a plausible challenge solution is left to `signIn` (checking and spending it is its part). For
   * the sign-in lane (src/http/sign-in-lane.ts): a flood of refused attempts is answered without
   * express's per-request work.
   */
  refusal(
    input: { loginId: string; password: string; challengeSolution?: string | undefined },
    ctx: SignInContext,
  ): ApiError | null {
    const loginId = resolveLoginInput(input.loginId);
    if (loginId === null) return invalidLoginId();
    // A solution that fails the cheap checks (not ours, another login ID's, expired, spent) is
    // one signIn would refuse: the attempt is decided as one without a solution, as signIn would.
    if (input.challengeSolution !== undefined && this.#pow.plausible(input.challengeSolution, loginId)) {
      return null;
    }
    const member = this.#findMember().get({ loginId });
    const attempt = this.#attempt(input.password, ctx, loginId, member, false);
    const decision = this.#guard.refusal(attempt);
    if (!decision) return null;
    if (member) this.#honeytokens?.check([member.id], "sign_in", { ip: ctx.ip, requestId: ctx.requestId });
    return this.#refused(attempt, decision, member, ctx);
  }

  #attempt(
    password: string,
    ctx: SignInContext,
    loginId: string,
    member: { id: string } | undefined,
    challengeSolved: boolean,
  ): Attempt {
    return {
      ip: ctx.ip,
      loginId,
      trustedDevice: member ? this.#devices.recognise(ctx.deviceToken ?? null, member.id) !== null : false,
      kind: "password",
      password,
      challengeSolved,
      unknownAccount: member === undefined,
    };
  }

  /** Record a refusal (the first of its kind a minute is audited) and make its answer. */
  #refused(
    attempt: Attempt,
    decision: Decision,
    member: { id: string } | undefined,
    ctx: SignInContext,
  ): ApiError {
    const loginId = attempt.loginId as string;
    const repeats = this.#guard.recordRefusal(attempt, decision.action);
    if (repeats !== null) {
      this.#audit.append({
        action: "login.throttled",
        outcome: "failure",
        actorType: "anonymous",
        memberId: member?.id ?? null,
        ip: ctx.ip,
        requestId: ctx.requestId,
        reason: decision.action,
        details: { reasons: decision.reasons, login_id_fp: this.#fingerprint(loginId), repeats },
      });
    }
    if (decision.action === "challenge") return challengeRequired(this.#pow.issue(loginId));
    return tooManyAttempts(decision.retryAfterSeconds);
  }

  async #verify(
    input: { loginId: string; password: string },
    ctx: SignInContext,
    loginId: string,
    member:
      | {
          id: string;
          passwordHash: string | null;
          pepperId: string | null;
          status: string;
          createdAt: number;
          passwordResetRequired: boolean;
          mfaRequired: boolean;
          role: "member" | "admin";
          sub: string;
          emailVerified: boolean;
          passwordChangedAt: number | null;
          seal: string | null;
        }
      | undefined,
    settle: (outcome: "success" | "failure" | "neither") => void,
    trusted: boolean,
    stillWanted: () => boolean,
  ): Promise<SignInResult> {
    const fail = (reason: string, memberId: string | null): SignInResult => {
      settle("failure");
      this.#audit.append({
        action: "login.password",
        outcome: "failure",
        actorType: "anonymous",
        memberId,
        ip: ctx.ip,
        requestId: ctx.requestId,
        reason,
        // Unknown IDs are recorded as a keyed fingerprint: a password typed into the ID field
        // never lands in the log, yet an investigator can still ask "was ID x tried?".
        details: memberId ? {} : { login_id_fp: this.#fingerprint(loginId) },
      });
      return { status: "failed" };
    };

    // A member imported from a legacy system signs in with the legacy hash once; it is then
    // replaced by argon2id (below, in the sign-in's transaction) and deleted.
    const legacyEntry = member && !member.passwordHash ? (this.#legacy?.entry(member.id) ?? null) : null;
    const legacy = legacyEntry?.hash ?? null;
    if (!member || (!member.passwordHash && !legacy)) {
      await this.#hasher.dummyVerify(input.password, { stillWanted });
      return fail(member ? "no_password" : "unknown_login_id", member?.id ?? null);
    }
    // A row changed in the database by someone without the keyring (a password hash they made, a
    // role or status they set) signs no one in; answered as any failure, after as long a wait.
    if (!this.#seals.holds("members", memberSealValues(member), member.seal, member.id)) {
      await this.#hasher.dummyVerify(input.password, { stillWanted });
      return fail("row_seal_broken", member.id);
    }
    const stored = member.passwordHash ? { hash: member.passwordHash, pepperId: member.pepperId } : null;
    // A member's own device goes first in the hashing queue (see HashQueue).
    const right = stored
      ? await this.#hasher.verify(stored, input.password, { priority: trusted, stillWanted })
      : await this.#hasher.queue.run(() => verifyLegacy(legacy as LegacyHash, input.password), {
          priority: trusted,
          stillWanted,
        });
    if (!right) return fail("wrong_password", member.id);
    if (member.status !== "active") return fail("account_disabled", member.id);
    // Still on the old system's hash after the operator's date (`--require-password-change-after`):
    // that password may be known from the old system, so it signs in no more; a reset link goes
    // to the member's mailbox, once (the flag below answers every later try).
    let resetRequired = member.passwordResetRequired;
    if (
      !resetRequired &&
      legacyEntry?.changeAfter != null &&
      this.#clock.now().getTime() >= legacyEntry.changeAfter &&
      this.#legacyExpired
    ) {
      this.#legacyExpired(member.id, { ip: ctx.ip, requestId: ctx.requestId });
      resetRequired = true;
    }
    if (resetRequired) {
      settle("neither");
      this.#audit.append({
        action: "login.password",
        outcome: "failure",
        actorType: "member",
        actorId: member.id,
        memberId: member.id,
        ip: ctx.ip,
        requestId: ctx.requestId,
        reason: "password_reset_required",
      });
      return { status: "password_reset_required" };
    }

    const rehashed =
      !stored || this.#hasher.needsRehash(stored) ? await this.#hasher.hash(input.password) : null;
    const factors = this.#factors.of(member.id);
    const enrolled = factors.enrolled;
    const need = this.#policy?.requirement(member, factors, {
      clientId: ctx.clientId,
      acrValues: ctx.acrValues,
    });
    // Where codes don't count (phishing-resistant, or passkeys only) and the member has a passkey,
    // only it is offered (and a code is refused at the second step).
    const codesCount =
      !need ||
      need.acr === ACR.password ||
      (need.acr !== ACR.phishingResistant && need.methods.includes("totp"));
    const methods = methodsOf(factors).filter(
      (m) => codesCount || factors.passkeys === 0 || m === "webauthn",
    );
    // An admin without second factors must have been left so by their creation or an operator's
    // `admins reset-mfa` (AuditLog.factorsMayBeAbsent). Otherwise their factor rows were deleted
    // in the database, and the password alone must not let whoever did it enrol a passkey of their
    // own and so become an admin: refused as any failure, and alerted as a broken row.
    if (!enrolled && member.role === "admin" && !this.#audit.factorsMayBeAbsent(member.id)) {
      this.#seals.onBroken?.("webauthn_credentials", member.id);
      return fail("factors_missing", member.id);
    }
    // A right password clears the counts only when it completes the sign-in: with a second
    // factor due they stay until that passes too — otherwise each password step would buy an
    // attacker who has the password fresh guesses at the code.
    settle(enrolled ? "neither" : "success");
    return inTransaction(this.#db, (): SignInResult => {
      // The password was checked against the row read before argon2 ran (tens of milliseconds,
      // or a wait in the queue): a new password set meanwhile (change, reset, support), a new one
      // required, or the member disabled, wins. The old password signs nothing in, and its new
      // hash doesn't undo the change. (Another sign-in's rehash changes only the hash: not that.)
      const now = this.#db
        .select({
          passwordChangedAt: members.passwordChangedAt,
          passwordResetRequired: members.passwordResetRequired,
          status: members.status,
        })
        .from(members)
        .where(eq(members.id, member.id))
        .get();
      if (
        !now ||
        now.passwordChangedAt !== member.passwordChangedAt ||
        now.passwordResetRequired ||
        now.status !== "active"
      )
        throw new ApiError(401, "invalid_credentials", "The login ID or password is incorrect.");
      if (rehashed) {
        // A compare-and-swap on the hash verified: another sign-in's rehash may have come first
        // (then this one is not written, and a legacy hash is already gone).
        const swapped = updateMember(
          this.#db,
          this.#seals,
          member.id,
          { passwordHash: rehashed.hash, pepperId: rehashed.pepperId },
          member.passwordHash === null
            ? isNull(members.passwordHash)
            : eq(members.passwordHash, member.passwordHash),
        );
        if (swapped === 1 && legacy) this.#legacy?.delete(member.id);
      }
      if (enrolled) {
        // The password was right; the second step is due. No session yet, not even a limited one.
        // (`methods` may be empty: every factor suspended and no recovery code left; then only
        // account recovery helps, never the password alone.) The session this browser presented
        // ends now, not when the second step is done: someone else signing in on a shared
        // browser must not leave the previous member signed in if they stop halfway.
        if (ctx.previousToken) this.#revokePrevious(ctx.previousToken);
        const mfaToken = this.#mfaTokens.issue(member.id);
        this.#audit.append({
          action: "login.password",
          outcome: "success",
          actorType: "member",
          actorId: member.id,
          memberId: member.id,
          ip: ctx.ip,
          requestId: ctx.requestId,
          details: { next: "second_factor", methods, rehashed: !!rehashed },
        });
        return { status: "mfa_required", mfaToken, methods, memberId: member.id };
      }
      if (ctx.previousToken) this.#revokePrevious(ctx.previousToken);
      // No factor, and the MFA policy's grace period is over: a session that can only add one.
      const enrol = need?.enrol === true;
      const { token, session } = this.#sessions.create({
        memberId: member.id,
        acr: ACR.password,
        amr: ["pwd"],
        ip: ctx.ip,
        userAgent: ctx.userAgent,
        ...(enrol ? { kind: "limited" as const } : {}),
      });
      this.#audit.append({
        action: "login.password",
        outcome: "success",
        actorType: "member",
        actorId: member.id,
        memberId: member.id,
        ip: ctx.ip,
        requestId: ctx.requestId,
        details: {
          session_id: session.id,
          acr: session.acr,
          amr: session.amr,
          rehashed: !!rehashed,
          ...(enrol ? { next: "mfa_enrollment" } : {}),
        },
      });
      if (enrol) {
        return {
          status: "mfa_enrollment_required" as const,
          token,
          session,
          memberId: member.id,
          methods: need?.methods ?? ["totp", "webauthn"],
        };
      }
      return {
        status: "authenticated" as const,
        token,
        session,
        memberId: member.id,
        graceEndsAt: need?.graceEndsAt ?? null,
      };
    });
  }

  // Prepared once: the lookup is on every sign-in's path.
  readonly #findMember = lazyPrepared(() =>
    this.#db
      .select({
        id: members.id,
        passwordHash: members.passwordHash,
        pepperId: members.pepperId,
        status: members.status,
        createdAt: members.createdAt,
        passwordResetRequired: members.passwordResetRequired,
        mfaRequired: members.mfaRequired,
        role: members.role,
        sub: members.sub,
        emailVerified: members.emailVerified,
        passwordChangedAt: members.passwordChangedAt,
        seal: members.seal,
      })
      .from(members)
      .where(eq(members.loginId, sql.placeholder("loginId")))
      .prepare(),
  );

  #revokePrevious(token: string): void {
    const previous = this.#sessions.authenticate(token);
    if (previous) this.#sessions.revoke(previous.memberId, previous.id, "replaced_by_sign_in");
  }

  #fingerprint(loginId: string): string {
    return blindIndex(this.#keys, "login_id", loginId).slice(0, 22);
  }
}
