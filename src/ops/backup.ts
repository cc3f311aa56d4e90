import fs from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { drizzle } from "drizzle-orm/better-sqlite3";
import { AuditLog } from "../audit/log.js";
import type { Clock } from "../clock.js";
import { type Db, migrateDatabase, openDatabase } from "../db/connection.js";
import * as schema from "../db/schema.js";
import { StartupError } from "../errors.js";
import type { KeyringStore } from "../vault/keyring.js";
import { runningServer } from "./pid-file.js";

/**
 * `sekisho backup FILE` and `sekisho restore FILE`.
 *
 * A backup is SQLite's online backup API (better-sqlite3 `db.backup`): a consistent copy of the
 * database as of one moment, taken page by page while the server goes on writing. It is written
 * to `FILE.partial` and renamed when complete and checked, so a file named FILE is always whole.
 * A backup holds only ciphertexts and hashes: it is useless without the keyring, which must be
 * kept apart from it (docs/operations.md).
 */
export interface BackupCheck {
  integrity: string;
  audit: { ok: boolean; entries: number; first_bad?: { seq: number; problem: string } };
  members: number;
  /** Data keys the profiles are encrypted under that this keyring lacks (must be none). */
  missing_keys: string[];
}

/** Open a database file read-only as our drizzle Db (for checks; nothing is written). */
function openReadOnly(file: string): Db {
  const client = new Database(file, { readonly: true, fileMustExist: true });
  return drizzle({ client, schema }) as Db;
}

/** Integrity, the audit chain with this keyring, and whether the keyring has every data key. */
export function checkDatabaseFile(file: string, keys: KeyringStore, clock: Clock): BackupCheck {
  let db: Db;
  try {
    db = openReadOnly(file);
  } catch (err) {
    throw new StartupError(`${file} is not a readable SQLite database (${(err as Error).message})`);
  }
  try {
    const integrity = String(db.$client.pragma("integrity_check", { simple: true }));
    const tables = db.$client
      .prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('audit_log', 'members', 'profiles')",
      )
      .pluck()
      .all() as string[];
    if (tables.length < 3)
      throw new StartupError(`${file} is not a Sekisho database (no members/audit tables)`);
    const result = new AuditLog({ db, keys, clock }).verify();
    const members = db.$client.prepare("SELECT count(*) FROM members").pluck().get() as number;
    const used = db.$client.prepare("SELECT DISTINCT key_id FROM profiles").pluck().all() as string[];
    const keyring = keys.get();
    return {
      integrity,
      audit: {
        ok: result.ok,
        entries: result.entries,
        ...(result.firstBad ? { first_bad: result.firstBad } : {}),
      },
      members,
      missing_keys: used.filter((id) => !keyring.dataKey(id)),
    };
  } finally {
    db.$client.close();
  }
}

export async function backupDatabase(
  db: Db,
  file: string,
  deps: { keys: KeyringStore; clock: Clock; onProgress?: (done: number, total: number) => void },
): Promise<{ file: string; bytes: number; pages: number; check: BackupCheck }> {
  const target = path.resolve(file);
  if (fs.existsSync(target)) throw new StartupError(`${target} exists; refusing to overwrite it`);
  if (!fs.existsSync(path.dirname(target)))
    throw new StartupError(`${path.dirname(target)} does not exist; create the backup directory first`);
  const partial = `${target}.partial`;
  fs.rmSync(partial, { force: true });
  // Owner-only from the first byte (the copy holds what the database holds).
  fs.closeSync(fs.openSync(partial, "w", 0o600));
  let pages = 0;
  try {
    const result = await db.$client.backup(partial, {
      progress: ({ totalPages, remainingPages }) => {
        pages = totalPages;
        deps.onProgress?.(totalPages - remainingPages, totalPages);
        return 256; // pages per step: the server's writes interleave between steps
      },
    });
    pages = result.totalPages;
    // A backup of a WAL database comes out in WAL mode; as a file at rest it is one file.
    const copy = new Database(partial);
    copy.pragma("journal_mode = DELETE");
    copy.close();
    const check = checkDatabaseFile(partial, deps.keys, deps.clock);
    if (check.integrity !== "ok")
      throw new StartupError(`the copy failed its integrity check: ${check.integrity}`);
    fs.renameSync(partial, target);
    return { file: target, bytes: fs.statSync(target).size, pages, check };
  } catch (err) {
    fs.rmSync(partial, { force: true });
    throw err;
  }
}

/**
 * Put a backup in place of the data dir's database. Refused while a server runs on the data dir,
 * and refused unless the backup is intact, its audit chain verifies with this keyring and the
 * keyring has every data key its profiles use (a backup restored beside the wrong keyring is
 * unreadable). The database it replaces is kept beside it (`sekisho.db.before-restore-<time>`);
 * migrations newer than the backup are applied.
 */
export function restoreDatabase(
  file: string,
  deps: {
    dbFile: string;
    dataDir: string;
    keys: KeyringStore;
    clock: Clock;
    /**
     * Restore even though the backup's audit chain doesn't verify (every backup of a database
     * whose log was tampered with is so): the operator's explicit choice, recorded.
     */
    acceptBrokenAudit?: boolean;
  },
): { restored: string; previous: string | null; check: BackupCheck } {
  const source = path.resolve(file);
  if (!fs.existsSync(source)) throw new StartupError(`no such file: ${source}`);
  const pid = runningServer(deps.dataDir);
  if (pid !== null)
    throw new StartupError(`a Sekisho server (pid ${pid}) is running on ${deps.dataDir}: stop it first`);
  const check = checkDatabaseFile(source, deps.keys, deps.clock);
  if (check.integrity !== "ok")
    throw new StartupError(`${source} failed its integrity check: ${check.integrity}`);
  if (!check.audit.ok && !deps.acceptBrokenAudit)
    throw new StartupError(
      `${source}: its audit log does not verify with this keyring (entry #${check.audit.first_bad?.seq}: ${check.audit.first_bad?.problem}); is SEKISHO_KEYRING_FILE the keyring that goes with this backup? If it is, and the log was broken before the backup, --accept-broken-audit restores it anyway (recorded)`,
    );
  if (check.missing_keys.length > 0)
    throw new StartupError(
      `${source}: member data is encrypted under keys this keyring lacks (${check.missing_keys.join(", ")}); restore the keyring backup made after the last rotation`,
    );

  fs.mkdirSync(deps.dataDir, { recursive: true, mode: 0o700 });
  let previous: string | null = null;
  if (fs.existsSync(deps.dbFile)) {
    // Fold the old database's WAL into it, then move it (and any leftovers) aside: a stale -wal
    // next to the restored file would be replayed into it.
    const old = new Database(deps.dbFile);
    old.pragma("wal_checkpoint(TRUNCATE)");
    old.close();
    previous = `${deps.dbFile}.before-restore-${deps.clock.now().toISOString().replace(/[:.]/g, "-")}`;
    fs.renameSync(deps.dbFile, previous);
    for (const suffix of ["-wal", "-shm"]) fs.rmSync(`${deps.dbFile}${suffix}`, { force: true });
  }
  const partial = `${deps.dbFile}.restore-partial`;
  fs.copyFileSync(source, partial);
  fs.chmodSync(partial, 0o600);
  fs.renameSync(partial, deps.dbFile);
  const db = openDatabase(deps.dbFile);
  try {
    migrateDatabase(db);
  } finally {
    db.$client.close();
  }
  return { restored: deps.dbFile, previous, check };
}
