import { eq } from "drizzle-orm";
import type { AuditLog } from "../audit/log.js";
import { type Db, inTransaction } from "../db/connection.js";
import { members } from "../db/schema.js";
import { ApiError } from "../errors.js";
import type { Mailer } from "../mail/outbox.js";
import { type Locale, maskEmail } from "../mail/templates.js";
import { updateMember } from "../members/member-row.js";
import type { ProfileVault } from "../members/profile.js";
import type { Session } from "../sessions/sessions.js";
import type { LoginGuard } from "../throttle/engine.js";
import { decryptField, encryptField, type FieldContext } from "../vault/fields.js";
import type { KeyringStore } from "../vault/keyring.js";
import type { RowSeals } from "../vault/seals.js";
import { type MemberToken, type MemberTokens, TOKEN_TTL_MS } from "./tokens.js";

export interface Ctx {
  ip: string | null;
  requestId: string | null;
}

/** Verification mails a member may ask for in ten minutes. */
const RESENDS_PER_10_MIN = 3;
/** E-mail change requests a member may make in ten minutes. */
const CHANGES_PER_10_MIN = 5;

export const invalidToken = () =>
  new ApiError(
    400,
    "invalid_token",
    "This link is not valid any more: it was used, replaced or has expired.",
  );

export const newEmailContext = (tokenHash: string): FieldContext => ({
  table: "member_tokens",
  column: "new_email",
  rowId: tokenHash,
});

/**
 * A member's e-mail address: verification at registration (and on request), and changing it. A
 * verification link proves the address it was sent to — it carries that address's blind index,
 * and verifies nothing once the profile holds another. A change needs a recent sign-in (with the
 * second factor, for a member who has one), takes effect only when the new address follows its
 * link, and the old address is told.
 */
export class EmailAddresses {
  readonly #db: Db;
  readonly #keys: KeyringStore;
  readonly #vault: ProfileVault;
  readonly #tokens: MemberTokens;
  readonly #mailer: Mailer;
  readonly #audit: AuditLog;
  readonly #guard: LoginGuard;
  readonly #issuer: string;
  readonly #requireStrongRecent: (session: Session) => void;
  readonly #seals: RowSeals;

  constructor(deps: {
    seals: RowSeals;
    db: Db;
    keys: KeyringStore;
    vault: ProfileVault;
    tokens: MemberTokens;
    mailer: Mailer;
    audit: AuditLog;
    guard: LoginGuard;
    issuer: string;
    requireStrongRecent: (session: Session) => void;
  }) {
    this.#db = deps.db;
    this.#keys = deps.keys;
    this.#vault = deps.vault;
    this.#tokens = deps.tokens;
    this.#mailer = deps.mailer;
    this.#audit = deps.audit;
    this.#guard = deps.guard;
    this.#issuer = deps.issuer;
    this.#requireStrongRecent = deps.requireStrongRecent;
    this.#seals = deps.seals;
  }

  link(token: string): string {
    return `${this.#issuer}/email/verify?token=${token}`;
  }

