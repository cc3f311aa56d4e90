import { getTableColumns } from "drizzle-orm";
import type { SQLiteTable } from "drizzle-orm/sqlite-core";
import type { AuditLog } from "../audit/log.js";
import { type Db, inTransaction } from "../db/connection.js";
import * as schema from "../db/schema.js";
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

/**
 * A raw row (SQLite's snake_case columns) as drizzle would give it (the schema's property names),
 * so that the typed seal functions of src/vault/seals.ts read it.
 */
function asModel(table: SQLiteTable, raw: Record<string, unknown>): never {
  const row: Record<string, unknown> = {};
  for (const [property, column] of Object.entries(getTableColumns(table))) row[property] = raw[column.name];
  return row as never;
}

/** Each sealed table: its schema, its key column, and the seal function of its rows. */
const TABLES: Record<SealedTable, { schema: SQLiteTable; key: string; seal: (row: never) => SealValue[] }> = {
  members: { schema: schema.members, key: "id", seal: memberSealValues },
  sessions: { schema: schema.sessions, key: "id", seal: sessionSealValues },
  webauthn_credentials: { schema: schema.webauthnCredentials, key: "id", seal: passkeySealValues },
  member_tokens: { schema: schema.memberTokens, key: "token_hash", seal: memberTokenSealValues },
  mfa_tokens: { schema: schema.mfaTokens, key: "token_hash", seal: mfaTokenSealValues },
  recovery_codes: { schema: schema.recoveryCodes, key: "id", seal: recoveryCodeSealValues },
  oidc_clients: { schema: schema.oidcClients, key: "client_id", seal: clientSealValues },
  devices: { schema: schema.devices, key: "id", seal: deviceSealValues },
};

/** The sealed tables' names. */
export const SEALED_TABLES = Object.keys(TABLES) as SealedTable[];

/** The sealed values of a raw row of a sealed table. */
function valuesOf(table: SealedTable, raw: Record<string, unknown>): SealValue[] {
  const { schema: t, seal } = TABLES[table];
  return seal(asModel(t, raw));
}

/** The sealed values of a raw row (snake_case columns, as SQLite returns them) of a sealed table. */
export const rowSealValues = valuesOf;

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
    const alreadyOn = SEALED_TABLES.some(
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
    for (const table of SEALED_TABLES) {
      const { key } = TABLES[table];
      const rows = client.prepare(`SELECT * FROM ${table} WHERE seal IS NULL`).all() as Record<
        string,
        unknown
      >[];
      const update = client.prepare(`UPDATE ${table} SET seal = ? WHERE ${key} = ?`);
      for (const row of rows) update.run(seals.seal(table, valuesOf(table, row)), row[key]);
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
  for (const table of SEALED_TABLES) {
    const { key } = TABLES[table];
    // The member a row is of (none for a member site's row).
    const owner = table === "members" ? "id" : "member_id";
    const rows = db.$client.prepare(`SELECT * FROM ${table}`).all() as Record<string, unknown>[];
    for (const row of rows) {
      if (row.seal === seals.seal(table, valuesOf(table, row))) continue;
      const id = String(row[key]);
      broken.push({
        table,
        // A token hash only by its start (as the alert names it).
        row: key === "token_hash" ? id.slice(0, 12) : id,
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
  /** SessionService.revokeAll: every session ends, and every second step still pending. */
  revokeSessions: (memberId: string, reason: string) => number,
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
      .run(seals.seal("members", valuesOf("members", accepted)), memberId);
    const deleted: Record<string, number> = {};
    for (const table of [
      "sessions",
      "webauthn_credentials",
      "member_tokens",
      "mfa_tokens",
      "recovery_codes",
      "devices",
    ] as const) {
      const { key } = TABLES[table];
      const remove = client.prepare(`DELETE FROM ${table} WHERE ${key} = ?`);
      let n = 0;
      for (const r of client.prepare(`SELECT * FROM ${table} WHERE member_id = ?`).all(memberId) as Record<
        string,
        unknown
      >[])
        if (r.seal !== seals.seal(table, valuesOf(table, r))) n += remove.run(r[key]).changes;
      deleted[table] = n;
    }
    const sessionsRevoked = revokeSessions(memberId, "member_resealed");
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
