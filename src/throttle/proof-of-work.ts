import { createHmac, randomBytes } from "node:crypto";
import { createChallenge, extractParams, verifySolution } from "altcha-lib/v1";
import { LRUCache } from "lru-cache";
import type { Clock } from "../clock.js";

/**
 * The "challenge" decision: a proof-of-work (ALTCHA, SHA-256) that a browser solves in about a
 * second and that makes millions of guesses expensive. A challenge is signed with a key that
 * lives only in memory, bound to the login ID it was issued for (so one solution can't be spent on
 * many accounts), expires after five minutes by Sekisho's clock, and each solution is accepted
 * once.
 */
export interface ChallengeJson {
  algorithm: string;
  challenge: string;
  maxnumber: number;
  salt: string;
  signature: string;
}

const TTL_MS = 5 * 60_000;

export class ProofOfWork {
  readonly #clock: Clock;
  readonly #maxNumber: number;
  readonly #hmacKey = randomBytes(32).toString("base64url");
  readonly #bindKey = randomBytes(32);
  readonly #spent: LRUCache<string, true>;

  constructor(deps: { clock: Clock; maxNumber: number }) {
    this.#clock = deps.clock;
    this.#maxNumber = deps.maxNumber;
    this.#spent = new LRUCache({ max: 200_000 });
  }

  #bind(loginId: string): string {
    return createHmac("sha256", this.#bindKey).update(loginId, "utf8").digest("base64url").slice(0, 16);
  }

  async issue(loginId: string): Promise<ChallengeJson> {
    const exp = this.#clock.now().getTime() + TTL_MS;
    const c = await createChallenge({
      hmacKey: this.#hmacKey,
      maxNumber: this.#maxNumber,
      params: { lid: this.#bind(loginId), exp: String(exp) },
    });
    return {
      algorithm: c.algorithm,
      challenge: c.challenge,
      maxnumber: c.maxnumber ?? this.#maxNumber,
      salt: c.salt,
      signature: c.signature,
    };
  }

  /**
   * Check a solution (the widget's base64 payload) for this login ID. Returns its signature (the
   * handle to spend it with) or null. Checking does not spend: the caller spends it with `spend()`
   * synchronously when it decides, so parallel requests can't all use one solution.
   */
  async check(solution: string, loginId: string): Promise<string | null> {
    let payload: { signature?: unknown };
    try {
      payload = JSON.parse(Buffer.from(solution, "base64").toString("utf8")) as { signature?: unknown };
    } catch {
      return null;
    }
    if (typeof payload?.signature !== "string") return null;
    let params: Record<string, string>;
    try {
      params = extractParams(payload as never);
    } catch {
      return null;
    }
    if (params.lid !== this.#bind(loginId)) return null;
    if (!(Number(params.exp) > this.#clock.now().getTime())) return null;
    if (this.#spent.has(payload.signature)) return null;
    if (!(await verifySolution(payload as never, this.#hmacKey, false))) return null;
    return payload.signature;
  }

  /** Spend a checked solution: true once (call with no await between this and the decision). */
  spend(signature: string): boolean {
    if (this.#spent.has(signature)) return false;
    this.#spent.set(signature, true);
    return true;
  }
}
