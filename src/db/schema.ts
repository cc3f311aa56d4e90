import { sql } from "drizzle-orm";
import { index, integer, sqliteTable, text, uniqueIndex } from "drizzle-orm/sqlite-core";

/**
 * The database holds no readable personal data: profile fields are vault ciphertexts
 * (see src/vault/fields.ts), passwords argon2id PHC strings, session tokens SHA-256 hashes.
 * Times are integer milliseconds since the epoch.
 */

export const members = sqliteTable("members", {
  /** Opaque member id used by our API (`member_id`). */
  id: text("id").primaryKey(),
  /** OIDC subject: a separate random id, never the login ID. */
  sub: text("sub").notNull().unique(),
  /** Normalised login ID (NFKC, lower case) or a generated member number. */
  loginId: text("login_id").notNull().unique(),
  loginIdKind: text("login_id_kind", { enum: ["chosen", "number"] }).notNull(),
  passwordHash: text("password_hash"),
  /** Which keyring pepper was argon2's secret for passwordHash (null: none). */
  pepperId: text("pepper_id"),
  role: text("role", { enum: ["member", "admin"] })
    .notNull()
    .default("member"),
  status: text("status", { enum: ["active", "disabled"] })
    .notNull()
    .default("active"),
  emailVerified: integer("email_verified", { mode: "boolean" }).notNull().default(false),
  createdAt: integer("created_at").notNull(),
  updatedAt: integer("updated_at").notNull(),
  passwordChangedAt: integer("password_changed_at"),
  /** WebAuthn user handle (base64url of 32 random bytes), made at the first passkey; never the login ID. */
  webauthnUserId: text("webauthn_user_id").unique(),
  /** The member's language for mail (and the default of the hosted pages). */
  locale: text("locale", { enum: ["ja", "en"] })
    .notNull()
    .default("ja"),
  /** Set by support: the password no longer signs in; the member sets a new one by the mailed link. */
  passwordResetRequired: integer("password_reset_required", { mode: "boolean" }).notNull().default(false),
  /**
   * This member needs a second factor whatever the MFA policies say, from the first sign-in
   * (`members import --require-mfa-enrollment`).
   */
  mfaRequired: integer("mfa_required", { mode: "boolean" }).notNull().default(false),
  /** Row seal over who this member is and may be (src/vault/seals.ts); null only before 0019's start. */
  seal: text("seal"),
});

/** One row per member; every value column is a vault ciphertext bound to (member, field). */
export const profiles = sqliteTable(
  "profiles",
  {
    memberId: text("member_id")
      .primaryKey()
      .references(() => members.id, { onDelete: "cascade" }),
    name: text("name"),
    email: text("email"),
    phone: text("phone"),
    postalCode: text("postal_code"),
    address: text("address"),
    birthDate: text("birth_date"),
    gender: text("gender"),
    /** HMAC of the normalised e-mail under the blind-index key: lookup without plaintext. */
    emailIndex: text("email_bidx"),
    /** The data key every field of this row is encrypted under (rotation finds stale rows by it). */
    keyId: text("key_id").notNull(),
    updatedAt: integer("updated_at").notNull(),
  },
  (t) => [index("profiles_email_bidx").on(t.emailIndex), index("profiles_key_id").on(t.keyId)],
);

