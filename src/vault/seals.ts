import { createHmac, createSecretKey, type KeyObject, timingSafeEqual } from "node:crypto";
import type { KeyringStore } from "./keyring.js";

/**
 * Row seals: a MAC, under a key kept in the keyring (never in the database), over the columns of a
 * row that decide who may sign in as whom. Someone who can write to the database but doesn't hold
 * the keyring (an SQL injection elsewhere on the host, a stolen backup put back, an insider with
 * the file) can't make a row that counts: a session row for a token of their choosing, a passkey
 * of theirs on someone else's account, a reset link of their own, an admin role or a password hash
 * they made. A row whose seal doesn't match is treated as absent, and raises a critical alert
 * (`row_seal_broken`, see src/services.ts).
 *
 * Seal: `s1.` + base64url HMAC-SHA256 over the table's name and the sealed values (JSON, so the
 * encoding is unambiguous). The key is derived from the blind-index key (HMAC with a label of its
 * own), which the keyring already holds and never rotates.
 *
 * What is sealed, table by table (columns that change in use — last seen, counters, revocation —
 * are not: see docs/threat-model.md):
 * - members: id, sub, role, status, password hash and pepper, mfa_required, password_reset_required,
 *   email_verified (member sites may link accounts by a verified address)
 * - sessions: id, token hash, member, kind, acr, amr, auth time, absolute expiry
 * - webauthn_credentials: id, member, credential ID, public key
 * - member_tokens: token hash, member, purpose, bound address index, expiry
 * - mfa_tokens (the step between password and second factor): token hash, member, expiry
 * - recovery_codes: member, code hash
 * - devices (trusted browsers): id, member, token hash, expiry
 * - oidc_clients (member sites): every column but created_at (secrets' hashes, redirect and
 *   logout addresses, grant types, scopes, first-party flag, name and logo)
 */
export type SealedTable =
  | "members"
  | "sessions"
  | "webauthn_credentials"
  | "member_tokens"
  | "mfa_tokens"
  | "recovery_codes"
  | "devices"
  | "oidc_clients";
export type SealValue = string | number | boolean | null;

const VERSION = "s1";
const keys = new WeakMap<object, KeyObject>();

/** The seal of these values under a keyring's blind-index key (see RowSeals). */
export function sealUnder(
  blind: { readonly key: Buffer },
  table: SealedTable,
  values: readonly SealValue[],
): string {
  let key = keys.get(blind);
  if (!key) {
    key = createSecretKey(createHmac("sha256", blind.key).update("sekisho/row-seal/v1", "utf8").digest());
    keys.set(blind, key);
  }
  const mac = createHmac("sha256", key)
    .update(JSON.stringify([table, ...values.map((v) => (typeof v === "boolean" ? Number(v) : v))]), "utf8")
    .digest("base64url");
  return `${VERSION}.${mac}`;
}

export class RowSeals {
  readonly #keys: KeyringStore;
  /** Told of a row whose seal doesn't hold (table, and the row's public id). */
  onBroken: ((table: SealedTable, rowId: string) => void) | null = null;

  constructor(deps: { keys: KeyringStore }) {
    this.#keys = deps.keys;
  }

  seal(table: SealedTable, values: readonly SealValue[]): string {
    return sealUnder(this.#keys.get().blindIndexKey, table, values);
  }

  /** Whether `seal` is the seal of these values; tells onBroken when not. */
  holds(table: SealedTable, values: readonly SealValue[], seal: string | null, rowId: string): boolean {
    const expected = Buffer.from(this.seal(table, values));
    const ok =
      seal !== null && seal.length === expected.length && timingSafeEqual(Buffer.from(seal), expected);
    if (!ok) this.onBroken?.(table, rowId);
    return ok;
  }
}

/** The sealed values of a member row (see RowSeals). */
export function memberSealValues(m: {
  id: string;
  sub: string;
  role: string;
  status: string;
  passwordHash: string | null;
  pepperId: string | null;
  mfaRequired: boolean | number;
  passwordResetRequired: boolean | number;
  emailVerified: boolean | number;
}): SealValue[] {
  return [
    m.id,
    m.sub,
    m.role,
    m.status,
    m.passwordHash,
    m.pepperId,
    Boolean(m.mfaRequired),
    Boolean(m.passwordResetRequired),
    Boolean(m.emailVerified),
  ];
}

/** The sealed values of a session row. */
export function sessionSealValues(s: {
  id: string;
  tokenHash: string;
  memberId: string;
  kind: string;
  acr: string;
  amr: string;
  authTime: number;
  absoluteExpiresAt: number;
}): SealValue[] {
  return [s.id, s.tokenHash, s.memberId, s.kind, s.acr, s.amr, s.authTime, s.absoluteExpiresAt];
}

/** The sealed values of a passkey row. */
export function passkeySealValues(p: {
  id: string;
  memberId: string;
  credentialId: string;
  publicKey: string;
}): SealValue[] {
  return [p.id, p.memberId, p.credentialId, p.publicKey];
}

/** The sealed values of a member token (reset, e-mail verification and change links). */
export function memberTokenSealValues(t: {
  tokenHash: string;
  memberId: string;
  purpose: string;
  emailIndex: string | null;
  expiresAt: number;
}): SealValue[] {
  return [t.tokenHash, t.memberId, t.purpose, t.emailIndex, t.expiresAt];
}

/** The sealed values of a pending second step (mfa_token). */
export function mfaTokenSealValues(t: {
  tokenHash: string;
  memberId: string;
  expiresAt: number;
}): SealValue[] {
  return [t.tokenHash, t.memberId, t.expiresAt];
}

/** The sealed values of a recovery code. */
export function recoveryCodeSealValues(c: { memberId: string; codeHash: string }): SealValue[] {
  return [c.memberId, c.codeHash];
}

/** The sealed values of a trusted device. */
export function deviceSealValues(d: {
  id: string;
  memberId: string;
  tokenHash: string;
  expiresAt: number;
}): SealValue[] {
  return [d.id, d.memberId, d.tokenHash, d.expiresAt];
}

/** The sealed values of a member site (OIDC client). */
export function clientSealValues(c: {
  clientId: string;
  name: string;
  secretHash: string | null;
  previousSecretHash: string | null;
  previousSecretUntil: number | null;
  tokenAuthMethod: string;
  redirectUris: string;
  postLogoutRedirectUris: string;
  grantTypes: string;
  scope: string;
  firstParty: boolean | number;
  logoUri: string | null;
}): SealValue[] {
  return [
    c.clientId,
    c.name,
    c.secretHash,
    c.previousSecretHash,
    c.previousSecretUntil,
    c.tokenAuthMethod,
    c.redirectUris,
    c.postLogoutRedirectUris,
    c.grantTypes,
    c.scope,
    Boolean(c.firstParty),
    c.logoUri,
  ];
}
