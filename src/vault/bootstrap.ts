import fs from "node:fs";
import type { Logger } from "pino";
import type { Clock } from "../clock.js";
import { type Config, checkKeyringPlacement } from "../config.js";
import { StartupError } from "../errors.js";
import { Keyring, KeyringStore, writeKeyringFile } from "./keyring.js";
import { databaseHasData } from "./keyring-check.js";

/**
 * Load the keyring for the server or CLI. Production: SEKISHO_KEYRING_FILE outside the data dir,
 * or refuse to start. Elsewhere: a development keyring is generated into the data dir on first
 * start, with a loud warning every time it is used.
 */
export function openKeyring(config: Config, clock: Clock, logger: Logger): KeyringStore {
  checkKeyringPlacement(config);
  if (config.devKeyring) {
    if (!fs.existsSync(config.keyringFile)) {
      // Only for a new database: one with data was written with another keyring (a production
      // data directory reached without SEKISHO_KEYRING_FILE, say), and new keys would spoil it.
      if (databaseHasData(config.dbFile)) {
        throw new StartupError(
          `the database ${config.dbFile} holds data, but there is no keyring for it: set SEKISHO_KEYRING_FILE ` +
            "to its keyring (and NODE_ENV=production for a production data directory). A development keyring " +
            "is made only for a new, empty database; nothing was written.",
        );
      }
      writeKeyringFile(config.keyringFile, Keyring.generate(clock.now()));
      logger.warn({ file: config.keyringFile }, "generated a DEVELOPMENT keyring");
    }
    logger.warn(
      { file: config.keyringFile },
      "!!! DEVELOPMENT KEYRING: the keys sit beside the database they protect, so a copy of the data " +
        "directory decrypts everything. Never use this in production: set SEKISHO_KEYRING_FILE. !!!",
    );
  } else if (!fs.existsSync(config.keyringFile)) {
    throw new StartupError(
      `SEKISHO_KEYRING_FILE ${config.keyringFile} does not exist; create it with \`npx sekisho keys generate --out ${config.keyringFile}\``,
    );
  } else if (config.production && (fs.statSync(config.keyringFile).mode & 0o077) !== 0) {
    logger.warn({ file: config.keyringFile }, "keyring file is readable by group or others; chmod 600 it");
  }
  return KeyringStore.fromFile(config.keyringFile);
}