export const sessions = sqliteTable(
  "sessions",
  {
    /** Public id shown in GET /me/sessions; not the secret. */
    id: text("id").primaryKey(),
    /** SHA-256 of the cookie token: a copy of the table signs nobody in. */
    tokenHash: text("token_hash").notNull().unique(),
    memberId: text("member_id")
      .notNull()
      .references(() => members.id, { onDelete: "cascade" }),
    kind: text("kind", { enum: ["full", "limited"] })
      .notNull()
      .default("full"),
    acr: text("acr").notNull(),
    /** JSON array of RFC 8176 method references. */
    amr: text("amr").notNull(),
    authTime: integer("auth_time").notNull(),
    createdAt: integer("created_at").notNull(),
    lastSeenAt: integer("last_seen_at").notNull(),
    idleExpiresAt: integer("idle_expires_at").notNull(),
    absoluteExpiresAt: integer("absolute_expires_at").notNull(),
    revokedAt: integer("revoked_at"),
    revokeReason: text("revoke_reason"),
    ip: text("ip"),
    userAgent: text("user_agent"),
    /** Row seal over the token hash, member, level and lifetime (src/vault/seals.ts). */
    seal: text("seal"),
  },
  (t) => [index("sessions_member").on(t.memberId)],
);

/**
 * Append-only, hash-chained audit log. `mac` = HMAC(audit key, canonical(row) ‖ prev_mac);
 * triggers (migration 0001) refuse UPDATE and DELETE. Details never hold secrets or PII values.
 */
export const auditLog = sqliteTable(
  "audit_log",
  {
    seq: integer("seq").primaryKey({ autoIncrement: true }),
    at: integer("at").notNull(),
    action: text("action").notNull(),
    outcome: text("outcome", { enum: ["success", "failure", "info"] }).notNull(),
    actorType: text("actor_type").notNull(),
    actorId: text("actor_id"),
    /** The member the entry is about (for the member's own event list and investigations). */
    memberId: text("member_id"),
    reason: text("reason"),
    ip: text("ip"),
    requestId: text("request_id"),
    details: text("details").notNull().default("{}"),
    keyId: text("key_id").notNull(),
    prevMac: text("prev_mac").notNull(),
    mac: text("mac").notNull(),
  },
  (t) => [index("audit_member").on(t.memberId, t.seq), index("audit_action").on(t.action, t.seq)],
);

/** Progress of `sekisho keys rotate`, so an interrupted rotation resumes instead of restarting. */
export const keyRotations = sqliteTable("key_rotations", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  newKeyId: text("new_key_id").notNull(),
  startedAt: integer("started_at").notNull(),
  finishedAt: integer("finished_at"),
  rowsDone: integer("rows_done").notNull().default(0),
});

/**
 * oidc-provider's models (codes, tokens, sessions, grants, interactions, …), one table.
 * Insertion-ordered (integer rowid) with a unique (model, id_hash): rows are written and read by
 * key, never scanned. The id of every row is stored as its SHA-256: for tokens and sessions the id
 * *is* the bearer secret, so a copy of the table holds no usable token.
 */
export const oidcPayloads = sqliteTable(
  "oidc_payloads",
  {
    rowid: integer("rowid").primaryKey(),
    model: text("model").notNull(),
    idHash: text("id_hash").notNull(),
    payload: text("payload").notNull(),
    grantId: text("grant_id"),
    uidHash: text("uid_hash"),
    userCodeHash: text("user_code_hash"),
    expiresAt: integer("expires_at"),
    consumedAt: integer("consumed_at"),
    /** The member's OIDC subject for rows that belong to one (grants, tokens, codes, sessions), so
     * that a password reset can revoke everything a member holds. Opaque, not personal data. */
    accountId: text("account_id"),
  },
  // Partial indexes: most rows have no uid or user code, and only tokens carry a grant id, so an
  // insert touches the table and one or two index pages (each page is a WAL write). Expiry clean-up
  // runs every ten minutes and may scan.
  (t) => [
    uniqueIndex("oidc_model_id").on(t.model, t.idHash),
    index("oidc_grant").on(t.grantId).where(sql`grant_id IS NOT NULL`),
    index("oidc_uid").on(t.uidHash).where(sql`uid_hash IS NOT NULL`),
    index("oidc_user_code").on(t.userCodeHash).where(sql`user_code_hash IS NOT NULL`),
    index("oidc_account").on(t.accountId).where(sql`account_id IS NOT NULL`),
  ],
);

