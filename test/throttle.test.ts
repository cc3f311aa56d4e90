import { isIP } from "node:net";
import v8 from "node:v8";
import vm from "node:vm";
import Database from "better-sqlite3";
import type { Express } from "express";
import supertest from "supertest";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Alerts } from "../src/audit/alerts.js";
import { auditLog } from "../src/db/schema.js";
import { restoreThrottleState, saveThrottleState } from "../src/throttle/carry-over.js";
import { MemoryCounterStore } from "../src/throttle/counters.js";
import { type Attempt, LoginGuard } from "../src/throttle/engine.js";
import { subnetOf } from "../src/throttle/network.js";
import { ProofOfWork } from "../src/throttle/proof-of-work.js";
import { makeApp, ORIGIN, post, register, STRONG_PASSWORD, type TestApp } from "./support/app.js";
import { solveChallenge } from "./support/pow.js";

/** A JSON sign-in from our own origin, as from `ip` (behind a trusted proxy, X-Forwarded-For). */
const loginFrom = (app: Express, ip: string, body: Record<string, unknown>) =>
  supertest(app)
    .post("/api/v1/login")
    .set("Origin", ORIGIN)
    .set("Content-Type", "application/json")
    .set("X-Forwarded-For", ip)
    .send(JSON.stringify(body));

