import { eq, inArray } from "drizzle-orm";
import type { Logger } from "pino";
import type { Honeytokens, Toucher } from "../audit/honeytokens.js";
import type { AuditLog } from "../audit/log.js";
import type { PiiBudgets } from "../audit/pii-budget.js";
import type { Clock } from "../clock.js";
import type { Db } from "../db/connection.js";
import { profiles } from "../db/schema.js";
import { DecryptionError } from "../errors.js";
import { blindIndex, normaliseEmail } from "../vault/blind-index.js";
import { decryptField, encryptField } from "../vault/fields.js";
import type { KeyringStore } from "../vault/keyring.js";

/** Profile fields as the API names them; each is stored encrypted in the column of the same name. */
export const PROFILE_FIELDS = [
  "name",
  "email",
  "phone",
  "postal_code",
  "address",
  "birth_date",
  "gender",
] as const;
export type ProfileField = (typeof PROFILE_FIELDS)[number];
export type Profile = Partial<Record<ProfileField, string>>;

/** The profiles column (drizzle property) holding each field's ciphertext. */
export const PROFILE_COLUMN: Record<
  ProfileField,
  "name" | "email" | "phone" | "postalCode" | "address" | "birthDate" | "gender"
> = {
  name: "name",
  email: "email",
  phone: "phone",
  postal_code: "postalCode",
  address: "address",
  birth_date: "birthDate",
  gender: "gender",
};

export const fieldContext = (memberId: string, field: ProfileField) => ({
  table: "profiles",
  column: field,
  rowId: memberId,
});

/**
 * Profile values are padded before encryption to a multiple of PAD_BYTES (UTF-8), at least one:
 * AES-GCM's ciphertext is as long as its plaintext, so unpadded the file alone would tell every
 * member's gender ("male" and "female" differ by two) and how long each name, address and e-mail
 * is. Now it tells only the 32-byte class of a value (a long address from a short one) and whether
 * it is there. The padding is NUL, which no profile value may hold (validation refuses control
 * characters); values stored before padding read back as they are.
 */
const PAD_BYTES = 32;

export function padded(value: string): string {
  const n = Buffer.byteLength(value, "utf8");
  return value + "\u0000".repeat(Math.max(PAD_BYTES, Math.ceil(n / PAD_BYTES) * PAD_BYTES) - n);
}

export function unpadded(value: string): string {
  let end = value.length;
  while (end > 0 && value.charCodeAt(end - 1) === 0) end--;
  return end === value.length ? value : value.slice(0, end);
}

/** Why a profile is being read; recorded with every decryption. */
export interface PiiAccess {
  actorType: "member" | "admin" | "client" | "system" | "operator";
  actorId: string | null;
  reason: string;
  ip?: string | null;
  requestId?: string | null;
  /** Admins: when the session last signed in or stepped up (a fresh one re-arms a spent budget). */
  freshSince?: number;
  /**
   * The admin a system read is made for (a mail an admin's support action sends): a decoy's alert
   * names that admin, and so is hidden from them like any alert about them (not "system", which
   * every admin sees). Budgets and the audit entry stay the system's.
   */
  onBehalfOf?: { actorType: "admin"; actorId: string };
}

/**
 * The member profile vault: encrypts on write, decrypts only the fields asked for, and audits
 * every read (who, whose, which fields, why; never the values). A value that fails to decrypt is
 * an error, logged and audited, never an empty field.
 */
export class ProfileVault {
  readonly #db: Db;
  readonly #keys: KeyringStore;
  readonly #audit: AuditLog;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #budgets: PiiBudgets | undefined;
  readonly #honeytokens: Honeytokens | undefined;

  constructor(deps: {
    db: Db;
    keys: KeyringStore;
    audit: AuditLog;
    clock: Clock;
    logger: Logger;
    /** Read budgets for admins and member sites (see src/audit/pii-budget.ts). */
    budgets?: PiiBudgets;
    /** Decoy members: touching one raises an alert (see src/audit/honeytokens.ts). */
    honeytokens?: Honeytokens;
  }) {
    this.#budgets = deps.budgets;
    this.#honeytokens = deps.honeytokens;
    this.#db = deps.db;
    this.#keys = deps.keys;
    this.#audit = deps.audit;
    this.#clock = deps.clock;
    this.#log = deps.logger;
  }

