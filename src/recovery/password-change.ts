import { eq } from "drizzle-orm";
import { LRUCache } from "lru-cache";
import type { AuditLog } from "../audit/log.js";
import type { Clock } from "../clock.js";
import { type Db, inTransaction } from "../db/connection.js";
import { members } from "../db/schema.js";
import { ApiError } from "../errors.js";
import type { Mailer } from "../mail/outbox.js";
import { updateMember } from "../members/member-row.js";
import type { ProfileVault } from "../members/profile.js";
import type { OidcStore } from "../oidc/adapter.js";
import type { PasswordHasher } from "../passwords/hasher.js";
import { checkPassword } from "../passwords/rules.js";
import type { DeviceRegistry } from "../sessions/devices.js";
import type { Session, SessionService } from "../sessions/sessions.js";
import { tooManyAttempts } from "../sessions/sign-in.js";
import type { Attempt, LoginGuard } from "../throttle/engine.js";
import type { RowSeals } from "../vault/seals.js";
import type { MemberTokens } from "./tokens.js";

export interface ChangeContext {
  ip: string;
  requestId: string | null;
  deviceToken: string | null;
}

/**
 * A signed-in member changing their password: the current one is required (a stolen session alone
 * can't take the account over) and checked through the login-anomaly engine like any password
 * (wrong guesses count per address and account; the session stands in for a proof-of-work). The
 * new one follows the registration rules. In one transaction: the new hash, every other session
 * and every member-site grant and refresh token revoked (a member changes a password when they
 * fear someone else is in), and every pending reset link or e-mail change (someone with the old
 * password may have started it); then a mail tells the member.
 */
/** Wrong current passwords a session may send before it is ended (see PasswordChange#wrong). */
const WRONG_PER_SESSION = 5;

export class PasswordChange {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #seals: RowSeals;
  readonly #hasher: PasswordHasher;
  readonly #vault: ProfileVault;
  readonly #mailer: Mailer;
  readonly #audit: AuditLog;
  readonly #guard: LoginGuard;
  readonly #sessions: SessionService;
  readonly #devices: DeviceRegistry;
  readonly #oidc: OidcStore;
  readonly #minLength: number;
  readonly #tokens: MemberTokens;
  /**
   * Wrong current passwords per session: at WRONG_PER_SESSION the session ends. A session stands
   * in for the proof-of-work here, so without this a stolen session could keep guessing the
   * password (slowly, within the account's limits) to take the account over.
   */
  readonly #wrong = new LRUCache<string, number>({ max: 10_000 });
  /** Guesses being checked now, per session: they count against WRONG_PER_SESSION in advance. */
  readonly #checking = new Map<string, number>();

  constructor(deps: {
    tokens: MemberTokens;
    db: Db;
    clock: Clock;
    hasher: PasswordHasher;
    vault: ProfileVault;
    mailer: Mailer;
    audit: AuditLog;
    guard: LoginGuard;
    sessions: SessionService;
    devices: DeviceRegistry;
    oidc: OidcStore;
    passwordMinLength: number;
    seals: RowSeals;
  }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#seals = deps.seals;
    this.#hasher = deps.hasher;
    this.#vault = deps.vault;
    this.#mailer = deps.mailer;
    this.#audit = deps.audit;
    this.#guard = deps.guard;
    this.#sessions = deps.sessions;
    this.#devices = deps.devices;
    this.#oidc = deps.oidc;
    this.#minLength = deps.passwordMinLength;
    this.#tokens = deps.tokens;
  }

