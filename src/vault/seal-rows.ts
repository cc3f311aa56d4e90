import type { AuditLog } from "../audit/log.js";
import { type Db, inTransaction } from "../db/connection.js";
import { StartupError } from "../errors.js";
import {
  clientSealValues,
  deviceSealValues,
  memberSealValues,
  memberTokenSealValues,
  mfaTokenSealValues,
  passkeySealValues,
  type RowSeals,
  recoveryCodeSealValues,
  type SealedTable,
  type SealValue,
  sessionSealValues,
} from "./seals.js";

/** Each sealed table: its key column, and its sealed values from a raw row (snake_case columns). */
const TABLES: Record<SealedTable, { key: string; values: (r: Record<string, unknown>) => SealValue[] }> = {
  members: {
    key: "id",
    values: (r) =>
      memberSealValues({
        id: r.id as string,
        sub: r.sub as string,
        role: r.role as string,
        status: r.status as string,
        passwordHash: r.password_hash as string | null,
        pepperId: r.pepper_id as string | null,
        mfaRequired: r.mfa_required as number,
        passwordResetRequired: r.password_reset_required as number,
        emailVerified: r.email_verified as number,
      }),
  },
  sessions: {
    key: "id",
    values: (r) =>
      sessionSealValues({
        id: r.id as string,
        tokenHash: r.token_hash as string,
        memberId: r.member_id as string,
        kind: r.kind as string,
        acr: r.acr as string,
        amr: r.amr as string,
        authTime: r.auth_time as number,
        absoluteExpiresAt: r.absolute_expires_at as number,
      }),
  },
  webauthn_credentials: {
    key: "id",
    values: (r) =>
      passkeySealValues({
        id: r.id as string,
        memberId: r.member_id as string,
        credentialId: r.credential_id as string,
        publicKey: r.public_key as string,
      }),
  },
  member_tokens: {
    key: "token_hash",
    values: (r) =>
      memberTokenSealValues({
        tokenHash: r.token_hash as string,
        memberId: r.member_id as string,
        purpose: r.purpose as string,
        emailIndex: r.email_bidx as string | null,
        expiresAt: r.expires_at as number,
      }),
  },
  mfa_tokens: {
    key: "token_hash",
    values: (r) =>
      mfaTokenSealValues({
        tokenHash: r.token_hash as string,
        memberId: r.member_id as string,
        expiresAt: r.expires_at as number,
      }),
  },
  recovery_codes: {
    key: "id",
    values: (r) =>
      recoveryCodeSealValues({ memberId: r.member_id as string, codeHash: r.code_hash as string }),
  },
  oidc_clients: {
    key: "client_id",
    values: (r) =>
      clientSealValues({
        clientId: r.client_id as string,
        name: r.name as string,
        secretHash: r.secret_hash as string | null,
        previousSecretHash: r.previous_secret_hash as string | null,
        previousSecretUntil: r.previous_secret_until as number | null,
        tokenAuthMethod: r.token_auth_method as string,
        redirectUris: r.redirect_uris as string,
        postLogoutRedirectUris: r.post_logout_redirect_uris as string,
        grantTypes: r.grant_types as string,
        scope: r.scope as string,
        firstParty: r.first_party as number,
        logoUri: r.logo_uri as string | null,
      }),
  },
  devices: {
    key: "id",
    values: (r) =>
      deviceSealValues({
        id: r.id as string,
        memberId: r.member_id as string,
        tokenHash: r.token_hash as string,
        expiresAt: r.expires_at as number,
      }),
  },
};

/** The sealed values of a raw row (snake_case columns, as SQLite returns them) of a sealed table. */
export const rowSealValues = (table: SealedTable, row: Record<string, unknown>): SealValue[] =>
  TABLES[table].values(row);

const sealsOn = (db: Db) =>
  db.$client.prepare("SELECT 1 FROM audit_log WHERE action = 'seals.enabled' LIMIT 1").get() !== undefined;

/**
 * Refuse a database whose seal columns were removed after seals were turned on (asked before
 * migrating): someone with the file dropped them, and the migration's record, so that the next
 * start would seal the rows they wrote. Nothing is written then.
 */
export function assertSealsNotRemoved(db: Db): void {
  const tables = db.$client.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").pluck().all();
  if (!tables.includes("audit_log") || !tables.includes("members")) return;
  const columns = db.$client
    .prepare("SELECT name FROM pragma_table_info('members')")
    .pluck()
    .all() as string[];
  if (!columns.includes("seal") && sealsOn(db))
    throw new StartupError(
      "row seals were removed from this database after they were turned on (columns dropped, migration 0019 " +
        "unrecorded): someone with the database file did it. Restore a backup; nothing was written.",
    );
}

/**
 * Turn row seals on, once: seal every row without a seal and append `seals.enabled` (with the
 * counts) to the audit log, in one transaction, unless that entry is already there — and only on
 * a database where no row has a seal yet and whose audit log verifies (else it refuses). So the rows of
 * a database from before migration 0019 are sealed by the first start after it (server or CLI),
 * and a start that died between migrating and sealing is made good by the next. From the entry on,
 * a row without a seal is one written by someone without the keyring, and nothing seals it (the
 * entry is in the log, which they can't edit unnoticed). The server also appends the entry on a
 * new, empty database (`markEmpty`); a CLI command doesn't, so that it adds no entry of its own.
 * Returns how many rows were sealed (null: seals were on already).
 */
