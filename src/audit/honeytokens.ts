import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { Logger } from "pino";
import type { KeyringStore } from "../vault/keyring.js";
import type { Alerts } from "./alerts.js";

/**
 * Honeytokens: decoy members, indistinguishable from real ones in the database — same tables,
 * same ciphertexts, realistic profiles, created over the past years like imported members. What
 * marks a decoy is its member id: 8 random bytes followed by 8 bytes of HMAC over them under a key
 * derived from the keyring (never stored), where a real member's id is 16 random bytes. Without
 * the keyring nobody can tell them apart; with it, every touch is caught:
 *
 * - a decryption of a decoy's profile (any principal: admin view or lookup, a member site's
 *   claims, an export),
 * - a sign-in attempt, a recovery request or a registration with a decoy's login ID,
 * - a lookup that finds a decoy's e-mail blind index,
 * - a member site asking the service API for a decoy's sub (no site holds a decoy's grant),
 *
 * each raises a critical `honeytoken_touched` alert naming the principal, the address and the
 * time. Nothing tells the toucher: reads return the decoy's data, sign-ins fail as for a wrong
 * password, and no mail is ever sent to a decoy's (possibly real) address.
 */
export type HoneytokenTrigger =
  | "pii_read"
  | "sign_in"
  | "email_lookup"
  | "recovery"
  | "service_api"
  | "registration";

export interface Toucher {
  actorType?: string | null;
  actorId?: string | null;
  ip?: string | null;
  reason?: string | null;
  requestId?: string | null;
}

export class Honeytokens {
  readonly #keys: KeyringStore;
  #alerts: Alerts | undefined;
  readonly #logger: Logger | undefined;

  constructor(deps: { keys: KeyringStore; alerts?: Alerts; logger?: Logger }) {
    this.#keys = deps.keys;
    this.#alerts = deps.alerts;
    this.#logger = deps.logger;
  }

  /** Late wiring: the alerts need the audit log, which the vault (a user of this) comes before. */
  set alerts(alerts: Alerts) {
    this.#alerts = alerts;
  }

  #mac(nonce: Buffer): Buffer {
    const key = createHmac("sha256", this.#keys.get().blindIndexKey.key)
      .update("sekisho-honeytoken/v1")
      .digest();
    return createHmac("sha256", key).update(nonce).digest().subarray(0, 8);
  }

  /** A member id for a new decoy (looks like any other: `m_` + 22 base64url characters). */
  newId(): string {
    const nonce = randomBytes(8);
    return `m_${Buffer.concat([nonce, this.#mac(nonce)]).toString("base64url")}`;
  }

  isDecoy(memberId: string | null | undefined): boolean {
    if (!memberId?.startsWith("m_") || memberId.length !== 24) return false;
    const raw = Buffer.from(memberId.slice(2), "base64url");
    if (raw.length !== 16) return false;
    return timingSafeEqual(raw.subarray(8), this.#mac(raw.subarray(0, 8)));
  }

  /**
   * `check`, for answers that must not take longer for a decoy than for anyone (a 409 "taken", a
   * 404): whether it is one is decided now (that writes nothing); the alert, whose writes would
   * show in the answer's time, is raised after the answer. Returns whether one was.
   */
  checkAfterAnswer(memberId: string, trigger: HoneytokenTrigger, who: Toucher): boolean {
    if (!this.isDecoy(memberId)) return false;
    setImmediate(() => {
      try {
        this.check([memberId], trigger, who);
      } catch (err) {
        this.#logger?.error({ err, trigger }, "honeytoken alert after an answer failed");
      }
    });
    return true;
  }

  /** Raise the alarm if any of `memberIds` is a decoy; returns whether one was. */
  check(memberIds: Iterable<string>, trigger: HoneytokenTrigger, who: Toucher): boolean {
    let touched = false;
    for (const id of memberIds) {
      if (!this.isDecoy(id)) continue;
      touched = true;
      this.#alerts?.raise(
        "honeytoken_touched",
        "critical",
        {
          trigger,
          decoy_member_id: id,
          principal: who.actorType ?? "anonymous",
          principal_id: who.actorId ?? null,
          ip: who.ip ?? null,
          reason: who.reason ?? null,
          request_id: who.requestId ?? null,
        },
        `${id}|${trigger}|${who.actorId ?? who.ip ?? ""}`,
      );
    }
    return touched;
  }
}
