import type { Logger } from "pino";
import { requestIds } from "../logger.js";

/**
 * A worker over a queue table (the mail outbox, alert deliveries): `claim` leases the next due
 * job (or returns undefined), `deliver` works it and says whether it succeeded. One run at a time;
 * a call during a run makes that run look again before it ends. Started, it runs on every `kick`
 * and every `intervalMs` (for retries); `stop` ends the run after its current job. Tests call
 * `runDue` and move the clock instead of waiting.
 */
export abstract class QueueWorker<Job> {
  #running: Promise<number> | null = null;
  #again = false;
  #timer: NodeJS.Timeout | null = null;
  #started = false;
  #stopping = false;

  constructor(
    protected readonly log: Logger,
    private readonly name: string,
  ) {}

  protected abstract claim(): Job | undefined;
  protected abstract deliver(job: Job): Promise<boolean>;
  /** After stop() has waited for the run (close connections). */
  protected closed(): void {}

  /** Something was queued: run soon (after the caller's transaction has committed). */
  protected kick(): void {
    // Outside the kicking request's log context: the run delivers whatever is due, not only its job.
    if (this.#started) setImmediate(() => requestIds.exit(() => void this.runDue()));
  }

  start(intervalMs = 5_000): void {
    this.#started = true;
    this.#stopping = false;
    this.#timer = setInterval(() => void this.runDue(), intervalMs);
    this.#timer.unref();
    void this.runDue();
  }

  async stop(): Promise<void> {
    this.#started = false;
    this.#stopping = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    try {
      await this.#running;
    } finally {
      this.closed();
    }
  }

  /** Work everything due now; resolves with how many succeeded. */
  runDue(): Promise<number> {
    if (this.#running) {
      this.#again = true;
      return this.#running;
    }
    const run = this.#drain()
      .catch((err: unknown) => {
        // A database error (busy, full) ends this run; the next tick tries again.
        this.log.error({ err }, `${this.name} run failed`);
        return 0;
      })
      .finally(() => {
        if (this.#running === run) this.#running = null;
      });
    this.#running = run;
    return run;
  }

  async #drain(): Promise<number> {
    let done = 0;
    do {
      this.#again = false;
      for (;;) {
        if (this.#stopping) return done;
        const job = this.claim();
        if (!job) break;
        if (await this.deliver(job)) done++;
      }
    } while (this.#again);
    return done;
  }
}