export function sealRowsOnce(
  db: Db,
  seals: RowSeals,
  audit: AuditLog,
  opts: { markEmpty: boolean },
): number | null {
  const client = db.$client;
  if (sealsOn(db)) return null;
  return inTransaction(db, () => {
    if (sealsOn(db)) return null; // (another process, starting at the same moment, did it)
    const sealed: Record<string, number> = {};
    // A database where any row has a seal had seals on already (a CLI command on a new database
    // seals what it writes without the entry; or someone edited or removed the entry): its rows
    // without a seal were written without the keyring and stay unsealed.
    const alreadyOn = Object.keys(TABLES).some(
      (table) => client.prepare(`SELECT 1 FROM ${table} WHERE seal IS NOT NULL LIMIT 1`).get() !== undefined,
    );
    if (alreadyOn) {
      if (opts.markEmpty)
        audit.append({
          action: "seals.enabled",
          outcome: "info",
          actorType: "system",
          details: { sealed, already_on: true },
        });
      return 0;
    }
    // Otherwise every row is sealed as it stands: only from a log that still verifies (an edited
    // one may be hiding why there is no entry).
    const chain = audit.verify();
    if (!chain.ok)
      throw new StartupError(
        `row seals are not on yet, and the audit log doesn't verify (${chain.firstBad?.problem ?? "broken"} at #${chain.firstBad?.seq}): ` +
          "rows written by someone with the database file would be sealed as theirs. Investigate (sekisho audit verify), restore a backup; nothing was sealed.",
      );
    let total = 0;
    for (const [table, { key, values }] of Object.entries(TABLES)) {
      const rows = client.prepare(`SELECT * FROM ${table} WHERE seal IS NULL`).all() as Record<
        string,
        unknown
      >[];
      const update = client.prepare(`UPDATE ${table} SET seal = ? WHERE ${key} = ?`);
      for (const row of rows) update.run(seals.seal(table as SealedTable, values(row)), row[key]);
      sealed[table] = rows.length;
      total += rows.length;
    }
    if (total > 0 || opts.markEmpty)
      audit.append({ action: "seals.enabled", outcome: "info", actorType: "system", details: { sealed } });
    return total;
  });
}

/** A row whose seal doesn't hold (or is missing): table, the row's key, and its member. */
export interface BrokenRow {
  table: SealedTable;
  row: string;
  member_id: string | null;
}

/** Every row whose seal doesn't hold, in every sealed table (`sekisho seals check`). */
export function brokenSeals(db: Db, seals: RowSeals): BrokenRow[] {
  const broken: BrokenRow[] = [];
  for (const [table, { key, values }] of Object.entries(TABLES) as [
    SealedTable,
    (typeof TABLES)[SealedTable],
  ][]) {
    // The member a row is of (none for a member site's row).
    const owner = table === "members" ? "id" : "member_id";
    const rows = db.$client.prepare(`SELECT * FROM ${table}`).all() as Record<string, unknown>[];
    for (const row of rows) {
      if (row.seal === seals.seal(table, values(row))) continue;
      const id = String(row[key]);
      broken.push({
        table,
        row: table === "member_tokens" ? id.slice(0, 12) : id,
        member_id: (row[owner] as string | null) ?? null,
      });
    }
  }
  return broken;
}

/**
 * After an investigation, take a member's row as it now is (`sekisho seals accept`): sealed again,
 * but with a new password required (the hash may be someone else's), every session ended, and
 * the member's sessions, passkeys and links whose seals don't hold deleted. Audited with the
 * reason, the role and the status accepted. Returns what was done.
 */
export function acceptMemberRow(
  db: Db,
  seals: RowSeals,
  audit: AuditLog,
  memberId: string,
  reason: string,
  now: number,
): {
  sub: string;
  role: string;
  status: string;
  mfa_required: boolean;
  email_verified: boolean;
  deleted: Record<string, number>;
  sessions_revoked: number;
} {
  return inTransaction(db, () => {
    const client = db.$client;
    const row = client.prepare("SELECT * FROM members WHERE id = ?").get(memberId) as
      | Record<string, unknown>
      | undefined;
    if (!row) throw new Error(`no member ${memberId}`);
    const accepted = { ...row, password_reset_required: 1 };
    client
      .prepare("UPDATE members SET password_reset_required = 1, seal = ? WHERE id = ?")
      .run(seals.seal("members", TABLES.members.values(accepted)), memberId);
    const deleted: Record<string, number> = {};
    for (const table of [
      "sessions",
      "webauthn_credentials",
      "member_tokens",
      "mfa_tokens",
      "recovery_codes",
      "devices",
    ] as const) {
      const { key, values } = TABLES[table];
      const remove = client.prepare(`DELETE FROM ${table} WHERE ${key} = ?`);
      let n = 0;
      for (const r of client.prepare(`SELECT * FROM ${table} WHERE member_id = ?`).all(memberId) as Record<
        string,
        unknown
      >[])
        if (r.seal !== seals.seal(table, values(r))) n += remove.run(r[key]).changes;
      deleted[table] = n;
    }
    const sessionsRevoked = client
      .prepare(
        "UPDATE sessions SET revoked_at = ?, revoke_reason = 'member_resealed' WHERE member_id = ? AND revoked_at IS NULL",
      )
      .run(now, memberId).changes;
    const result = {
      sub: row.sub as string,
      role: row.role as string,
      status: row.status as string,
      mfa_required: Boolean(row.mfa_required),
      email_verified: Boolean(row.email_verified),
      deleted,
      sessions_revoked: sessionsRevoked,
    };
    audit.append({
      action: "operator.member_resealed",
      outcome: "success",
      actorType: "operator",
      memberId,
      reason,
      details: result,
    });
    return result;
  });
}
