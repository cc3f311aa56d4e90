import { eq } from "drizzle-orm";
import type { Clock } from "../clock.js";
import type { Db } from "../db/connection.js";
import { piiBlocks } from "../db/schema.js";
import { ApiError } from "../errors.js";
import { MemoryCounterStore } from "../throttle/counters.js";
import type { Alerts } from "./alerts.js";

/**
 * PII read budgets: how many members' profiles one principal — an admin, a member site (client) —
 * may have decrypted in an hour and in a day. Past either: `429 pii_budget_exceeded`, a critical
 * alert, and the principal stays refused until an admin signs in afresh (a step-up after the
 * refusal re-arms the budget) or, for a member site, until an admin approves it again. A stolen
 * admin session or a compromised member-site backend can't read the member base out quietly; a
 * member reading their own profile, and Sekisho mailing a member, are not budgeted.
 */
export interface PiiBudgetLimits {
  adminHour: number;
  adminDay: number;
  clientHour: number;
  clientDay: number;
  /** Distinct members one admin may read in 7 days before a slow bulk read is suspected. */
  adminWeekDistinct: number;
  /** A member site reading this many times its usual number of distinct members a day… */
  clientDayFactor: number;
  /** …and at least this many, is reading unusually. */
  clientDayFloor: number;
}

export const DEFAULT_PII_BUDGETS: PiiBudgetLimits = {
  adminHour: 30,
  adminDay: 100,
  clientHour: 2_000,
  clientDay: 20_000,
  adminWeekDistinct: 150,
  clientDayFactor: 3,
  clientDayFloor: 500,
};

/** Distinct members tracked per principal and day (beyond it, the day counts as "at least"). */
const MAX_TRACKED_PER_DAY = 100_000;

interface Reader {
  /** Day number → the distinct members read that day. */
  days: Map<number, Set<string>>;
  /** Usual distinct members a day (mean of completed days, up to the last 28). */
  history: number[];
  lastDay: number;
}

export type Principal = { kind: "admin" | "client"; id: string };

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

export const piiBudgetExceeded = (retryAfterSeconds?: number) =>
  new ApiError(
    429,
    "pii_budget_exceeded",
    "Too many member profiles read; an administrator must re-authenticate or approve further reads.",
    retryAfterSeconds ? { headers: { "Retry-After": String(retryAfterSeconds) } } : {},
  );

export class PiiBudgets {
  readonly limits: PiiBudgetLimits;
  readonly #clock: Clock;
  readonly #alerts: Alerts;
  readonly #counts = new MemoryCounterStore([HOUR, DAY], 100_000);
  readonly #db: Db | undefined;
  readonly #readers = new Map<string, Reader>();
  /** When a principal's bulk-read alert was last raised: at most one a day each. */
  readonly #suspected = new Map<string, number>();

  constructor(deps: { clock: Clock; alerts: Alerts; limits?: Partial<PiiBudgetLimits>; db?: Db }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#alerts = deps.alerts;
    this.limits = { ...DEFAULT_PII_BUDGETS, ...deps.limits };
  }