  /** The encrypted row for a member's profile (insert or replace it inside the caller's transaction). */
  encryptRow(memberId: string, profile: Profile): typeof profiles.$inferInsert {
    // One key for the whole row, so the row's key_id is true of every field in it.
    const key = this.#keys.get().activeDataKey();
    const row: typeof profiles.$inferInsert = {
      memberId,
      keyId: key.id,
      updatedAt: this.#clock.now().getTime(),
      emailIndex: profile.email ? this.emailIndex(profile.email) : null,
    };
    for (const field of PROFILE_FIELDS) {
      const value = profile[field];
      (row as Record<string, unknown>)[PROFILE_COLUMN[field]] =
        value === undefined || value === ""
          ? null
          : encryptField(this.#keys, fieldContext(memberId, field), padded(value));
    }
    return row;
  }

  /**
   * Replace some fields of a member's profile (inside the caller's transaction), keeping the row
   * under one key: fields go under the row's key while it is the active one; otherwise the whole
   * row is re-encrypted under the active key (as rotation would; the values never leave the vault,
   * so this is not a read).
   */
  updateFields(memberId: string, changes: Profile): void {
    const row = this.#db.select().from(profiles).where(eq(profiles.memberId, memberId)).get();
    const active = this.#keys.get().activeDataKey();
    if (!row || row.keyId !== active.id) {
      const current: Profile = {};
      for (const field of PROFILE_FIELDS) {
        const stored = row?.[PROFILE_COLUMN[field]];
        if (typeof stored === "string")
          current[field] = unpadded(decryptField(this.#keys, fieldContext(memberId, field), stored));
      }
      const next = this.encryptRow(memberId, { ...current, ...changes });
      this.#db
        .insert(profiles)
        .values(next)
        .onConflictDoUpdate({ target: profiles.memberId, set: next })
        .run();
      return;
    }
    const set: Partial<typeof profiles.$inferInsert> = { updatedAt: this.#clock.now().getTime() };
    for (const field of PROFILE_FIELDS) {
      if (!(field in changes)) continue;
      const value = changes[field];
      (set as Record<string, unknown>)[PROFILE_COLUMN[field]] =
        value === undefined || value === ""
          ? null
          : encryptField(this.#keys, fieldContext(memberId, field), padded(value), active);
    }
    if ("email" in changes) set.emailIndex = changes.email ? this.emailIndex(changes.email) : null;
    this.#db.update(profiles).set(set).where(eq(profiles.memberId, memberId)).run();
  }

  /** The blind index of the member's current e-mail (null: none). */
  currentEmailIndex(memberId: string): string | null {
    return (
      this.#db
        .select({ idx: profiles.emailIndex })
        .from(profiles)
        .where(eq(profiles.memberId, memberId))
        .get()?.idx ?? null
    );
  }

  emailIndex(email: string): string {
    return blindIndex(this.#keys, "email", normaliseEmail(email));
  }

  /**
   * Member ids whose profile e-mail matches (normalised), found through the blind index. `who`
   * is named in the alert if a decoy's address is looked up.
   */
  memberIdsByEmail(email: string, who: Toucher = {}): string[] {
    const ids = this.#db
      .select({ id: profiles.memberId })
      .from(profiles)
      .where(eq(profiles.emailIndex, this.emailIndex(email)))
      .all()
      .map((r) => r.id);
    this.#honeytokens?.check(ids, "email_lookup", who);
    return ids;
  }

  /** The member's e-mail address, decrypted to send them `template` (audited as `mail:<template>`). */
  mailAddress(
    memberId: string,
    template: string,
    ctx: {
      ip?: string | null;
      requestId?: string | null;
      /** The admin whose action sends it (support's context, or a recovery's `by`). */
      adminId?: string | null;
      actorType?: string;
      actorId?: string | null;
    },
  ): string | undefined {
    const admin = ctx.adminId ?? (ctx.actorType === "admin" ? ctx.actorId : null) ?? null;
    return this.read(memberId, ["email"], {
      actorType: "system",
      actorId: null,
      reason: `mail:${template}`,
      ip: ctx.ip ?? null,
      requestId: ctx.requestId ?? null,
      ...(admin ? { onBehalfOf: { actorType: "admin" as const, actorId: admin } } : {}),
    }).email;
  }

  /** Decrypt `fields` of one member's profile, auditing the read. */
  read(memberId: string, fields: readonly ProfileField[], access: PiiAccess): Profile {
    return this.readMany([memberId], fields, access).get(memberId) ?? {};
  }

  readMany(
    memberIds: readonly string[],
    fields: readonly ProfileField[],
    access: PiiAccess,
  ): Map<string, Profile> {
    const out = new Map<string, Profile>();
    if (memberIds.length === 0) return out;
    // Admins and member sites spend their budget before anything is decrypted.
    if (this.#budgets && (access.actorType === "admin" || access.actorType === "client")) {
      this.#budgets.charge(
        { kind: access.actorType, id: access.actorId ?? "unknown" },
        [...new Set(memberIds)],
        access.freshSince !== undefined ? { freshSince: access.freshSince } : {},
      );
    }
    this.#honeytokens?.check(
      memberIds,
      "pii_read",
      access.onBehalfOf ? { ...access, ...access.onBehalfOf } : access,
    );
    if (fields.length === 0) return out; // (counted and watched all the same: it says who exists)
    const rows = this.#db
      .select()
      .from(profiles)
      .where(inArray(profiles.memberId, [...memberIds]))
      .all();
    for (const row of rows) {
      const profile: Profile = {};
      const present: ProfileField[] = [];
      for (const field of fields) {
        const stored = row[PROFILE_COLUMN[field]];
        if (typeof stored !== "string") continue;
        try {
          profile[field] = unpadded(decryptField(this.#keys, fieldContext(row.memberId, field), stored));
          present.push(field);
        } catch (err) {
          if (err instanceof DecryptionError) this.#decryptFailed(row.memberId, field, access, err);
          throw err;
        }
      }
      this.#audit.append({
        action: "pii.read",
        outcome: "success",
        actorType: access.actorType,
        actorId: access.actorId,
        memberId: row.memberId,
        reason: access.reason,
        ip: access.ip ?? null,
        requestId: access.requestId ?? null,
        details: { fields: present },
      });
      out.set(row.memberId, profile);
    }
    return out;
  }

  #decryptFailed(memberId: string, field: ProfileField, access: PiiAccess, err: DecryptionError): void {
    this.#log.error({ err, memberId, field, reason: access.reason }, "profile field failed to decrypt");
    this.#audit.append({
      action: "pii.decrypt_failed",
      outcome: "failure",
      actorType: access.actorType,
      actorId: access.actorId,
      memberId,
      reason: access.reason,
      ip: access.ip ?? null,
      requestId: access.requestId ?? null,
      details: { field, error: err.message },
    });
  }
}
