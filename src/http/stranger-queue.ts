import type { IncomingMessage } from "node:http";
import { ApiError } from "../errors.js";

/** Strangers' attempts decided per turn of the event loop, at most this long (ms) of work. */
export const TURN_BUDGET_MS = 4;
/** Strangers' attempts that may wait; more are answered `503 server_busy`. */
export const MAX_WAITING = 2_000;

/**
 * Sign-in attempts from strangers wait their turn; members on their own devices go first.
 *
 * The sign-in lanes (src/http/sign-in-lane.ts for the JSON API, src/http/form-lane.ts for the
 * hosted form), and express's own doors to a sign-in for what they don't take (`waitTurn`),
 * decide an attempt that carries a live `sekisho_device` cookie of the member whose login ID it
 * names (one indexed lookup; another member's device, an attacker's own say, counts as none) as
 * soon as its body is in. Every other attempt is `offer`ed here and decided
 * after the event loop's I/O of the turn, at most `budgetMs` of them per turn, oldest first. When
 * nothing is waiting that is at once (the same turn), so an idle server answers as fast as
 * before; under a flood of attempts from strangers, the I/O of a member's sign-in (its request,
 * argon2's result) is never stuck behind a turn's worth of refusals. At a flood's start the
 * refusal code is still cold — several times its later cost, until V8 has optimised it — and this
 * is what keeps members' sign-ins at their usual time then (docs/throttling.md, "Benchmarks").
 * Past `maxWaiting` waiting, `offer` refuses and the lane answers `503 server_busy` at once:
 * nothing is decided, counted or hashed. One queue serves every door, so a flood split between
 * them gets one budget, not several. Members who sign in with a password alone never get a
 * device cookie (it comes with a second factor or a passkey): they go first from an address
 * they signed in from lately (LoginGuard.fromKnownAddress), and are strangers anywhere else.
 */
export class StrangerQueue {
  readonly maxWaiting: number;
  readonly budgetMs: number;
  readonly stats = { waited: 0, busy: 0 };
  readonly #waiting: Array<() => unknown> = [];
  #working = false;

  constructor(opts: { maxWaiting?: number; budgetMs?: number } = {}) {
    this.maxWaiting = opts.maxWaiting ?? MAX_WAITING;
    this.budgetMs = opts.budgetMs ?? TURN_BUDGET_MS;
  }

  /**
   * Decide `req` with `decide` in its turn (awaited, when it answers a promise); false (and nothing
   * queued) when too many wait. An attempt whose client has gone by its turn is dropped: no one to
   * answer, nothing to decide.
   */
  offer(req: IncomingMessage, decide: () => unknown): boolean {
    if (this.#waiting.length >= this.maxWaiting) {
      this.stats.busy++;
      return false;
    }
    this.stats.waited++;
    this.#waiting.push(() => (req.socket.destroyed ? undefined : decide()));
    if (!this.#working) {
      this.#working = true;
      setImmediate(this.#work);
    }
    return true;
  }

  get waiting(): number {
    return this.#waiting.length;
  }

  /** Would an attempt offered now not be decided at once (someone waits, or no one may)? */
  get backedUp(): boolean {
    return this.#waiting.length > 0 || this.#waiting.length >= this.maxWaiting;
  }

  // A decision may be async (the form lane reads the interaction and renders a page): each is
  // awaited before the next, so the budget covers the whole of it, not only its first step — but
  // never longer than STALL_MS, so one that waits on something slow can't hold up the queue (it
  // goes on by itself, and answers when it is done). Errors are the deciders' to answer (both
  // lanes catch their own); one escaping is dropped here rather than stopping the queue.
  readonly #work = async () => {
    const until = performance.now() + this.budgetMs;
    do {
      try {
        const decided = (this.#waiting.shift() as () => unknown)();
        if (decided instanceof Promise) await settledWithin(decided, STALL_MS);
      } catch {}
    } while (this.#waiting.length > 0 && performance.now() < until);
    if (this.#waiting.length > 0) setImmediate(this.#work);
    else this.#working = false;
  };
}

/** How long (ms) the queue waits for one async decision before it goes on to the next. */
export const STALL_MS = 100;

/** Resolves when `p` settles or after `ms`, whichever is first; never rejects. */
async function settledWithin(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    p.then(
      () => {},
      () => {},
    ),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]);
  clearTimeout(timer);
}

/**
 * Requests whose turn has come (or that went first): what a lane passes on to express after
 * deciding it. Express's own door to a sign-in (`waitTurn`) lets these through at once.
 */
export const hadTurn = new WeakSet<IncomingMessage>();

/**
 * The same rule at express's door to a sign-in, for the requests the lanes don't take (another
 * JSON content type, a chunked form): without it those would be decided at once, around the queue.
 * `goesFirst` says whether the request (its parsed body's login ID, its device cookie, its
 * address) goes first.
 */
export function waitTurn<Res>(
  strangers: StrangerQueue,
  goesFirst: (req: IncomingMessage, res: Res) => boolean,
): (req: IncomingMessage, res: Res, next: (err?: unknown) => void) => void {
  return (req, res, next) => {
    if (hadTurn.has(req)) return next();
    let trusted: boolean;
    try {
      trusted = goesFirst(req, res);
    } catch (err) {
      return next(err);
    }
    if (trusted) return next();
    if (!strangers.offer(req, () => next())) next(serverBusy());
  };
}

/** The answer to an attempt `offer` refused. */
export const serverBusy = () =>
  new ApiError(503, "server_busy", "The service is busy; try again shortly.", {
    headers: { "Retry-After": "1" },
  });
