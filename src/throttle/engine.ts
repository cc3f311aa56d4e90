import { createHmac, randomBytes } from "node:crypto";
import { and, eq, isNull } from "drizzle-orm";
import { LRUCache } from "lru-cache";
import type { Alerts } from "../audit/alerts.js";
import type { Clock } from "../clock.js";
import { type Db, othersCommits } from "../db/connection.js";
import { accountProtections, networkBlocks } from "../db/schema.js";
import { normalisePassword } from "../passwords/rules.js";
import { type CounterDump, type CounterStore, MemoryCounterStore } from "./counters.js";
import { addressOf, subnetOf } from "./network.js";

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
  /**
   * A password reset's second step (a mailed link's): its wrong codes are counted apart from
   * sign-ins' second steps, so someone who knows the password can't shut the member's reset with
   * wrong codes of their own (nor a reset link's holder the member's sign-in).
   */
  reset?: boolean;
  /**
   * A second step proved with a passkey: it can't be guessed, so the account's counts of wrong
   * codes (which someone who knows the password can run up) don't refuse it.
   */
  passkey?: boolean;
  /** The login ID is nobody's: the attempt can only fail (a password attempt's lookup says so). */
  unknownAccount?: boolean;
}

/** The kinds of recovery mail, each capped on its own per member (`mailMember`). */
export type RecoveryMail = "reset" | "login_ids";

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
  /** Failures per login ID from untrusted devices: slow down (429) past `accountSlow` an hour… */
  accountSlow: number;
  /** …and protect the account past `accountProtect` a day (NIST SP 800-63B: at most 100). */
  accountProtect: number;
  /**
   * Wrong second-step codes a day (from untrusted devices) at which the member is told someone
   * who knows their password is trying (once, when the day's count reaches it); past
   * `accountProtect` a day, second steps from untrusted devices at addresses the member didn't
   * sign in from are refused until the count falls.
   */
  secondFactorNotice: number;
  protectMinutes: number;
  /** Distinct login IDs one password may fail on in a day before it counts as spraying. */
  sprayAccounts: number;
  /** Service-wide failures a minute that count as an attack when also `attackFactor`× the baseline. */
  attackFloorPerMinute: number;
  attackFactor: number;
  /**
   * Untrusted password sign-ins waiting for argon2 (HashQueue.waitingAttempts) at which the service
   * counts as overloaded: from then until `overloadHoldSeconds` after the backlog was last seen that
   * deep, every untrusted password sign-in costs a proof-of-work instead of joining the backlog.
   */
  overloadBacklog: number;
  overloadHoldSeconds: number;
  /**
   * Wrong passwords or codes a day from the member's own trusted devices, past which those devices
   * count as untrusted until the day's count falls: the cookie buys a member freedom from lockout,
   * not unlimited guesses for whoever copied it.
   */
  trustedDeviceFailures: number;
  /** Keys the in-memory counters keep (least recently used go first). */
  maxKeys: number;
  /** Proof-of-work difficulty: the largest number a solver may have to try (SHA-256 each). */
  challengeMaxNumber: number;
  /** Requests that mail a member (recovery): per IP and per network in 10 minutes… */
  mailIp: number;
  mailNet: number;
  /** …per target (login ID or e-mail, known or not) an hour and a day… */
  mailTarget: number;
  mailTargetDay: number;
  /** …and service-wide in 10 minutes, past which (as past a target's limit) each costs a proof-of-work. */
  mailGlobal: number;
  /** Recovery mails to one member in 10 minutes, however they were asked for. */
  mailMember: number;
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
  secondFactorNotice: 10,
  protectMinutes: 60,
  sprayAccounts: 20,
  attackFloorPerMinute: 10,
  attackFactor: 10,
  overloadBacklog: 32,
  overloadHoldSeconds: 60,
  trustedDeviceFailures: 20,
  maxKeys: 250_000,
  challengeMaxNumber: 500_000,
  mailIp: 10,
  mailNet: 50,
  mailTarget: 3,
  mailTargetDay: 10,
  mailGlobal: 300,
  mailMember: 3,
};

const MINUTE = 60_000;
/** Refused attempts written to the audit log per second at most (the rest are counted). */
const REFUSALS_AUDITED_PER_SECOND = 20;
// The counters' windows: [10 minutes, an hour, a day].
const WINDOWS = [10 * MINUTE, 60 * MINUTE, 24 * 60 * MINUTE] as const;
const [TEN_MIN, HOUR, DAY] = [0, 1, 2] as const;

/** An active account protection or network block, as stored. */
interface Persisted {
  until: number;
  reason: string;
}

interface Keys {
  ip: string;
  net: string;
  ipLogin: string | null;
  account: string | null;
}

/** The service-wide detector looks at the last ten minutes, so a short burst alone isn't an attack. */
const GLOBAL_WINDOW = 10 * 60_000;

const DAY_MS = 24 * 3_600_000;

/** How long an address a member signed in from stays known (see LoginGuard#known). */
const KNOWN_ADDRESS_MS = 30 * 24 * 3_600_000;
/** Attempts from a known address that go first in one queue in 10 minutes (see fromKnownAddress). */
const FIRST_PER_LOGIN = 5;
const FIRST_PER_ADDRESS = 20;

