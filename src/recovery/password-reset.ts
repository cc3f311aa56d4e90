import { randomInt } from "node:crypto";
import { eq, inArray } from "drizzle-orm";
import type { Logger } from "pino";
import type { Honeytokens } from "../audit/honeytokens.js";
import type { AuditLog } from "../audit/log.js";
import type { Clock } from "../clock.js";
import { type Db, inTransaction } from "../db/connection.js";
import { members } from "../db/schema.js";
import { ApiError } from "../errors.js";
import { type FactorMethod, type Factors, methodsOf } from "../factors/methods.js";
import type { CeremonyBinding } from "../factors/passkeys.js";
import type { Mailer } from "../mail/outbox.js";
import type { Locale } from "../mail/templates.js";
import { resolveLoginInput } from "../members/login-id.js";
import { updateMember } from "../members/member-row.js";
import type { ProfileVault } from "../members/profile.js";
import type { OidcStore } from "../oidc/adapter.js";
import type { PasswordHasher } from "../passwords/hasher.js";
import { checkPassword } from "../passwords/rules.js";
import type { DeviceRegistry } from "../sessions/devices.js";
import type { FactorProof } from "../sessions/second-factor.js";
import type { SessionService } from "../sessions/sessions.js";
import { challengeRequired, tooManyAttempts } from "../sessions/sign-in.js";
import type { Attempt, Decision, LoginGuard } from "../throttle/engine.js";
import type { ProofOfWork } from "../throttle/proof-of-work.js";
import { blindIndex } from "../vault/blind-index.js";
import type { KeyringStore } from "../vault/keyring.js";
import { randomBytesPooled } from "../vault/random.js";
import type { RowSeals } from "../vault/seals.js";
import { invalidToken } from "./email.js";
import { type MemberToken, type MemberTokens, TOKEN_TTL_MS } from "./tokens.js";

export interface RecoveryContext {
  ip: string;
  requestId: string | null;
  /** The `sekisho_device` cookie: the device doing a reset keeps its trust; no other does. */
  deviceToken?: string | null;
}

export type RecoveryTarget = { loginId: string } | { email: string };

/** Members one e-mail address can name in a forgotten-login-ID or reset mail. */
const MAX_MEMBERS_PER_ADDRESS = 10;
/** A recovery request's work (lookup, link, mail) starts at a random moment in this range after the answer. */
const JOB_DELAY_MS = { min: 100, max: 2_000 };

/**
 * Forgotten password and forgotten login ID.
 *
 * Asking (`request`) answers the same whether or not anyone matches, in the same time: the caller
 * checks the input's shape and asks the throttle (both independent of existence), then answers
 * 202; looking the target up and writing any mail happen after the answer has gone.
 *
 * Following a reset link: the link (30 minutes, single use) proves the mailbox; a member with a
 * second factor must pass it too (TOTP, passkey or a recovery code) — recovery never bypasses MFA.
 * Then the new password (same rules as registration) is set and, in the same transaction, every
 * session, every member-site grant and refresh token, and every trusted device but the one doing
 * the reset are revoked; the member is mailed and the event audited.
 */
export class PasswordRecovery {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #seals: RowSeals;
  readonly #keys: KeyringStore;
  readonly #log: Logger;
  readonly #hasher: PasswordHasher;
  readonly #vault: ProfileVault;
  readonly #tokens: MemberTokens;
  readonly #mailer: Mailer;
  readonly #audit: AuditLog;
  readonly #guard: LoginGuard;
  readonly #pow: ProofOfWork;
  readonly #sessions: SessionService;
  readonly #devices: DeviceRegistry;
  readonly #factors: Factors;
  readonly #oidc: OidcStore;
  readonly #issuer: string;
  readonly #minLength: number;
  /** Deferred jobs not yet done, each with what starts it now (settled: tests, shutdown). */
  readonly #pending = new Map<Promise<void>, () => void>();
  readonly #honeytokens: Honeytokens | undefined;

