import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import supertest from "supertest";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { updateMember } from "../src/members/member-row.js";
import { Keyring, writeKeyringFile } from "../src/vault/keyring.js";
import { keyringGaps } from "../src/vault/keyring-check.js";
import { makeApp, register, STRONG_PASSWORD, type TestApp } from "./support/app.js";

const BIN = path.resolve(import.meta.dirname, "../bin/sekisho.mjs");

/** The real `sekisho` command with exactly this environment (nothing inherited but PATH). */
function sekisho(args: string[], env: Record<string, string>, input?: string) {
  const run = spawnSync(process.execPath, [BIN, ...args], {
    encoding: "utf8",
    env: { PATH: process.env.PATH ?? "", LOG_LEVEL: "warn", ...env },
    timeout: 60_000,
    ...(input !== undefined ? { input } : {}),
  });
  return { status: run.status, stdout: run.stdout, stderr: run.stderr };
}

describe("the keyring must be the database's own", () => {
  let t: TestApp;
  beforeEach(async () => {
    t = makeApp();
    expect((await register(t.app, { login_id: "fit.member" })).status).toBe(201);
  });
  afterEach(() => t.close());

  const auditHead = () => t.s.db.$client.prepare("SELECT max(seq) FROM audit_log").pluck().get();

  it("a command run on a data directory with data but without its keyring setting makes no development keyring and writes nothing", () => {
    const before = auditHead();
    // The operator forgot SEKISHO_KEYRING_FILE (and NODE_ENV=production).
    const run = sekisho(
      ["admins", "add", "--login-id", "ops.two"],
      { SEKISHO_DATA_DIR: t.dir },
      "another-admin password 99\n",
    );
    expect(run.status).not.toBe(0);
    expect(run.stderr).toMatch(/holds data, but there is no keyring for it/);
    expect(fs.existsSync(path.join(t.dir, "keyring.dev.json"))).toBe(false);
    expect(auditHead()).toBe(before);
    expect(
      t.s.db.$client.prepare("SELECT count(*) FROM members WHERE login_id = 'ops.two'").pluck().get(),
    ).toBe(0);
  });

  it("a command run with another keyring names what it lacks and writes nothing", async () => {
    const before = auditHead();
    const other = path.join(t.dir, "other-keyring.json");
    writeKeyringFile(other, Keyring.generate(t.clock.now(), { pepper: true }));
    const run = sekisho(
      ["admins", "add", "--login-id", "ops.two"],
      {
        NODE_ENV: "test",
        SEKISHO_DATA_DIR: t.dir,
        SEKISHO_KEYRING_FILE: other,
      },
      "another-admin password 99\n",
    );
    expect(run.status).not.toBe(0);
    expect(run.stderr).toMatch(/is not the one this database was written with: it lacks audit key/);
    expect(auditHead()).toBe(before);
    // The right keyring lacks nothing.
    expect(keyringGaps(t.s.db, t.s.keys.get())).toEqual([]);
    // Vault values outside the profiles count too (a TOTP secret under a key nobody has).
    const member = t.s.db.$client.prepare("SELECT id FROM members LIMIT 1").pluck().get();
    t.s.db.$client
      .prepare("INSERT INTO totp_factors (member_id, secret, updated_at) VALUES (?, ?, 0)")
      .run(member, "v1.dk_gone00000000.AAAA.BBBB");
    expect(keyringGaps(t.s.db, t.s.keys.get())).toEqual(["data key dk_gone00000000 (of TOTP secrets)"]);
    expect(keyringGaps(t.s.db, Keyring.generate(t.clock.now())).join(" ")).toMatch(/audit key .*data key/);
    // Every key but the blind-index one, which row seals are made with: the seals don't hold (told
    // from five members on: with fewer, one changed row would look like another keyring).
    t.s.db.$client.prepare("DELETE FROM totp_factors").run();
    for (let i = 0; i < 5; i++)
      await t.s.registrations.register(
        { loginId: `fit.member${i}`, password: STRONG_PASSWORD, profile: {} },
        { ip: null, requestId: null },
      );
    const k = t.s.keys.get();
    const otherBlind = new Keyring({
      dataKeys: k.dataKeys,
      auditKeys: k.auditKeys,
      peppers: k.peppers,
      signingKeys: k.signingKeys,
      blindIndexKey: { id: "bi_other000000", key: Buffer.alloc(32, 7) },
    });
    expect(keyringGaps(t.s.db, otherBlind)).toEqual(["blind-index key bi_other000000 (of row seals)"]);
    // The right keyring fits whatever the members' sealed columns say (every one of them is read:
    // here the newest five verified their address).
    for (const id of t.s.db.$client.prepare("SELECT id FROM members").pluck().all() as string[])
      updateMember(t.s.db, t.s.seals, id, { emailVerified: true });
    expect(keyringGaps(t.s.db, t.s.keys.get())).toEqual([]);
  });

  it("a new, empty data directory still gets its development keyring", () => {
    const dir = fs.mkdtempSync(path.join(t.dir, "fresh-"));
    const run = sekisho(["audit", "verify"], { SEKISHO_DATA_DIR: dir });
    expect(run.status, run.stderr).toBe(0);
    expect(fs.existsSync(path.join(dir, "keyring.dev.json"))).toBe(true);
  });

  it("/readyz fails when the keyring file is gone or broken, though the server still holds its keys", async () => {
    expect((await supertest(t.app).get("/readyz")).status).toBe(200);
    const saved = fs.readFileSync(t.s.config.keyringFile);
    fs.writeFileSync(t.s.config.keyringFile, "{ truncated");
    const broken = await supertest(t.app).get("/readyz");
    expect(broken.status).toBe(503);
    expect(broken.body.checks).toEqual({ database: "ok", keys: "failed" });
    fs.rmSync(t.s.config.keyringFile);
    expect((await supertest(t.app).get("/readyz")).status).toBe(503);
    fs.writeFileSync(t.s.config.keyringFile, saved);
    expect((await supertest(t.app).get("/readyz")).status).toBe(200);
  });
});
