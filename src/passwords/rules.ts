import { blocklist } from "./blocklist.js";

/**
 * Password rules in the style of NIST SP 800-63B §3.1.1.2: length, not composition; refuse known
 * common/breached passwords and context words (the login ID, the service's name).
 */
export const MAX_PASSWORD_LENGTH = 256; // characters after NFKC; at least the 128 the rules promise
export const SERVICE_NAMES = ["sekisho", "関所"];

export type PasswordProblem =
  | "too_short"
  | "too_long"
  | "invalid_characters"
  | "common_password"
  | "contains_login_id"
  | "contains_service_name"
  | "repetitive";

/** NFKC, so that the same password typed on a full-width keyboard is the same password. */
export function normalisePassword(password: string): string {
  return password.normalize("NFKC");
}

// Control characters (C0, DEL, C1) and lone surrogates can't be typed and break encodings.
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching them is the point
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

export function checkPassword(
  raw: string,
  ctx: { minLength: number; loginId?: string | null },
): PasswordProblem[] {
  const problems: PasswordProblem[] = [];
  if (!raw.isWellFormed() || CONTROL.test(raw)) problems.push("invalid_characters");
  const pw = normalisePassword(raw.isWellFormed() ? raw : raw.toWellFormed());
  const length = [...pw].length; // code points, not UTF-16 units
  if (length < ctx.minLength) problems.push("too_short");
  if (length > MAX_PASSWORD_LENGTH) problems.push("too_long");
  const lower = pw.toLowerCase();
  const list = blocklist();
  // A listed password with up to six digits or symbols around it (a year, "!!") is as guessable as the password.
  const core = lower.replace(/^[\d\W_]{1,6}/u, "").replace(/[\d\W_]{1,6}$/u, "");
  if (list.has(lower) || (core.length >= 4 && list.has(core))) problems.push("common_password");
  const loginId = ctx.loginId?.normalize("NFKC").toLowerCase();
  if (loginId && loginId.length >= 3 && lower.includes(loginId)) problems.push("contains_login_id");
  if (SERVICE_NAMES.some((n) => lower.includes(n))) problems.push("contains_service_name");
  if (new Set(pw).size <= 2 || /^(.{1,3})\1+$/u.test(pw)) problems.push("repetitive");
  return problems;
}