/** What LoginGuard.carryOver gives and takeOver takes. */
export interface EngineState {
  stores: Record<string, CounterDump>;
  known: Array<[string, number]>;
  baseline: number;
  minute: number;
  minuteFailures: number;
  underAttackUntil: number;
}

export class LoginGuard {
  /** Told every decision (metrics): the kind of attempt and what was decided, with its reasons. */
  observer: ((kind: string, decision: Decision) => void) | null = null;
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #alerts: Alerts;
  readonly policy: ThrottlePolicy;
  /** One counter store per kind of key, so a flood of one kind can't evict another's. */
  readonly #counters: {
    ip: CounterStore;
    net: CounterStore;
    ipl: CounterStore;
    acct: CounterStore;
    rate: CounterStore;
    /** Failures from a member's own trusted devices, by login ID (see #trusted). */
    trusted: CounterStore;
    /** Wrong second-step codes from untrusted devices, by login ID. */
    mfa: CounterStore;
    /** Wrong codes at password resets' second steps, by login ID (see Attempt.reset). */
    rmfa: CounterStore;
  };
  /** Per login ID: attempts admitted and not settled yet (single flight: parallel attempts count). */
  readonly #inFlight = new Map<string, number>();
  /** Password fingerprint → login IDs it was tried on (bounded), for spraying. */
  readonly #sprayAccounts = new LRUCache<string, Set<string>>({ max: 100_000 });
  #fpKey = randomBytes(32);
  #fpKeyDay = -1;
  /** Service-wide failures per minute, and the baseline (EWMA of past minutes). */
  #minute = -1;
  #minuteFailures = 0;
  #baseline = 0;
  underAttackUntil = 0;
  overloadedUntil = 0;
  /** Untrusted sign-in attempts waiting for argon2 now (HashQueue.waitingAttempts); none when not told. */
  readonly #backlog: () => number;
  /** Has the hashing queue decide again, now, for every attempt waiting in it (HashQueue.reconsider). */
  readonly #reconsider: () => void;
  readonly #global: MemoryCounterStore;
  readonly #mailGlobal: MemoryCounterStore;

  readonly #loginKey: (loginId: string) => string;
  /** Told of each new protection; answers the member's id when the login ID is a member's. */
  readonly #onProtect: ((loginId: string, until: number) => string | undefined) | undefined;
  /** Told when an account's wrong second-step codes reach the day's notice threshold. */
  readonly #onSecondFactorGuessing: ((loginId: string) => string | undefined) | undefined;
  /** When each login ID's second-step guessing was last told (once a day at most). */
  readonly #secondFactorTold = new LRUCache<string, number>({ max: 100_000 });
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
    onProtect?: (loginId: string, until: number) => string | undefined;
    /**
     * Called when someone keeps failing an account's second step (to tell the member); answers
     * the member's id when the login ID is a member's.
     */
    onSecondFactorGuessing?: (loginId: string) => string | undefined;
    policy?: Partial<ThrottlePolicy>;
    /** A counter store factory (one store per kind of key); default: in memory, LRU-bounded. */
    store?: () => CounterStore;
    /** How many untrusted sign-in attempts wait for argon2 right now (HashQueue.waitingAttempts). */
    backlog?: () => number;
    /**
     * Called when the service comes under attack or is overloaded: the waiting attempts should be
     * decided again now (HashQueue.reconsider), not when their turn comes. Called once the current
     * turn of the event loop is done, never from inside a decision.
     */
    reconsider?: () => void;
  }) {
    this.#backlog = deps.backlog ?? (() => 0);
    const reconsider = deps.reconsider;
    // setImmediate, not a microtask: an attempt admitted in the same turn (the one that set off
    // the alarm, say) joins the line a few promise steps later, and must be asked too.
    this.#reconsider = reconsider ? () => void setImmediate(reconsider) : () => {};
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#alerts = deps.alerts;
    this.#loginKey = deps.loginKey;
    this.#onProtect = deps.onProtect;
    this.#onSecondFactorGuessing = deps.onSecondFactorGuessing;
    this.policy = { ...DEFAULT_POLICY, ...deps.policy };
    const store = () => deps.store?.() ?? new MemoryCounterStore(WINDOWS, this.policy.maxKeys);
    this.#counters = {
      ip: store(),
      net: store(),
      ipl: store(),
      acct: store(),
      rate: store(),
      trusted: store(),
      mfa: store(),
      rmfa: store(),
    };
    this.#global = new MemoryCounterStore([GLOBAL_WINDOW], 1);
    this.#mailGlobal = new MemoryCounterStore([GLOBAL_WINDOW], 1);
  }

  /**
   * What the engine has learnt, to carry over a restart (src/throttle/carry-over.ts): the failure
   * counters (at most `maxPerStore` keys each, the most recently used), the addresses members
   * signed in from, and the service-wide baseline. Not the spraying fingerprints: they are keyed
   * by a key that exists only in memory (and so mean nothing to the next process).
   */
  carryOver(maxPerStore: number): EngineState {
    const now = this.#clock.now().getTime();
    const stores: Record<string, CounterDump> = {};
    for (const [name, store] of this.#namedStores())
      if (store instanceof MemoryCounterStore) stores[name] = store.dump(maxPerStore, now);
    const known: Array<[string, number]> = [];
    for (const [key, at] of this.#known.entries()) {
      if (known.length >= maxPerStore) break;
      if (now - at < KNOWN_ADDRESS_MS) known.push([key, at]);
    }
    return {
      stores,
      known: known.reverse(),
      baseline: this.#baseline,
      minute: this.#minute,
      minuteFailures: this.#minuteFailures,
      underAttackUntil: this.underAttackUntil,
    };
  }

  /** Take over what `carryOver` gave, before this engine decides anything. Returns how many keys. */
  takeOver(state: EngineState): number {
    let taken = 0;
    for (const [name, store] of this.#namedStores()) {
      const dump = state.stores[name];
      if (dump && store instanceof MemoryCounterStore) taken += store.load(dump);
    }
    for (const [key, at] of state.known) this.#known.set(key, at);
    this.#baseline = state.baseline;
    this.#minute = state.minute;
    this.#minuteFailures = state.minuteFailures;
    this.underAttackUntil = Math.max(this.underAttackUntil, state.underAttackUntil);
    return taken + state.known.length;
  }

  #namedStores(): Array<[string, CounterStore]> {
    return [...Object.entries(this.#counters), ["global", this.#global], ["mailGlobal", this.#mailGlobal]];
  }

  get trackedKeys(): number {
    const c = this.#counters;
    return Object.values(c).reduce((n, store) => n + store.size, 0);
  }

  /**
   * The password's fingerprint: HMAC under a random key kept only in memory and replaced daily,
   * so no stored value (nor a log line) ever lets anyone test passwords against it.
   */
  #fingerprint(password: string, now: number): string {
    const day = Math.floor(now / (24 * 60 * MINUTE));
    if (day !== this.#fpKeyDay) {
      // A new key each day (yesterday's fingerprints mean nothing any more, and age out of the LRU).
      this.#fpKey = randomBytes(32);
      this.#fpKeyDay = day;
    }
    // Of the password as it is verified (NFKC): its full-width and other compatibility spellings
    // are the same password, and must not each get their own allowance of accounts.
    return createHmac("sha256", this.#fpKey)
      .update(normalisePassword(password), "utf8")
      .digest("base64url")
      .slice(0, 22);
  }

  #keys(a: Attempt): Keys {
    const address = addressOf(a.ip);
    return {
      ip: address,
      net: subnetOf(a.ip),
      ipLogin: a.loginId === null ? null : `${address}|${a.loginId}`,
      account: a.loginId,
    };
  }

  #flight(key: string): number {
    return this.#inFlight.get(key) ?? 0;
  }

  #hold(key: string, delta: 1 | -1): void {
    const n = this.#flight(key) + delta;
    if (n <= 0) this.#inFlight.delete(key);
    else this.#inFlight.set(key, n);
  }

  /** Decide, before any expensive work. An `allow` reserves a single-flight slot: call settle(). */
  assess(a: Attempt): Decision {
    const now = this.#clock.now().getTime();
    const k = this.#keys(a);
    const decision = this.#decide(a, k, now);
    if (decision.action === "allow") {
      this.#holdAll(k, 1, a);
      // An attempt on a login ID nobody has is a failure the moment it is admitted: the
      // service-wide detector counts it now, not after its dummy hash, so an attack on unknown
      // IDs is seen before a backlog of its hashes builds up (settle doesn't count it again).
      if (a.unknownAccount) this.#countGlobal(now);
    }
    this.observer?.(a.kind, decision);
    return decision;
  }

  /**
   * Decide again for an admitted attempt that waited for its hash (HashQueue's `stillWanted`):
   * what changed meanwhile — the service came under attack, the address was blocked, the account
   * protected — applies to it before the expensive work. An `allow` keeps its slot (settle() as
   * usual); a refusal frees it, and the attempt is over (no settle()).
   */
  reassess(a: Attempt): Decision {
    const now = this.#clock.now().getTime();
    const k = this.#keys(a);
    this.#holdAll(k, -1, a);
    let decision: Decision;
    try {
      decision = this.#decide(a, k, now);
    } catch (err) {
      this.#holdAll(k, 1, a); // still held: the caller's settle() frees it
      throw err;
    }
    if (decision.action === "allow") this.#holdAll(k, 1, a);
    // Not reported to the observer: the attempt was counted as admitted (the decisions metric
    // counts each attempt once); its audit entry records the refusal.
    return decision;
  }

  /**
   * The decision `assess` would take, when it refuses; null when it would allow — and then
   * nothing happens (no slot reserved, nothing counted): the caller goes on to `assess`, which
   * decides again. For the HTTP layer's sign-in lane (src/http/sign-in-lane.ts), which answers
   * refused attempts before express sees them.
   */
  refusal(a: Attempt): Decision | null {
    const now = this.#clock.now().getTime();
    const decision = this.#decide(a, this.#keys(a), now);
    if (decision.action === "allow") return null;
    this.observer?.(a.kind, decision);
    return decision;
  }

  #decide(a: Attempt, k: Keys, now: number): Decision {
    const reasons: string[] = [];
    let action: Action = "allow";
    let retry = 0;
    const raise = (to: Action, reason: string, seconds: number) => {
      const rank = { allow: 0, challenge: 1, slow: 2, protect: 3, block: 4 } as const;
      reasons.push(reason);
      if (rank[to] > rank[action]) action = to;
      retry = Math.max(retry, Math.ceil(seconds));
    };

    // A member on their own device is never refused: the attacker can't have that cookie (and if
    // they copied it, its day's budget of failures runs out, see #trusted).
    if (!this.#trusted(a, k, now)) {
      const block = this.#blocked([`ip:${k.ip}`, `net:${k.net}`], now);
      if (block) raise("block", block.reason, (block.until - now) / 1000);

      // Attempts admitted and not settled yet count as failures everywhere: parallel attempts
      // can't slip past the last free slot of an address, a network or an account.
      const c = this.#counters;
      const check = (store: CounterStore, key: string, w: number, limit: number, reason: string) => {
        const count = (store.peek(key, now)[w] as number) + this.#flight(`${reason}|${key}`);
        if (count >= limit) raise("slow", reason, Math.max(1, store.until(key, w, limit, now) / 1000));
      };
      check(c.ip, k.ip, TEN_MIN, this.policy.ipSlow, "ip_failures");
      check(c.net, k.net, TEN_MIN, this.policy.netSlow, "network_failures");
      if (k.ipLogin && k.account) {
        check(c.ipl, k.ipLogin, TEN_MIN, this.policy.ipLoginSlow, "ip_login_failures");
        if (a.kind === "second_factor") {
          // Wrong codes, from whoever knows the password (only they get this far), slow the
          // account's second step; wrong passwords don't, or they would lock the member out of it.
          // A reset's second step is judged on resets' wrong codes only (whoever holds a link), a
          // sign-in's on sign-ins'. A day's ceiling too, so guessing doesn't go on at the hourly
          // rate for ever; not where the member signed in from lately. A passkey can't be guessed:
          // wrong codes, anyone's, don't keep it out.
          const codes = a.reset ? c.rmfa : c.mfa;
          if (!a.passkey) {
            check(codes, k.account, HOUR, this.policy.accountSlow, "account_second_factor_failures");
            if (!this.#knownAddress(k, now))
              check(codes, k.account, DAY, this.policy.accountProtect, "account_second_factor_failures_day");
          }
        } else if (!this.#knownAddress(k, now)) {
          // An account tried from many addresses is slowed for every untrusted device, except at
          // an address the member signed in from lately: one failure whenever the hour's window
          // reopens must not keep the member out of their own account from home.
          check(c.acct, k.account, HOUR, this.policy.accountSlow, "account_failures");
        }
      }
      if (a.kind === "password" && a.loginId !== null) {
        const protection = this.#knownAddress(k, now) ? null : this.#protection(a.loginId, now);
        if (protection) raise("protect", "account_protected", (protection.until - now) / 1000);
        // Past a day's worth of failures, every further password try on the account costs a
        // proof-of-work (NIST SP 800-63B's alternative to locking: the member pays a second once,
        // a guesser pays for every guess).
        if (k.account && !a.challengeSolved) {
          const day = this.#counters.acct.peek(k.account, now)[DAY] as number;
          if (day >= this.policy.accountProtect) raise("challenge", "account_failures_day", 0);
        }
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
        // More password checks waiting than argon2 can work off soon: the same, until it clears.
        if (!a.challengeSolved && this.#overloaded(now)) raise("challenge", "overloaded", 0);
      }
    }
    return { action, reasons, retryAfterSeconds: action === "allow" ? 0 : Math.max(1, retry) };
  }

  /**
   * Addresses (an IPv4 address, an IPv6 /64) a member signed in from, by (address, login ID), with
   * when: for 30 days the account's slow-down and protection don't apply there (its own limits
   * do). In memory, bounded like the counters; a restart forgets them until the next sign-in.
   */
  readonly #known = new LRUCache<string, number>({ max: 100_000 });

  #knownAddress(k: Keys, now: number): boolean {
    const at = k.ipLogin ? this.#known.get(k.ipLogin) : undefined;
    return at !== undefined && now - at < KNOWN_ADDRESS_MS;
  }

  /**
   * Does a sign-in naming `loginId` come from an address its member signed in from lately (see
   * #known), with failures to spare there (fewer than the address-and-ID slow-down's limit in the
   * window)? The lanes and the hashing queue let it go first, as they do a trusted device: members
   * who sign in with a password alone never get a device cookie, and during a flood they would
   * otherwise wait with strangers, or be answered busy. Only a completed sign-in makes an address
   * known, so a guesser can't; one sharing the member's address (a NAT) gets the order, not the
   * throttle's leniency, and loses even the order after a few failures.
   *
   * Right passwords count too: each queue (`queue`: the doors' stranger queue, the hashing queue)
   * lets at most FIRST_PER_LOGIN attempts of one address and login ID, and FIRST_PER_ADDRESS of
   * one address, go first in 10 minutes (a member signs in a few times; a household or an office
   * a few more). Otherwise someone with a few accounts of their own, each signed in once from
   * their address, could keep the line ahead of everyone else full with sign-ins that never fail.
   * `own`: the asking attempt already holds its in-flight reservation (the hashing queue's
   * question), which is not one of the failures to spare.
   */
  fromKnownAddress(ip: string, loginId: string, opts: { queue: "door" | "hash"; own?: boolean }): boolean {
    const now = this.#clock.now().getTime();
    const k = this.#keys({ ip, loginId, trustedDevice: false, kind: "password" });
    if (!k.ipLogin || !this.#knownAddress(k, now)) return false;
    const failures =
      (this.#counters.ipl.peek(k.ipLogin, now)[TEN_MIN] as number) +
      this.#flight(`ip_login_failures|${k.ipLogin}`) -
      (opts.own ? 1 : 0);
    if (failures >= this.policy.ipLoginSlow) return false;
    const pair = `${opts.queue}|${k.ipLogin}`;
    const address = `${opts.queue}|${k.ip}`;
    if (
      (this.#firstGrants.peek(pair, now)[0] as number) >= FIRST_PER_LOGIN ||
      (this.#firstGrants.peek(address, now)[0] as number) >= FIRST_PER_ADDRESS
    )
      return false;
    this.#firstGrants.add(pair, 1, now);
    this.#firstGrants.add(address, 1, now);
    return true;
  }

  /** Attempts let go first from known addresses, per queue and (address, login ID) or address. */
  readonly #firstGrants = new MemoryCounterStore([10 * 60_000], 100_000);

  /**
   * Has this login ID's trusted devices' failure budget anything left today? (The lanes and the
   * hashing queue ask it too: a device cookie past its budget goes first nowhere.)
   */
  trustedBudgetLeft(loginId: string): boolean {
    return this.#trusted(
      { ip: "", loginId, trustedDevice: true, kind: "password" },
      this.#keysOfLogin(loginId),
      this.#clock.now().getTime(),
    );
  }

  #keysOfLogin(loginId: string): Keys {
    return { ip: "", net: "", ipLogin: null, account: loginId };
  }

  /** Does the attempt come from the member's own device, with failures to spare today? */
  #trusted(a: Attempt, k: Keys, now: number): boolean {
    if (!a.trustedDevice || !k.account) return false;
    const day =
      (this.#counters.trusted.peek(k.account, now)[DAY] as number) +
      this.#flight(`trusted_failures|${k.account}`);
    return day < this.policy.trustedDeviceFailures;
  }

  #holdAll(k: Keys, delta: 1 | -1, a?: Attempt): void {
    if (a?.trustedDevice && k.account) this.#hold(`trusted_failures|${k.account}`, delta);
    this.#hold(`ip_failures|${k.ip}`, delta);
    this.#hold(`network_failures|${k.net}`, delta);
    if (k.ipLogin) this.#hold(`ip_login_failures|${k.ipLogin}`, delta);
    if (k.account) this.#hold(`account_failures|${k.account}`, delta);
    if (a?.kind === "second_factor" && k.account) {
      this.#hold(`account_second_factor_failures|${k.account}`, delta);
      this.#hold(`account_second_factor_failures_day|${k.account}`, delta);
    }
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
    this.#holdAll(k, -1, a);
    if (outcome === "neither") return;
    const c = this.#counters;
    if (outcome === "success") {
      // The member got in from this address: its pause for this login ID ends. The account's
      // count stays: it counts failures from anywhere, and a member signing in says nothing about
      // an attacker elsewhere (clearing it would hand that attacker fresh guesses).
      if (k.ipLogin) {
        c.ipl.delete(k.ipLogin);
        // Only where the member got in all the way (a password with a second step due settles
        // as `neither`): an attacker who knows the password alone can't make an address known.
        this.#known.set(k.ipLogin, now);
      }
      return;
    }
    if (!a.unknownAccount) this.#countGlobal(now); // (an unknown ID's was counted when admitted)
    // Judged before this failure is counted: the attempt was admitted as trusted or not.
    const trusted = this.#trusted(a, k, now);
    if (a.trustedDevice && k.account) c.trusted.add(k.account, 1, now);
    const ip = c.ip.add(k.ip, 1, now);
    const net = c.net.add(k.net, 1, now);
    if (k.ipLogin) c.ipl.add(k.ipLogin, 1, now);
    if (k.account && !trusted && a.kind === "second_factor") {
      if (a.reset) c.rmfa.add(k.account, 1, now);
      else {
        const before = c.mfa.peek(k.account, now)[DAY] as number;
        const after = c.mfa.add(k.account, 1, now)[DAY] as number;
        // Someone who knows the password is guessing the second step: the member should change it.
        if (before < this.policy.secondFactorNotice && after >= this.policy.secondFactorNotice)
          this.#secondFactorGuessed(k.account, now);
      }
    }
    if (k.account && !trusted) {
      const before = c.acct.peek(k.account, now)[DAY] as number;
      const after = c.acct.add(k.account, 1, now)[DAY] as number;
      // Protect when the day's count *reaches* the threshold, not on every failure past it nor at
      // each multiple of it: protection refuses the member too (without a trusted device), so an
      // attacker must not be able to keep it on. Past the threshold every further password try
      // costs a proof-of-work instead (account_failures_day), which a persistent guesser pays
      // for every guess and the member once.
      if (
        a.kind === "password" &&
        before < this.policy.accountProtect &&
        after >= this.policy.accountProtect
      ) {
        this.#protect(a.loginId as string, now);
      }
    }
    if ((ip[DAY] as number) >= this.policy.ipBlock) this.#block(`ip:${k.ip}`, "ip_failures_day", now);
    if ((net[DAY] as number) >= this.policy.netBlock)
      this.#block(`net:${k.net}`, "network_failures_day", now);
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
    const count = this.#counters.rate.add(key, 1, this.#clock.now().getTime())[TEN_MIN] as number;
    return { over: count > limit, retryAfterSeconds: 60 };
  }

  /**
   * A request that makes us mail someone (forgotten password or login ID; with `challengeable:
   * false`, a mail nobody asked for by hand, such as the verification mail of a registration).
   * Counted — every request, not only failures — per address and network (one client can't flood
   * many mailboxes or walk the member base: `slow`), per target (a login ID or an e-mail's blind
   * index, whether or not anyone has it, so the answer says nothing about existence) and
   * service-wide. Past a target's limit, or service-wide past `mailGlobal` (or while the service
   * is under attack), each request costs a proof-of-work: an attacker can't lock a member out of
   * recovery by using up the target's requests, because the member can still pay the second of
   * computing. An allowed request is counted at once. A signed-in member's own request (a new
   * verification mail, a change of address: `serviceWide: false`) is not held to the service-wide
   * limit or the under-attack state: it can't be challenged, and anyone could otherwise switch
   * those off for every member with a burst of failed sign-ins; its per-member limits, the
   * per-address and per-target ones still hold.
   */
  assessMailRequest(a: {
    ip: string;
    target: string;
    challengeSolved?: boolean;
    challengeable?: boolean;
    serviceWide?: boolean;
  }): Decision {
    const now = this.#clock.now().getTime();
    const address = addressOf(a.ip);
    const net = subnetOf(a.ip);
    const store = this.#counters.rate;
    const slow: string[] = [];
    const costly: string[] = [];
    let retry = 0;
    const over = (key: string, w: number, limit: number, reason: string, into: string[]) => {
      if ((store.peek(key, now)[w] as number) >= limit) {
        into.push(reason);
        retry = Math.max(retry, Math.ceil(store.until(key, w, limit, now) / 1000));
      }
    };
    over(`mail_ip|${address}`, TEN_MIN, this.policy.mailIp, "ip_requests", slow);
    over(`mail_net|${net}`, TEN_MIN, this.policy.mailNet, "network_requests", slow);
    over(`mail_target|${a.target}`, HOUR, this.policy.mailTarget, "target_requests", costly);
    over(`mail_target|${a.target}`, DAY, this.policy.mailTargetDay, "target_requests_day", costly);
    if (
      a.serviceWide !== false &&
      ((this.#mailGlobal.peek("all", now)[0] as number) >= this.policy.mailGlobal || this.underAttack())
    )
      costly.push("mail_requests_global");
    /** The request counted for its caller and service-wide (a mail sent, or one withheld). */
    const countCaller = () => {
      store.add(`mail_ip|${address}`, 1, now);
      store.add(`mail_net|${net}`, 1, now);
      this.#mailGlobal.add("all", 1, now);
    };
    // Not mailed for the target's (or the service's) sake, but counted for the caller as if it
    // had been: the caller's own budget must not tell which targets were past their limit.
    if (slow.length === 0 && costly.length > 0 && a.challengeable === false) countCaller();
    if (slow.length > 0 || (costly.length > 0 && a.challengeable === false)) {
      return this.#observed("recovery", {
        action: "slow",
        reasons: [...slow, ...costly],
        retryAfterSeconds: Math.max(1, retry),
      });
    }
    if (costly.length > 0 && !a.challengeSolved)
      return this.#observed("recovery", { action: "challenge", reasons: costly, retryAfterSeconds: 1 });
    countCaller();
    store.add(`mail_target|${a.target}`, 1, now);
    return this.#observed("recovery", { action: "allow", reasons: [], retryAfterSeconds: 0 });
  }

  #observed(kind: string, d: Decision): Decision {
    this.observer?.(kind, d);
    return d;
  }

  /**
   * Whether the member has been sent `mailMember` recovery mails of this kind (reset links,
   * login-ID reminders) in the last ten minutes, however they were asked for. Only mails sent
   * count (`mailSent`), not requests: were every request counted, a stranger asking every couple
   * of minutes would keep the count over the limit for good, and the member would get no working
   * link again. Each kind has its own count, so reminders of the login ID (no link in them) can't
   * use up the reset links.
   */
  mailboxFull(memberId: string, kind: RecoveryMail): boolean {
    const now = this.#clock.now().getTime();
    return (
      (this.#counters.rate.peek(`member_mail|${kind}|${memberId}`, now)[TEN_MIN] as number) >=
      this.policy.mailMember
    );
  }

  /** A recovery mail of this kind was sent to the member (counted for `mailboxFull`). */
  mailSent(memberId: string, kind: RecoveryMail): void {
    this.#counters.rate.add(`member_mail|${kind}|${memberId}`, 1, this.#clock.now().getTime());
  }

  #trackSpray(a: Attempt, now: number): void {
    const fp = this.#fingerprint(a.password as string, now);
    let tried = this.#sprayAccounts.get(fp);
    if (!tried) {
      tried = new Set();
      this.#sprayAccounts.set(fp, tried);
    }
    if (tried.size < this.policy.sprayAccounts * 2) tried.add(a.loginId as string);
    if (tried.size === this.policy.sprayAccounts) {
      this.#alerts.raise("password_spraying", "warning", { accounts: tried.size, window: "1d" });
    }
  }

  /**
   * The service-wide detector. Failures in the last ten minutes are compared with ten times
   * `max(floor, factor × baseline)`, the baseline being an exponentially weighted mean of failures
   * a minute with a six-hour memory. Sustained ten minutes, so that keeping the service "under
   * attack" costs an attacker as much as a real attack; a six-hour memory, so that a slow ramp
   * can't teach the baseline that an attack is normal; and the baseline stops learning while under
   * attack, so a long, slow stuffing run stays challenged to its end.
   */
  #countGlobal(now: number): void {
    const minute = Math.floor(now / MINUTE);
    if (minute !== this.#minute) {
      const gap = this.#minute < 0 ? 0 : Math.min(6 * 60, minute - this.#minute);
      if (now >= this.underAttackUntil) {
        for (let i = 0; i < gap; i++)
          this.#baseline += ((i === 0 ? this.#minuteFailures : 0) - this.#baseline) / 360;
      }
      this.#minute = minute;
      this.#minuteFailures = 0;
    }
    this.#minuteFailures++;
    const recent = this.#global.add("all", 1, now)[0] as number;
    const perMinute = Math.max(this.policy.attackFloorPerMinute, this.#baseline * this.policy.attackFactor);
    if (recent >= perMinute * (GLOBAL_WINDOW / MINUTE)) {
      if (now >= this.underAttackUntil) this.#reconsider();
      this.underAttackUntil = now + 15 * MINUTE;
      this.#alerts.raise("under_attack", "critical", {
        failures_last_10_minutes: Math.round(recent),
        baseline_per_minute: Math.round(this.#baseline * 10) / 10,
      });
    }
  }

  // Persisted decisions: account protection and blocks survive a restart. The tables are the
  // record; the engine is their only writer (one process, like the counters), so it keeps the
  // active rows in memory too, loaded once when it starts and updated as it writes them. Both
  // are read on every attempt: two SQLite reads per attempt (each its own WAL read transaction)
  // were a quarter of the main thread's cost of answering a flood of refused sign-ins.
  // Expired rows leave the maps at least once a minute (swept), not only when their own key comes
  // back: an attacker protecting many unknown login IDs must not grow them without bound.
  #active: { protections: Map<string, Persisted>; blocks: Map<string, Persisted> } | null = null;
  /** SQLite's data_version when #active was read: another process's commit (a CLI lift) re-reads it. */
  #activeVersion = -1;
  #sweptAt = 0;

  #activeRows(now: number) {
    const version = othersCommits(this.#db)();
    if (version !== this.#activeVersion) {
      this.#active = null;
      this.#activeVersion = version;
    }
    if (this.#active === null) {
      const load = (sql: string) =>
        new Map(
          this.#db.$client
            .prepare<[number], { key: string; until: number; reason: string }>(sql)
            .all(now)
            .map((r) => [r.key, { until: r.until, reason: r.reason }] as const),
        );
      this.#active = {
        protections: load(
          "SELECT login_key AS key, until, reason FROM account_protections WHERE until > ? AND lifted_at IS NULL",
        ),
        blocks: load(
          "SELECT network AS key, until, reason FROM network_blocks WHERE until > ? AND lifted_at IS NULL",
        ),
      };
      this.#sweptAt = now;
    } else if (now - this.#sweptAt >= MINUTE) {
      for (const map of [this.#active.protections, this.#active.blocks])
        for (const [key, row] of map) if (row.until <= now) map.delete(key);
      this.#sweptAt = now;
    }
    return this.#active;
  }

  /** Active account protections and network blocks held in memory (for tests and sizing). */
  get activeDecisions(): number {
    const a = this.#activeRows(this.#clock.now().getTime());
    return a.protections.size + a.blocks.size;
  }

  /** An active row of `map`, or undefined (an expired one waits for the sweep). */
  static #live(map: Map<string, Persisted>, key: string, now: number): Persisted | undefined {
    const row = map.get(key);
    return row !== undefined && row.until > now ? row : undefined;
  }

  #protection(loginId: string, now: number): Persisted | undefined {
    const { protections } = this.#activeRows(now);
    if (protections.size === 0) return undefined; // the usual case: no keyed hash to compute
    return LoginGuard.#live(protections, this.loginKey(loginId), now);
  }

  #blocked(networks: [string, string], now: number): Persisted | undefined {
    const { blocks } = this.#activeRows(now);
    if (blocks.size === 0) return undefined;
    return LoginGuard.#live(blocks, networks[0], now) ?? LoginGuard.#live(blocks, networks[1], now);
  }

  /**
   * Wrong second-step codes reached the day's notice threshold: only someone who knows the
   * password gets that far, so the member is told (to change it) and admins are alerted. Once a
   * day at most per account (the day's count is a sliding estimate that can cross it again).
   */
  #secondFactorGuessed(loginId: string, now: number): void {
    const last = this.#secondFactorTold.get(loginId);
    if (last !== undefined && now - last < DAY_MS) return;
    this.#secondFactorTold.set(loginId, now);
    const memberId = this.#onSecondFactorGuessing?.(loginId);
    const loginKey = this.loginKey(loginId);
    this.#alerts.raise(
      "second_factor_guessing",
      "warning",
      {
        login_key: loginKey,
        failures_today: this.policy.secondFactorNotice,
        ...(memberId ? { member_id: memberId } : {}),
      },
      `mfa:${loginKey}`,
    );
  }

  #protect(loginId: string, now: number): void {
    if (this.#protection(loginId, now)) return;
    const loginKey = this.loginKey(loginId);
    // Once a day at most (the row is stored: a restart doesn't reset it). The day's count is a
    // sliding estimate that dips below the threshold and climbs back: without this, a few free
    // failures each time it does would keep the member out for good.
    // A lifted one (an admin, a password reset) doesn't count: what comes after is a new attack.
    const last = this.#db
      .select({ createdAt: accountProtections.createdAt, liftedAt: accountProtections.liftedAt })
      .from(accountProtections)
      .where(eq(accountProtections.loginKey, loginKey))
      .get();
    if (last && last.liftedAt === null && now - last.createdAt < DAY_MS) return;
    const row = {
      loginKey,
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
    this.#activeRows(now).protections.set(row.loginKey, { until: row.until, reason: row.reason });
    const memberId = this.#onProtect?.(loginId, row.until);
    // The member, when the login ID is one (the admin console links to them); an unknown ID's
    // protection names only its keyed hash.
    this.#alerts.raise(
      "account_protected",
      "warning",
      { login_key: row.loginKey, ...(memberId ? { member_id: memberId } : {}) },
      `acct:${row.loginKey}`,
    );
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
    this.#activeRows(now).blocks.set(network, { until: row.until, reason: row.reason });
    this.#alerts.raise("network_blocked", "warning", { network, reason }, `net:${network}`);
  }

  /** The stable key a login ID's protection is stored under (a keyed hash; the table names nobody). */
  loginKey(loginId: string): string {
    return this.#loginKey(loginId);
  }

  /** Lift an account's protection and the counters behind it (admin action; member unlock). */
  /**
   * The account's password was changed or reset: the wrong second-step codes counted so far were
   * someone's who knew the old one, and must not keep the member out from new addresses now.
   */
  credentialsChanged(loginId: string): void {
    this.#counters.mfa.delete(loginId);
    this.#counters.rmfa.delete(loginId);
  }

  lift(loginId: string): boolean {
    const now = this.#clock.now().getTime();
    const key = this.loginKey(loginId);
    this.#counters.acct.delete(loginId);
    this.credentialsChanged(loginId);
    this.#activeRows(now).protections.delete(key);
    return (
      this.#db
        .update(accountProtections)
        .set({ liftedAt: now })
        .where(and(eq(accountProtections.loginKey, key), isNull(accountProtections.liftedAt)))
        .run().changes > 0
    );
  }

  /**
   * The hashing backlog detector. Attempts the throttle admits wait in the hashing queue; a flood
   * that starts faster than the service-wide detector can count it (the first hundreds of attempts
   * are all admitted, and counted as they are hashed) piles up there, and everyone behind it waits
   * seconds for argon2, up to the queue's bound and its `503 server_busy`. A backlog of
   * `overloadBacklog` is far past anything a normal load builds (it needs more password checks
   * than argon2 can do, for a while): from then on, untrusted password sign-ins are challenged —
   * the waiting ones too, at once (HashQueue.reconsider) — so the backlog drains and members on
   * their own devices, who are never challenged, find argon2 free. It holds `overloadHoldSeconds`
   * after the backlog was last seen that deep, and raises an alert.
   */
  #overloaded(now: number): boolean {
    const waiting = this.#backlog();
    if (waiting >= this.policy.overloadBacklog) {
      const starting = now >= this.overloadedUntil;
      this.overloadedUntil = now + this.policy.overloadHoldSeconds * 1000;
      if (starting) {
        this.#reconsider();
        this.#alerts.raise("hash_backlog", "warning", {
          waiting,
          hold_seconds: this.policy.overloadHoldSeconds,
        });
      }
    }
    return now < this.overloadedUntil;
  }

  /** Overloaded: more password checks waited for argon2 than it works off soon (an alert was raised). */
  overloaded(): boolean {
    return this.#clock.now().getTime() < this.overloadedUntil;
  }

  /** Until when a login ID's password sign-in from untrusted devices is refused, or null. */
  protectedUntil(loginId: string): number | null {
    return this.#protection(loginId, this.#clock.now().getTime())?.until ?? null;
  }

  /** Under attack: the service-wide failure rate is far above its baseline (an alert was raised). */
  underAttack(): boolean {
    return this.#clock.now().getTime() < this.underAttackUntil;
  }
}
