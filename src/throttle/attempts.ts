import type { Clock } from "../clock.js";

/**
 * INTERIM sign-in throttle (the login-anomaly engine of issue 5 replaces it): fixed-window failure
 * counters in memory, per client IP and per (IP, login ID). It is checked before any argon2 work,
 * so a throttled request costs nothing. It deliberately does not count per account alone, which
 * would let anyone lock a member out.
 */
interface Window {
  start: number;
  failures: number;
}

export interface ThrottleVerdict {
  allowed: boolean;
  retryAfterSeconds: number;
  key?: string;
}

export class AttemptLimiter {
  readonly #clock: Clock;
  readonly #windowMs: number;
  readonly #limits: { perIp: number; perIpAndLogin: number };
  readonly #windows = new Map<string, Window>();

  constructor(clock: Clock, opts: { windowMs?: number; perIp?: number; perIpAndLogin?: number } = {}) {
    this.#clock = clock;
    this.#windowMs = opts.windowMs ?? 15 * 60_000;
    this.#limits = { perIp: opts.perIp ?? 100, perIpAndLogin: opts.perIpAndLogin ?? 10 };
  }

  #keys(ip: string, loginId: string): Array<[string, number]> {
    return [
      [`ip|${ip}`, this.#limits.perIp],
      [`ip+login|${ip}|${loginId}`, this.#limits.perIpAndLogin],
    ];
  }

  #live(key: string, now: number): Window | undefined {
    const w = this.#windows.get(key);
    if (w && now - w.start >= this.#windowMs) {
      this.#windows.delete(key);
      return undefined;
    }
    return w;
  }

  check(ip: string, loginId: string): ThrottleVerdict {
    for (const [key, limit] of this.#keys(ip, loginId)) {
      const verdict = this.#verdict(key, limit, key.split("|")[0] as string);
      if (!verdict.allowed) return verdict;
    }
    return { allowed: true, retryAfterSeconds: 0 };
  }

  #verdict(key: string, limit: number, name: string): ThrottleVerdict {
    const now = this.#clock.now().getTime();
    const w = this.#live(key, now);
    if (w && w.failures >= limit) {
      return {
        allowed: false,
        retryAfterSeconds: Math.max(1, Math.ceil((w.start + this.#windowMs - now) / 1000)),
        key: name,
      };
    }
    return { allowed: true, retryAfterSeconds: 0 };
  }

  recordFailure(ip: string, loginId: string): void {
    const now = this.#clock.now().getTime();
    if (this.#windows.size > 100_000) this.#sweep(now);
    for (const [key] of this.#keys(ip, loginId)) {
      const w = this.#live(key, now) ?? { start: now, failures: 0 };
      w.failures++;
      this.#windows.set(key, w);
    }
  }

  /** A correct password from this address clears its (IP, login ID) count; the per-IP count stays. */
  recordSuccess(ip: string, loginId: string): void {
    this.#windows.delete(`ip+login|${ip}|${loginId}`);
  }

  /**
   * A counter for any other key (a member's second-step failures, passwordless option requests
   * per IP), in the same windows: is `key` under `limit`?
   */
  checkKey(key: string, limit: number): ThrottleVerdict {
    return this.#verdict(`k|${key}`, limit, key.split("|")[0] as string);
  }

  recordKey(key: string): void {
    const now = this.#clock.now().getTime();
    if (this.#windows.size > 100_000) this.#sweep(now);
    const w = this.#live(`k|${key}`, now) ?? { start: now, failures: 0 };
    w.failures++;
    this.#windows.set(`k|${key}`, w);
  }

  clearKey(key: string): void {
    this.#windows.delete(`k|${key}`);
  }

  #sweep(now: number): void {
    for (const [key, w] of this.#windows) if (now - w.start >= this.#windowMs) this.#windows.delete(key);
  }
}
