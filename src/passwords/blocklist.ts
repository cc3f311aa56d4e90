import { dictionary } from "@zxcvbn-ts/language-common";

/**
 * Common and breached passwords: the `passwords-common` list of @zxcvbn-ts/language-common
 * (≈49,000 entries, ranked by frequency in public breach corpora; maintained by the zxcvbn-ts
 * project). Loaded once, lower-cased, into a Set.
 */
let set: Set<string> | undefined;

export function blocklist(): Set<string> {
  if (!set) {
    const list = (dictionary as Record<string, string[]>)["passwords-common"] ?? [];
    set = new Set(list.map((p) => p.toLowerCase()));
  }
  return set;
}

export const BLOCKLIST_SOURCE = "@zxcvbn-ts/language-common (passwords-common)";
