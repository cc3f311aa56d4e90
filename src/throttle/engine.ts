import { createHmac, randomBytes } from "node:crypto";
import { and, eq, isNull } from "drizzle-orm";
import type { Clock } from "../clock.js";
import { type Db, lazyPrepared } from "../db/connection.js";
import { accountProtections, networkBlocks } from "../db/schema.js";
import type { Alerts } from "../audit/alerts.js";
import { LRUCache } from "lru-cache";
import { type CounterStore, MemoryCounterStore } from "./counters.js";
import { subnetOf } from "./network.js";

/**
 * The login-anomaly engine: every credential check (password, TOTP, recovery code, passkey; API,
 * hosted pages, OIDC interactions) asks it first, before any expensive work, and tells it the
 * outcome after. It sees slow and distributed attacks because it counts the same failures under
 * several keys and windows at once:
 *
 * - the client IP and its network (/24, /56): one address or one provider's block trying many
 *   accounts, fast or a few times an hour;
 * - the login ID, known or not (unknown IDs are counted and answered exactly like known ones),
 *   from untrusted devices: many addresses trying one account;
 * - (IP, login ID): the ordinary typo-prone member gets a short, growing pause, nothing more;
 * - a keyed fingerprint of the password (HMAC under a key that lives only in memory and is
 *   replaced every day): one password tried on many accounts (spraying);
 * - the whole service's failure rate against its own recent baseline: an attack too spread out
 *   for any key.
 *
 * What it never does is lock a member out: the account-level decision ("protect") refuses only
 * password sign-in from untrusted devices, expires by itself, and a member's own device
 * (`sekisho_device`), passkeys and recovery keep working.
 */
export type Action = "allow" | "challenge" | "slow" | "protect" | "block";

export interface Decision {
  action: Action;
  /** Machine-readable reasons, recorded with the security event. */
  reasons: string[];
  retryAfterSeconds: number;
}

export interface ThrottleLimit {
  over: boolean;
  retryAfterSeconds: number;
}

export interface Attempt {
  ip: string;
  /** The normalised login ID (or member number) the attempt names, known or not; null when the
   * attempt names nobody yet (a passwordless passkey before its credential is known). */
  loginId: string | null;
  /** True when the request carries this member's `sekisho_device`. */
  trustedDevice: boolean;
  /** `password` attempts can be refused by account protection; second steps only by counters. */
  kind: "password" | "second_factor" | "passkey";
  /** The attempted password, for the spraying fingerprint (never stored). */
  password?: string;
  /** The request carried a valid, unspent proof-of-work solution for this login ID. */
  challengeSolved?: boolean;
}

/** Every threshold, with the defaults docs/throttling.md explains. */
export interface ThrottlePolicy {
  /** Failures per IP: slow down past `ipSlow` in 10 minutes; block the IP past `ipBlock` a day. */
  ipSlow: number;
  ipBlock: number;
  /** Failures per network (/24, /56). */
  netSlow: number;
  netBlock: number;
  blockMinutes: number;
  /** Failures per (IP, login ID) in 10 minutes before a growing pause. */
  ipLoginSlow: number;
  /** Failures per login ID from untrusted devices: slow past `accountSlow` an hour… */
  accountSlow: number;
  /** …and protect the account past `accountProtect` a day (NIST SP 800-63B: at most 100). */
  accountProtect: number;
  protectMinutes: number;
  /** Distinct login IDs one password may fail on in a day before it counts as spraying. */
  sprayAccounts: number;
  /** Service-wide failures a minute that count as an attack when also `attackFactor`× the baseline. */
  attackFloorPerMinute: number;
  attackFactor: number;
  /** Keys the in-memory counters keep (least recently used go first). */
  maxKeys: number;
  /** Proof-of-work difficulty: the largest number a solver may have to try (SHA-256 each). */
  challengeMaxNumber: number;
}

