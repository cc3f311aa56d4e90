import { ApiError } from "../errors.js";

/**
 * A bounded work queue for argon2. argon2id is the one expensive thing Sekisho does (~25 ms of a
 * core per verify); running more at once than there are cores only adds latency, and an unbounded
 * backlog lets a flood of sign-ins exhaust memory. Past `maxQueued` waiting jobs, new work is
 * refused at once with `503 server_busy` instead of waiting.
 *
 * Two lines: work for a member's own (trusted) device waits in a priority line that is served
 * first, so a flood of attempts that got past the throttle before it caught on can't make real
 * members wait behind it (each line has its own bound).
 */
export class HashQueue {
  readonly concurrency: number;
  readonly maxQueued: number;
  #running = 0;
  #waiting: Waiter[] = [];
  #priority: Waiter[] = [];
  /** Waiters in the ordinary line with a `stillWanted` (see waitingAttempts). */
  #withdrawable = 0;
  /** Told how long each job waited for a slot (seconds), and of each refusal (metrics). */
  observer: { waited(seconds: number): void; refused(): void } | null = null;

  constructor(concurrency: number, maxQueued: number) {
    this.concurrency = Math.max(1, concurrency);
    this.maxQueued = maxQueued;
  }

  get depth(): number {
    return this.#waiting.length + this.#priority.length;
  }
  /**
   * Jobs waiting in the ordinary line that can be withdrawn (they have a `stillWanted`: password
   * sign-ins of untrusted devices). Not the priority line, and not work nothing may refuse
   * (registrations, password changes, re-hashes), so that such work can't be used to make sign-in
   * attempts look backed up (the throttle's `overloaded` decision reads this).
   */
  get waitingAttempts(): number {
    return this.#withdrawable;
  }
  get inFlight(): number {
    return this.#running;
  }

  /**
   * Run `job` when a slot is free. A job that had to wait asks `stillWanted` when its turn comes
   * (a sign-in decides again: what changed while it waited applies before the expensive work);
   * on false it does not run, its slot goes to the next job, and run() rejects with WithdrawnJob.
   */
  async run<T>(
    job: () => Promise<T>,
    opts: { priority?: boolean; stillWanted?: () => boolean } = {},
  ): Promise<T> {
    const queuedAt = this.observer ? performance.now() : 0;
    let waited = false;
    if (this.#running >= this.concurrency) {
      const line = opts.priority ? this.#priority : this.#waiting;
      if (line.length >= this.maxQueued) {
        this.observer?.refused();
        throw new ApiError(503, "server_busy", "The service is busy; try again shortly.", {
          headers: { "Retry-After": "1" },
          detail: `hash queue full (${line.length} waiting)`,
        });
      }
      const counted = line === this.#waiting && opts.stillWanted !== undefined;
      if (counted) this.#withdrawable++;
      const granted = await new Promise<boolean>((grant) =>
        line.push({ grant, stillWanted: opts.stillWanted, counted }),
      );
      if (!granted) {
        // Withdrawn while it waited (reconsider): it never held a slot.
        this.observer?.waited((performance.now() - queuedAt) / 1000);
        throw new WithdrawnJob();
      }
      waited = true;
    } else {
      this.#running++;
    }
    this.observer?.waited((performance.now() - queuedAt) / 1000);
    try {
      if (waited && opts.stillWanted && !opts.stillWanted()) throw new WithdrawnJob();
      return await job();
    } finally {
      const next = this.#priority.shift() ?? this.#waiting.shift();
      // Hand the slot straight to the next waiter (running count unchanged), or free it.
      if (next?.counted) this.#withdrawable--;
      if (next) next.grant(true);
      else this.#running--;
    }
  }

  /**
   * Ask every waiting job that has a `stillWanted` whether it still is, now rather than when its
   * turn comes: those that are not leave the line at once (run() rejects with WithdrawnJob) and the
   * rest keep their places. For the moment the service comes under attack or is overloaded: the
   * attempts admitted just before are refused there and then, instead of holding their requests
   * open until a slot frees up.
   */
  reconsider(): number {
    let withdrawn = 0;
    for (const line of [this.#priority, this.#waiting]) {
      const keep: Waiter[] = [];
      const gone: Waiter[] = [];
      for (const w of line) (w.stillWanted && wantedNoMore(w.stillWanted) ? gone : keep).push(w);
      line.splice(0, line.length, ...keep);
      for (const w of gone) {
        if (w.counted) this.#withdrawable--;
        w.grant(false);
      }
      withdrawn += gone.length;
    }
    return withdrawn;
  }
}

/**
 * Has the job said it is no longer wanted? One whose question throws stays in line: its turn asks
 * again, inside run(), where the error reaches its caller (here it would reach no one).
 */
function wantedNoMore(stillWanted: () => boolean): boolean {
  try {
    return !stillWanted();
  } catch {
    return false;
  }
}

/** A job waiting for a slot: granted one (true), or withdrawn without one (false). */
interface Waiter {
  grant: (granted: boolean) => void;
  stillWanted: (() => boolean) | undefined;
  /** Counted in waitingAttempts (the ordinary line, with a stillWanted). */
  counted: boolean;
}

/** A job that waited and, when its turn came, was no longer wanted (see HashQueue.run). */
export class WithdrawnJob extends Error {
  constructor() {
    super("withdrawn before it ran");
    this.name = "WithdrawnJob";
  }
}
