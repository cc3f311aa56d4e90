import { randomBytes } from "node:crypto";
import argon2 from "argon2";
import type { KeyringStore } from "../vault/keyring.js";
import { parseArgon2Phc, toStandardPhc } from "./phc.js";
import type { HashQueue } from "./queue.js";
import { normalisePassword } from "./rules.js";

export interface Argon2Params {
  memoryCost: number;
  timeCost: number;
  parallelism: number;
}

export interface StoredPassword {
  hash: string;
  /** Keyring pepper passed as argon2's secret, or null. */
  pepperId: string | null;
}

/**
 * argon2id password hashing. Every hash and verify goes through the bounded HashQueue.
 * The pepper (an argon2 secret from the keyring, when the keyring has one) means a copy of the
 * database alone cannot even start guessing passwords.
 */
export class PasswordHasher {
  readonly params: Argon2Params;
  readonly #keys: KeyringStore;
  readonly #queue: HashQueue;
  #dummy: Promise<StoredPassword> | undefined;

  constructor(deps: { params: Argon2Params; keys: KeyringStore; queue: HashQueue }) {
    this.params = deps.params;
    this.#keys = deps.keys;
    this.#queue = deps.queue;
  }

  get queue(): HashQueue {
    return this.#queue;
  }

  async hash(password: string): Promise<StoredPassword> {
    const pepper = this.#keys.get().activePepper();
    const phc = await this.#queue.run(() =>
      argon2.hash(normalisePassword(password), {
        type: argon2.argon2id,
        memoryCost: this.params.memoryCost,
        timeCost: this.params.timeCost,
        parallelism: this.params.parallelism,
        ...(pepper ? { secret: pepper.key } : {}),
      }),
    );
    return { hash: toStandardPhc(phc), pepperId: pepper?.id ?? null };
  }

  /** False for a wrong password and for a stored value that is not a usable argon2 hash. */
  async verify(
    stored: StoredPassword,
    password: string,
    opts: { priority?: boolean; stillWanted?: () => boolean } = {},
  ): Promise<boolean> {
    if (!parseArgon2Phc(stored.hash)) return false;
    let secret: Buffer | undefined;
    if (stored.pepperId) {
      const keyring = this.#keys.get();
      secret = (keyring.pepper(stored.pepperId) ?? this.#keys.reload().pepper(stored.pepperId))?.key;
      if (!secret) throw new Error(`password hash needs pepper ${stored.pepperId}, which the keyring lacks`);
    }
    return this.#queue.run(
      () => argon2.verify(stored.hash, normalisePassword(password), secret ? { secret } : {}),
      opts,
    );
  }

  /** A hash made with other parameters or an old pepper is re-hashed after a successful sign-in. */
  needsRehash(stored: StoredPassword): boolean {
    const phc = parseArgon2Phc(stored.hash);
    if (!phc) return true;
    const pepperId = this.#keys.get().activePepper()?.id ?? null;
    return (
      phc.variant !== "argon2id" ||
      phc.version !== 0x13 ||
      phc.m !== this.params.memoryCost ||
      phc.t !== this.params.timeCost ||
      phc.p !== this.params.parallelism ||
      stored.pepperId !== pepperId
    );
  }

  /**
   * Verify against a throwaway hash with the same parameters and pepper, so that an unknown login
   * ID costs the same time as a wrong password and answers nothing about which it was.
   */
  async dummyVerify(password: string, opts: { stillWanted?: () => boolean } = {}): Promise<false> {
    await this.verify(await this.#dummyHash(), password, opts);
    return false;
  }

  /** Make the dummy hash now (at start-up), so the first unknown ID isn't slower than the rest. */
  async warm(): Promise<void> {
    await this.#dummyHash();
  }

  #dummyHash(): Promise<StoredPassword> {
    this.#dummy ??= this.hash(randomBytes(18).toString("base64url")).catch((err: unknown) => {
      this.#dummy = undefined; // e.g. refused by a full queue: try again next time
      throw err;
    });
    return this.#dummy;
  }
}