export const DEFAULT_POLICY: ThrottlePolicy = {
  ipSlow: 30,
  ipBlock: 300,
  netSlow: 100,
  netBlock: 1500,
  blockMinutes: 60,
  ipLoginSlow: 5,
  accountSlow: 10,
  accountProtect: 30,
  protectMinutes: 60,
  sprayAccounts: 20,
  attackFloorPerMinute: 10,
  attackFactor: 10,
  maxKeys: 250_000,
  challengeMaxNumber: 500_000,
};

const MINUTE = 60_000;
/** Refused attempts written to the audit log per second at most (the rest are counted). */
const REFUSALS_AUDITED_PER_SECOND = 20;
// The counters' windows: [10 minutes, an hour, a day].
const WINDOWS = [10 * MINUTE, 60 * MINUTE, 24 * 60 * MINUTE] as const;
const [TEN_MIN, HOUR, DAY] = [0, 1, 2] as const;

export class LoginGuard {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #alerts: Alerts;
  readonly policy: ThrottlePolicy;
  readonly #counters: CounterStore;
  /** Per login ID: attempts admitted and not settled yet (single flight: parallel attempts count). */
  readonly #inFlight = new Map<string, number>();
  /** Password fingerprint → login IDs it was tried on (bounded), for spraying. */
  readonly #sprayAccounts = new Map<string, Set<string>>();
  #fpKey = randomBytes(32);
  #fpKeyDay = -1;
  /** Service-wide failures per minute, and the baseline (EWMA of past minutes). */
  #minute = -1;
  #minuteFailures = 0;
  #baseline = 0;
  underAttackUntil = 0;

  readonly #loginKey: (loginId: string) => string;
  readonly #onProtect: ((loginId: string, until: number) => void) | undefined;
  readonly #refusals = new LRUCache<string, { at: number; repeats: number }>({ max: 50_000 });
  #refusalSecond = -1;
  #refusalsThisSecond = 0;
  #refusalsUnrecorded = 0;

  constructor(deps: {
    db: Db;
    clock: Clock;
    alerts: Alerts;
    /** A keyed hash of a login ID (the keyring's blind-index key): how protections are stored. */
    loginKey: (loginId: string) => string;
    /** Called when an account becomes protected (to tell the member, if the ID is a member's). */
    onProtect?: (loginId: string, until: number) => void;
    policy?: Partial<ThrottlePolicy>;
    store?: CounterStore;
  }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#alerts = deps.alerts;
    this.#loginKey = deps.loginKey;
    this.#onProtect = deps.onProtect;
    this.policy = { ...DEFAULT_POLICY, ...deps.policy };
    this.#counters = deps.store ?? new MemoryCounterStore(WINDOWS, this.policy.maxKeys);
  }

  get trackedKeys(): number {
    return this.#counters.size;
  }

  /**
   * The password's fingerprint: HMAC under a random key kept only in memory and replaced daily,
   * so no stored value (nor a log line) ever lets anyone test passwords against it.
   */
  #fingerprint(password: string, now: number): string {
    const day = Math.floor(now / (24 * 60 * MINUTE));
    if (day !== this.#fpKeyDay) {
      this.#fpKey = randomBytes(32);
      this.#fpKeyDay = day;
      this.#sprayAccounts.clear();
    }
    return createHmac("sha256", this.#fpKey).update(password, "utf8").digest("base64url").slice(0, 22);
  }

