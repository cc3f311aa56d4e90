import fs from "node:fs";
import Database from "better-sqlite3";
import type { Db } from "../db/connection.js";
import { StartupError } from "../errors.js";
import { keyIdOf } from "./fields.js";
import type { Keyring } from "./keyring.js";

/**
 * Does this keyring open what the database holds? The keys its newest audit entry, its members'
 * password peppers and its oldest and newest profiles were made with. A keyring that lacks one is
 * the wrong keyring (a development keyring made beside a production database because
 * SEKISHO_KEYRING_FILE or NODE_ENV was left out, an old copy): started with it, the server would
 * chain new audit entries under a key the rest of the log can't be verified with, and write data
 * that the real keyring can't read. Returns what is missing, in words; empty when nothing is.
 * Cheap: a handful of indexed reads and one pass over the distinct peppers.
 */
export function keyringGaps(db: Db, keyring: Keyring): string[] {
  const client = db.$client;
  const gaps: string[] = [];
  const head = client.prepare("SELECT seq, key_id FROM audit_log ORDER BY seq DESC LIMIT 1").get() as
    | { seq: number; key_id: string }
    | undefined;
  if (head && !keyring.auditKey(head.key_id))
    gaps.push(`audit key ${head.key_id} (of audit entry #${head.seq})`);
  const peppers = client
    .prepare("SELECT DISTINCT pepper_id FROM members WHERE pepper_id IS NOT NULL")
    .pluck()
    .all() as string[];
  for (const id of peppers) if (!keyring.pepper(id)) gaps.push(`password pepper ${id}`);
  for (const order of ["ASC", "DESC"]) {
    const row = client
      .prepare(
        `SELECT member_id, coalesce(name, email, phone, postal_code, address, birth_date, gender) AS value
           FROM profiles WHERE value IS NOT NULL ORDER BY rowid ${order} LIMIT 1`,
      )
      .get() as { member_id: string; value: string } | undefined;
    const keyId = row ? keyIdOf(row.value) : null;
    if (keyId && !keyring.dataKey(keyId) && !gaps.some((g) => g.startsWith(`data key ${keyId}`)))
      gaps.push(`data key ${keyId} (of ${row?.member_id}'s profile)`);
  }
  return gaps;
}

/**
 * Does the database file hold anything already (members or audit entries)? A development keyring
 * is only ever made for a new, empty database: beside one with data it would be the wrong one.
 */
export function databaseHasData(file: string): boolean {
  if (file === ":memory:" || !fs.existsSync(file) || fs.statSync(file).size === 0) return false;
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    const tables = new Set(
      db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").pluck().all() as string[],
    );
    for (const table of ["members", "audit_log"])
      if (tables.has(table) && db.prepare(`SELECT 1 FROM ${table} LIMIT 1`).get() !== undefined) return true;
    return false;
  } finally {
    db.close();
  }
}

/** Refuse to go on with a keyring that doesn't open what the database holds (see keyringGaps). */
export function assertKeyringFits(db: Db, keyring: Keyring, file: string): void {
  const gaps = keyringGaps(db, keyring);
  if (gaps.length === 0) return;
  throw new StartupError(
    `the keyring ${file} is not the one this database was written with: it lacks ${gaps.join(", ")}. ` +
      "Point SEKISHO_KEYRING_FILE at the right keyring (and set NODE_ENV=production for a production " +
      "data directory); nothing was written.",
  );
}
