import { createHmac } from "node:crypto";
import type { KeyringStore } from "./keyring.js";

/**
 * Blind index: HMAC-SHA256 under its own key (never a data key) over a normalised value, with
 * the field name as domain separator. Lets us find a member by e-mail without storing the e-mail
 * in clear; without the key the index is not a dictionary-attackable hash.
 */
export function blindIndex(store: KeyringStore, field: string, normalised: string): string {
  const { key } = store.get().blindIndexKey;
  return createHmac("sha256", key).update(`${field}\u0000${normalised}`, "utf8").digest("base64url");
}

/** E-mail normalisation for the index: NFKC, trimmed, lower case (the whole address). */
export function normaliseEmail(email: string): string {
  return email.normalize("NFKC").trim().toLowerCase();
}