  #keys(a: Attempt) {
    return {
      ip: `ip|${a.ip}`,
      net: `net|${subnetOf(a.ip)}`,
      ipLogin: a.loginId === null ? null : `ipl|${a.ip}|${a.loginId}`,
      account: a.loginId === null ? null : `acct|${a.loginId}`,
    };
  }

  /** Decide, before any expensive work. An `allow` reserves a single-flight slot: call settle(). */
  assess(a: Attempt): Decision {
    const now = this.#clock.now().getTime();
    const k = this.#keys(a);
    const reasons: string[] = [];
    let action: Action = "allow";
    let retry = 0;
    const raise = (to: Action, reason: string, seconds: number) => {
      const rank = { allow: 0, challenge: 1, slow: 2, protect: 3, block: 4 } as const;
      reasons.push(reason);
      if (rank[to] > rank[action]) action = to;
      retry = Math.max(retry, Math.ceil(seconds));
    };

    // A member on their own device is never refused: the attacker can't have that cookie.
    if (!a.trustedDevice) {
      const block = this.#blocked([`ip:${a.ip}`, `net:${subnetOf(a.ip)}`], now);
      if (block) raise("block", block.reason, (block.until - now) / 1000);

      const ip = this.#counters.peek(k.ip, now);
      if ((ip[TEN_MIN] as number) >= this.policy.ipSlow) raise("slow", "ip_failures", 60);
      const net = this.#counters.peek(k.net, now);
      if ((net[TEN_MIN] as number) >= this.policy.netSlow) raise("slow", "network_failures", 60);

      if (k.ipLogin && k.account) {
        const ipLogin = this.#counters.peek(k.ipLogin, now)[TEN_MIN] as number;
        // Attempts admitted and not settled yet count as failures: two parallel attempts on one
        // account can't both slip past the last free slot (single flight per account).
        const flight = this.#inFlight.get(k.account) ?? 0;
        if (ipLogin + flight >= this.policy.ipLoginSlow) {
          // 30 s, doubling with each further failure, at most 15 minutes.
          const over = Math.max(0, Math.floor(ipLogin) - this.policy.ipLoginSlow);
          raise("slow", "ip_login_failures", Math.min(15 * 60, 30 * 2 ** over));
        }
        const account = this.#counters.peek(k.account, now)[HOUR] as number;
        if (account + flight >= this.policy.accountSlow) {
          const over = Math.max(0, Math.floor(account) - this.policy.accountSlow);
          raise("slow", "account_failures", Math.min(15 * 60, 60 * 2 ** over));
        }
      }
      if (a.kind === "password" && a.loginId !== null) {
        const protection = this.#protection(a.loginId, now);
        if (protection) raise("protect", "account_protected", (protection.until - now) / 1000);
        if (a.password !== undefined) {
          const fp = this.#fingerprint(a.password, now);
          const tried = this.#sprayAccounts.get(fp);
          if (tried && tried.size >= this.policy.sprayAccounts && !tried.has(a.loginId as string)) {
            // A sprayed password: every further try of it costs a proof-of-work.
            if (!a.challengeSolved) raise("challenge", "password_spraying", 0);
          }
        }
        // The whole service is under attack: every untrusted password sign-in costs a proof-of-work.
        if (this.underAttack() && !a.challengeSolved) raise("challenge", "under_attack", 0);
      }
    }
    if (action === "allow" && k.account)
      this.#inFlight.set(k.account, (this.#inFlight.get(k.account) ?? 0) + 1);
    return { action, reasons, retryAfterSeconds: action === "allow" ? 0 : Math.max(1, retry) };
  }

  /**
   * The outcome of an admitted attempt; call exactly once per `allow`. `success`: a completed
   * sign-in (clears the address's and the account's counts); `failure`: a wrong credential;
   * `neither`: the attempt ended without a verdict on the credential (a right password with a
   * second step due, a busy hash queue): it only frees the single-flight slot.
   */
  settle(a: Attempt, outcome: "success" | "failure" | "neither"): void {
    const now = this.#clock.now().getTime();
    const k = this.#keys(a);
    if (k.account) {
      const left = (this.#inFlight.get(k.account) ?? 1) - 1;
      if (left <= 0) this.#inFlight.delete(k.account);
      else this.#inFlight.set(k.account, left);
    }
    if (outcome === "neither") return;
    if (outcome === "success") {
      if (k.ipLogin) this.#counters.delete(k.ipLogin);
      // The account's count is of failures from untrusted devices; the member signing in from
      // their own device says nothing about those (an attacker elsewhere may still be at it).
      if (k.account && !a.trustedDevice) this.#counters.delete(k.account);
      return;
    }
    this.#countGlobal(now);
    const ip = this.#counters.add(k.ip, 1, now);
    const net = this.#counters.add(k.net, 1, now);
    if (k.ipLogin) this.#counters.add(k.ipLogin, 1, now);
    if (k.account && !a.trustedDevice) {
      const account = this.#counters.add(k.account, 1, now);
      if (a.kind === "password" && (account[DAY] as number) >= this.policy.accountProtect) {
        this.#protect(a.loginId as string, now);
      }
    }
    if ((ip[DAY] as number) >= this.policy.ipBlock) this.#block(`ip:${a.ip}`, "ip_failures_day", now);
    if ((net[DAY] as number) >= this.policy.netBlock)
      this.#block(`net:${subnetOf(a.ip)}`, "network_failures_day", now);
    if (a.password !== undefined && a.kind === "password" && a.loginId !== null) this.#trackSpray(a, now);
  }

  /**
   * Should this refusal be written to the audit log? The first refusal of an address for a login
   * ID and decision in a minute is; repeats within that minute are only counted (and reported with
   * the next entry as `repeats`), so a flood of refused attempts is not also a flood of database
   * writes. Returns null to skip, or the number of repeats skipped since the last entry.
   */
  recordRefusal(a: Attempt, action: Action): number | null {
    const now = this.#clock.now().getTime();
    const key = `${a.ip}|${a.loginId ?? ""}|${action}`;
    const seen = this.#refusals.get(key);
    if (seen && now - seen.at < MINUTE) {
      seen.repeats++;
      return null;
    }
    // And at most REFUSALS_AUDITED_PER_SECOND entries a second service-wide: a flood from ever new
    // addresses must not become a flood of audit writes (the alerts say what is going on).
    const second = Math.floor(now / 1000);
    if (second !== this.#refusalSecond) {
      this.#refusalSecond = second;
      this.#refusalsThisSecond = 0;
    }
    if (this.#refusalsThisSecond >= REFUSALS_AUDITED_PER_SECOND) {
      this.#refusalsUnrecorded++;
      return null;
    }
    this.#refusalsThisSecond++;
    this.#refusals.set(key, { at: now, repeats: 0 });
    const skipped = (seen?.repeats ?? 0) + this.#refusalsUnrecorded;
    this.#refusalsUnrecorded = 0;
    return skipped;
  }

  /** Count a request (not a failure) under `key` and say whether it is past `limit` in 10 minutes. */
  overRate(key: string, limit: number): ThrottleLimit {
    const count = this.#counters.add(`rate|${key}`, 1, this.#clock.now().getTime())[TEN_MIN] as number;
    return { over: count > limit, retryAfterSeconds: 60 };
  }

  #trackSpray(a: Attempt, now: number): void {
    const fp = this.#fingerprint(a.password as string, now);
    let tried = this.#sprayAccounts.get(fp);
    if (!tried) {
      if (this.#sprayAccounts.size > 50_000) this.#sprayAccounts.clear();
      tried = new Set();
      this.#sprayAccounts.set(fp, tried);
    }
    if (tried.size < this.policy.sprayAccounts * 2) tried.add(a.loginId as string);
    if (tried.size === this.policy.sprayAccounts) {
      this.#alerts.raise("password_spraying", "warning", { accounts: tried.size, window: "1h" });
    }
  }

  #countGlobal(now: number): void {
    const minute = Math.floor(now / MINUTE);
    if (minute !== this.#minute) {
      // Fold the finished minute(s) into the baseline (an exponentially weighted mean over about
      // half an hour) — but not while under attack: a baseline that learned the attack would soon
      // call it normal and stop the challenges halfway through a slow, long stuffing run.
      const gap = this.#minute < 0 ? 0 : Math.min(60, minute - this.#minute);
      if (now >= this.underAttackUntil) {
        for (let i = 0; i < gap; i++)
          this.#baseline += ((i === 0 ? this.#minuteFailures : 0) - this.#baseline) / 30;
      }
      this.#minute = minute;
      this.#minuteFailures = 0;
    }
    this.#minuteFailures++;
    const threshold = Math.max(this.policy.attackFloorPerMinute, this.#baseline * this.policy.attackFactor);
    if (this.#minuteFailures === Math.ceil(threshold)) {
      this.underAttackUntil = now + 15 * MINUTE;
      this.#alerts.raise("under_attack", "critical", {
        failures_this_minute: this.#minuteFailures,
        baseline_per_minute: Math.round(this.#baseline * 10) / 10,
      });
    }
  }

  // Persisted decisions: account protection and blocks survive a restart. Both are read on every
  // attempt, so the statements are prepared once (building them per call showed up as the largest
  // cost, and most of the garbage, of a refused attempt).
  readonly #protectionStmt = lazyPrepared(() =>
    this.#db.$client.prepare<[string, number], { until: number; reason: string }>(
      "SELECT until, reason FROM account_protections WHERE login_key = ? AND until > ? AND lifted_at IS NULL",
    ),
  );
  readonly #blockStmt = lazyPrepared(() =>
    this.#db.$client.prepare<[string, string, number], { until: number; reason: string }>(
      "SELECT until, reason FROM network_blocks WHERE network IN (?, ?) AND until > ? AND lifted_at IS NULL LIMIT 1",
    ),
  );

  #protection(loginId: string, now: number) {
    return this.#protectionStmt().get(this.loginKey(loginId), now);
  }

  #blocked(networks: [string, string], now: number) {
    return this.#blockStmt().get(networks[0], networks[1], now);
  }

  #protect(loginId: string, now: number): void {
    if (this.#protection(loginId, now)) return;
    const row = {
      loginKey: this.loginKey(loginId),
      until: now + this.policy.protectMinutes * MINUTE,
      reason: "account_failures_day",
      createdAt: now,
      liftedAt: null,
    };
    this.#db
      .insert(accountProtections)
      .values(row)
      .onConflictDoUpdate({ target: accountProtections.loginKey, set: row })
      .run();
    this.#alerts.raise("account_protected", "warning", { login_key: row.loginKey }, `acct:${row.loginKey}`);
    this.#onProtect?.(loginId, row.until);
  }

  #block(network: string, reason: string, now: number): void {
    if (this.#blocked([network, network], now)) return;
    const row = {
      network,
      until: now + this.policy.blockMinutes * MINUTE,
      reason,
      createdAt: now,
      liftedAt: null,
    };
    this.#db
      .insert(networkBlocks)
      .values(row)
      .onConflictDoUpdate({ target: networkBlocks.network, set: row })
      .run();
    this.#alerts.raise("network_blocked", "warning", { network, reason }, `net:${network}`);
  }

  /** The stable key a login ID's protection is stored under (a keyed hash; the table names nobody). */
  loginKey(loginId: string): string {
    return this.#loginKey(loginId);
  }

  /** Lift an account's protection and the counters behind it (admin action; member unlock). */
  lift(loginId: string): boolean {
    const now = this.#clock.now().getTime();
    this.#counters.delete(`acct|${loginId}`);
    return (
      this.#db
        .update(accountProtections)
        .set({ liftedAt: now })
        .where(
          and(eq(accountProtections.loginKey, this.loginKey(loginId)), isNull(accountProtections.liftedAt)),
        )
        .run().changes > 0
    );
  }

  /** Under attack: the service-wide failure rate is far above its baseline (an alert was raised). */
  underAttack(): boolean {
    return this.#clock.now().getTime() < this.underAttackUntil;
  }
}
