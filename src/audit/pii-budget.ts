import type { Clock } from "../clock.js";
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
}

export const DEFAULT_PII_BUDGETS: PiiBudgetLimits = {
  adminHour: 30,
  adminDay: 100,
  clientHour: 2_000,
  clientDay: 20_000,
};

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
  /** Principals refused since (ms): until a fresh step-up (admins) or an approval (clients). */
  readonly #blocked = new Map<string, number>();

  constructor(deps: { clock: Clock; alerts: Alerts; limits?: Partial<PiiBudgetLimits> }) {
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
  charge(p: Principal, members: number, opts: { freshSince?: number } = {}): void {
    const now = this.#clock.now().getTime();
    const key = this.#key(p);
    const blockedAt = this.#blocked.get(key);
    if (blockedAt !== undefined) {
      if (p.kind === "admin" && (opts.freshSince ?? 0) > blockedAt) {
        this.#blocked.delete(key);
        this.#counts.delete(key);
      } else {
        throw piiBudgetExceeded();
      }
    }
    const [hour, day] = this.#counts.peek(key, now) as [number, number];
    const hourLimit = p.kind === "admin" ? this.limits.adminHour : this.limits.clientHour;
    const dayLimit = p.kind === "admin" ? this.limits.adminDay : this.limits.clientDay;
    if (hour + members > hourLimit || day + members > dayLimit) {
      this.#blocked.set(key, now);
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
  }

  /** An admin lets a member site read again (its counts start over). */
  approve(p: Principal): boolean {
    const key = this.#key(p);
    this.#counts.delete(key);
    return this.#blocked.delete(key);
  }

  status(p: Principal): { readLastHour: number; readLastDay: number; blocked: boolean } {
    const [hour, day] = this.#counts.peek(this.#key(p), this.#clock.now().getTime()) as [number, number];
    return { readLastHour: hour, readLastDay: day, blocked: this.#blocked.has(this.#key(p)) };
  }
}
