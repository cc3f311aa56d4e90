import Database from "better-sqlite3";
import { drizzle } from "drizzle-orm/better-sqlite3";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { AuditLog } from "../src/audit/log.js";
import * as schema from "../src/db/schema.js";
import { makeApp, post, register, STRONG_PASSWORD, signIn, type TestApp } from "./support/app.js";
import { runCli } from "./support/cli.js";

/** An attacker with the database file can drop the triggers; these tests do, then edit. */
function dropTriggers(t: TestApp) {
  t.s.db.$client.exec("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;");
}

describe("tamper-evident audit log", () => {
  let t: TestApp;
  beforeEach(async () => {
    t = makeApp();
    await register(t.app, { login_id: "audit.member" });
    await post(t.app, "/api/v1/login", { login_id: "audit.member", password: "not the right one" });
    await signIn(t.app, "audit.member");
    t.s.audit.append({ action: "test.marker", outcome: "info", actorType: "system", details: { n: 4 } });
    t.s.audit.append({ action: "test.marker", outcome: "info", actorType: "system", details: { n: 5 } });
  });
  afterEach(() => t.close());

  it("records registration, failed and successful sign-ins in one intact chain", () => {
    const actions = [...t.s.audit.iterate()].map((e) => `${e.action}:${e.outcome}`);
    expect(actions).toEqual([
      "member.registered:success",
      "login.password:failure",
      "login.password:success",
      "test.marker:info",
      "test.marker:info",
    ]);
    expect(t.s.audit.verify()).toMatchObject({ ok: true, entries: 5, head: { seq: 5 } });
  });

  it("an entry whose text isn't well-formed Unicode still verifies, and so does the chain after it", () => {
    // A lone surrogate that got past a caller's validation: SQLite would store it as bytes that
    // read back otherwise, and the entry (and with it the chain) would never verify again.
    t.s.audit.append({
      action: "test.surrogate",
      outcome: "info",
      actorType: "system",
      reason: "x\ud800y",
      requestId: "\udc00abc",
      details: { note: "z\ud800" },
    });
    t.s.audit.append({ action: "test.marker", outcome: "info", actorType: "system" });
    expect(t.s.audit.verify()).toMatchObject({ ok: true, entries: 7 });
    const entry = [...t.s.audit.iterate()].find((e) => e.action === "test.surrogate");
    expect(entry?.reason).toBe("x\ufffdy");
    expect(JSON.parse(entry?.details ?? "{}")).toEqual({ note: "z\ud800" });
  });

  it("SQLite refuses UPDATE and DELETE on the audit log", () => {
    expect(() => t.s.db.$client.exec("UPDATE audit_log SET outcome = 'success' WHERE seq = 2")).toThrow(
      /append-only/,
    );
    expect(() => t.s.db.$client.exec("DELETE FROM audit_log WHERE seq = 2")).toThrow(/append-only/);
  });

  it("an edited entry breaks verification, naming that entry", () => {
    // Attack: turn the failed sign-in into a success to hide a break-in attempt.
    dropTriggers(t);
    t.s.db.$client.exec("UPDATE audit_log SET outcome = 'success', reason = NULL WHERE seq = 2");
    expect(t.s.audit.verify()).toMatchObject({
      ok: false,
      firstBad: { seq: 2, problem: expect.stringMatching(/MAC/) },
    });
  });

  it("an edit with the MAC recomputed without the key still breaks verification", () => {
    // Attack: rewrite an entry and paste in a MAC computed with a guessed key.
    dropTriggers(t);
    t.s.db.$client.exec(
      "UPDATE audit_log SET ip = '203.0.113.9', mac = 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' WHERE seq = 3",
    );
    expect(t.s.audit.verify().firstBad?.seq).toBe(3);
  });

  it("a deleted entry breaks verification at the gap", () => {
    dropTriggers(t);
    t.s.db.$client.exec("DELETE FROM audit_log WHERE seq = 2");
    expect(t.s.audit.verify()).toMatchObject({
      ok: false,
      firstBad: { seq: 3, problem: "entries 2..2 are missing" },
    });
  });

  it("deleted and renumbered entries break verification (the chain links no longer fit)", () => {
    dropTriggers(t);
    t.s.db.$client.exec(
      "DELETE FROM audit_log WHERE seq = 2; UPDATE audit_log SET seq = seq - 1 WHERE seq > 2;",
    );
    expect(t.s.audit.verify()).toMatchObject({ ok: false, firstBad: { seq: 2 } });
  });

  it("a cut-off end of the log breaks verification, unless SQLite's own record of it is edited too", () => {
    // Attack: remove the newest entries (what someone just did), then put the triggers back.
    dropTriggers(t);
    t.s.db.$client.exec("DELETE FROM audit_log WHERE seq > 3");
    t.s.audit.ensureAppendOnly();
    expect(t.s.audit.verify()).toMatchObject({
      ok: false,
      entries: 3,
      firstBad: { seq: 4, problem: "entries 4..5 are missing (cut off the end)" },
    });
    expect(runCli(t, ["audit", "verify"]).status).toBe(1);
    // A careful attacker edits that record too: the chain alone can't tell (see the next test).
    t.s.db.$client.exec("UPDATE sqlite_sequence SET seq = 3 WHERE name = 'audit_log'");
    expect(t.s.audit.verify()).toMatchObject({ ok: true, entries: 3 });
  });

  it("a log growing while it is verified (a live server) is intact, not cut off", () => {
    // Another process appends while the walk is under way (the server signing members in).
    const client = new Database(t.s.db.$client.name);
    const other = new AuditLog({ db: drizzle({ client, schema }) as never, keys: t.s.keys, clock: t.clock });
    const walk = t.s.audit.iterate.bind(t.s.audit);
    const spy = vi.spyOn(t.s.audit, "iterate").mockImplementation(function* (after?: number) {
      let n = 0;
      for (const entry of walk(after)) {
        if (++n === 2)
          for (let i = 0; i < 3; i++)
            other.append({ action: "test.live", outcome: "info", actorType: "system" });
        yield entry;
      }
    });
    try {
      expect(t.s.audit.verify()).toMatchObject({ ok: true });
    } finally {
      spy.mockRestore();
      client.close();
    }
    expect(t.s.audit.verify()).toMatchObject({ ok: true, entries: 8 });
  });

  it("an emptied log in a database with members breaks verification", () => {
    dropTriggers(t);
    t.s.db.$client.exec("DELETE FROM audit_log; DELETE FROM sqlite_sequence WHERE name = 'audit_log'");
    expect(t.s.audit.verify()).toMatchObject({
      ok: false,
      entries: 0,
      firstBad: { seq: 1, problem: "the log is empty, but members exist" },
    });
  });

  it("the running server notices at its next entry that entries it wrote were cut off the end, and raises a critical alert", async () => {
    // What the server wrote last: an admin-style read of the member, say.
    t.s.audit.append({ action: "pii.read", outcome: "success", actorType: "admin", details: { n: 6 } });
    // Attack from another process with the file: cut the tail, cover the tracks, put the triggers back.
    const outside = new Database(t.s.db.$client.name);
    outside.exec(`DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq > 4;
      UPDATE sqlite_sequence SET seq = 4 WHERE name = 'audit_log';`);
    outside.close();
    t.s.audit.ensureAppendOnly();
    expect(t.s.audit.verify()).toMatchObject({ ok: true, entries: 4 }); // the database alone can't tell
    // The server's next entry (any: here a failed sign-in) finds its last one gone.
    await post(t.app, "/api/v1/login", { login_id: "audit.member", password: "not the right one" });
    const alert = t.s.db.$client
      .prepare("SELECT kind, severity, details FROM alerts WHERE kind = 'audit_truncated'")
      .get() as { kind: string; severity: string; details: string } | undefined;
    expect(alert?.severity).toBe("critical");
    expect(JSON.parse(alert?.details ?? "{}")).toMatchObject({ missing_from_seq: 6, head_seq_found: 4 });
    // Said once: the entries after it chain on as usual.
    await post(t.app, "/api/v1/login", { login_id: "audit.member", password: "not the right one" });
    expect(
      t.s.db.$client.prepare("SELECT count(*) FROM alerts WHERE kind = 'audit_truncated'").pluck().get(),
    ).toBe(1);
    expect(t.s.audit.verify().ok).toBe(true);
  });

  /** Cut the log from `seq` on from another connection, cover the tracks, put the triggers back. */
  const cutTail = (seq: number) => {
    const outside = new Database(t.s.db.$client.name);
    outside.exec(`DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq >= ${seq};
      UPDATE sqlite_sequence SET seq = ${seq - 1} WHERE name = 'audit_log';`);
    outside.close();
    t.s.audit.ensureAppendOnly();
  };
  const truncatedAlert = () =>
    JSON.parse(
      (t.s.db.$client.prepare("SELECT details FROM alerts WHERE kind = 'audit_truncated'").pluck().get() as
        | string
        | undefined) ?? "null",
    ) as Record<string, unknown> | null;

  it("a cut is noticed even when the server's next entry is written inside another transaction (a sign-in), reusing the cut seq", async () => {
    // What the server wrote last, in a transaction of its own.
    const last = t.s.audit.append({ action: "pii.read", outcome: "success", actorType: "admin" });
    cutTail(last);
    // A member signs in: the session and its entry in one transaction; the entry takes the cut seq.
    await signIn(t.app, "audit.member");
    expect(t.s.db.$client.prepare("SELECT max(seq) FROM audit_log").pluck().get()).toBeGreaterThanOrEqual(
      last,
    );
    // The next entry of the server's own still finds its last one gone.
    t.s.audit.append({ action: "test.marker", outcome: "info", actorType: "system" });
    expect(truncatedAlert()).toMatchObject({ missing_from_seq: last });
  });

  it("a cut of entries written inside sign-ins' transactions is noticed when the next such transaction commits", async () => {
    // Attack (from a review): cut the last sign-in's entries and let the next sign-in's entry take
    // the seq: only entries of the server's own transactions were checked, so nothing was seen.
    t.s.audit.append({ action: "test.marker", outcome: "info", actorType: "system" });
    await signIn(t.app, "audit.member");
    const cutFrom = t.s.db.$client.prepare("SELECT max(seq) FROM audit_log").pluck().get() as number;
    cutTail(cutFrom);
    await signIn(t.app, "audit.member");
    expect(truncatedAlert()).toMatchObject({ missing_from_seq: cutFrom });
  });

  it("ordinary work, with entries written inside other transactions, raises no truncation alarm", async () => {
    const fresh = makeApp();
    try {
      await register(fresh.app, { login_id: "other.member" });
      // (registration's entry is written inside its transaction: known to be committed only later)
      fresh.s.audit.append({ action: "test.marker", outcome: "info", actorType: "system" });
      await post(fresh.app, "/api/v1/login", { login_id: "other.member", password: "not the right one" });
      expect(fresh.s.db.$client.prepare("SELECT count(*) FROM alerts").pluck().get()).toBe(0);
    } finally {
      fresh.close();
    }
  });

  it("puts back dropped append-only triggers, and ones replaced by look-alikes that do nothing", () => {
    expect(t.s.audit.ensureAppendOnly()).toEqual([]); // as the migrations made them
    dropTriggers(t);
    expect(t.s.audit.ensureAppendOnly()).toEqual(["audit_log_no_update", "audit_log_no_delete"]);
    expect(() => t.s.db.$client.exec("DELETE FROM audit_log WHERE seq = 2")).toThrow(/append-only/);
    expect(t.s.audit.ensureAppendOnly()).toEqual([]);
    // Attack: same name, no teeth; and a trigger of one's own on the log (it could rewrite what comes in).
    t.s.db.$client.exec(`DROP TRIGGER audit_log_no_delete;
      CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT 1; END;
      CREATE TRIGGER audit_log_quiet AFTER INSERT ON audit_log BEGIN SELECT 1; END;
      CREATE TRIGGER skip_admin BEFORE INSERT ON AUDIT_LOG WHEN NEW.action LIKE 'admin.%' BEGIN SELECT RAISE(IGNORE); END;`);
    expect(t.s.audit.ensureAppendOnly().sort()).toEqual([
      "audit_log_no_delete",
      "audit_log_quiet",
      "skip_admin",
    ]);
    // The one that silently dropped chosen entries (written ON AUDIT_LOG) is gone too.
    const seq = t.s.audit.append({ action: "admin.member_viewed", outcome: "success", actorType: "admin" });
    expect(t.s.db.$client.prepare("SELECT action FROM audit_log WHERE seq = ?").pluck().get(seq)).toBe(
      "admin.member_viewed",
    );
    expect(() => t.s.db.$client.exec("DELETE FROM audit_log WHERE seq = 2")).toThrow(/append-only/);
    expect(
      t.s.db.$client
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_log'")
        .pluck()
        .all(),
    ).toEqual(expect.arrayContaining(["audit_log_no_update", "audit_log_no_delete"]));
    expect(t.s.audit.ensureAppendOnly()).toEqual([]);
  });

  it("an entry a trigger skips silently fails what needed it: no PII read goes unaudited", () => {
    // Attack while the server runs (after its start-up check): skip the entries of PII reads.
    t.s.db.$client.exec(
      "CREATE TRIGGER skip_reads BEFORE INSERT ON audit_log WHEN NEW.action = 'pii.read' BEGIN SELECT RAISE(IGNORE); END;",
    );
    const member = t.s.db.$client.prepare("SELECT id FROM members LIMIT 1").pluck().get() as string;
    expect(() =>
      t.s.vault.read(member, ["email"], { actorType: "admin", actorId: "m_x", reason: "test" }),
    ).toThrow(/was not stored/);
    expect(t.s.audit.verify().ok).toBe(true);
  });

  it("reordered entries break verification", () => {
    // Attack: swap two entries' contents so events appear in another order.
    dropTriggers(t);
    t.s.db.$client.exec(`
      UPDATE audit_log SET seq = -4 WHERE seq = 4;
      UPDATE audit_log SET seq = 4 WHERE seq = 5;
      UPDATE audit_log SET seq = 5 WHERE seq = -4;`);
    expect(t.s.audit.verify()).toMatchObject({ ok: false, firstBad: { seq: 4 } });
  });

  it("`sekisho audit verify` exits 0 on an intact log and 1 naming the first bad entry", () => {
    const good = runCli(t, ["audit", "verify"]);
    expect(good.stderr).not.toMatch(/Error/);
    expect(good.status).toBe(0);
    expect(good.stdout).toMatch(/intact: 5 entries/);
    dropTriggers(t);
    t.s.db.$client.exec("UPDATE audit_log SET details = '{\"n\":99}' WHERE seq = 4");
    const bad = runCli(t, ["audit", "verify", "--json"]);
    expect(bad.status).toBe(1);
    expect(JSON.parse(bad.stdout)).toMatchObject({ ok: false, first_bad: { seq: 4 } });
  });

  it("`sekisho audit export` streams every entry as a JSON line, after a given seq too", () => {
    const all = runCli(t, ["audit", "export"]);
    expect(all.status).toBe(0);
    const lines = all.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(lines.map((l) => l.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(lines[3]).toMatchObject({ action: "test.marker", actor_type: "system", details: '{"n":4}' });
    expect(Object.keys(lines[0])).toEqual([
      "seq",
      "at",
      "action",
      "outcome",
      "actor_type",
      "actor_id",
      "member_id",
      "reason",
      "ip",
      "request_id",
      "details",
      "key_id",
      "prev_mac",
      "mac",
    ]);
    const tail = runCli(t, ["audit", "export", "--after", "3"]);
    expect(
      tail.stdout
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l).seq),
    ).toEqual([4, 5]);
    expect(all.stdout).not.toContain(STRONG_PASSWORD);
    // A shipping script's empty or garbled state must fail, not ship nothing with exit 0.
    for (const bad of ["", "abc", "-1", "3.5"]) {
      const refused = runCli(t, ["audit", "export", "--after", bad]);
      expect(refused.status, bad).not.toBe(0);
      expect(refused.stdout, bad).toBe("");
      expect(refused.stderr, bad).toMatch(/a sequence number/);
    }
  });
});
