import { randomInt } from "node:crypto";

/**
 * Generated member numbers: 10 random Crockford base32 symbols (50 bits) and one check symbol,
 * shown as `k7q2-m9xa-3hc`. Crockford's alphabet has no I, L, O or U, and reading accepts i/l as 1
 * and o as 0, so a number read aloud or copied from paper survives. The check symbol is Luhn mod 32,
 * which catches every single mistyped symbol and most swaps of neighbours before any lookup.
 */
const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";
const N = ALPHABET.length;
const BODY = 10;

function codeOf(ch: string): number {
  const alias = ch === "i" || ch === "l" ? "1" : ch === "o" ? "0" : ch;
  return ALPHABET.indexOf(alias);
}

function checkCode(codes: number[]): number {
  let factor = 2;
  let sum = 0;
  for (let i = codes.length - 1; i >= 0; i--) {
    let addend = factor * (codes[i] as number);
    factor = factor === 2 ? 1 : 2;
    addend = Math.floor(addend / N) + (addend % N);
    sum += addend;
  }
  return (N - (sum % N)) % N;
}

function format(codes: number[]): string {
  const s = codes.map((c) => ALPHABET[c]).join("");
  return `${s.slice(0, 4)}-${s.slice(4, 8)}-${s.slice(8)}`;
}

export function generateMemberNumber(): string {
  const body = Array.from({ length: BODY }, () => randomInt(N));
  return format([...body, checkCode(body)]);
}

/** Shaped like a member number when written with separators (`xxxx-xxxx-xxx`, spaces too). */
const SEPARATED = /^[0-9a-z]{4}[- ][0-9a-z]{4}[- ][0-9a-z]{3}$/;
/** Eleven symbols of the alphabet (look-alikes i, l, o included): the plain form of a number. */
const PLAIN = /^[0-9a-tv-z]{11}$/;

export type MemberNumberParse =
  | { kind: "number"; value: string }
  | { kind: "invalid_number" }
  | { kind: "not_a_number" };

/**
 * Read what a member typed (already NFKC + lower case). Anything shaped like a number (with or
 * without separators) must be a valid one: chosen login IDs may not take that shape, so a typo in
 * a number is caught here, before any lookup, and can never land on someone else's chosen ID.
 */
export function parseMemberNumber(input: string): MemberNumberParse {
  if (!SEPARATED.test(input) && !PLAIN.test(input)) return { kind: "not_a_number" };
  const codes = [...input.replace(/[- ]/g, "")].map(codeOf);
  const valid = codes.every((c) => c >= 0) && checkCode(codes.slice(0, BODY)) === codes[BODY];
  return valid ? { kind: "number", value: format(codes) } : { kind: "invalid_number" };
}