/** Member sites (OIDC clients). Secrets are stored as SHA-256 of a 256-bit random value. */
export const oidcClients = sqliteTable("oidc_clients", {
  clientId: text("client_id").primaryKey(),
  name: text("name").notNull(),
  secretHash: text("secret_hash"),
  /** After `clients rotate-secret --keep-old-for`: the replaced secret's hash, accepted until
   * `previous_secret_until` (ms) so that a site can switch without a failed request. */
  previousSecretHash: text("previous_secret_hash"),
  previousSecretUntil: integer("previous_secret_until"),
  /** client_secret_basic or client_secret_post for confidential clients; none for public ones. */
  tokenAuthMethod: text("token_auth_method").notNull().default("client_secret_basic"),
  redirectUris: text("redirect_uris").notNull(),
  /** JSON array; where RP-initiated logout may send the member afterwards (exact match). */
  postLogoutRedirectUris: text("post_logout_redirect_uris").notNull().default("[]"),
  grantTypes: text("grant_types").notNull(),
  scope: text("scope").notNull(),
  firstParty: integer("first_party", { mode: "boolean" }).notNull().default(true),
  logoUri: text("logo_uri"),
  createdAt: integer("created_at").notNull(),
  /** Row seal over every column but created_at (src/vault/seals.ts). */
  seal: text("seal"),
});

/**
 * A member's TOTP factor. `secret` (active) and `pending_secret` (enrolment not yet verified) are
 * vault ciphertexts bound to (member, column). `last_step` is the newest RFC 6238 time step ever
 * accepted: a code for that step or an earlier one is refused (replay), and it only moves forward
 * through a compare-and-swap UPDATE.
 */
export const totpFactors = sqliteTable("totp_factors", {
  memberId: text("member_id")
    .primaryKey()
    .references(() => members.id, { onDelete: "cascade" }),
  secret: text("secret"),
  pendingSecret: text("pending_secret"),
  pendingCreatedAt: integer("pending_created_at"),
  lastStep: integer("last_step").notNull().default(0),
  enabledAt: integer("enabled_at"),
  updatedAt: integer("updated_at").notNull(),
});

/** Recovery codes: SHA-256 of a 80-bit random code; each row is spent once (used_at, by CAS). */
export const recoveryCodes = sqliteTable(
  "recovery_codes",
  {
    id: integer("id").primaryKey({ autoIncrement: true }),
    memberId: text("member_id")
      .notNull()
      .references(() => members.id, { onDelete: "cascade" }),
    codeHash: text("code_hash").notNull().unique(),
    createdAt: integer("created_at").notNull(),
    usedAt: integer("used_at"),
    /** Row seal over the member and the code's hash (src/vault/seals.ts). */
    seal: text("seal"),
  },
  (t) => [index("recovery_codes_member").on(t.memberId)],
);

/**
 * Passkeys (WebAuthn credentials). Nothing here is secret: a public key, a counter, and the
 * member-given label (plain text, at most 64 characters; the pages say not to put a name in it).
 */
export const webauthnCredentials = sqliteTable(
  "webauthn_credentials",
  {
    /** Public id used by the API (`pk_…`); not the credential ID. */
    id: text("id").primaryKey(),
    memberId: text("member_id")
      .notNull()
      .references(() => members.id, { onDelete: "cascade" }),
    /** base64url credential ID: unique across all members. */
    credentialId: text("credential_id").notNull().unique(),
    publicKey: text("public_key").notNull(),
    counter: integer("counter").notNull().default(0),
    transports: text("transports").notNull().default("[]"),
    aaguid: text("aaguid").notNull(),
    backupEligible: integer("backup_eligible", { mode: "boolean" }).notNull(),
    backedUp: integer("backed_up", { mode: "boolean" }).notNull(),
    name: text("name").notNull(),
    createdAt: integer("created_at").notNull(),
    lastUsedAt: integer("last_used_at"),
    /** Set when a signature counter failed to increase: the credential may have been cloned. */
    suspectedCloneAt: integer("suspected_clone_at"),
    /** Row seal over the member, credential ID and public key (src/vault/seals.ts). */
    seal: text("seal"),
  },
  (t) => [index("webauthn_credentials_member").on(t.memberId)],
);