describe("login-anomaly engine (LoginGuard)", () => {
  let t: TestApp;
  let guard: LoginGuard;
  beforeEach(() => {
    // A high floor for the service-wide detector: these tests look at one decision at a time.
    t = makeApp({ SEKISHO_THROTTLE_POLICY: JSON.stringify({ attackFloorPerMinute: 1000 }) });
    guard = t.s.guard;
  });
  afterEach(() => t.close());

  const attempt = (over: Partial<Attempt> = {}): Attempt => ({
    ip: "192.0.2.10",
    loginId: "victim",
    trustedDevice: false,
    kind: "password",
    password: "some password",
    ...over,
  });
  /** A fresh engine on the same database, as after a restart (empty counters). */
  const restartedGuard = () =>
    new LoginGuard({
      db: t.s.db,
      clock: t.clock,
      alerts: new Alerts({ db: t.s.db, clock: t.clock, audit: t.s.audit }),
      loginKey: (l) => t.s.guard.loginKey(l),
    });
  /** An engine whose service-wide detector fires at 100 failures in ten minutes (the floor, 10/min). */
  const detectingAtTen = () =>
    new LoginGuard({
      db: t.s.db,
      clock: t.clock,
      alerts: t.s.alerts,
      loginKey: (l) => t.s.guard.loginKey(l),
      policy: { attackFloorPerMinute: 10 },
    });
  /** An admitted attempt that failed. */
  const fail = (a: Attempt) => {
    const d = guard.assess(a);
    if (d.action === "allow") guard.settle(a, "failure");
    return d;
  };

  it("a known address goes first only a few times in ten minutes, right passwords or wrong, and not at all past its failures", () => {
    const first = (ip: string, loginId: string, queue: "door" | "hash" = "door") =>
      guard.fromKnownAddress(ip, loginId, { queue });
    const signedIn = (ip: string, loginId: string) => {
      const a = attempt({ ip, loginId });
      expect(guard.assess(a).action).toBe("allow");
      guard.settle(a, "success");
    };
    const HOME = "198.51.100.7";
    expect(first(HOME, "member.home")).toBe(false); // never signed in from there
    signedIn(HOME, "member.home");
    // Five in ten minutes for one ID at one address, per queue; then it waits like anyone.
    for (let i = 0; i < 5; i++) expect(first(HOME, "member.home"), String(i)).toBe(true);
    expect(first(HOME, "member.home")).toBe(false);
    expect(first(HOME, "member.home", "hash")).toBe(true);
    t.clock.advance(20 * 60_000);
    expect(first(HOME, "member.home")).toBe(true);
    // Attack: a handful of one's own accounts, each signed in once from one's address, sending
    // right passwords to keep the line ahead full: twenty an address, whichever IDs.
    const OWN = "203.0.113.50";
    for (let n = 0; n < 6; n++) signedIn(OWN, `own.${n}`);
    let granted = 0;
    for (let round = 0; round < 5; round++) for (let n = 0; n < 6; n++) if (first(OWN, `own.${n}`)) granted++;
    expect(granted).toBe(20);
    // Failures end it sooner: five wrong passwords from the address for the ID, and no more order.
    const FAILING = "192.0.2.77";
    signedIn(FAILING, "member.typo");
    for (let i = 0; i < 5; i++) fail(attempt({ ip: FAILING, loginId: "member.typo" }));
    expect(first(FAILING, "member.typo", "hash")).toBe(false);
  });

  it("allows, then slows one address on one account; Retry-After says truly when it may try again", () => {
    for (let i = 0; i < 5; i++) expect(fail(attempt()).action).toBe("allow");
    const first = guard.assess(attempt());
    expect(first).toMatchObject({ action: "slow", reasons: ["ip_login_failures"] });
    // More failures landing (from another path) make the pause longer.
    for (let i = 0; i < 2; i++) guard.settle(attempt(), "failure");
    const longer = guard.assess(attempt());
    expect(longer.retryAfterSeconds).toBeGreaterThan(first.retryAfterSeconds);
    // Honest: a second before Retry-After it is still refused; at Retry-After it is allowed.
    t.clock.advance((longer.retryAfterSeconds - 1) * 1000);
    expect(guard.assess(attempt()).action).toBe("slow");
    t.clock.advance(1000);
    expect(guard.assess(attempt()).action).toBe("allow");
    guard.settle(attempt(), "success");
    // A success clears the address's count for that account — not the account's own count of
    // failures, which an attacker elsewhere may be filling (clearing it would hand them guesses).
    expect(guard.assess(attempt()).reasons).not.toContain("ip_login_failures");
    guard.settle(attempt(), "neither");
  });

  it("counts a mail withheld for its target's sake against the caller like one sent: the caller's budget tells nothing about the target", () => {
    const unasked = (ip: string, target: string) =>
      guard.assessMailRequest({ ip, target, challengeable: false, serviceWide: false }).action;
    // A target mailed lately (three times this hour, from elsewhere) and one nobody mailed.
    for (let i = 0; i < 3; i++) expect(unasked(`198.51.100.${i + 1}`, "unasked:email:mailed")).toBe("allow");
    const budgetAfter = (target: string, ip: string) => {
      const first = unasked(ip, target); // withheld for the mailed target, sent for the other
      let allowed = 0;
      for (let i = 0; i < 20 && unasked(ip, `unasked:email:fresh.${ip}.${i}`) === "allow"; i++) allowed++;
      return { first, allowed };
    };
    const mailed = budgetAfter("unasked:email:mailed", "203.0.113.1");
    const unknown = budgetAfter("unasked:email:nobody", "2001:db8:1::1");
    expect(mailed.first).toBe("slow");
    expect(unknown.first).toBe("allow");
    expect(mailed.allowed).toBe(unknown.allowed);
  });

  it("a member's sign-in does not hand an attacker fresh guesses at the account", () => {
    for (let i = 0; i < 9; i++) fail(attempt({ ip: `198.51.100.${i}` }));
    const member = attempt({ ip: "192.0.2.200", password: "the right one" });
    expect(guard.assess(member).action).toBe("allow");
    guard.settle(member, "success");
    fail(attempt({ ip: "198.51.100.50" }));
    expect(guard.assess(attempt({ ip: "198.51.100.51" })).reasons).toContain("account_failures");
  });

  it("slows an account tried from many addresses (untrusted devices), by its login ID", () => {
    for (let i = 0; i < 10; i++) expect(fail(attempt({ ip: `198.51.100.${i}` })).action).toBe("allow");
    const d = guard.assess(attempt({ ip: "203.0.113.9" }));
    expect(d.action).toBe("slow");
    expect(d.reasons).toContain("account_failures");
    // Paying a proof-of-work buys nothing here: the account's hourly guesses stay capped.
    expect(guard.assess(attempt({ ip: "203.0.113.9", challengeSolved: true })).action).toBe("slow");
  });

  it("a password-only member at an address they signed in from is never kept out by failures from elsewhere", () => {
    // The member signed in from home once; then, all day, a wrong password every 6 minutes from
    // ever new addresses (paying every proof-of-work) tries to keep the account slowed and protected.
    const home = () => attempt({ ip: "192.0.2.77", password: "the right one", challengeSolved: true });
    expect(guard.assess(home()).action).toBe("allow");
    guard.settle(home(), "success");
    for (let minute = 0; minute < 24 * 60; minute += 6) {
      t.clock.advance(6 * 60_000);
      fail(attempt({ ip: `203.0.113.${(minute / 6) % 250}`, challengeSolved: true }));
      const d = guard.assess(home());
      expect(d.action, `minute ${minute}: ${d.reasons.join(",")}`).toBe("allow");
      guard.settle(home(), "success");
    }
    // Everyone else is still slowed by the account's count.
    expect(guard.assess(attempt({ ip: "203.0.113.251", challengeSolved: true })).reasons).toContain(
      "account_failures",
    );
  });

  it("protection starts at most once a day, however the day's count dips and climbs back", () => {
    // Attack: every hour, free failures from new addresses until refused or charged, so that the
    // day's sliding count, dipping below the threshold, is pushed over it again; the member tries
    // from a new address every half hour after.
    let refusedHours = 0;
    let n = 0;
    for (let hour = 0; hour < 96; hour++) {
      for (let i = 0; i < 12; i++) {
        const a = attempt({ ip: `198.51.${(n >> 8) & 255}.${n++ & 255}`, password: `guess ${n}` });
        if (fail(a).action !== "allow") break;
      }
      t.clock.advance(30 * 60_000);
      const member = attempt({ ip: `198.18.${hour}.1`, password: "the right one", challengeSolved: true });
      const d = guard.assess(member);
      if (d.action === "protect") refusedHours++;
      else guard.settle(member, "neither"); // (a new address each hour: none becomes known)
      t.clock.advance(30 * 60_000);
    }
    expect(refusedHours).toBeGreaterThan(0);
    expect(refusedHours).toBeLessThanOrEqual(4); // an hour a day at most
  });

  it("a protection lifted by another process (the operator's CLI) is seen at once", () => {
    vi.useFakeTimers({ toFake: ["performance"] });
    try {
      for (let i = 0; i < 30; i++) guard.settle(attempt({ ip: `198.51.100.${i}` }), "failure");
      expect(guard.assess(attempt({ ip: "192.0.2.1" })).action).toBe("protect");
      const other = new Database(t.s.config.dbFile);
      other.prepare("UPDATE account_protections SET lifted_at = ?").run(t.clock.now().getTime());
      other.close();
      vi.advanceTimersByTime(10);
      expect(guard.assess(attempt({ ip: "192.0.2.1" })).reasons).not.toContain("account_protected");
    } finally {
      vi.useRealTimers();
    }
  });

  it("after a protection was lifted (an admin, a reset), a new attack is protected against again the same day", () => {
    for (let i = 0; i < 30; i++) guard.settle(attempt({ ip: `198.51.100.${i}` }), "failure");
    expect(guard.assess(attempt({ ip: "192.0.2.1" })).action).toBe("protect");
    guard.lift("victim");
    t.clock.advance(2 * 3_600_000);
    for (let i = 0; i < 30; i++) guard.settle(attempt({ ip: `203.0.113.${i}` }), "failure");
    expect(guard.assess(attempt({ ip: "192.0.2.2" })).reasons).toContain("account_protected");
  });

  it("an address becomes known only by a completed sign-in, not by a right password with a second step due", () => {
    // Attack: the password alone is known; its sign-ins settle as `neither`.
    for (let i = 0; i < 10; i++) fail(attempt({ ip: `198.51.100.${i}` }));
    const thief = attempt({ ip: "203.0.113.66" });
    expect(guard.assess(thief).action).toBe("slow");
    t.clock.advance(2 * 3_600_000);
    expect(guard.assess(thief).action).toBe("allow");
    guard.settle(thief, "neither");
    for (let i = 0; i < 10; i++) fail(attempt({ ip: `198.51.100.${100 + i}` }));
    expect(guard.assess(thief).action).toBe("slow");
  });

  it("wrong passwords don't slow the second step; wrong codes do", () => {
    for (let i = 0; i < 12; i++) fail(attempt({ ip: `198.51.100.${i}`, challengeSolved: true }));
    const second = attempt({ ip: "192.0.2.77", kind: "second_factor" });
    expect(guard.assess(second).action).toBe("allow");
    guard.settle(second, "neither");
    for (let i = 0; i < 10; i++) fail(attempt({ ip: `198.51.100.${100 + i}`, kind: "second_factor" }));
    expect(guard.assess(second)).toMatchObject({
      action: "slow",
      reasons: ["account_second_factor_failures"],
    });
  });

  it("counts unknown login IDs exactly like known ones (the answer never says which exists)", async () => {
    await register(t.app, { login_id: "known.member" });
    for (const loginId of ["known.member", "no.such.member"]) {
      for (let i = 0; i < 10; i++) fail(attempt({ ip: `198.51.100.${i}`, loginId }));
    }
    const known = guard.assess(attempt({ ip: "203.0.113.1", loginId: "known.member" }));
    const unknown = guard.assess(attempt({ ip: "203.0.113.1", loginId: "no.such.member" }));
    expect(unknown).toEqual(known);
  });

  it("slows a busy address and its network, and blocks them after a day's worth of failures", () => {
    for (let i = 0; i < 30; i++) fail(attempt({ loginId: `account${i}`, password: `guess ${i}` }));
    expect(guard.assess(attempt({ loginId: "fresh", password: "another" }))).toMatchObject({
      action: "slow",
      reasons: ["ip_failures"],
    });
    // Another address of the same /24 is not slowed by the address's count, only by the network's.
    expect(guard.assess(attempt({ ip: "192.0.2.11", loginId: "fresh", password: "another" })).action).toBe(
      "allow",
    );
    for (let i = 0; i < 300; i++)
      guard.settle(attempt({ loginId: `account${i}`, password: `guess ${i}` }), "failure");
    const d = guard.assess(attempt({ loginId: "fresh" }));
    expect(d.action).toBe("block");
    expect(d.reasons).toContain("ip_failures_day");
    expect(t.s.alerts.list().map((a) => a.kind)).toContain("network_blocked");
    // The block is persisted: a fresh engine (empty counters) on the same database still blocks,
    // until the block expires.
    const restarted = restartedGuard();
    expect(restarted.assess(attempt({ loginId: "fresh" }))).toMatchObject({
      action: "block",
      reasons: ["ip_failures_day"],
    });
    t.clock.advance(48 * 3_600_000);
    expect(restarted.assess(attempt({ loginId: "fresh" })).action).toBe("allow");
  });

  it("protects an account after repeated failures: password sign-in refused from untrusted devices, persisted across a restart, lifted by an admin", () => {
    for (let i = 0; i < 30; i++) guard.settle(attempt({ ip: `198.51.100.${i}` }), "failure");
    const d = guard.assess(attempt({ ip: "203.0.113.50" }));
    expect(d.action).toBe("protect");
    expect(d.reasons).toContain("account_protected");
    // Restart: a fresh engine on the same database still protects the account.
    const restarted = restartedGuard();
    expect(restarted.assess(attempt({ ip: "203.0.113.51" })).action).toBe("protect");
    // The member's own device is never refused, and passkeys aren't refused by protection.
    expect(restarted.assess(attempt({ ip: "203.0.113.51", trustedDevice: true })).action).toBe("allow");
    expect(restarted.assess(attempt({ ip: "203.0.113.52", kind: "passkey", loginId: null })).action).toBe(
      "allow",
    );
    expect(restarted.lift("victim")).toBe(true);
    expect(restarted.assess(attempt({ ip: "203.0.113.53" })).action).toBe("allow");
    // Never permanent: without an admin it expires.
    for (let i = 0; i < 30; i++) guard.settle(attempt({ ip: `198.51.100.${i}` }), "failure");
    t.clock.advance(48 * 3_600_000); // (the day window has slid past the failures too)
    expect(guard.assess(attempt({ ip: "203.0.113.54" })).action).toBe("allow");
  });

  it("a graceful restart doesn't reset the counters: a slow attacker's failures still count after it, and a member's address is still known", () => {
    // Attack: spread failures over a day so that none of them slows anything, and wait for a
    // deploy to get a fresh day's allowance.
    const HOME = "198.51.100.7";
    const home = attempt({ ip: HOME, password: "right password" });
    expect(guard.assess(home).action).toBe("allow");
    guard.settle(home, "success");
    for (let i = 0; i < 29; i++) {
      t.clock.advance(30 * 60_000); // two an hour: below the hour's slow-down
      guard.settle(attempt({ ip: `203.0.113.${i}`, password: `guess ${i}` }), "failure");
    }
    expect(guard.assess(attempt({ ip: "203.0.113.100" })).action).toBe("allow");
    const saved = saveThrottleState({ db: t.s.db, keys: t.s.keys, clock: t.clock, guard });
    expect(saved).toBeGreaterThan(0);
    // Nothing in the stored row reads as a login ID or an address.
    const raw = t.s.db.$client.prepare("SELECT state FROM throttle_state").pluck().get() as string;
    for (const plain of ["victim", "203.0.113", HOME, "198.51.100"]) expect(raw).not.toContain(plain);

    t.clock.advance(60_000);
    const restarted = restartedGuard();
    const carried = restoreThrottleState({ db: t.s.db, keys: t.s.keys, guard: restarted });
    expect(carried).toMatchObject({ taken: saved });
    // Taken once: the row is gone.
    expect(t.s.db.$client.prepare("SELECT count(*) FROM throttle_state").pluck().get()).toBe(0);
    // The thirtieth failure of the day protects the account, as it would have without the restart.
    restarted.settle(attempt({ ip: "203.0.113.101", password: "guess 30" }), "failure");
    expect(restarted.assess(attempt({ ip: "203.0.113.102", challengeSolved: true })).action).toBe("protect");
    // ...and the member's own address is still known: from home they get in (past the day's
    // failures, after a proof-of-work, as everyone).
    const fromHome = attempt({ ip: HOME, password: "right password", challengeSolved: true });
    expect(restarted.assess(fromHome).action).toBe("allow");
    expect(restarted.fromKnownAddress(HOME, "victim", { queue: "door" })).toBe(true);
  });

  it("a carried-over state that was changed in the database is dropped, and the engine starts empty", () => {
    for (let i = 0; i < 29; i++) guard.settle(attempt({ ip: `203.0.113.${i}` }), "failure");
    saveThrottleState({ db: t.s.db, keys: t.s.keys, clock: t.clock, guard });
    // Attack: someone with the database edits the row (to clear an address's record, say).
    const raw = t.s.db.$client.prepare("SELECT state FROM throttle_state").pluck().get() as string;
    const flipped = `${raw.slice(0, -6)}${raw.at(-6) === "A" ? "B" : "A"}${raw.slice(-5)}`;
    t.s.db.$client.prepare("UPDATE throttle_state SET state = ?").run(flipped);
    const restarted = restartedGuard();
    expect(restoreThrottleState({ db: t.s.db, keys: t.s.keys, guard: restarted })).toMatchObject({
      error: expect.any(String),
    });
    expect(restarted.trackedKeys).toBe(0);
    expect(t.s.db.$client.prepare("SELECT count(*) FROM throttle_state").pluck().get()).toBe(0);
  });

  it("carries over at most the most recently used keys of each store, least recent first", () => {
    const store = new MemoryCounterStore([60_000, 3_600_000], 10);
    for (let i = 0; i < 8; i++) store.add(`k${i}`, i + 1, 1_000 + i);
    store.add("k0", 1, 2_000); // k0 is now the most recently used
    const dump = store.dump(3, 2_000);
    expect(dump.keys).toEqual(["k6", "k7", "k0"]);
    const next = new MemoryCounterStore([60_000, 3_600_000], 10);
    expect(next.load(dump)).toBe(3);
    expect(next.peek("k7", 2_000)).toEqual(store.peek("k7", 2_000));
    expect(next.peek("k0", 2_000)).toEqual([2, 2]);
    expect(next.peek("k1", 2_000)).toEqual([0, 0]);
    // Other windows (a changed policy): nothing is taken.
    expect(new MemoryCounterStore([60_000], 10).load(dump)).toBe(0);
    // Keys whose windows have emptied are left out.
    expect(store.dump(10, 10 * 3_600_000).keys).toEqual([]);
  });

  it("keeps no expired protections in memory: many protected login IDs are swept out once they expire", () => {
    // An attacker protects 200 (unknown) login IDs, 30 failures each, from many addresses.
    for (let id = 0; id < 200; id++)
      for (let i = 0; i < 30; i++)
        guard.settle(attempt({ ip: `198.51.${id}.${i}`, loginId: `nobody${id}` }), "failure");
    expect(guard.activeDecisions).toBeGreaterThanOrEqual(200);
    t.clock.advance(48 * 3_600_000);
    // None of those IDs is tried again; the next attempt of anyone still clears them out.
    expect(guard.assess(attempt({ ip: "203.0.113.9", loginId: "someone.else" })).action).toBe("allow");
    expect(guard.activeDecisions).toBe(0);
  });

  it("detects one password tried on many accounts (spraying), alerts, and slows that password", () => {
    for (let i = 0; i < 20; i++)
      fail(attempt({ ip: `198.51.100.${i % 7}`, loginId: `member${i}`, password: "Summer2026!" }));
    expect(t.s.alerts.list().map((a) => a.kind)).toContain("password_spraying");
    const d = guard.assess(attempt({ ip: "203.0.113.9", loginId: "member999", password: "Summer2026!" }));
    expect(d.action).toBe("challenge");
    expect(d.reasons).toContain("password_spraying");
    // With a solved proof-of-work the attempt goes ahead (and still counts as a failure if wrong).
    const solved = guard.assess(
      attempt({ ip: "203.0.113.9", loginId: "member999", password: "Summer2026!", challengeSolved: true }),
    );
    expect(solved.action).toBe("allow");
    // Another password for the same new account is not affected.
    expect(
      guard.assess(attempt({ ip: "203.0.113.9", loginId: "member998", password: "something else" })).action,
    ).toBe("allow");
    // Attack: the same password in full-width or mixed-width letters (verified as the same password,
    // after NFKC) is the same sprayed password, not a fresh one.
    for (const variant of ["Ｓｕｍｍｅｒ２０２６！", "Sｕmmer2026!", "Summer２０２６!"]) {
      const v = guard.assess(attempt({ ip: "203.0.113.9", loginId: "member997", password: variant }));
      expect(v.reasons, variant).toContain("password_spraying");
    }
    // The fingerprint is never stored: no audit entry or alert holds the password or its HMAC.
    const stored = JSON.stringify([t.s.db.select().from(auditLog).all(), t.s.alerts.list()]);
    expect(stored).not.toContain("Summer2026");
  });

  it("raises an under-attack alert when the service-wide failure rate leaves its baseline", () => {
    guard = detectingAtTen();
    // Ten minutes at the floor: 100 failures.
    for (let i = 0; i < 100; i++) guard.settle(attempt({ ip: `10.${i}.0.1`, loginId: `m${i}` }), "failure");
    expect(guard.underAttack()).toBe(true);
    expect(t.s.alerts.list().map((a) => a.kind)).toContain("under_attack");
    // One alert per attack, not one per attempt.
    for (let i = 0; i < 200; i++) guard.settle(attempt({ ip: `10.${i}.0.2`, loginId: `n${i}` }), "failure");
    expect(t.s.alerts.list().filter((a) => a.kind === "under_attack")).toHaveLength(1);
  });

  it("counts an attempt on an unknown login ID toward the service-wide detector when it is admitted, once", () => {
    guard = detectingAtTen();
    const unknown = (i: number) =>
      attempt({ ip: `10.${i}.0.1`, loginId: `nobody${i}`, password: `guess ${i}`, unknownAccount: true });
    // 99 admitted and settled as failures: counted once each (settle doesn't count them again).
    for (let i = 0; i < 99; i++) {
      expect(guard.assess(unknown(i)).action).toBe("allow");
      guard.settle(unknown(i), "failure");
    }
    expect(guard.underAttack()).toBe(false);
    // The 100th raises the alarm as it is admitted, before its (dummy) hash.
    expect(guard.assess(unknown(99)).action).toBe("allow");
    expect(guard.underAttack()).toBe(true);
  });

  it("challenges untrusted password sign-ins while the hashing backlog is deep, and for a while after; trusted devices and solved challenges pass", async () => {
    let waiting = 0;
    let reconsidered = 0;
    guard = new LoginGuard({
      db: t.s.db,
      clock: t.clock,
      alerts: t.s.alerts,
      loginKey: (l) => t.s.guard.loginKey(l),
      policy: { attackFloorPerMinute: 1000, overloadBacklog: 8, overloadHoldSeconds: 60 },
      backlog: () => waiting,
      reconsider: () => void reconsidered++,
    });
    const a = (i: number, over: Partial<Attempt> = {}) =>
      attempt({ ip: `10.${i}.0.1`, loginId: `someone${i}`, ...over });
    // A backlog below the limit: admitted as usual.
    waiting = 7;
    expect(guard.assess(a(1)).action).toBe("allow");
    guard.settle(a(1), "neither");
    expect(guard.overloaded()).toBe(false);
    // At the limit: challenged, with the reason; the waiting attempts are asked again once (when the
    // state starts, not at every decision), and one alert is raised.
    waiting = 8;
    expect(guard.assess(a(2))).toMatchObject({ action: "challenge", reasons: ["overloaded"] });
    expect(guard.refusal(a(3))).toMatchObject({ action: "challenge", reasons: ["overloaded"] });
    for (let i = 0; i < 20; i++) guard.assess(a(10 + i));
    await new Promise((r) => setImmediate(r));
    expect(reconsidered).toBe(1);
    expect(t.s.alerts.list().filter((x) => x.kind === "hash_backlog")).toHaveLength(1);
    // Never a member on their own device, nor an attempt that solved its challenge.
    expect(guard.assess(a(4, { trustedDevice: true })).action).toBe("allow");
    guard.settle(a(4, { trustedDevice: true }), "success");
    expect(guard.assess(a(5, { challengeSolved: true })).action).toBe("allow");
    guard.settle(a(5, { challengeSolved: true }), "neither");
    // The backlog drained: still challenged until a minute after it was last seen deep…
    waiting = 0;
    t.clock.advance(59_000);
    expect(guard.assess(a(6))).toMatchObject({ action: "challenge", reasons: ["overloaded"] });
    // …then admitted again.
    t.clock.advance(1_000);
    expect(guard.overloaded()).toBe(false);
    expect(guard.assess(a(7)).action).toBe("allow");
  });

  it("decides again for an admitted attempt that waited: a refusal then frees its slot, an allow keeps it", () => {
    const a = attempt({ ip: "192.0.2.44" });
    expect(guard.assess(a).action).toBe("allow");
    // Nothing changed: still admitted, and it still holds its slot (a parallel attempt counts it).
    expect(guard.reassess(a).action).toBe("allow");
    for (let i = 0; i < 4; i++) fail(attempt({ ip: "192.0.2.44" }));
    expect(guard.assess(attempt({ ip: "192.0.2.44" })).action).toBe("slow");
    // The service came under attack while it waited: challenged now, and its slot is free.
    guard.underAttackUntil = t.clock.now().getTime() + 60_000;
    expect(guard.reassess(a)).toMatchObject({ action: "challenge", reasons: ["under_attack"] });
    guard.underAttackUntil = 0;
    expect(guard.assess(attempt({ ip: "192.0.2.44" })).action).toBe("allow");
  });

  it("single flight: of two parallel attempts on the last free slot, only one is admitted", () => {
    for (let i = 0; i < 4; i++) fail(attempt());
    const a = guard.assess(attempt());
    const b = guard.assess(attempt());
    expect([a.action, b.action]).toEqual(["allow", "slow"]);
    guard.settle(attempt(), "neither");
    expect(guard.assess(attempt()).action).toBe("allow");
  });

  it("someone who knows the password can't shut the member's password reset with wrong codes of their own", () => {
    // Attack: ten wrong sign-in codes an hour from anywhere slow the account's second step; the
    // reset's second step was judged on the same count, so the member's reset got 429 everywhere.
    const code = (over: Partial<Attempt>) => attempt({ kind: "second_factor", password: undefined, ...over });
    for (let i = 0; i < 10; i++) fail(code({ ip: `198.51.100.${i}` }));
    expect(guard.assess(code({ ip: "203.0.113.7" })).reasons).toContain("account_second_factor_failures");
    // The member, with the mailed link, from an address of their own.
    expect(guard.assess(code({ ip: "203.0.113.7", reset: true })).action).toBe("allow");
    // ...and a reset link's holder guessing codes slows resets, not the member's sign-in.
    for (let i = 0; i < 10; i++)
      fail(code({ ip: `192.0.2.${50 + i}`, loginId: "other.victim", reset: true }));
    expect(guard.assess(code({ ip: "203.0.113.8", loginId: "other.victim", reset: true })).action).toBe(
      "slow",
    );
    expect(guard.assess(code({ ip: "203.0.113.8", loginId: "other.victim" })).action).toBe("allow");
    // The reset's lane has a day's ceiling too (a passed reset step is the whole account).
    for (let i = 0; i < 30; i++) {
      t.clock.advance(20 * 60_000);
      fail(code({ ip: `192.0.2.${100 + i}`, loginId: "third.victim", reset: true }));
    }
    expect(guard.assess(code({ ip: "192.0.2.200", loginId: "third.victim", reset: true })).reasons).toContain(
      "account_second_factor_failures_day",
    );
  });

  it("wrong second-step codes have a day's ceiling too (30, not 240 at ten an hour), except where the member signed in from", () => {
    const HOME = "198.51.100.200";
    const home = attempt({ ip: HOME });
    guard.assess(home);
    guard.settle(home, "success");
    const code = (ip: string) => attempt({ ip, kind: "second_factor", password: undefined });
    for (let i = 0; i < 30; i++) {
      t.clock.advance(20 * 60_000); // three an hour: under the hour's limit
      expect(fail(code(`203.0.113.${i}`)).action, String(i)).toBe("allow");
    }
    const next = guard.assess(code("203.0.113.200"));
    expect(next.action).toBe("slow");
    expect(next.reasons).toContain("account_second_factor_failures_day");
    expect(guard.assess(code(HOME)).action).toBe("allow");
    // Told once, at the tenth.
    expect(t.s.alerts.list().filter((a) => a.kind === "second_factor_guessing")).toHaveLength(1);
    // A passkey can't be guessed: wrong codes don't keep the member's passkey out.
    expect(guard.assess({ ...code("203.0.113.201"), passkey: true }).action).toBe("allow");
    // An admin's unlock lifts it, and so does a new password (the codes were the old one's holder's).
    expect(guard.lift("victim")).toBe(false); // (no protection row: only counts)
    expect(guard.assess(code("203.0.113.202")).action).toBe("allow");
    for (let i = 0; i < 30; i++) {
      t.clock.advance(20 * 60_000);
      fail(code(`203.0.113.${100 + i}`));
    }
    expect(guard.assess(code("203.0.113.203")).action).toBe("slow");
    guard.credentialsChanged("victim");
    expect(guard.assess(code("203.0.113.203")).action).toBe("allow");
  });

  it("a member without a trusted device is kept out for at most an hour, not day after day", () => {
    // Attack: fail 30 times, then once an hour, to keep a password-only member protected forever.
    for (let i = 0; i < 30; i++) guard.settle(attempt({ ip: `198.51.100.${i}` }), "failure");
    expect(guard.assess(attempt({ ip: "192.0.2.1" })).action).toBe("protect");
    let refusedHours = 0;
    for (let hour = 1; hour <= 24; hour++) {
      t.clock.advance(3_600_000);
      const bad = attempt({ ip: `203.0.113.${hour}` });
      if (guard.assess(bad).action === "allow") guard.settle(bad, "failure");
      const member = attempt({ ip: "192.0.2.1", password: "the member's own" });
      const d = guard.assess(member);
      if (d.action === "protect") refusedHours++;
      else if (d.action === "allow") guard.settle(member, "success");
    }
    expect(refusedHours).toBe(0);
  });

  it("a copied trusted-device cookie buys a day's budget of guesses, not unlimited ones", () => {
    // Attack: someone holding the member's sekisho_device cookie guesses from one address.
    const trusted = attempt({ trustedDevice: true });
    let admitted = 0;
    for (let i = 0; i < 100; i++) if (fail(trusted).action === "allow") admitted++;
    // 20 failures on the device's budget; then it is an address like any other, long past its
    // limit for this login ID (its failures were counted all along).
    expect(admitted).toBe(20);
    expect(guard.assess(trusted)).toMatchObject({ action: "slow", reasons: ["ip_login_failures"] });
    t.clock.advance(24 * 3_600_000 + 1);
    expect(guard.assess(trusted).action).toBe("allow");
  });

  it("one member's trusted-device failures don't spend another's budget, and a spent device goes first nowhere", () => {
    for (let i = 0; i < 20; i++)
      fail(attempt({ loginId: "someone.else", trustedDevice: true, ip: `198.51.100.${i}` }));
    expect(guard.trustedBudgetLeft("someone.else")).toBe(false);
    expect(guard.trustedBudgetLeft("victim")).toBe(true);
    expect(guard.assess(attempt({ trustedDevice: true, ip: "198.51.100.200" })).action).toBe("allow");
  });

  it("counts IPv6 addresses by their /64 (one host has 2^64 of them)", () => {
    for (let i = 0; i < 5; i++) fail(attempt({ ip: `2001:db8:1:2::${(i + 1).toString(16)}` }));
    const d = guard.assess(attempt({ ip: "2001:db8:1:2:ffff::9" }));
    expect(d.reasons).toContain("ip_login_failures");
  });

  it("attempts in flight count against an address's limit (a burst can't slip past it)", () => {
    for (let i = 0; i < 29; i++) guard.settle(attempt({ loginId: `id${i}`, password: `p${i}` }), "failure");
    const burst = Array.from({ length: 50 }, (_, i) =>
      guard.assess(attempt({ loginId: `new${i}`, password: `q${i}` })),
    );
    expect(burst.filter((d) => d.action === "allow")).toHaveLength(1);
  });

  it("a flood of one kind of key does not evict the others' counts", () => {
    for (let i = 0; i < 10; i++) fail(attempt({ ip: `198.51.100.${i}` }));
    for (let i = 0; i < 300_000; i++) guard.overRate(`passwordless_options|10.${i}`, 300);
    expect(guard.assess(attempt({ ip: "203.0.113.1" })).reasons).toContain("account_failures");
  });

  it("a device cookie is trusted only for its own member, and not once revoked", async () => {
    // Attack: carry your own trusted-device cookie into an attack on someone else's account.
    const a = (await register(t.app, { login_id: "device.owner" })).body.member_id as string;
    const b = (await register(t.app, { login_id: "device.victim" })).body.member_id as string;
    const { token, id } = t.s.devices.issue(a, "browser");
    expect(t.s.devices.recognise(token, a)?.id).toBe(id);
    expect(t.s.devices.recognise(token, b)).toBeNull();
    t.s.devices.revoke(a, id);
    expect(t.s.devices.recognise(token, a)).toBeNull();
  });

  it("keeps its memory bounded with a million distinct keys", () => {
    v8.setFlagsFromString("--expose-gc");
    const gc = vm.runInNewContext("gc") as () => void;
    const store = new MemoryCounterStore([600_000, 3_600_000, 86_400_000], 50_000);
    gc();
    // The garbage-collected heap and what lives outside it (typed arrays' memory) together.
    const used = () => process.memoryUsage().heapUsed + process.memoryUsage().external;
    const before = used();
    for (let i = 0; i < 1_000_000; i++) store.add(`ip|${i}`, 1, 1_000_000);
    gc();
    expect(store.size).toBe(50_000);
    // The store's numbers were allocated up front (before `before`); what a kept key costs now
    // is its LRU entry: well under 300 bytes (one typed array per key cost about 600).
    const perKey = (used() - before) / 50_000;
    expect(perKey).toBeLessThan(300);
    // Evicted keys start from zero when their slot is reused.
    expect(store.peek("ip|0", 1_000_000)).toEqual([0, 0, 0]);
    expect(store.add("ip|fresh", 1, 1_000_000)).toEqual([1, 1, 1]);
    store.delete("ip|999999");
    expect(store.add("ip|fresh2", 2, 1_000_000)).toEqual([2, 2, 2]);
    expect(store.peek("ip|999998", 1_000_000)).toEqual([1, 1, 1]);
  });

  it("groups addresses by /24 (IPv4) and /56 (IPv6)", () => {
    expect(subnetOf("192.0.2.77")).toBe("192.0.2.0/24");
    expect(subnetOf("::ffff:192.0.2.77")).toBe("192.0.2.0/24");
    expect(subnetOf("2001:db8:abcd:12ff:1::5")).toBe("2001:db8:abcd:1200::/56");
  });
});