  async change(session: Session, current: string, next: string, ctx: ChangeContext): Promise<void> {
    const m = this.#db.select().from(members).where(eq(members.id, session.memberId)).get();
    if (!m) throw new ApiError(401, "unauthenticated", "Sign in first.");
    // The rules first: they are cheap and say nothing about the current password.
    const reasons = checkPassword(next, { minLength: this.#minLength, loginId: m.loginId });
    if (reasons.length > 0) {
      throw new ApiError(400, "weak_password", "The password does not meet the password rules.", {
        extra: { reasons },
      });
    }
    const attempt: Attempt = {
      ip: ctx.ip,
      loginId: m.loginId,
      trustedDevice: this.#devices.recognise(ctx.deviceToken, m.id) !== null,
      kind: "password",
      challengeSolved: true,
    };
    // Parallel guesses count before they are checked: a session gets WRONG_PER_SESSION checks in
    // all, however many it sends at once.
    const checking = this.#checking.get(session.id) ?? 0;
    if ((this.#wrong.get(session.id) ?? 0) + checking >= WRONG_PER_SESSION)
      throw new ApiError(401, "invalid_credentials", "The current password is incorrect.");
    const decision = this.#guard.assess(attempt);
    if (decision.action !== "allow") throw tooManyAttempts(decision.retryAfterSeconds);
    this.#checking.set(session.id, checking + 1);
    let outcome: "success" | "failure" | "neither" = "neither";
    try {
      const right =
        m.passwordHash !== null &&
        (await this.#hasher.verify({ hash: m.passwordHash, pepperId: m.pepperId }, current).finally(() => {
          const n = (this.#checking.get(session.id) ?? 1) - 1;
          if (n > 0) this.#checking.set(session.id, n);
          else this.#checking.delete(session.id);
        }));
      if (!right) {
        outcome = "failure";
        const wrong = (this.#wrong.get(session.id) ?? 0) + 1;
        this.#wrong.set(session.id, wrong);
        const ended = wrong >= WRONG_PER_SESSION;
        if (ended) {
          this.#sessions.revoke(m.id, session.id, "password_change_guessing");
          this.#wrong.delete(session.id);
        }
        this.#audit.append({
          action: "password.changed",
          outcome: "failure",
          actorType: "member",
          actorId: m.id,
          memberId: m.id,
          ip: ctx.ip,
          requestId: ctx.requestId,
          reason: "wrong_current_password",
          details: { session_id: session.id, ...(ended ? { session_ended: true } : {}) },
        });
        throw new ApiError(401, "invalid_credentials", "The current password is incorrect.");
      }
      const hashed = await this.#hasher.hash(next);
      const email = this.#vault.mailAddress(m.id, "password_changed", ctx);
      inTransaction(this.#db, () => {
        // Compare-and-swap on the hash verified above: a reset (or another change) that landed
        // meanwhile wins, and this change fails instead of overwriting it.
        const swapped = updateMember(
          this.#db,
          this.#seals,
          m.id,
          {
            passwordHash: hashed.hash,
            pepperId: hashed.pepperId,
            passwordChangedAt: this.#clock.now().getTime(),
          },
          eq(members.passwordHash, m.passwordHash as string),
        );
        if (swapped !== 1)
          throw new ApiError(409, "conflict", "The password changed meanwhile; sign in again.");
        // Links someone may have started with the old password die with it.
        this.#tokens.voidAll(m.id, "reset_password", "change_email");
        const sessions = this.#sessions.revokeAll(m.id, "password_changed", session.id);
        // Wrong second-step codes counted so far were someone's who knew the old password.
        this.#guard.credentialsChanged(m.loginId);
        const grants = this.#oidc.revokeAccount(m.sub);
        // Other trusted devices too: a device cookie copied with the old password must not keep
        // its freedom from the throttle (the device the change was made on stays trusted).
        const devices = this.#devices.revokeAllExcept(
          m.id,
          this.#devices.recognise(ctx.deviceToken, m.id)?.id ?? null,
        );
        if (email) {
          this.#mailer.enqueue({
            memberId: m.id,
            to: email,
            locale: m.locale,
            mail: { template: "password_changed", how: "change", loginId: m.loginId },
          });
        }
        this.#audit.append({
          action: "password.changed",
          outcome: "success",
          actorType: "member",
          actorId: m.id,
          memberId: m.id,
          ip: ctx.ip,
          requestId: ctx.requestId,
          details: {
            session_id: session.id,
            sessions_revoked: sessions,
            oidc_rows_revoked: grants,
            devices_revoked: devices,
          },
        });
      });
      outcome = "success";
    } finally {
      this.#guard.settle(attempt, outcome);
    }
  }
}
