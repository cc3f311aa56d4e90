import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { MovableClock } from "../src/clock.js";
import { loadConfig } from "../src/config.js";
import { migrateDatabase, openDatabase } from "../src/db/connection.js";
import { createLogger } from "../src/logger.js";
import { buildServices, type Services } from "../src/services.js";
import { Keyring, KeyringStore, writeKeyringFile } from "../src/vault/keyring.js";

export interface World {
  s: Services;
  clock: MovableClock;
  close(): void;
}

/**
 * Sekisho's services in-process for the benchmarks and the simulation: a temp-dir database, a
 * fresh keyring, a movable clock, cheap argon2 (what is measured is not hashing), silent logs.
 */
export function world(opts: { start: number; env?: Record<string, string>; dir?: string }): World {
  // An existing data dir (with its keyring) is used as it is; otherwise a fresh temp dir.
  const existing = opts.dir !== undefined;
  const dir = opts.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), "sekisho-bench-"));
  const config = loadConfig({
    NODE_ENV: "test",
    SEKISHO_DATA_DIR: dir,
    SEKISHO_KEYRING_FILE: path.join(dir, "keyring.json"),
    SEKISHO_ARGON2_MEMORY_KIB: "1024",
    SEKISHO_ARGON2_TIME_COST: "1",
    LOG_LEVEL: "silent",
    ...opts.env,
  });
  const clock = new MovableClock(opts.start);
  if (!existing) writeKeyringFile(config.keyringFile, Keyring.generate(clock.now()));
  const db = openDatabase(config.dbFile);
  migrateDatabase(db);
  const logger = createLogger("silent", new Writable({ write: (_c, _e, cb) => cb() }));
  const s = buildServices({ config, db, clock, keys: KeyringStore.fromFile(config.keyringFile), logger });
  return {
    s,
    clock,
    close() {
      db.$client.close();
      if (!existing) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
