import { spawnSync } from "node:child_process";
import path from "node:path";
import type { TestApp } from "./app.js";

const BIN = path.resolve(import.meta.dirname, "../../bin/sekisho.mjs");

/** The environment of a `sekisho` command working on a test app's data dir and keyring. */
export function cliEnv(t: TestApp, env: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: process.env.PATH ?? "",
    NODE_ENV: "test",
    SEKISHO_DATA_DIR: t.s.config.dataDir,
    SEKISHO_KEYRING_FILE: t.s.config.keyringFile,
    LOG_LEVEL: "warn",
    ...env,
  };
}

/** Run the real `sekisho` command against a test app's data dir and keyring. */
export function runCli(t: TestApp, args: string[], env: Record<string, string> = {}, input?: string) {
  const run = spawnSync(process.execPath, [BIN, ...args], {
    encoding: "utf8",
    ...(input !== undefined ? { input } : {}),
    env: cliEnv(t, env),
    timeout: 60_000,
  });
  return { status: run.status, stdout: run.stdout, stderr: run.stderr };
}
