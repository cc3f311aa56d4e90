import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { type BetterSQLite3Database, drizzle } from "drizzle-orm/better-sqlite3";
import { migrate } from "drizzle-orm/better-sqlite3/migrator";
import * as schema from "./schema.js";

export type Db = BetterSQLite3Database<typeof schema> & { $client: Database.Database };

export const MIGRATIONS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../drizzle");

/**
 * Open the SQLite database. WAL so readers never block the writer; foreign keys on;
 * secure_delete so freed pages are zeroed (old hashes and ciphertexts don't linger in free pages);
 * synchronous=NORMAL: in WAL mode a crash of the process loses nothing committed, a power loss at
 * most the last transactions (see docs/operations.md).
 */
export function openDatabase(file: string): Db {
  if (file !== ":memory:") {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    // Create the file owner-only; SQLite gives -wal and -shm the main file's permissions.
    if (!fs.existsSync(file)) fs.closeSync(fs.openSync(file, "a", 0o600));
  }
  const client = new Database(file);
  client.pragma("journal_mode = WAL");
  client.pragma("synchronous = NORMAL");
  client.pragma("foreign_keys = ON");
  client.pragma("secure_delete = ON");
  client.pragma("busy_timeout = 5000");
  return drizzle({ client, schema });
}

export function migrateDatabase(db: Db): void {
  migrate(db, { migrationsFolder: MIGRATIONS_DIR });
}

/** Told after each outermost transaction of inTransaction commits (see onCommit). */
const commitListeners = new WeakMap<object, Array<() => void>>();

/**
 * Have `listener` called after every outermost `inTransaction` on `db` commits (not after a
 * rollback, nor a nested one's savepoint). The audit log learns this way that its entries
 * written inside a caller's transaction are on disk.
 */
export function onCommit(db: Db, listener: () => void): void {
  const listeners = commitListeners.get(db.$client) ?? [];
  listeners.push(listener);
  commitListeners.set(db.$client, listeners);
}

/** Run fn in one `BEGIN IMMEDIATE` transaction: all of it lands, or none of it. */
export function inTransaction<T>(db: Db, fn: () => T): T {
  const outermost = !db.$client.inTransaction;
  const result = db.$client.transaction(fn).immediate();
  if (outermost) for (const listener of commitListeners.get(db.$client) ?? []) listener();
  return result;
}

/**
 * A statement prepared on first use and reused after (hot paths: the SQL is built and compiled
 * once, not per request). First use, not construction, so that migrations have run by then.
 */
export function lazyPrepared<T>(prepare: () => T): () => T {
  let stmt: T | undefined;
  return () => {
    stmt ??= prepare();
    return stmt;
  };
}

const versions = new WeakMap<Db, () => number>();

/**
 * SQLite's `data_version` on this connection: it changes when another connection — another
 * process, such as the `sekisho` CLI — commits, and only then. In-memory copies of rows (the
 * OIDC store's payloads, the client list) are dropped when it moves. Reading it takes a look at
 * the WAL index (~20 µs here), so it is read at most once every 5 ms: a commit by another process
 * is noticed within 5 ms, as if it had been made that much later.
 */
export function othersCommits(db: Db): () => number {
  let read = versions.get(db);
  if (!read) {
    const stmt = db.$client.prepare("PRAGMA data_version").pluck();
    let value = -1;
    let at = Number.NEGATIVE_INFINITY;
    read = () => {
      const now = performance.now();
      if (now - at >= 5 || now < at) {
        value = stmt.get() as number;
        at = now;
      }
      return value;
    };
    versions.set(db, read);
  }
  return read;
}
