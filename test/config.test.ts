import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { checkKeyringPlacement, loadConfig } from "../src/config.js";

describe("configuration", () => {
  it("has working defaults: 127.0.0.1:3000, ./data, issuer http://localhost:3000", () => {
    const c = loadConfig({});
    expect(c).toMatchObject({
      host: "127.0.0.1",
      port: 3000,
      issuer: "http://localhost:3000",
      secureCookies: false,
      passwordMinLength: 12,
      argon2: { memoryCost: 19456, timeCost: 2, parallelism: 1 },
    });
    expect(c.dataDir).toBe(path.resolve("data"));
    expect(c.devKeyring).toBe(true);
  });

  it("without an issuer, a port of its own is the issuer's port too (the pages' own origin is accepted)", () => {
    expect(loadConfig({ PORT: "3101" })).toMatchObject({ port: 3101, issuer: "http://localhost:3101" });
    expect(loadConfig({ PORT: "3101", SEKISHO_ISSUER: "https://id.example.jp" }).issuer).toBe(
      "https://id.example.jp",
    );
  });

  it("names the variable and the bad value", () => {
    expect(() => loadConfig({ PORT: "eighty" })).toThrow(/PORT: .*\(got "eighty"\)/);
    expect(() => loadConfig({ SEKISHO_ISSUER: "ftp://x" })).toThrow(/SEKISHO_ISSUER/);
    expect(() => loadConfig({ SEKISHO_PASSWORD_MIN_LENGTH: "4" })).toThrow(/SEKISHO_PASSWORD_MIN_LENGTH/);
    expect(() =>
      loadConfig({ SEKISHO_SESSION_IDLE_MINUTES: "9999", SEKISHO_SESSION_ABSOLUTE_HOURS: "1" }),
    ).toThrow(/SEKISHO_SESSION_IDLE_MINUTES/);
    // A backlog switch the hashing queue's own bound would always beat.
    expect(() =>
      loadConfig({ SEKISHO_HASH_QUEUE_MAX: "16", SEKISHO_THROTTLE_POLICY: '{"overloadBacklog":16}' }),
    ).toThrow(/SEKISHO_THROTTLE_POLICY: overloadBacklog \(16\) must be below SEKISHO_HASH_QUEUE_MAX/);
    expect(
      loadConfig({ SEKISHO_HASH_QUEUE_MAX: "16", SEKISHO_THROTTLE_POLICY: '{"overloadBacklog":8}' }).throttle,
    ).toMatchObject({ overloadBacklog: 8 });
  });

  it("an https issuer makes cookies Secure", () => {
    expect(loadConfig({ SEKISHO_ISSUER: "https://id.example.jp/" })).toMatchObject({
      issuer: "https://id.example.jp",
      secureCookies: true,
    });
  });

  it("in production refuses a missing keyring file setting and a keyring inside the data dir", () => {
    expect(() => checkKeyringPlacement(loadConfig({ NODE_ENV: "production" }))).toThrow(
      /SEKISHO_KEYRING_FILE/,
    );
    expect(() =>
      checkKeyringPlacement(
        loadConfig({
          NODE_ENV: "production",
          SEKISHO_DATA_DIR: "/srv/sekisho",
          SEKISHO_KEYRING_FILE: "/srv/sekisho/k.json",
        }),
      ),
    ).toThrow(/inside SEKISHO_DATA_DIR/);
    expect(() =>
      checkKeyringPlacement(
        loadConfig({
          NODE_ENV: "production",
          SEKISHO_DATA_DIR: "/srv/sekisho",
          SEKISHO_KEYRING_FILE: "/etc/sekisho/k.json",
        }),
      ),
    ).not.toThrow();
    // A keyring "outside" by a symlink that points back into the data dir is inside it.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sekisho-link-"));
    try {
      fs.mkdirSync(path.join(dir, "data"));
      fs.mkdirSync(path.join(dir, "etc"));
      fs.writeFileSync(path.join(dir, "data", "k.json"), "{}");
      fs.symlinkSync(path.join(dir, "data", "k.json"), path.join(dir, "etc", "k.json"));
      expect(() =>
        checkKeyringPlacement(
          loadConfig({
            NODE_ENV: "production",
            SEKISHO_DATA_DIR: path.join(dir, "data"),
            SEKISHO_KEYRING_FILE: path.join(dir, "etc", "k.json"),
          }),
        ),
      ).toThrow(/inside SEKISHO_DATA_DIR/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("the server refuses to start in production without an outside keyring, and says why", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sekisho-prod-"));
    try {
      const run = spawnSync(process.execPath, ["--import", "tsx", "src/main.ts"], {
        encoding: "utf8",
        env: { PATH: process.env.PATH ?? "", NODE_ENV: "production", SEKISHO_DATA_DIR: dir, PORT: "0" },
        timeout: 30_000,
      });
      expect(run.status).toBe(1);
      expect(run.stderr).toMatch(/NODE_ENV=production needs SEKISHO_KEYRING_FILE/);
      expect(fs.readdirSync(dir)).toEqual([]); // no database, no keyring written
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