describe("proof-of-work challenges (ALTCHA format)", () => {
  const clock = { now: () => new Date("2026-12-04T12:00:00Z") };
  const decode = (s: string) =>
    JSON.parse(Buffer.from(s, "base64").toString("utf8")) as Record<string, unknown>;
  const encode = (o: Record<string, unknown>) => Buffer.from(JSON.stringify(o)).toString("base64");
  const flipLast = (hex: string) => `${hex.slice(0, -1)}${hex.endsWith("0") ? "1" : "0"}`;

  it("issues challenges that altcha-lib's solver solves and its verifier accepts, for their login ID only", async () => {
    const pow = new ProofOfWork({ clock, maxNumber: 3000 });
    const c = pow.issue("taro.yamada");
    expect(c).toMatchObject({ algorithm: "SHA-256", maxnumber: 3000 });
    expect(c.salt).toMatch(/^[0-9a-f]{24}\?lid=[\w-]+&exp=\d+&$/);
    const solution = await solveChallenge(c);
    expect(await pow.check(solution, "taro.yamada")).toBe(c.signature);
    expect(await pow.check(solution, "hanako")).toBeNull();
  });

  it("refuses a solution whose salt, number or signature was changed", async () => {
    const pow = new ProofOfWork({ clock, maxNumber: 3000 });
    const c = pow.issue("taro.yamada");
    const good = decode(await solveChallenge(c));
    const forged = [
      { ...good, number: (good.number as number) + 1 },
      { ...good, salt: (good.salt as string).replace(/exp=\d+/, "exp=99999999999999") },
      { ...good, signature: flipLast(good.signature as string) },
    ];
    for (const f of forged) expect(await pow.check(encode(f), "taro.yamada")).toBeNull();
    // A challenge signed by another server (another in-memory key) is refused too.
    const other = new ProofOfWork({ clock, maxNumber: 3000 });
    expect(await other.check(encode(good), "taro.yamada")).toBeNull();
  });

  it("draws different salts and numbers for each challenge", () => {
    const pow = new ProofOfWork({ clock, maxNumber: 1_000_000 });
    const issued = Array.from({ length: 50 }, () => pow.issue("taro.yamada"));
    expect(new Set(issued.map((c) => c.salt)).size).toBe(50);
    expect(new Set(issued.map((c) => c.challenge)).size).toBe(50);
  });
});

