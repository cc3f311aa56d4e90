import fs from "node:fs";
import Database from "better-sqlite3";
import type { Db } from "../db/connection.js";
import { StartupError } from "../errors.js";
import type { Keyring } from "./keyring.js";
import { rowSealValues } from "./seal-rows.js";
import { sealUnder } from "./seals.js";

/**
 * Does this keyring open what the database holds? The keys its newest audit entry, its members'
 * password peppers, its profiles, TOTP secrets and imported password hashes were made with. A keyring that lacks one is
 * the wrong keyring (a development keyring made beside a production database because
 * SEKISHO_KEYRING_FILE or NODE_ENV was left out, an old copy): started with it, the server would
 * chain new audit entries under a key the rest of the log can't be verified with, and write data
 * that the real keyring can't read. Returns what is missing, in words; empty when nothing is.
 * Cheap enough for every start: a few indexed reads and a pass over members (peppers) and over
 * the legacy hashes (at most once per imported member, until their first sign-in).
 */
export function keyringGaps(db: Db, keyring: Keyring): string[] {
  const client = db.$client;
  const gaps: string[] = [];
  // Run before migrations too (a new database has no tables yet; nothing to open then).
  const tables = new Set(
    client.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").pluck().all() as string[],
  );
  if (tables.has("audit_log")) {
    const head = client.prepare("SELECT seq, key_id FROM audit_log ORDER BY seq DESC LIMIT 1").get() as
      | { seq: number; key_id: string }
      | undefined;
    if (head && !keyring.auditKey(head.key_id))
      gaps.push(`audit key ${head.key_id} (of audit entry #${head.seq})`);
  }
  if (tables.has("members")) {
    const peppers = client
      .prepare("SELECT DISTINCT pepper_id FROM members WHERE pepper_id IS NOT NULL")
      .pluck()
      .all() as string[];
    for (const id of peppers) if (!keyring.pepper(id)) gaps.push(`password pepper ${id}`);
    // Row seals (src/vault/seals.ts) are made with the blind-index key: of the five newest sealed
    // members, one must hold under this keyring (a row someone changed is not the keyring's fault;
    // with fewer than five there is too little to tell a changed row from another keyring, and the
    // checks above already catch a wholly different keyring).
    const columns = client.prepare("SELECT name FROM pragma_table_info('members')").pluck().all() as string[];
    if (columns.includes("seal")) {
      const sealed = client
        // Every column: the seal's list is rowSealValues' to know, not this query's.
        .prepare("SELECT * FROM members WHERE seal IS NOT NULL ORDER BY rowid DESC LIMIT 5")
        .all() as Record<string, unknown>[];
      const holds = sealed.some(
        (r) => r.seal === sealUnder(keyring.blindIndexKey, "members", rowSealValues("members", r)),
      );
      if (sealed.length === 5 && !holds)
        gaps.push(`blind-index key ${keyring.blindIndexKey.id} (of row seals)`);
    }
  }
  if (tables.has("profiles")) {
    // Every data key the profiles were written under (profiles.key_id is indexed).
    const used = client.prepare("SELECT DISTINCT key_id FROM profiles").pluck().all() as string[];
    for (const id of used) if (!keyring.dataKey(id)) gaps.push(`data key ${id} (of member profiles)`);
  }
  // The long-lived vault values outside profiles: TOTP secrets and imported legacy hashes (their
  // key id is the second part of `v1.<key id>.<nonce>.<ciphertext>`).
  const keyOf = (column: string) => `substr(${column}, 4, instr(substr(${column}, 4), '.') - 1)`;
  for (const [table, column, what] of [
    ["totp_factors", "secret", "TOTP secrets"],
    ["totp_factors", "pending_secret", "TOTP secrets"],
    ["legacy_passwords", "secret", "imported password hashes"],
  ] as const) {
    if (!tables.has(table)) continue;
    const used = client
      .prepare(`SELECT DISTINCT ${keyOf(column)} FROM ${table} WHERE ${column} LIKE 'v1.%'`)
      .pluck()
      .all() as string[];
    for (const id of used)
      if (!keyring.dataKey(id) && !gaps.some((g) => g.startsWith(`data key ${id} `)))
        gaps.push(`data key ${id} (of ${what})`);
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
