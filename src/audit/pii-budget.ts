import { eq } from "drizzle-orm";
import type { Clock } from "../clock.js";
import type { Db } from "../db/connection.js";
import { piiBlocks } from "../db/schema.js";
import { ApiError } from "../errors.js";
import type { Alerts } from "./alerts.js";

/**
 * PII read budgets: how many distinct members' profiles one principal — an admin, a member site
 * (client) — may have decrypted in an hour and in a day. A member counts once per window however
 * often they are read (a member site refreshing one member's tokens all day reads one member, not
 * hundreds); a reader walking the member base counts every member it touches. Past either: `429 pii_budget_exceeded`, a critical
 * alert, and the principal stays refused until an admin signs in afresh (a step-up after the
 * refusal re-arms the hour's budget, not the day's) or, for a member site, until an admin
 * approves it again. A stolen
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

/** When a member was last counted in the hour and in the day window. */
interface Seen {
  hour: number;
  day: number;
}
/** A member counted at `at`, in the order counted (a window's queue). */
interface Stamp {
  id: string;
  at: number;
}
/** One principal's counted members and, per window, the stamps in time order with their count. */
interface Tracker {
  seen: Map<string, Seen>;
  hourQ: Stamp[];
  hourHead: number;
  dayQ: Stamp[];
  dayHead: number;
  hourN: number;
  dayN: number;
  /** The latest time it was counted at (see PiiBudgets#now). */
  last: number;
}
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
  /**
   * Per principal, when its hour last started over (an admin's re-arm): members counted before
   * it don't count towards the hour. The day never starts over.
   */
  readonly #hourFrom = new Map<string, number>();
  /**
   * principal → member → when that member was last counted in the hour and in the day window.
   * The budgets count these exactly: the distinct members counted in the last 60 minutes and the
   * last 24 hours, to the millisecond (an estimate from fixed windows let a reader timing its reads
   * around midnight UTC through about half as many again). Expired entries are dropped as reads
   * come; each principal keeps at most its day limit of members besides (more would have been
   * refused), and one principal's volume never pushes out another's.
   */
  readonly #counted = new Map<string, Tracker>();
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
    const key = this.#key(p);
    const now = this.#now(key);
    const block = this.#block(key);
    if (block) {
      const fresh = opts.freshSince ?? 0;
      if (block.rearmedAfter !== null) {
        // Re-armed by a sign-in after the block: sessions from before it stay refused.
        if (p.kind !== "admin" || fresh <= block.rearmedAfter) throw piiBudgetExceeded();
      } else if (p.kind === "admin" && fresh > block.blockedAt) {
        // Re-armed: the hour starts over, the day does not (signing in again, with the admin's
        // own passkey even, must not buy another day's worth of reads).
        this.#setBlock(key, block.blockedAt, block.blockedAt);
        this.#hourFrom.set(key, now);
      } else {
        throw piiBudgetExceeded();
      }
    }
    const { hour, day } = this.#exact(key, now);
    // Only members not already counted in a window add to it (each once, however often listed).
    let newInHour = 0;
    let newInDay = 0;
    const counted = this.#counted.get(key)?.seen;
    const hourStart = this.#hourStart(key, now);
    for (const id of new Set(memberIds)) {
      const seen = counted?.get(id);
      if (!seen || seen.hour <= hourStart) newInHour++;
      if (!seen || seen.day <= now - DAY) newInDay++;
    }
    const hourLimit = p.kind === "admin" ? this.limits.adminHour : this.limits.clientHour;
    const dayLimit = p.kind === "admin" ? this.limits.adminDay : this.limits.clientDay;
    if (hour + newInHour > hourLimit || day + newInDay > dayLimit) {
      this.#setBlock(key, now, null);
      this.#alerts.raise(
        "pii_budget_exceeded",
        "critical",
        {
          principal: p.kind,
          principal_id: p.id,
          window: hour + newInHour > hourLimit ? "1h" : "1d",
          read_last_hour: hour,
          read_last_day: day,
        },
        key,
      );
      throw piiBudgetExceeded();
    }
    // Up to an hour's and a day's worth can be live at once (a member re-read within the day keeps
    // its day stamp and gets a new hour stamp): keep room for both, so none still counted is dropped.
    this.#count(key, memberIds, now, hourLimit + dayLimit);
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

  /**
   * The principal's time: the clock, but never earlier than the last time it was counted at (a
   * clock stepped back — NTP, a restored VM — would otherwise stamp members behind the queues'
   * fronts, and the running totals would never give those back).
   */
  #now(key: string): number {
    return Math.max(this.#clock.now().getTime(), this.#counted.get(key)?.last ?? 0);
  }

  /** Where the principal's hour window starts: 60 minutes ago, or its re-arm if later. */
  #hourStart(key: string, now: number): number {
    return Math.max(now - HOUR, this.#hourFrom.get(key) ?? 0);
  }

  /**
   * Distinct members counted in the principal's hour and day windows, exactly (see #counted):
   * stamps that fell out of a window are taken off the front of its queue first, so each read
   * costs what expired since the last one, not a walk over everyone the principal has read.
   */
  #exact(key: string, now: number): { hour: number; day: number } {
    const t = this.#counted.get(key);
    if (!t) return { hour: 0, day: 0 };
    const hourStart = this.#hourStart(key, now);
    const expire = (q: Stamp[], head: number, from: number, current: (s: Seen) => number) => {
      let h = head;
      let gone = 0;
      while (h < q.length && (q[h] as Stamp).at <= from) {
        const { id, at } = q[h] as Stamp;
        const seen = t.seen.get(id);
        // Counted only if it is still the member's stamp in that window (not re-stamped or dropped).
        if (seen && current(seen) === at) gone++;
        h++;
      }
      return { head: h, gone };
    };
    const hour = expire(t.hourQ, t.hourHead, hourStart, (s) => s.hour);
    t.hourHead = hour.head;
    t.hourN -= hour.gone;
    const day = expire(t.dayQ, t.dayHead, now - DAY, (s) => s.day);
    t.dayHead = day.head;
    t.dayN -= day.gone;
    // Let the queues' spent fronts go now and then.
    if (t.hourHead > 1024 && t.hourHead * 2 > t.hourQ.length) {
      t.hourQ = t.hourQ.slice(t.hourHead);
      t.hourHead = 0;
    }
    if (t.dayHead > 1024 && t.dayHead * 2 > t.dayQ.length) {
      t.dayQ = t.dayQ.slice(t.dayHead);
      t.dayHead = 0;
    }
    return { hour: t.hourN, day: t.dayN };
  }

  #count(key: string, memberIds: readonly string[], now: number, keep: number): void {
    let t = this.#counted.get(key);
    if (!t) {
      t = { seen: new Map(), hourQ: [], hourHead: 0, dayQ: [], dayHead: 0, hourN: 0, dayN: 0, last: now };
    } else this.#counted.delete(key); // re-inserted last: the 10,000 kept are the most recently active
    this.#counted.set(key, t);
    if (this.#counted.size > 10_000) this.#counted.delete(this.#counted.keys().next().value as string);
    t.last = Math.max(t.last, now);
    const hourStart = this.#hourStart(key, now);
    for (const id of new Set(memberIds)) {
      const seen = t.seen.get(id);
      const inHour = seen !== undefined && seen.hour > hourStart;
      const inDay = seen !== undefined && seen.day > now - DAY;
      if (inHour && inDay) continue;
      const next = { hour: inHour ? (seen as Seen).hour : now, day: inDay ? (seen as Seen).day : now };
      if (!inHour) {
        t.hourQ.push({ id, at: now });
        t.hourN++;
      }
      if (!inDay) {
        t.dayQ.push({ id, at: now });
        t.dayN++;
      }
      t.seen.delete(id); // re-inserted last: the map stays in counting order
      t.seen.set(id, next);
    }
    if (t.seen.size > keep) {
      // Drop what counts in neither window first (its stamps have left both queues' counts);
      // past that, the least recently counted, taken off the counts now (their queue entries then
      // no longer match anything).
      for (const [id, seen] of t.seen) if (seen.hour <= hourStart && seen.day <= now - DAY) t.seen.delete(id);
      while (t.seen.size > keep) {
        const [id, seen] = t.seen.entries().next().value as [string, Seen];
        if (seen.hour > hourStart) t.hourN--;
        if (seen.day > now - DAY) t.dayN--;
        t.seen.delete(id);
      }
    }
  }

  /** Counts start over for `key` (an admin's approval of a member site). */
  #forget(key: string): void {
    this.#counted.delete(key);
    this.#hourFrom.delete(key);
  }

  /**
   * Let a principal past its budget read again: its block lifted, its counts started over. Only a
   * blocked principal: an approval must not be a way to start a reader's counts over while it is
   * still within them (approving after every few reads would be no budget at all). Returns whether
   * there was a block to lift (false: nothing changed).
   */
  approve(p: Principal): boolean {
    const key = this.#key(p);
    const block = this.#block(key);
    if (block === null || block.rearmedAfter !== null) return false;
    this.#forget(key);
    this.#unblock(key);
    return true;
  }

  status(p: Principal): { readLastHour: number; readLastDay: number; blocked: boolean } {
    const now = this.#now(this.#key(p));
    const { hour, day } = this.#exact(this.#key(p), now);
    const block = this.#block(this.#key(p));
    return { readLastHour: hour, readLastDay: day, blocked: block !== null && block.rearmedAfter === null };
  }

  // Blocks are kept in the database (a restart must not lift them) and mirrored in memory, read
  // once: every budgeted read looks its principal up, and only this object writes the table.
  #blocks: Map<string, { blockedAt: number; rearmedAfter: number | null }> | undefined;

  #blockMap(): Map<string, { blockedAt: number; rearmedAfter: number | null }> {
    if (!this.#blocks) {
      this.#blocks = new Map();
      for (const row of this.#db?.select().from(piiBlocks).all() ?? [])
        this.#blocks.set(row.principal, { blockedAt: row.blockedAt, rearmedAfter: row.rearmedAfter });
    }
    return this.#blocks;
  }

  #block(key: string): { blockedAt: number; rearmedAfter: number | null } | null {
    return this.#blockMap().get(key) ?? null;
  }

  #setBlock(key: string, blockedAt: number, rearmedAfter: number | null): void {
    const row = { principal: key, blockedAt, rearmedAfter };
    this.#db
      ?.insert(piiBlocks)
      .values(row)
      .onConflictDoUpdate({ target: piiBlocks.principal, set: row })
      .run();
    this.#blockMap().set(key, { blockedAt, rearmedAfter });
  }

  #unblock(key: string): void {
    this.#db?.delete(piiBlocks).where(eq(piiBlocks.principal, key)).run();
    this.#blockMap().delete(key);
  }
}