/**
 * WebAuthn challenges: random, single-use, short-lived, and bound to their ceremony — the member
 * (registration, second factor, step-up), the mfa_token or session that asked, or nobody
 * (passwordless). Stored as SHA-256 of the challenge; consumed by one CAS UPDATE.
 */
export const webauthnChallenges = sqliteTable(
  "webauthn_challenges",
  {
    challengeHash: text("challenge_hash").primaryKey(),
    ceremony: text("ceremony", { enum: ["registration", "authentication"] }).notNull(),
    memberId: text("member_id").references(() => members.id, { onDelete: "cascade" }),
    mfaTokenHash: text("mfa_token_hash"),
    sessionId: text("session_id"),
    userVerification: text("user_verification").notNull(),
    createdAt: integer("created_at").notNull(),
    expiresAt: integer("expires_at").notNull(),
    consumedAt: integer("consumed_at"),
  },
  (t) => [index("webauthn_challenges_expiry").on(t.expiresAt)],
);

/**
 * The state between a correct password and the second factor: a random mfa_token (stored hashed),
 * short-lived, single-use, with its own attempt limit.
 */
export const mfaTokens = sqliteTable(
  "mfa_tokens",
  {
    tokenHash: text("token_hash").primaryKey(),
    memberId: text("member_id")
      .notNull()
      .references(() => members.id, { onDelete: "cascade" }),
    createdAt: integer("created_at").notNull(),
    expiresAt: integer("expires_at").notNull(),
    failures: integer("failures").notNull().default(0),
    consumedAt: integer("consumed_at"),
    /** Row seal over the token hash, member and expiry (src/vault/seals.ts). */
    seal: text("seal"),
  },
  (t) => [index("mfa_tokens_expiry").on(t.expiresAt)],
);

/**
 * Known devices: the `sekisho_device` cookie (random token, stored hashed), issued after a sign-in
 * with a second factor or a passkey, bound to one member, kept across logout, revocable.
 */
export const devices = sqliteTable(
  "devices",
  {
    id: text("id").primaryKey(),
    memberId: text("member_id")
      .notNull()
      .references(() => members.id, { onDelete: "cascade" }),
    tokenHash: text("token_hash").notNull().unique(),
    createdAt: integer("created_at").notNull(),
    lastSeenAt: integer("last_seen_at").notNull(),
    expiresAt: integer("expires_at").notNull(),
    revokedAt: integer("revoked_at"),
    userAgent: text("user_agent"),
    /** Row seal over the id, member, token hash and expiry (src/vault/seals.ts). */
    seal: text("seal"),
  },
  (t) => [index("devices_member").on(t.memberId)],
);

/**
 * Account protection (the login-anomaly engine): after repeated failures from untrusted devices a
 * login ID refuses password sign-in from untrusted devices until `until`. Keyed by a keyed hash of
 * the normalised login ID, so unknown IDs are protected exactly like known ones (no enumeration)
 * and the table names nobody. Never permanent; an admin can lift it (`lifted_at`).
 */
export const accountProtections = sqliteTable("account_protections", {
  loginKey: text("login_key").primaryKey(),
  until: integer("until").notNull(),
  reason: text("reason").notNull(),
  createdAt: integer("created_at").notNull(),
  liftedAt: integer("lifted_at"),
});

/** Temporary blocks of a client IP or subnet (`ip:…` or `net:…`). */
export const networkBlocks = sqliteTable("network_blocks", {
  network: text("network").primaryKey(),
  until: integer("until").notNull(),
  reason: text("reason").notNull(),
  createdAt: integer("created_at").notNull(),
  liftedAt: integer("lifted_at"),
});