  #key(p: Principal): string {
    return `${p.kind}:${p.id}`;
  }

  /**
   * Charge `members` profile reads to the principal, or throw `pii_budget_exceeded`. `freshSince`:
   * for an admin, when the session last signed in or stepped up; one after the refusal re-arms.
   */
  charge(p: Principal, memberIds: readonly string[], opts: { freshSince?: number } = {}): void {
    const members = memberIds.length;
    const now = this.#clock.now().getTime();
    const key = this.#key(p);
    const block = this.#block(key);
    if (block) {
      const fresh = opts.freshSince ?? 0;
      if (block.rearmedAfter !== null) {
        // Re-armed by a sign-in after the block: sessions from before it stay refused.
        if (p.kind !== "admin" || fresh <= block.rearmedAfter) throw piiBudgetExceeded();
      } else if (p.kind === "admin" && fresh > block.blockedAt) {
        this.#setBlock(key, block.blockedAt, block.blockedAt);
        this.#counts.delete(key);
      } else {
        throw piiBudgetExceeded();
      }
    }
    const [hour, day] = this.#counts.peek(key, now) as [number, number];
    const hourLimit = p.kind === "admin" ? this.limits.adminHour : this.limits.clientHour;
    const dayLimit = p.kind === "admin" ? this.limits.adminDay : this.limits.clientDay;
    if (hour + members > hourLimit || day + members > dayLimit) {
      this.#setBlock(key, now, null);
      this.#alerts.raise(
        "pii_budget_exceeded",
        "critical",
        {
          principal: p.kind,
          principal_id: p.id,
          window: hour + members > hourLimit ? "1h" : "1d",
          read_last_hour: hour,
          read_last_day: day,
        },
        key,
      );
      throw piiBudgetExceeded();
    }
    this.#counts.add(key, members, now);
    this.#watch(p, key, memberIds, now);
  }

  /**
   * The slow reader: below every budget, but many distinct members over a week (an admin), or far
   * more distinct members in a day than the principal usually reads (a member site). Either raises
   * a `bulk_read_suspected` alert; the reads themselves go on (the budgets refuse; this tells).
   */
  #watch(p: Principal, key: string, memberIds: readonly string[], now: number): void {
    const day = Math.floor(now / DAY);
    let r = this.#readers.get(key);
    if (!r) {
      r = { days: new Map(), history: [], lastDay: day };
      this.#readers.set(key, r);
      if (this.#readers.size > 10_000) this.#readers.delete(this.#readers.keys().next().value as string);
    }
    // Days that ended go into the history (days without reads count as 0).
    for (let d = r.lastDay; d < day; d++) {
      r.history.push(r.days.get(d)?.size ?? 0);
      if (r.history.length > 28) r.history.shift();
    }
    r.lastDay = day;
    for (const d of r.days.keys()) if (d <= day - 7) r.days.delete(d);
    let today = r.days.get(day);
    if (!today) {
      today = new Set();
      r.days.set(day, today);
    }
    for (const id of memberIds) if (today.size < MAX_TRACKED_PER_DAY) today.add(id);

    if (p.kind === "admin") {
      const week = new Set<string>();
      for (const set of r.days.values()) for (const id of set) week.add(id);
      if (week.size > this.limits.adminWeekDistinct && this.#firstToday(key, now)) {
        this.#alerts.raise(
          "bulk_read_suspected",
          "critical",
          {
            principal: p.kind,
            principal_id: p.id,
            distinct_members_7d: week.size,
            limit: this.limits.adminWeekDistinct,
          },
          `${key}|week`,
        );
      }
      return;
    }
    // A member site is compared with itself, once it has a week of history (a new site's first
    // busy days are its normal).
    if (r.history.length < 7) return;
    const usual = r.history.reduce((a, b) => a + b, 0) / r.history.length;
    if (
      today.size >= this.limits.clientDayFloor &&
      today.size > usual * this.limits.clientDayFactor &&
      this.#firstToday(key, now)
    ) {
      this.#alerts.raise(
        "bulk_read_suspected",
        "critical",
        {
          principal: p.kind,
          principal_id: p.id,
          distinct_members_today: today.size,
          usual_per_day: Math.round(usual),
        },
        `${key}|day`,
      );
    }
  }

  #firstToday(key: string, now: number): boolean {
    const last = this.#suspected.get(key);
    if (last !== undefined && now - last < DAY) return false;
    this.#suspected.set(key, now);
    return true;
  }

  /** An admin lets a member site read again (its counts start over). */
  approve(p: Principal): boolean {
    const key = this.#key(p);
    this.#counts.delete(key);
    const was = this.#block(key) !== null;
    this.#memory.delete(key);
    this.#db?.delete(piiBlocks).where(eq(piiBlocks.principal, key)).run();
    return was;
  }

  status(p: Principal): { readLastHour: number; readLastDay: number; blocked: boolean } {
    const [hour, day] = this.#counts.peek(this.#key(p), this.#clock.now().getTime()) as [number, number];
    const block = this.#block(this.#key(p));
    return { readLastHour: hour, readLastDay: day, blocked: block !== null && block.rearmedAfter === null };
  }

  // Blocks are kept in the database (a restart must not lift them); in memory without one (tests
  // of the counting alone).
  readonly #memory = new Map<string, { blockedAt: number; rearmedAfter: number | null }>();

  #block(key: string): { blockedAt: number; rearmedAfter: number | null } | null {
    if (!this.#db) return this.#memory.get(key) ?? null;
    return this.#db.select().from(piiBlocks).where(eq(piiBlocks.principal, key)).get() ?? null;
  }

  #setBlock(key: string, blockedAt: number, rearmedAfter: number | null): void {
    if (!this.#db) {
      this.#memory.set(key, { blockedAt, rearmedAfter });
      return;
    }
    const row = { principal: key, blockedAt, rearmedAfter };
    this.#db
      .insert(piiBlocks)
      .values(row)
      .onConflictDoUpdate({ target: piiBlocks.principal, set: row })
      .run();
  }
}
