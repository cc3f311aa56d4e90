import { createHash, createHmac, randomBytes, randomInt } from "node:crypto";
import { extractParams, verifySolution } from "altcha-lib/v1";
import { LRUCache } from "lru-cache";
import type { Clock } from "../clock.js";
import { randomBytesPooled } from "../vault/random.js";

/**
 * The "challenge" decision: a proof-of-work (ALTCHA, SHA-256) that a browser solves in about a
 * second and that makes millions of guesses expensive. A challenge is signed with a key that
 * lives only in memory, bound to the login ID it was issued for (so one solution can't be spent on
 * many accounts), expires after five minutes by Sekisho's clock, and each solution is accepted
 * once.
 *
 * Issuing is synchronous on node:crypto, in ALTCHA's v1 format exactly (what altcha-lib's
 * `createChallenge` builds: a 12-byte hex salt with the parameters appended as a query and a `&`,
 * SHA-256 of salt + number, an HMAC-SHA-256 signature of that in hex). altcha-lib's own version runs
 * on WebCrypto, whose promise machinery cost about a quarter of the server's main thread in a flood
 * of refused attempts (each answered with a fresh challenge). Verification stays altcha-lib's, and
 * a test solves our challenges with altcha-lib's solver and checks them with its verifier, so the
 * two can't drift apart.
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

  issue(loginId: string): ChallengeJson {
    const exp = this.#clock.now().getTime() + TTL_MS;
    const params = new URLSearchParams({ lid: this.#bind(loginId), exp: String(exp) });
    const salt = `${randomBytesPooled(12).toString("hex")}?${params.toString()}&`;
    // altcha-lib draws the secret number from 1..maxnumber inclusive; so do we.
    const number = randomInt(1, this.#maxNumber + 1);
    const challenge = createHash("sha256").update(`${salt}${number}`, "utf8").digest("hex");
    return {
      algorithm: "SHA-256",
      challenge,
      maxnumber: this.#maxNumber,
      salt,
      signature: createHmac("sha256", this.#hmacKey).update(challenge, "utf8").digest("hex"),
    };
  }

  /**
   * Check a solution (the widget's base64 payload) for this login ID. Returns its signature (the
   * handle to spend it with) or null. Checking does not spend: the caller spends it with `spend()`
   * synchronously when it decides, so parallel requests can't all use one solution.
   */
  async check(solution: string, loginId: string): Promise<string | null> {
    const payload = this.#plausible(solution, loginId);
    if (!payload) return null;
    if (!(await verifySolution(payload as never, this.#hmacKey, false))) return null;
    return payload.signature;
  }

  /**
   * The checks of `check` that need no hashing: a payload of ours, for this login ID, not expired,
   * not spent. A solution that fails them is one `check` refuses (the sign-in lane answers such
   * attempts as if they carried none, which is what the sign-in does with them).
   */
  plausible(solution: string, loginId: string): boolean {
    return this.#plausible(solution, loginId) !== null;
  }

  #plausible(solution: string, loginId: string): { signature: string } | null {
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
    return payload as { signature: string };
  }

  /** Spend a checked solution: true once (call with no await between this and the decision). */
  spend(signature: string): boolean {
    if (this.#spent.has(signature)) return false;
    this.#spent.set(signature, true);
    return true;
  }
}