/** Security alerts for admins (attacks detected, honeytokens touched, budgets exceeded, …). */
export const alerts = sqliteTable(
  "alerts",
  {
    id: integer("id").primaryKey({ autoIncrement: true }),
    at: integer("at").notNull(),
    kind: text("kind").notNull(),
    severity: text("severity", { enum: ["info", "warning", "critical"] }).notNull(),
    /** JSON: counts, networks, reasons; never a password, token or profile value. */
    details: text("details").notNull().default("{}"),
    acknowledgedAt: integer("acknowledged_at"),
  },
  (t) => [index("alerts_at").on(t.at)],
);

/**
 * Single-use tokens mailed to a member: e-mail verification (24 h), e-mail change (24 h, carries
 * the new address) and password reset (30 min). Stored as SHA-256 of 256 random bits; spent by a
 * compare-and-swap on `consumed_at`. `email_bidx` is the blind index of the address the link was
 * sent to: a verification link proves that address, not whatever the profile holds later.
 */
export const memberTokens = sqliteTable(
  "member_tokens",
  {
    tokenHash: text("token_hash").primaryKey(),
    purpose: text("purpose", { enum: ["verify_email", "change_email", "reset_password"] }).notNull(),
    memberId: text("member_id")
      .notNull()
      .references(() => members.id, { onDelete: "cascade" }),
    emailIndex: text("email_bidx"),
    /** change_email: the new address, a vault ciphertext bound to (member_tokens.new_email, token hash). */
    newEmail: text("new_email"),
    createdAt: integer("created_at").notNull(),
    expiresAt: integer("expires_at").notNull(),
    consumedAt: integer("consumed_at"),
    /** reset_password: when the member passed their second factor for this reset… */
    mfaPassedAt: integer("mfa_passed_at"),
    /** …and SHA-256 of the proof handed to the browser that passed it (the reset needs both). */
    mfaProofHash: text("mfa_proof_hash"),
    /** reset_password: wrong second-factor codes; the token dies at five. */
    failures: integer("failures").notNull().default(0),
    /** Row seal over the token hash, member, purpose, bound address and expiry (src/vault/seals.ts). */
    seal: text("seal"),
  },
  (t) => [
    index("member_tokens_member").on(t.memberId, t.purpose),
    index("member_tokens_expiry").on(t.expiresAt),
  ],
);

/**
 * The mail outbox: every message is written here (inside the transaction that caused it) and sent
 * by the mail worker with retries, so neither a restart nor an SMTP outage loses one. `message`
 * (recipient, subject, bodies) is a vault ciphertext bound to its row, wiped once sent: the table
 * keeps when and what kind of mail went out, never to whom or what it said.
 */
export const outbox = sqliteTable(
  "outbox",
  {
    id: text("id").primaryKey(),
    memberId: text("member_id").references(() => members.id, { onDelete: "cascade" }),
    template: text("template").notNull(),
    message: text("message"),
    status: text("status", { enum: ["pending", "sent", "failed"] })
      .notNull()
      .default("pending"),
    attempts: integer("attempts").notNull().default(0),
    nextAttemptAt: integer("next_attempt_at").notNull(),
    /** An error code (e.g. ECONNREFUSED, 451), never the server's text (it may name the address). */
    lastError: text("last_error"),
    createdAt: integer("created_at").notNull(),
    sentAt: integer("sent_at"),
  },
  (t) => [index("outbox_due").on(t.status, t.nextAttemptAt)],
);

/**
 * MFA policy: one row for all members (`global`) and one per member site that overrides it
 * (`client:<client_id>`). `required_since` is when `mode` last became `required`: the grace
 * period of a member without a factor runs from it or from their registration, whichever is later.
 */