describe("proof-of-work challenges (ALTCHA) through the JSON API", () => {
  let t: TestApp;
  afterEach(() => t.close());

  const solve = solveChallenge;
  const login = (ip: string, body: Record<string, unknown>) => loginFrom(t.app, ip, body);

  it("under attack, an untrusted password sign-in must solve a challenge first; a solution works once, for its login ID, until it expires", async () => {
    t = makeApp({
      SEKISHO_TRUST_PROXY: "loopback",
      SEKISHO_THROTTLE_POLICY: JSON.stringify({ attackFloorPerMinute: 2, challengeMaxNumber: 2000 }),
    });
    await register(t.app, { login_id: "hanako" });
    // A credential-stuffing wave: many addresses, many IDs, one try each.
    for (let i = 0; i < 20; i++)
      await login(`198.51.100.${i}`, { login_id: `stuffed${i}`, password: `leaked pw ${i}` });
    expect(t.s.alerts.list().map((a) => a.kind)).toContain("under_attack");

    const verify = vi.spyOn(t.s.hasher, "verify");
    const first = await login("192.0.2.1", { login_id: "hanako", password: STRONG_PASSWORD });
    expect(first.status).toBe(403);
    expect(first.body.error).toBe("challenge_required");
    expect(first.body.challenge).toMatchObject({ algorithm: "SHA-256", maxnumber: 2000 });
    expect(verify).not.toHaveBeenCalled(); // the challenge comes before any argon2 work
    // Unknown login IDs get the same answer.
    const unknown = await login("192.0.2.1", { login_id: "nobody.here", password: STRONG_PASSWORD });
    expect(unknown.status).toBe(403);
    expect(Object.keys(unknown.body).sort()).toEqual(Object.keys(first.body).sort());

    const solution = await solve(first.body.challenge);
    // Parallel requests carrying one solution: only one gets past the challenge.
    const other = await login("192.0.2.2", { login_id: "racer", password: "not it at all" });
    const shared = await solve(other.body.challenge);
    const parallel = await Promise.all(
      [1, 2, 3, 4].map((i) =>
        login(`192.0.2.${10 + i}`, {
          login_id: "racer",
          password: "not it at all",
          challenge_solution: shared,
        }),
      ),
    );
    expect(parallel.map((r) => r.status).sort()).toEqual([401, 403, 403, 403]);
    // Bound to its login ID: no good for another account.
    expect(
      (await login("192.0.2.1", { login_id: "nobody.here", password: "x", challenge_solution: solution }))
        .status,
    ).toBe(403);
    const ok = await login("192.0.2.1", {
      login_id: "hanako",
      password: STRONG_PASSWORD,
      challenge_solution: solution,
    });
    expect(ok.status).toBe(200);
    // Spent: the same solution again is a new challenge.
    const again = await login("192.0.2.1", {
      login_id: "hanako",
      password: STRONG_PASSWORD,
      challenge_solution: solution,
    });
    expect(again.status).toBe(403);
    // Expired after five minutes (Sekisho's clock).
    const late = await solve(again.body.challenge);
    t.clock.advance(5 * 60_000 + 1);
    const expired = await login("192.0.2.1", {
      login_id: "hanako",
      password: STRONG_PASSWORD,
      challenge_solution: late,
    });
    expect(expired.status).toBe(403);
    // A garbage solution is just "not solved".
    const garbage = await login("192.0.2.1", {
      login_id: "hanako",
      password: STRONG_PASSWORD,
      challenge_solution: "!!not base64 json",
    });
    expect(garbage.status).toBe(403);
  });
});

