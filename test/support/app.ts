import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import type { Express } from "express";
import supertest from "supertest";
import { MovableClock } from "../../src/clock.js";
import { loadConfig } from "../../src/config.js";
import { migrateDatabase, openDatabase } from "../../src/db/connection.js";
import { createApp } from "../../src/http/app.js";
import { createLogger } from "../../src/logger.js";
import { buildServices, type Services } from "../../src/services.js";
import { Keyring, KeyringStore, writeKeyringFile } from "../../src/vault/keyring.js";

export const ORIGIN = "http://localhost:3000";
export const STRONG_PASSWORD = "correct horse battery staple 42";

export interface TestApp {
  app: Express;
  s: Services;
  clock: MovableClock;
  dir: string;
  /** Every log line the app wrote, as text. */
  logs: string[];
  close(): void;
}

/**
 * A Sekisho app on its own temp-dir database, with a movable clock and a keyring file in the
 * temp dir. argon2 is cheap here (m=1 MiB, t=1) except where a test says otherwise.
 */
export function makeApp(env: Record<string, string> = {}, opts: { clockStart?: Date } = {}): TestApp {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sekisho-test-"));
  const config = loadConfig({
    NODE_ENV: "test",
    SEKISHO_DATA_DIR: dir,
    SEKISHO_KEYRING_FILE: path.join(dir, "keyring.json"),
    SEKISHO_ARGON2_MEMORY_KIB: "1024",
    SEKISHO_ARGON2_TIME_COST: "1",
    LOG_LEVEL: "debug",
    ...env,
  });
  const clock = new MovableClock(opts.clockStart ?? "2026-06-01T09:00:00Z");
  writeKeyringFile(config.keyringFile, Keyring.generate(clock.now()));
  const keys = KeyringStore.fromFile(config.keyringFile, () => clock.now().getTime());
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(String(chunk));
      cb();
    },
  });
  const logger = createLogger(config.logLevel, sink);
  const db = openDatabase(config.dbFile);
  migrateDatabase(db);
  const s = buildServices({ config, db, clock, keys, logger });
  return {
    app: createApp(s),
    s,
    clock,
    dir,
    logs,
    close() {
      db.$client.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export const PROFILE = {
  name: "山田 太郎",
  email: "taro.yamada@example.jp",
  phone: "090-1234-5678",
  postal_code: "100-0001",
  address: "東京都千代田区千代田1-1 皇居外苑",
  birth_date: "1984-07-15",
  gender: "male",
} as const;

/** A JSON POST from our own origin. */
export function post(app: Express, url: string, body: unknown, cookie?: string) {
  const req = supertest(app).post(url).set("Origin", ORIGIN).set("Content-Type", "application/json");
  if (cookie) req.set("Cookie", cookie);
  return req.send(JSON.stringify(body));
}

export async function register(
  app: Express,
  body: { login_id?: string; password?: string; profile?: Record<string, string> } = {},
) {
  const res = await post(app, "/api/v1/registrations", {
    password: STRONG_PASSWORD,
    profile: PROFILE,
    ...body,
  });
  return res;
}

/** Sign in and return the `sekisho_session=…` cookie pair. */
export async function signIn(app: Express, loginId: string, password = STRONG_PASSWORD): Promise<string> {
  const res = await post(app, "/api/v1/login", { login_id: loginId, password });
  if (res.status !== 200) throw new Error(`sign-in failed: ${res.status} ${res.text}`);
  return sessionCookie(res);
}

export function sessionCookie(res: { headers: Record<string, unknown> }): string {
  const raw = res.headers["set-cookie"];
  const list = Array.isArray(raw) ? (raw as string[]) : [];
  const cookie = list.find((c) => c.startsWith("sekisho_session="));
  if (!cookie) throw new Error("no session cookie");
  return cookie.split(";")[0] as string;
}

/** A page's language switch when it is a form (a second sign-in step): its address and fields. */
export function langSwitchIn(html: string): { action: string; fields: Record<string, string> } {
  const footer = html.slice(html.indexOf("<footer>"));
  const form = /<form method="post" action="([^"]+)">(.*?)<\/form>/s.exec(footer);
  if (!form) throw new Error("no language switch form in the page's footer");
  const fields: Record<string, string> = {};
  for (const m of (form[2] as string).matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)">/g))
    fields[m[1] as string] = (m[2] as string).replace(/&amp;/g, "&");
  return { action: (form[1] as string).replace(/&amp;/g, "&"), fields };
}
