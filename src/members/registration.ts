import { randomBytes } from "node:crypto";
import { eq } from "drizzle-orm";
import type { Honeytokens } from "../audit/honeytokens.js";
import type { AuditLog } from "../audit/log.js";
import type { Clock } from "../clock.js";
import { type Db, inTransaction } from "../db/connection.js";
import { members, profiles } from "../db/schema.js";
import { ApiError } from "../errors.js";
import type { Locale } from "../mail/templates.js";
import type { PasswordHasher } from "../passwords/hasher.js";
import { checkPassword } from "../passwords/rules.js";
import type { EmailAddresses } from "../recovery/email.js";
import type { RowSeals } from "../vault/seals.js";
import { checkChosenLoginId, LOGIN_ID_PROBLEM_TEXT } from "./login-id.js";
import { generateMemberNumber } from "./member-number.js";
import { newMemberSeal } from "./member-row.js";
import type { Profile, ProfileVault } from "./profile.js";
import type { ProfileInput } from "./profile-input.js";

export interface RegistrationInput {
  loginId?: string | undefined;
  password: string;
  /** Validated by the caller (the API requires an e-mail; `admins add` gives none). */
  profile: ProfileInput | Profile;
  /** The member's language for mail (default Japanese). */
  locale?: Locale | undefined;
}

export interface RequestContext {
  ip: string | null;
  requestId: string | null;
}

/** 128-bit random ids, base64url: `member_id` and the separate OIDC `sub`. */
export const newMemberId = () => `m_${randomBytes(16).toString("base64url")}`;
export const newSubject = () => randomBytes(16).toString("base64url");

export class Registrations {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #seals: RowSeals;
  readonly #hasher: PasswordHasher;
  readonly #vault: ProfileVault;
  readonly #audit: AuditLog;
  readonly #minLength: number;
  readonly #emails: EmailAddresses | undefined;
  readonly #honeytokens: Honeytokens | undefined;

  constructor(deps: {
    db: Db;
    clock: Clock;
    hasher: PasswordHasher;
    vault: ProfileVault;
    audit: AuditLog;
    passwordMinLength: number;
    /** Sends the verification mail (inside the registration transaction). */
    emails?: EmailAddresses;
    /** A registration naming a decoy's login ID raises the alarm (someone probing for them). */
    honeytokens?: Honeytokens;
    seals: RowSeals;
  }) {
    this.#emails = deps.emails;
    this.#honeytokens = deps.honeytokens;
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#seals = deps.seals;
    this.#hasher = deps.hasher;
    this.#vault = deps.vault;
    this.#audit = deps.audit;
    this.#minLength = deps.passwordMinLength;
  }

  /** The member holding this login ID, if any. */
  #holder(loginId: string): string | undefined {
    return this.#db.select({ id: members.id }).from(members).where(eq(members.loginId, loginId)).get()?.id;
  }

  /**
   * Register a member: validate everything cheap first, hash the password, then write member,
   * encrypted profile, the verification mail and the audit entry in one transaction (a crash
   * leaves no half member, and no member without their mail).
   */
  async register(
    input: RegistrationInput,
    ctx: RequestContext,
    opts: { role?: "member" | "admin" } = {},
  ): Promise<{ memberId: string; loginId: string }> {
    let loginId: string | undefined;
    if (input.loginId !== undefined) {
      const checked = checkChosenLoginId(input.loginId);
      if (!checked.ok) {
        throw new ApiError(400, "invalid_login_id", LOGIN_ID_PROBLEM_TEXT[checked.problem], {
          extra: { reason: checked.problem },
        });
      }
      loginId = checked.loginId;
    }
    const reasons = checkPassword(input.password, { minLength: this.#minLength, loginId: loginId ?? null });
    if (reasons.length > 0) {
      throw new ApiError(400, "weak_password", "The password does not meet the password rules.", {
        extra: { reasons },
      });
    }
    const today = this.#clock.now().toISOString().slice(0, 10);
    if (input.profile.birth_date && input.profile.birth_date > today) {
      throw new ApiError(400, "invalid_request", "profile.birth_date: must not be in the future");
    }
    const holder = loginId ? this.#holder(loginId) : undefined;
    if (holder) {
      // Answered as for anyone's ID (the probe learns only "taken"), but a decoy's raises the alarm,
      // after the answer: its writes would make a decoy's "taken" measurably slower than others'.
      this.#honeytokens?.checkAfterAnswer(holder, "registration", { ip: ctx.ip, requestId: ctx.requestId });
      throw new ApiError(409, "login_id_taken", "That login ID is already taken.");
    }

    const password = await this.#hasher.hash(input.password);
    // The verification mail goes out unless the mail limits say this address has had enough
    // (registration must not be a way to flood someone's mailbox); the member can ask again later.
    const mailVerification =
      !!input.profile.email &&
      (opts.role ?? "member") === "member" &&
      (this.#emails?.mayMail(ctx.ip, input.profile.email) ?? false);
    const memberId = newMemberId();
    const profile: Profile = { ...input.profile };

    for (let attempt = 0; ; attempt++) {
      const id = loginId ?? generateMemberNumber();
      try {
        inTransaction(this.#db, () => {
          const now = this.#clock.now().getTime();
          const sub = newSubject();
          const role = opts.role ?? "member";
          this.#db
            .insert(members)
            .values({
              id: memberId,
              sub,
              loginId: id,
              loginIdKind: loginId ? "chosen" : "number",
              passwordHash: password.hash,
              pepperId: password.pepperId,
              role,
              createdAt: now,
              updatedAt: now,
              passwordChangedAt: now,
              locale: input.locale ?? "ja",
              seal: newMemberSeal(this.#seals, {
                id: memberId,
                sub,
                role,
                passwordHash: password.hash,
                pepperId: password.pepperId,
              }),
            })
            .run();
          this.#db.insert(profiles).values(this.#vault.encryptRow(memberId, profile)).run();
          if (mailVerification && profile.email) {
            this.#emails?.sendVerification(memberId, profile.email, input.locale ?? "ja");
          }
          this.#audit.append({
            action: "member.registered",
            outcome: "success",
            actorType: opts.role === "admin" ? "operator" : "anonymous",
            memberId,
            ip: ctx.ip,
            requestId: ctx.requestId,
            details: {
              login_id_kind: loginId ? "chosen" : "number",
              role: opts.role ?? "member",
              verification_mail: mailVerification,
              fields: Object.keys(profile).filter((k) => profile[k as keyof Profile]),
            },
          });
        });
        return { memberId, loginId: id };
      } catch (err) {
        if ((err as { code?: string }).code === "SQLITE_CONSTRAINT_UNIQUE" && /login_id/.test(String(err))) {
          // A chosen ID taken by a parallel registration; a generated number colliding (2^-50): retry.
          if (loginId || attempt >= 5)
            throw new ApiError(409, "login_id_taken", "That login ID is already taken.");
          continue;
        }
        throw err;
      }
    }
  }
}