  constructor(deps: {
    honeytokens?: Honeytokens;
    db: Db;
    clock: Clock;
    keys: KeyringStore;
    logger: Logger;
    hasher: PasswordHasher;
    vault: ProfileVault;
    tokens: MemberTokens;
    mailer: Mailer;
    audit: AuditLog;
    guard: LoginGuard;
    pow: ProofOfWork;
    sessions: SessionService;
    devices: DeviceRegistry;
    factors: Factors;
    oidc: OidcStore;
    issuer: string;
    passwordMinLength: number;
    seals: RowSeals;
  }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#seals = deps.seals;
    this.#keys = deps.keys;
    this.#log = deps.logger;
    this.#hasher = deps.hasher;
    this.#vault = deps.vault;
    this.#tokens = deps.tokens;
    this.#mailer = deps.mailer;
    this.#audit = deps.audit;
    this.#guard = deps.guard;
    this.#pow = deps.pow;
    this.#sessions = deps.sessions;
    this.#devices = deps.devices;
    this.#factors = deps.factors;
    this.#oidc = deps.oidc;
    this.#issuer = deps.issuer;
    this.#minLength = deps.passwordMinLength;
    this.#honeytokens = deps.honeytokens;
  }

  /**
   * Resolves when every request answered so far has done its mailing (tests, shutdown): jobs still
   * waiting out their delay start now.
   */
  async settled(): Promise<void> {
    while (this.#pending.size > 0) {
      for (const start of this.#pending.values()) start();
      await Promise.all([...this.#pending.keys()]);
    }
  }

  // ---------------------------------------------------------------- asking

  /**
   * A forgotten password (by login ID or e-mail) or login ID (by e-mail). Throws only for what
   * does not depend on whether anyone matches: a malformed login ID, the throttle.
   */
  async request(
    kind: "password" | "login_id",
    target: RecoveryTarget,
    ctx: RecoveryContext & { challengeSolution?: string | undefined },
  ): Promise<void> {
    let key: string;
    if ("loginId" in target) {
      const loginId = resolveLoginInput(target.loginId);
      if (loginId === null) {
        throw new ApiError(400, "invalid_login_id", "That is not a valid login ID or member number.");
      }
      target = { loginId };
      key = `login:${loginId}`;
    } else {
      key = `email:${this.#vault.emailIndex(target.email)}`;
    }
    const solution = ctx.challengeSolution ? await this.#pow.check(ctx.challengeSolution, key) : null;
    const decision = this.#guard.assessMailRequest({
      ip: ctx.ip,
      target: key,
      challengeSolved: solution !== null && this.#pow.spend(solution),
    });
    if (decision.action !== "allow") await this.#refuse(kind, key, decision, ctx);
    // The work happens after the answer, at a random moment within JOB_DELAY_MS: were it done at
    // once, its extra work for a real member (a lookup, a token, a mail) would slow the asker's
    // next request, which tells a login ID or an address that exists from one that doesn't. For
    // the same reason a target nobody has gets its mail rehearsed (#unmatched), and the mail is
    // sent by the outbox's periodic run, not at once.
    let start = () => {};
    const due = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, randomInt(JOB_DELAY_MS.min, JOB_DELAY_MS.max));
      start = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    const job = due
      .then(() => (kind === "password" ? this.#mailResets(target, ctx) : this.#mailLoginIds(target, ctx)))
      .catch((err: unknown) => this.#log.error({ err, kind }, "recovery request failed after answering"))
      .finally(() => this.#pending.delete(job));
    this.#pending.set(job, start);
  }

  async #refuse(kind: string, key: string, decision: Decision, ctx: RecoveryContext): Promise<never> {
    const fp = blindIndex(this.#keys, "recovery_target", key).slice(0, 22);
    const attempt: Attempt = { ip: ctx.ip, loginId: key, trustedDevice: false, kind: "password" };
    if (this.#guard.recordRefusal(attempt, decision.action) !== null) {
      this.#audit.append({
        action: "recovery.throttled",
        outcome: "failure",
        actorType: "anonymous",
        ip: ctx.ip,
        requestId: ctx.requestId,
        reason: decision.action,
        details: { kind, reasons: decision.reasons, target_fp: fp },
      });
    }
    if (decision.action === "challenge") throw challengeRequired(this.#pow.issue(key));
    throw tooManyAttempts(decision.retryAfterSeconds);
  }

  /** Active members the target names (a login ID names at most one; an address possibly several). */
  #matches(target: RecoveryTarget, ctx: RecoveryContext) {
    const ids =
      "loginId" in target
        ? this.#db
            .select({ id: members.id })
            .from(members)
            .where(eq(members.loginId, target.loginId))
            .all()
            .map((r) => r.id)
        : this.#vault.memberIdsByEmail(target.email, { ip: ctx.ip, requestId: ctx.requestId });
    if ("loginId" in target)
      this.#honeytokens?.check(ids, "recovery", { ip: ctx.ip, requestId: ctx.requestId });
    if (ids.length === 0) return [];
    return this.#db
      .select({
        id: members.id,
        loginId: members.loginId,
        locale: members.locale,
        status: members.status,
        emailVerified: members.emailVerified,
      })
      .from(members)
      .where(inArray(members.id, ids))
      .orderBy(members.createdAt)
      .all()
      .filter((m) => m.status === "active")
      .slice(0, MAX_MEMBERS_PER_ADDRESS);
  }

  #mailResets(target: RecoveryTarget, ctx: RecoveryContext): void {
    const found = this.#matches(target, ctx);
    if (found.length === 0) {
      this.#unmatched("password", target, ctx);
      return;
    }
    for (const m of found) {
      const email = this.#vault.mailAddress(m.id, "password_reset", ctx);
      const skipped = !email ? "no_address" : this.#guard.mailboxFull(m.id, "reset") ? "mailbox_limit" : null;
      inTransaction(this.#db, () => {
        if (!skipped && email) {
          this.#mailResetLink({ id: m.id, loginId: m.loginId, locale: m.locale }, email);
        }
        this.#audit.append({
          action: "recovery.password_requested",
          outcome: skipped ? "failure" : "info",
          actorType: "anonymous",
          memberId: m.id,
          ip: ctx.ip,
          requestId: ctx.requestId,
          reason: skipped,
          details: { by: "loginId" in target ? "login_id" : "email", ...byAddress(target, m) },
        });
      });
      if (!skipped) this.#guard.mailSent(m.id, "reset");
    }
  }

  #mailLoginIds(target: RecoveryTarget, ctx: RecoveryContext): void {
    const matched = this.#matches(target, ctx);
    if (matched.length === 0) {
      this.#unmatched("login_id", target, ctx);
      return;
    }
    const found = matched.filter((m) => !this.#guard.mailboxFull(m.id, "login_ids"));
    const first = found[0];
    if (!first) return; // every member's mailbox has had enough for now
    const email = this.#vault.mailAddress(first.id, "login_ids", ctx);
    if (!email) return;
    inTransaction(this.#db, () => {
      this.#mailer.enqueue(
        {
          memberId: first.id,
          to: email,
          locale: first.locale,
          mail: { template: "login_ids", loginIds: found.map((m) => m.loginId) },
        },
        { sendNow: false },
      );
      for (const m of found) {
        this.#audit.append({
          action: "recovery.login_id_requested",
          outcome: "info",
          actorType: "anonymous",
          memberId: m.id,
          ip: ctx.ip,
          requestId: ctx.requestId,
          details: byAddress(target, m),
        });
      }
    });
    // One mail, to the address these members share: it counts for each of them.
    for (const m of found) this.#guard.mailSent(m.id, "login_ids");
  }

  /** A new reset link for the member, mailed to `email` (inside the caller's transaction). */
  #mailResetLink(m: { id: string; loginId: string; locale: Locale }, email: string): void {
    const { token } = this.#tokens.issue("reset_password", m.id, {
      emailIndex: this.#vault.emailIndex(email),
    });
    this.#mailer.enqueue(
      {
        memberId: m.id,
        to: email,
        locale: m.locale,
        mail: {
          template: "password_reset",
          link: `${this.#issuer}/recovery/reset?token=${token}`,
          minutes: TOKEN_TTL_MS.reset_password / 60_000,
          loginId: m.loginId,
        },
      },
      { sendNow: false },
    );
  }

  /**
   * Nobody matched: recorded (as a keyed fingerprint of the target), nothing sent. The mail a
   * member would have been sent is rehearsed (rendered, sealed, built, thrown away), so that the
   * service does much the same work whether the target exists or not.
   */
  #unmatched(kind: "password" | "login_id", target: RecoveryTarget, ctx: RecoveryContext): void {
    const to = "email" in target ? target.email : `${randomBytesPooled(6).toString("hex")}@example.invalid`;
    const loginId = "loginId" in target ? target.loginId : randomBytesPooled(6).toString("hex");
    this.#mailer.rehearse({
      to,
      locale: "ja",
      mail:
        kind === "password"
          ? {
              template: "password_reset",
              link: `${this.#issuer}/recovery/reset?token=${randomBytesPooled(32).toString("base64url")}`,
              minutes: TOKEN_TTL_MS.reset_password / 60_000,
              loginId,
            }
          : { template: "login_ids", loginIds: [loginId] },
    });
    const key =
      "loginId" in target ? `login:${target.loginId}` : `email:${this.#vault.emailIndex(target.email)}`;
    this.#audit.append({
      action: "recovery.requested_unknown",
      outcome: "info",
      actorType: "anonymous",
      ip: ctx.ip,
      requestId: ctx.requestId,
      details: { kind, target_fp: blindIndex(this.#keys, "recovery_target", key).slice(0, 22) },
    });
  }

  /**
   * Support requires a new password: the current one stops signing in, every session and
   * member-site token is revoked, and the member is mailed a reset link (the second factor is
   * still demanded when they follow it). Support never sees or sets the password.
   */
  requireNewPassword(
    memberId: string,
    by: { adminId: string; reason: string; ip: string | null; requestId: string | null },
  ): { mailed: boolean; sessions_revoked: number; oidc_rows_revoked: number } {
    return this.#requireNew(memberId, {
      actorType: "admin",
      actorId: by.adminId,
      reason: by.reason,
      ip: by.ip,
      requestId: by.requestId,
    });
  }

  /**
   * An imported member signed in with a legacy password past the operator's date
   * (`members import --require-password-change-after`). The old system's hashes may be in other
   * hands, so that password alone proves little: as when support requires a new password, it
   * stops signing in and a reset link goes to the member's mailbox (their second factor, if any,
   * is still asked for when they follow it). Mailed once: later sign-ins only say so.
   */
  legacyPasswordExpired(
    memberId: string,
    ctx: { ip: string | null; requestId: string | null },
  ): { mailed: boolean; sessions_revoked: number; oidc_rows_revoked: number } {
    return this.#requireNew(memberId, {
      actorType: "system",
      actorId: null,
      reason: "legacy_password_expired",
      ...ctx,
    });
  }

  #requireNew(
    memberId: string,
    by: {
      actorType: "admin" | "system";
      actorId: string | null;
      reason: string;
      ip: string | null;
      requestId: string | null;
    },
  ): { mailed: boolean; sessions_revoked: number; oidc_rows_revoked: number } {
    const m = this.#db
      .select({ sub: members.sub, loginId: members.loginId, locale: members.locale })
      .from(members)
      .where(eq(members.id, memberId))
      .get();
    if (!m) throw new ApiError(404, "not_found", "No such member.");
    const email = this.#vault.mailAddress(memberId, "password_reset", by);
    return inTransaction(this.#db, () => {
      updateMember(this.#db, this.#seals, memberId, { passwordResetRequired: true });
      const result = {
        mailed: false,
        sessions_revoked: this.#sessions.revokeAll(
          memberId,
          by.actorType === "admin" ? "admin_password_reset" : by.reason,
        ),
        oidc_rows_revoked: this.#oidc.revokeAccount(m.sub),
      };
      if (email) {
        this.#mailResetLink({ id: memberId, loginId: m.loginId, locale: m.locale }, email);
        result.mailed = true;
      }
      this.#audit.append({
        action: "password.reset_required",
        outcome: "info",
        actorType: by.actorType,
        actorId: by.actorId,
        memberId,
        reason: by.reason,
        ip: by.ip,
        requestId: by.requestId,
        details: result,
      });
      return result;
    });
  }

  // ---------------------------------------------------------------- following the link

  #live(token: unknown): { row: MemberToken; loginId: string } {
    const row = this.#tokens.find(token, "reset_password");
    if (!row) throw invalidToken();
    const m = this.#db
      .select({ loginId: members.loginId, status: members.status })
      .from(members)
      .where(eq(members.id, row.memberId))
      .get();
    if (m?.status !== "active") throw invalidToken();
    // The link was mailed to an address; once the profile holds another, it opens nothing.
    if (row.emailIndex !== this.#vault.currentEmailIndex(row.memberId)) throw invalidToken();
    return { row, loginId: m.loginId };
  }

  /**
   * What the link holder must do next: pass a second factor (`mfa_required`, with the methods
   * usable now; passing it hands out the proof that `reset` needs), or set the password (`ready`).
   * Does not spend the link.
   */
  check(token: unknown): {
    status: "mfa_required" | "ready";
    methods: FactorMethod[];
    memberId: string;
    loginId: string;
  } {
    const { row, loginId } = this.#live(token);
    const f = this.#factors.of(row.memberId);
    return {
      status: f.enrolled ? "mfa_required" : "ready",
      methods: f.enrolled ? methodsOf(f) : [],
      memberId: row.memberId,
      loginId,
    };
  }

  /** Does `proof` (from a passed second factor) still hold for this link? (The hosted pages' next step.) */
  proofHolds(token: unknown, proof: unknown): boolean {
    const { row } = this.#live(token);
    return this.#tokens.proofHolds(row, proof);
  }

  /** A passkey ceremony bound to this reset (its challenge is accepted by nothing else). */
  #binding(row: MemberToken): CeremonyBinding {
    return { kind: "second_factor", memberId: row.memberId, mfaTokenHash: `reset:${row.tokenHash}` };
  }

  async passkeyOptions(token: unknown) {
    const { row } = this.#live(token);
    return this.#factors.passkeys.authenticationOptions(this.#binding(row));
  }

  /**
   * The reset's second step. Wrong codes count in the sign-in throttle (per address, and per
   * account apart from sign-ins' second steps) and against the link (five and it dies). Passing returns a proof, good for ten minutes, that
   * only the browser that passed holds: the link alone (from a mailbox, or a shared computer's
   * history) sets no password.
   */
  async passFactor(
    token: unknown,
    proof: FactorProof,
    ctx: RecoveryContext,
  ): Promise<{ status: "ready"; resetProof: string | null } | { status: "failed"; attemptsLeft: number }> {
    const { row, loginId } = this.#live(token);
    if (!this.#factors.of(row.memberId).enrolled) return { status: "ready", resetProof: null };
    const attempt: Attempt = {
      ip: ctx.ip,
      loginId,
      trustedDevice: this.#devices.recognise(ctx.deviceToken ?? null, row.memberId) !== null,
      kind: "second_factor",
      // Counted apart from sign-ins' second steps (see Attempt.reset).
      reset: true,
      ...(proof.method === "webauthn" ? { passkey: true } : {}),
    };
    const decision = this.#guard.assess(attempt);
    if (decision.action !== "allow") {
      if (this.#guard.recordRefusal(attempt, decision.action) !== null) {
        this.#audit.append({
          action: "recovery.throttled",
          outcome: "failure",
          actorType: "anonymous",
          memberId: row.memberId,
          ip: ctx.ip,
          requestId: ctx.requestId,
          reason: decision.action,
          details: { reasons: decision.reasons, step: "second_factor" },
        });
      }
      throw tooManyAttempts(decision.retryAfterSeconds);
    }
    let outcome: "success" | "failure" | "neither" = "neither";
    try {
      let ok: boolean;
      let passkeyId: string | undefined;
      let resetProof: string | null = null;
      if (proof.method === "webauthn") {
        const result = await this.#factors.passkeys.authenticate(proof.response, [this.#binding(row)]);
        ok = result.ok && result.memberId === row.memberId;
        passkeyId = result.ok ? result.passkeyId : undefined;
        if (ok) {
          resetProof = this.#tokens.markMfaPassed(row.tokenHash);
          if (!resetProof) throw invalidToken();
        }
      } else {
        ok = inTransaction(this.#db, () => {
          const right =
            proof.method === "totp"
              ? this.#factors.totp.verify(row.memberId, proof.code)
              : this.#factors.recovery.consume(row.memberId, proof.code);
          if (!right) return false;
          resetProof = this.#tokens.markMfaPassed(row.tokenHash);
          if (!resetProof) throw invalidToken(); // rolls the code back
          if (proof.method === "recovery_code") {
            this.#audit.append({
              action: "mfa.recovery_code_used",
              outcome: "info",
              actorType: "member",
              actorId: row.memberId,
              memberId: row.memberId,
              ip: ctx.ip,
              requestId: ctx.requestId,
              details: { remaining: this.#factors.recovery.remaining(row.memberId) },
            });
          }
          return true;
        });
      }
      outcome = ok ? "success" : "failure";
      const attemptsLeft = ok ? undefined : this.#tokens.recordFailure(row.tokenHash);
      this.#audit.append({
        action: "recovery.second_factor",
        outcome: ok ? "success" : "failure",
        actorType: ok ? "member" : "anonymous",
        actorId: ok ? row.memberId : null,
        memberId: row.memberId,
        ip: ctx.ip,
        requestId: ctx.requestId,
        reason: ok ? null : `wrong_${proof.method}`,
        details: {
          method: proof.method,
          ...(passkeyId ? { passkey_id: passkeyId } : {}),
          ...(attemptsLeft !== undefined ? { attempts_left: attemptsLeft } : {}),
        },
      });
      return ok ? { status: "ready", resetProof } : { status: "failed", attemptsLeft: attemptsLeft ?? 0 };
    } finally {
      this.#guard.settle(attempt, outcome);
    }
  }

  /**
   * Set the new password and end everything the old one opened. A member with a second factor
   * must send the proof `passFactor` handed out.
   */
  async reset(
    token: unknown,
    password: string,
    ctx: RecoveryContext & { resetProof?: string | undefined },
  ): Promise<{ loginId: string }> {
    const { row, loginId } = this.#live(token);
    const f = this.#factors.of(row.memberId);
    if (f.enrolled && !this.#tokens.proofHolds(row, ctx.resetProof)) {
      throw new ApiError(403, "mfa_required", "Confirm it's you with your second factor first.", {
        extra: { methods: methodsOf(f) },
      });
    }
    const reasons = checkPassword(password, { minLength: this.#minLength, loginId });
    if (reasons.length > 0) {
      throw new ApiError(400, "weak_password", "The password does not meet the password rules.", {
        extra: { reasons },
      });
    }
    const hashed = await this.#hasher.hash(password);
    const email = this.#vault.mailAddress(row.memberId, "password_changed", ctx);
    const member = this.#db
      .select({ sub: members.sub, locale: members.locale })
      .from(members)
      .where(eq(members.id, row.memberId))
      .get();
    if (!member) throw invalidToken();
    const keep = this.#devices.recognise(ctx.deviceToken ?? null, row.memberId);
    inTransaction(this.#db, () => {
      const spent = f.enrolled
        ? this.#tokens.consume(row.tokenHash, { mfaProof: ctx.resetProof ?? null })
        : this.#tokens.consume(row.tokenHash);
      if (!spent) throw invalidToken();
      // Following the link proved the mailbox: if it is still the profile's address, it is verified.
      const verified =
        row.emailIndex !== null && row.emailIndex === this.#vault.currentEmailIndex(row.memberId);
      updateMember(this.#db, this.#seals, row.memberId, {
        passwordHash: hashed.hash,
        pepperId: hashed.pepperId,
        passwordChangedAt: this.#clock.now().getTime(),
        passwordResetRequired: false,
        ...(verified ? { emailVerified: true } : {}),
      });
      const sessions = this.#sessions.revokeAll(row.memberId, "password_reset");
      // Wrong codes counted so far were someone's with the old password (or an old link).
      this.#guard.credentialsChanged(loginId);
      const grants = this.#oidc.revokeAccount(member.sub);
      const devices = this.#devices.revokeAllExcept(row.memberId, keep?.id ?? null);
      // Every other link dies too: other resets, and an e-mail change someone with the old
      // password may have started (confirming it after the reset would hand them the account).
      this.#tokens.voidAll(row.memberId, "reset_password", "change_email", "verify_email");
      if (email) {
        this.#mailer.enqueue({
          memberId: row.memberId,
          to: email,
          locale: member.locale,
          mail: { template: "password_changed", how: "reset", loginId },
        });
      }
      this.#audit.append({
        action: "password.reset",
        outcome: "success",
        actorType: "member",
        actorId: row.memberId,
        memberId: row.memberId,
        ip: ctx.ip,
        requestId: ctx.requestId,
        details: {
          mfa: f.enrolled,
          sessions_revoked: sessions,
          oidc_rows_revoked: grants,
          devices_revoked: devices,
          ...(keep ? { device_id: keep.id } : {}),
        },
      });
    });
    // The old password's failures say nothing about the new one: lift any protection.
    this.#guard.lift(loginId);
    return { loginId };
  }
}

/**
 * For a request by e-mail address: whether the member it matched had verified that address. One
 * who hadn't may not be its owner (anyone can register with someone else's address); the member's
 * own event list leaves such entries out (src/sessions/member-actions.ts memberEventRows).
 */
function byAddress(target: RecoveryTarget, m: { emailVerified: boolean }): { address_verified?: boolean } {
  return "email" in target ? { address_verified: m.emailVerified } : {};
}