export const mfaPolicies = sqliteTable("mfa_policies", {
  scope: text("scope").primaryKey(),
  mode: text("mode", { enum: ["off", "optional", "required"] }).notNull(),
  graceDays: integer("grace_days").notNull(),
  /** JSON array of "totp" and/or "webauthn". */
  methods: text("methods").notNull(),
  phishingResistant: integer("phishing_resistant", { mode: "boolean" }).notNull(),
  requiredSince: integer("required_since"),
  updatedAt: integer("updated_at").notNull(),
  updatedBy: text("updated_by"),
});

/**
 * Alerts on their way to the configured webhook: written with the alert, sent by a worker with
 * retries and back-off, so none is lost across restarts or while the receiver is down.
 */
export const alertDeliveries = sqliteTable(
  "alert_deliveries",
  {
    id: integer("id").primaryKey({ autoIncrement: true }),
    alertId: integer("alert_id")
      .notNull()
      .references(() => alerts.id, { onDelete: "cascade" }),
    status: text("status", { enum: ["pending", "sent", "failed"] })
      .notNull()
      .default("pending"),
    attempts: integer("attempts").notNull().default(0),
    nextAttemptAt: integer("next_attempt_at").notNull(),
    lastError: text("last_error"),
    createdAt: integer("created_at").notNull(),
    sentAt: integer("sent_at"),
  },
  (t) => [index("alert_deliveries_due").on(t.status, t.nextAttemptAt)],
);

/**
 * Principals (`admin:<member id>`, `client:<client id>`) refused for going past their PII read
 * budget. An admin's block is lifted for sessions signed in after it (`rearmed_after`), never for
 * the session that ran into it; a member site's by an admin's approval (the row goes).
 */
export const piiBlocks = sqliteTable("pii_blocks", {
  principal: text("principal").primaryKey(),
  blockedAt: integer("blocked_at").notNull(),
  rearmedAfter: integer("rearmed_after"),
});

/** Members brought in by `sekisho members import`: the legacy system's id (the idempotency key). */
export const legacyMembers = sqliteTable("legacy_members", {
  legacyId: text("legacy_id").primaryKey(),
  memberId: text("member_id")
    .notNull()
    .unique()
    .references(() => members.id, { onDelete: "cascade" }),
  importedAt: integer("imported_at").notNull(),
});

/**
 * A legacy password hash awaiting the member's first sign-in (then replaced by argon2id and
 * deleted). `secret` is a vault ciphertext of the scheme's parameters and hash, bound to the
 * member: a copy of the database alone holds no hash of any kind. `weak` marks fast or unsalted
 * schemes that `members wrap-weak` wraps in argon2id (`wrapped`).
 */
export const legacyPasswords = sqliteTable(
  "legacy_passwords",
  {
    memberId: text("member_id")
      .primaryKey()
      .references(() => members.id, { onDelete: "cascade" }),
    secret: text("secret").notNull(),
    weak: integer("weak", { mode: "boolean" }).notNull(),
    wrapped: integer("wrapped", { mode: "boolean" }).notNull().default(false),
    /**
     * After this time the legacy password no longer signs in by itself: it may be known from the
     * old system, so the member sets a new one by a mailed link (`--require-password-change-after`).
     */
    changeAfter: integer("change_after"),
    updatedAt: integer("updated_at").notNull(),
  },
  (t) => [index("legacy_passwords_weak").on(t.weak, t.wrapped)],
);

/**
 * What the login-anomaly engine had learnt when the server last stopped (src/throttle/carry-over.ts):
 * one row, written at a graceful stop, taken over (and deleted) at the next start, so a restart
 * doesn't hand a slow attacker fresh counters. Encrypted by the vault (it holds typed login IDs
 * and addresses).
 */
export const throttleState = sqliteTable("throttle_state", {
  id: integer("id").primaryKey(),
  savedAt: integer("saved_at").notNull(),
  state: text("state").notNull(),
});