  /** Mail a verification link to `email` (inside the caller's transaction: registration, resend). */
  sendVerification(memberId: string, email: string, locale: Locale, withheld = false): void {
    // A withheld mail (see mailDecision) still gets its link made, voiding older ones, as a sent
    // one does: only the mail is left out, so an older link of the asker's tells nothing.
    const { token } = this.#tokens.issue("verify_email", memberId, {
      emailIndex: this.#vault.emailIndex(email),
    });
    if (withheld) return;
    this.#mailer.enqueue({
      memberId,
      to: email,
      locale,
      mail: {
        template: "verify_email",
        link: this.link(token),
        hours: TOKEN_TTL_MS.verify_email / 3_600_000,
      },
    });
  }

  #member(memberId: string) {
    const m = this.#db
      .select({
        id: members.id,
        locale: members.locale,
        emailVerified: members.emailVerified,
        status: members.status,
      })
      .from(members)
      .where(eq(members.id, memberId))
      .get();
    if (!m) throw new ApiError(401, "unauthenticated", "Sign in first.");
    return m;
  }

  /**
   * May we mail `email` now, unasked by its owner (registration, a change's confirmation)? The
   * login-anomaly engine's mail limits per address, network, target address and service-wide: a
   * form that mails any address must not become a way to flood one. The target is counted apart
   * from recovery requests for the same address (`unasked:`): were they one count, an address
   * mailed at registration would reach the recovery limit a request sooner than one nobody has,
   * and the recovery forms would tell registered addresses from unknown ones.
   *
   * `send`, or `refuse` (the caller's own address or network is over its limit: theirs to know),
   * or `skip` (the target address, or the service, is: the answer must not say so, or anyone
   * could learn which addresses were mailed lately by asking to mail them; the mail is not sent).
   */
  mailDecision(
    ip: string | null,
    email: string,
    opts: { signedInMember?: boolean } = {},
  ): "send" | "refuse" | "skip" {
    const decision = this.#guard.assessMailRequest({
      ip: ip ?? "0.0.0.0",
      target: `unasked:email:${this.#vault.emailIndex(email)}`,
      challengeable: false,
      serviceWide: opts.signedInMember !== true,
    });
    if (decision.action === "allow") return "send";
    return decision.reasons.some((r) => r === "ip_requests" || r === "network_requests") ? "refuse" : "skip";
  }

  mayMail(ip: string | null, email: string, opts: { signedInMember?: boolean } = {}): boolean {
    return this.mailDecision(ip, email, opts) === "send";
  }

  #tooMany(retryAfterSeconds: number): ApiError {
    return new ApiError(429, "too_many_attempts", "Too many mails asked for; try again later.", {
      headers: { "Retry-After": String(retryAfterSeconds) },
    });
  }

  /** A new verification mail for the signed-in member (rate-limited). */
  resend(session: Session, ctx: Ctx): void {
    const m = this.#member(session.memberId);
    if (m.emailVerified)
      throw new ApiError(409, "already_verified", "Your e-mail address is already verified.");
    const rate = this.#guard.overRate(`verify_resend|${m.id}`, RESENDS_PER_10_MIN);
    if (rate.over) throw this.#tooMany(rate.retryAfterSeconds);
    const email = this.#vault.mailAddress(m.id, "verify_email", ctx);
    if (!email) throw new ApiError(400, "no_email", "Your profile has no e-mail address.");
    const mail = this.mailDecision(ctx.ip, email, { signedInMember: true });
    if (mail === "refuse") throw this.#tooMany(600);
    inTransaction(this.#db, () => {
      this.sendVerification(m.id, email, m.locale, mail === "skip");
      // A withheld mail is the same event to the member (their event list must not tell it, see
      // mailDecision); admins see `withheld` in the details.
      this.#audit.append({
        action: "email.verification_sent",
        outcome: "info",
        ...(mail === "skip" ? { details: { withheld: "address_mail_limit" } } : {}),
        actorType: "member",
        actorId: m.id,
        memberId: m.id,
        ip: ctx.ip,
        requestId: ctx.requestId,
      });
    });
  }

  /** Ask to change the address: the new one gets a link; nothing changes until it is followed. */
  requestChange(session: Session, newEmail: string, ctx: Ctx): void {
    this.#requireStrongRecent(session);
    const m = this.#member(session.memberId);
    const index = this.#vault.emailIndex(newEmail);
    if (index === this.#vault.currentEmailIndex(m.id) && m.emailVerified) {
      throw new ApiError(400, "invalid_request", "That is already your e-mail address.");
    }
    const rate = this.#guard.overRate(`email_change|${m.id}`, CHANGES_PER_10_MIN);
    if (rate.over) throw this.#tooMany(rate.retryAfterSeconds);
    const mail = this.mailDecision(ctx.ip, newEmail, { signedInMember: true });
    if (mail === "refuse") throw this.#tooMany(600);
    const oldEmail = this.#vault.mailAddress(m.id, "email_change_requested", ctx);
    inTransaction(this.#db, () => {
      // Withheld (see mailDecision): no mail to the new address, and all else as if it were sent
      // — the link made (voiding the asker's older ones), the answer, the member's events, the
      // notice to the current address (which the asker may read) — so the new address's recent
      // mail stays unknown. The member can ask again later; admins see `withheld` in the details.
      const { token } = this.#tokens.issue("change_email", m.id, {
        emailIndex: index,
        newEmail: (hash) => encryptField(this.#keys, newEmailContext(hash), newEmail),
      });
      if (mail === "send") {
        this.#mailer.enqueue({
          memberId: m.id,
          to: newEmail,
          locale: m.locale,
          mail: {
            template: "verify_new_email",
            link: this.link(token),
            hours: TOKEN_TTL_MS.change_email / 3_600_000,
          },
        });
      }
      // The current address hears of it at once: a change started with a stolen session is
      // noticed (and a password reset cancels it) before it can take effect.
      this.#tellOldAddress(m, oldEmail, newEmail, "email_change_requested");
      this.#audit.append({
        action: "email.change_requested",
        outcome: "info",
        actorType: "member",
        actorId: m.id,
        memberId: m.id,
        ip: ctx.ip,
        requestId: ctx.requestId,
        details: { session_id: session.id, ...(mail === "skip" ? { withheld: "address_mail_limit" } : {}) },
      });
    });
  }

  /** Tell the current address about a change to `newEmail` (masked), inside the caller's transaction. */
  #tellOldAddress(
    m: { id: string; locale: Locale },
    oldEmail: string | undefined,
    newEmail: string,
    template: "email_change_requested" | "email_changed",
  ): void {
    if (!oldEmail || this.#vault.emailIndex(oldEmail) === this.#vault.emailIndex(newEmail)) return;
    this.#mailer.enqueue({
      memberId: m.id,
      to: oldEmail,
      locale: m.locale,
      mail: { template, maskedNewEmail: maskEmail(newEmail) },
    });
  }

  /** Follow a link from a verification or change mail. */
  verify(token: string, ctx: Ctx): { memberId: string; changed: boolean } {
    const row = this.#tokens.find(token, "verify_email") ?? this.#tokens.find(token, "change_email");
    if (!row) throw invalidToken();
    if (this.#member(row.memberId).status !== "active") throw invalidToken();
    return row.purpose === "change_email" ? this.#confirmChange(row, ctx) : this.#confirm(row, ctx);
  }

  #confirm(row: MemberToken, ctx: Ctx): { memberId: string; changed: boolean } {
    inTransaction(this.#db, () => {
      // The link proves the address it was sent to; if the profile holds another one now, it proves nothing.
      if (row.emailIndex === null || row.emailIndex !== this.#vault.currentEmailIndex(row.memberId))
        throw invalidToken();
      if (!this.#tokens.consume(row.tokenHash)) throw invalidToken();
      updateMember(this.#db, this.#seals, row.memberId, { emailVerified: true });
      this.#audit.append({
        action: "email.verified",
        outcome: "success",
        actorType: "member",
        actorId: row.memberId,
        memberId: row.memberId,
        ip: ctx.ip,
        requestId: ctx.requestId,
      });
    });
    return { memberId: row.memberId, changed: false };
  }

  #confirmChange(row: MemberToken, ctx: Ctx): { memberId: string; changed: boolean } {
    const m = this.#member(row.memberId);
    const newEmail = decryptField(this.#keys, newEmailContext(row.tokenHash), row.newEmail ?? "");
    const oldEmail = this.#vault.mailAddress(m.id, "email_changed", ctx);
    inTransaction(this.#db, () => {
      if (!this.#tokens.consume(row.tokenHash)) throw invalidToken();
      this.#vault.updateFields(m.id, { email: newEmail });
      updateMember(this.#db, this.#seals, m.id, { emailVerified: true });
      // Links mailed to the old address open nothing any more: its verification links, and its
      // reset links (the member may be changing address because the old mailbox is lost).
      this.#tokens.voidAll(m.id, "verify_email", "reset_password");
      this.#tellOldAddress(m, oldEmail, newEmail, "email_changed");
      this.#audit.append({
        action: "email.changed",
        outcome: "success",
        actorType: "member",
        actorId: m.id,
        memberId: m.id,
        ip: ctx.ip,
        requestId: ctx.requestId,
        details: { old_address_notified: !!oldEmail },
      });
    });
    return { memberId: m.id, changed: true };
  }
}