describe("the engine behind the HTTP API", () => {
  let t: TestApp;
  afterEach(() => t.close());

  it("attempts admitted before the alarm and still waiting for a hash are challenged, not hashed, when the service comes under attack", async () => {
    t = makeApp({
      SEKISHO_TRUST_PROXY: "loopback",
      SEKISHO_HASH_CONCURRENCY: "1",
      SEKISHO_THROTTLE_POLICY: JSON.stringify({ attackFloorPerMinute: 1000 }),
    });
    await register(t.app, { login_id: "waiting.member" });
    await t.s.hasher.warm(); // as at start-up (src/main.ts): the dummy hash for unknown IDs exists
    // The one hashing slot is busy; the attempts below are admitted and wait for it.
    let release!: () => void;
    const busy = t.s.hasher.queue.run(() => new Promise<void>((r) => (release = r)));
    const hashed: string[] = [];
    t.s.hasher.queue.observer = { waited: () => hashed.push("job"), refused: () => {} };
    const attempts = ["waiting.member", "nobody.here", "waiting.member"].map((loginId, i) =>
      loginFrom(t.app, `198.51.100.${i + 1}`, {
        login_id: loginId,
        password: i === 2 ? STRONG_PASSWORD : "a wrong password",
      }).then((r) => r),
    );
    for (let i = 0; i < 50 && t.s.hasher.queue.depth < 3; i++) await new Promise((r) => setTimeout(r, 10));
    expect(t.s.hasher.queue.depth).toBe(3);
    // The alarm goes off (as the detector would raise it) while they wait.
    t.s.guard.underAttackUntil = t.clock.now().getTime() + 15 * 60_000;
    release();
    await busy;
    for (const res of await Promise.all(attempts)) {
      expect(res.status, res.text).toBe(403);
      expect(res.body.error).toBe("challenge_required");
    }
    // Their turn came, they were withdrawn: the slot is free, nothing is held or waiting.
    expect(t.s.hasher.queue.inFlight).toBe(0);
    expect(t.s.hasher.queue.depth).toBe(0);
    // With the alarm over, the member signs in (no slot was left reserved on the way).
    t.s.guard.underAttackUntil = 0;
    expect(
      (await post(t.app, "/api/v1/login", { login_id: "waiting.member", password: STRONG_PASSWORD })).status,
    ).toBe(200);
    expect(hashed.length).toBeGreaterThan(0);
  });

  it("a burst of sign-ins deeper than the hashing backlog limit is challenged, the waiting ones at once, and untrusted sign-ins stay challenged until the hold ends", async () => {
    t = makeApp({
      SEKISHO_TRUST_PROXY: "loopback",
      SEKISHO_HASH_CONCURRENCY: "1",
      SEKISHO_THROTTLE_POLICY: JSON.stringify({ attackFloorPerMinute: 1000, overloadBacklog: 3 }),
    });
    await register(t.app, { login_id: "burst.member" });
    await t.s.hasher.warm();
    // The one hashing slot is busy; unknown login IDs from fresh addresses queue behind it.
    let release!: () => void;
    const busy = t.s.hasher.queue.run(() => new Promise<void>((r) => (release = r)));
    const burst = (from: number, n: number) =>
      Array.from({ length: n }, (_, i) =>
        // (.then sends it now: a supertest request goes out when it is awaited or then-ed)
        loginFrom(t.app, `198.51.${from + i}.1`, { login_id: `nobody${from + i}`, password: "a guess" }).then(
          (r) => r,
        ),
      );
    const first = burst(0, 3);
    for (let i = 0; i < 50 && t.s.hasher.queue.waitingAttempts < 3; i++)
      await new Promise((r) => setTimeout(r, 10));
    expect(t.s.hasher.queue.waitingAttempts).toBe(3);
    // The backlog is at the limit: the next attempts are challenged at once, without queueing.
    for (const res of await Promise.all(burst(10, 2))) {
      expect(res.status, res.text).toBe(403);
      expect(res.body.error).toBe("challenge_required");
    }
    expect(t.s.hasher.queue.inFlight).toBe(1);
    expect(t.s.alerts.list().map((a) => a.kind)).toContain("hash_backlog");
    // The waiting ones leave the line at once (within a turn or two of the event loop), while the
    // slot is still busy…
    for (let i = 0; i < 50 && t.s.hasher.queue.waitingAttempts > 0; i++)
      await new Promise((r) => setTimeout(r, 10));
    expect(t.s.hasher.queue.waitingAttempts).toBe(0);
    // …and are answered with a challenge instead of hashed.
    for (const res of await Promise.all(first)) {
      expect(res.status, res.text).toBe(403);
      expect(res.body.error).toBe("challenge_required");
    }
    expect(t.s.hasher.queue.depth).toBe(0);
    expect(t.s.hasher.queue.inFlight).toBe(1);
    release();
    await busy;
    expect(t.s.hasher.queue.inFlight).toBe(0);
    // Still overloaded (it holds a minute): an untrusted sign-in with the right password is challenged…
    const member = await loginFrom(t.app, "203.0.113.7", {
      login_id: "burst.member",
      password: STRONG_PASSWORD,
    });
    expect(member.status).toBe(403);
    // …and after the hold, it goes through.
    t.clock.advance(61_000);
    expect(
      (await loginFrom(t.app, "203.0.113.7", { login_id: "burst.member", password: STRONG_PASSWORD })).status,
    ).toBe(200);
  });

  it("registrations waiting for argon2 don't make sign-ins look overloaded (nothing refuses them, so they can't be used to throw the switch)", async () => {
    t = makeApp({
      SEKISHO_TRUST_PROXY: "loopback",
      SEKISHO_HASH_CONCURRENCY: "1",
      SEKISHO_THROTTLE_POLICY: JSON.stringify({ attackFloorPerMinute: 1000, overloadBacklog: 3 }),
    });
    await register(t.app, { login_id: "quiet.member" });
    let release!: () => void;
    const busy = t.s.hasher.queue.run(() => new Promise<void>((r) => (release = r)));
    // Attack: registrations (of one login ID: at most one can succeed) queued behind the busy slot.
    const registrations = Array.from({ length: 5 }, () =>
      register(t.app, { login_id: "squatter.id" }).then((r) => r),
    );
    for (let i = 0; i < 50 && t.s.hasher.queue.depth < 5; i++) await new Promise((r) => setTimeout(r, 10));
    expect(t.s.hasher.queue.depth).toBe(5);
    expect(t.s.hasher.queue.waitingAttempts).toBe(0);
    // A member on an untrusted device is admitted (waits its turn), not challenged.
    const member = loginFrom(t.app, "203.0.113.9", {
      login_id: "quiet.member",
      password: STRONG_PASSWORD,
    }).then((r) => r);
    for (let i = 0; i < 50 && t.s.hasher.queue.waitingAttempts < 1; i++)
      await new Promise((r) => setTimeout(r, 10));
    expect(t.s.guard.overloaded()).toBe(false);
    release();
    await busy;
    expect((await member).status).toBe(200);
    expect((await Promise.all(registrations)).map((r) => r.status).sort()).toEqual([201, 409, 409, 409, 409]);
  });

  it("the attempt that sets off the under-attack alarm, and those waiting with it, are challenged at once, before a hashing slot frees up", async () => {
    t = makeApp({
      SEKISHO_TRUST_PROXY: "loopback",
      SEKISHO_HASH_CONCURRENCY: "1",
      // The alarm at 10 failures in ten minutes (the floor of 1 a minute); no backlog switch.
      SEKISHO_THROTTLE_POLICY: JSON.stringify({ attackFloorPerMinute: 1, overloadBacklog: 200 }),
    });
    await t.s.hasher.warm();
    let release!: () => void;
    const busy = t.s.hasher.queue.run(() => new Promise<void>((r) => (release = r)));
    // Ten attempts on unknown login IDs: each is counted when admitted, the tenth sets off the alarm.
    const answered: number[] = [];
    const attempts = Array.from({ length: 10 }, (_, i) =>
      loginFrom(t.app, `198.51.${i}.7`, { login_id: `nobody.${i}`, password: "a guess" }).then((r) => {
        answered.push(r.status);
        return r;
      }),
    );
    for (let i = 0; i < 100 && answered.length < 10; i++) await new Promise((r) => setTimeout(r, 10));
    // All answered while the slot is still busy: none waited for its turn, none was hashed.
    expect(t.s.guard.underAttack()).toBe(true);
    expect(answered).toEqual(Array(10).fill(403));
    expect(t.s.hasher.queue.depth).toBe(0);
    expect(t.s.hasher.queue.inFlight).toBe(1);
    for (const res of await Promise.all(attempts)) expect(res.body.error).toBe("challenge_required");
    release();
    await busy;
  });

  it("ignores X-Forwarded-For when SEKISHO_TRUST_PROXY is unset (no spoofed fresh addresses)", async () => {
    // Attack: a new X-Forwarded-For on every request to look like a thousand addresses.
    t = makeApp();
    await register(t.app, { login_id: "hanako" });
    let last = 0;
    for (let i = 0; i < 6; i++) {
      last = (await loginFrom(t.app, `198.51.100.${i}`, { login_id: "hanako", password: `wrong guess ${i}` }))
        .status;
    }
    expect(last).toBe(429);
  });

  it("behind a trusted proxy, made-up X-Forwarded-For values that aren't addresses count as the proxy's one address", async () => {
    // Attack: a proxy that passes on what the client wrote; a new non-address value each time.
    t = makeApp({ SEKISHO_TRUST_PROXY: "loopback" });
    await register(t.app, { login_id: "hanako.proxy" });
    let last = 0;
    // Past ipSlow (30) failures from one address, whatever the login IDs.
    for (let i = 0; i < 32; i++) {
      last = (
        await loginFrom(t.app, `77.3.${12881 + i}.2`, {
          login_id: `nobody.${i}`,
          password: `wrong guess ${i}`,
        })
      ).status;
    }
    expect(last).toBe(429);
    const entries = [...t.s.audit.iterate()].filter((e) => e.action.startsWith("login."));
    expect(entries.length).toBeGreaterThan(0);
    for (const e of entries) expect(e.ip === null || isIP(e.ip) !== 0, String(e.ip)).toBe(true);
  });

  it("the victim of a lockout attack, on their trusted device, is never refused", async () => {
    // Attack: fail on purpose against the victim's login ID from many addresses until the account
    // is protected; the victim keeps signing in from their own (trusted) browser.
    t = makeApp({ SEKISHO_TRUST_PROXY: "loopback" });
    await register(t.app, { login_id: "victim.member" });
    const { SoftAuthenticator } = await import("./support/soft-authenticator.js");
    const auth = new SoftAuthenticator();
    const api = (ip: string, url: string, body: unknown, cookie = "") =>
      supertest(t.app)
        .post(url)
        .set("Origin", ORIGIN)
        .set("Content-Type", "application/json")
        .set("X-Forwarded-For", ip)
        .set("Cookie", cookie)
        .send(JSON.stringify(body));
    // The victim sets up a passkey and signs in with it once: their browser becomes a known device.
    const first = await api("192.0.2.1", "/api/v1/login", {
      login_id: "victim.member",
      password: STRONG_PASSWORD,
    });
    const cookie = String(first.headers["set-cookie"]).match(/sekisho_session=[\w-]{43}/)?.[0] as string;
    const regOptions = await api("192.0.2.1", "/api/v1/me/passkeys/options", {}, cookie);
    const added = await api(
      "192.0.2.1",
      "/api/v1/me/passkeys",
      { response: auth.register(regOptions.body, { origin: ORIGIN }) },
      cookie,
    );
    expect(added.status, added.text).toBe(201);
    const pk = async (device: string) => {
      const step = await api(
        "192.0.2.1",
        "/api/v1/login",
        { login_id: "victim.member", password: STRONG_PASSWORD },
        device,
      );
      if (step.status !== 200) return step.status;
      const options = await api(
        "192.0.2.1",
        "/api/v1/login/webauthn/options",
        { mfa_token: step.body.mfa_token },
        device,
      );
      const done = await api(
        "192.0.2.1",
        "/api/v1/login/webauthn",
        { mfa_token: step.body.mfa_token, response: auth.assert(options.body, { origin: ORIGIN }) },
        device,
      );
      return done.status;
    };
    const signedIn = await (async () => {
      const step = await api("192.0.2.1", "/api/v1/login", {
        login_id: "victim.member",
        password: STRONG_PASSWORD,
      });
      const options = await api("192.0.2.1", "/api/v1/login/webauthn/options", {
        mfa_token: step.body.mfa_token,
      });
      return api("192.0.2.1", "/api/v1/login/webauthn", {
        mfa_token: step.body.mfa_token,
        response: auth.assert(options.body, { origin: ORIGIN }),
      });
    })();
    const device = String(signedIn.headers["set-cookie"]).match(/sekisho_device=[\w-]{43}/)?.[0] as string;
    expect(device, `${signedIn.status} ${signedIn.text}`).toBeTruthy();

    const verify = vi.spyOn(t.s.hasher, "verify");
    let refusedAttacker = 0;
    for (let hour = 0; hour < 6; hour++) {
      for (let i = 0; i < 40; i++) {
        const res = await api(`198.51.100.${(hour * 40 + i) % 250}`, "/api/v1/login", {
          login_id: "victim.member",
          password: `attacker guess ${hour}-${i}`,
        });
        // Refused outright, or asked for a proof-of-work it doesn't pay: no hash either way.
        if (res.status === 429 || res.body.error === "challenge_required") refusedAttacker++;
      }
      expect(await pk(device), `victim at hour ${hour}`).toBe(200);
      t.clock.advance(3_600_000);
    }
    expect(refusedAttacker).toBeGreaterThan(150);
    // Throttled attempts never reached argon2: verifies are far fewer than the attacker's tries.
    expect(verify.mock.calls.length).toBeLessThan(240 - refusedAttacker + 20);
    const protectedEvent = t.s.alerts.list().find((a) => a.kind === "account_protected");
    expect(protectedEvent).toBeTruthy();
    // The victim is told: the protection is among their own security events.
    const events = t.s.db
      .select()
      .from(auditLog)
      .all()
      .filter((e) => e.action === "account.protected");
    expect(events.length).toBeGreaterThanOrEqual(1);
    expect(events[0]?.memberId).toBeTruthy();
  });
});
