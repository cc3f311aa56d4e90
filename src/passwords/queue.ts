import { ApiError } from "../errors.js";

/**
 * A bounded work queue for argon2. argon2id is the one expensive thing Sekisho does (~25 ms of a
 * core per verify); running more at once than there are cores only adds latency, and an unbounded
 * backlog lets a flood of sign-ins exhaust memory. Past `maxQueued` waiting jobs, new work is
 * refused at once with `503 server_busy` instead of waiting.
 */
export class HashQueue {
  readonly concurrency: number;
  readonly maxQueued: number;
  #running = 0;
  #waiting: Array<() => void> = [];

  constructor(concurrency: number, maxQueued: number) {
    this.concurrency = Math.max(1, concurrency);
    this.maxQueued = maxQueued;
  }

  get depth(): number {
    return this.#waiting.length;
  }
  get inFlight(): number {
    return this.#running;
  }

  async run<T>(job: () => Promise<T>): Promise<T> {
    if (this.#running >= this.concurrency) {
      if (this.#waiting.length >= this.maxQueued) {
        throw new ApiError(503, "server_busy", "The service is busy; try again shortly.", {
          headers: { "Retry-After": "1" },
          detail: `hash queue full (${this.#waiting.length} waiting)`,
        });
      }
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    } else {
      this.#running++;
    }
    try {
      return await job();
    } finally {
      const next = this.#waiting.shift();
      // Hand the slot straight to the next waiter (running count unchanged), or free it.
      if (next) next();
      else this.#running--;
    }
  }
}
