/**
 * PHC string handling for argon2 (https://github.com/P-H-C/phc-string-format).
 *
 * The `argon2` npm package writes parameters as `m=…,p=…,t=…`; the reference libargon2 decoder
 * only accepts `m=…,t=…,p=…` (node-argon2 issue #559), so hashes written that way can't be
 * verified by other software. We store the standard order.
 */
export interface Argon2Phc {
  variant: "argon2id" | "argon2i" | "argon2d";
  version: number;
  m: number;
  t: number;
  p: number;
  salt: string;
  hash: string;
}

const PHC = /^\$(argon2id|argon2i|argon2d)\$v=(\d+)\$([a-z0-9=,]+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$/;

export function parseArgon2Phc(s: string): Argon2Phc | null {
  const m = PHC.exec(s);
  if (!m) return null;
  const params = new Map<string, number>();
  for (const kv of (m[3] as string).split(",")) {
    const [k, v] = kv.split("=");
    if (!k || v === undefined || !/^\d+$/.test(v) || params.has(k)) return null;
    params.set(k, Number(v));
  }
  const mm = params.get("m");
  const t = params.get("t");
  const p = params.get("p");
  if (mm === undefined || t === undefined || p === undefined || params.size !== 3) return null;
  return {
    variant: m[1] as Argon2Phc["variant"],
    version: Number(m[2]),
    m: mm,
    t,
    p,
    salt: m[4] as string,
    hash: m[5] as string,
  };
}

export function formatArgon2Phc(h: Argon2Phc): string {
  return `$${h.variant}$v=${h.version}$m=${h.m},t=${h.t},p=${h.p}$${h.salt}$${h.hash}`;
}

/** Rewrite any argon2 PHC string into the standard parameter order. */
export function toStandardPhc(s: string): string {
  const parsed = parseArgon2Phc(s);
  if (!parsed) throw new Error("not an argon2 PHC string");
  return formatArgon2Phc(parsed);
}
