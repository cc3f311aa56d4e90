import { parseMemberNumber } from "./member-number.js";

/**
 * Login IDs. Members sign in with an ID that is not their e-mail address (an e-mail list leaked
 * elsewhere then names no account here). Chosen IDs are NFKC-normalised and lower-cased, so
 * `ＴＡＲＯ` and `taro` are the same ID and can't both be taken.
 */
export function normaliseLoginId(input: string): string {
  return input.normalize("NFKC").trim().toLowerCase();
}

export type LoginIdProblem = "length" | "characters" | "email" | "reserved" | "looks_like_member_number";

const RESERVED = new Set([
  "root",
  "admin",
  "administrator",
  "sysadmin",
  "system",
  "support",
  "help",
  "helpdesk",
  "info",
  "security",
  "sekisho",
  "official",
  "staff",
  "moderator",
  "operator",
  "owner",
  "webmaster",
  "postmaster",
  "hostmaster",
  "abuse",
  "noreply",
  "no-reply",
  "mailer-daemon",
  "null",
  "undefined",
  "anonymous",
  "guest",
  "test",
  "api",
  "www",
  "mail",
  "oauth",
  "oidc",
  "login",
  "logout",
  "signin",
  "signup",
  "register",
  "account",
  "accounts",
  "me",
  "billing",
  "contact",
  "service",
  "services",
]);
// Also refused as a prefix, so nobody can pose as staff with `admin2` or `support.desk`.
const RESERVED_PREFIX = /^(admin|administrator|sekisho|official|support|security|staff)([._-]|\d|$)/;
const ALLOWED = /^[a-z0-9][a-z0-9._-]*[a-z0-9]$/;

export function checkChosenLoginId(
  input: string,
): { ok: true; loginId: string } | { ok: false; problem: LoginIdProblem } {
  if (!input.isWellFormed()) return { ok: false, problem: "characters" };
  const id = normaliseLoginId(input);
  if (id.includes("@")) return { ok: false, problem: "email" };
  const length = [...id].length;
  if (length < 4 || length > 32) return { ok: false, problem: "length" };
  if (!ALLOWED.test(id)) return { ok: false, problem: "characters" };
  if (RESERVED.has(id) || RESERVED_PREFIX.test(id)) return { ok: false, problem: "reserved" };
  // A chosen ID must never look like a generated number: a typo in a number would reach it.
  if (parseMemberNumber(id).kind !== "not_a_number" || /^[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{3}$/.test(id)) {
    return { ok: false, problem: "looks_like_member_number" };
  }
  return { ok: true, loginId: id };
}

export const LOGIN_ID_PROBLEM_TEXT: Record<LoginIdProblem, string> = {
  length: "A login ID has 4 to 32 characters.",
  characters: "A login ID uses only a-z, 0-9, '.', '_' and '-', and starts and ends with a letter or digit.",
  email: "A login ID can't be an e-mail address.",
  reserved: "That login ID is reserved.",
  looks_like_member_number:
    "A chosen login ID can't look like a member number (11 letters and digits, or xxxx-xxxx-xxx): add '.', '_' or '-', or choose another length.",
};

/**
 * What the sign-in form received, resolved to the stored form: a chosen ID, a member number in
 * canonical form, or `null` when it can't be any login ID (e.g. a member number with a typo),
 * which the caller refuses before any lookup or hashing.
 */
export function resolveLoginInput(input: string): string | null {
  if (!input.isWellFormed()) return null;
  const id = normaliseLoginId(input);
  const number = parseMemberNumber(id);
  if (number.kind === "number") return number.value;
  if (number.kind === "invalid_number") return null;
  // Anything else is looked up (an unknown ID then costs a dummy hash like a wrong password);
  // only what can't be stored at all is refused here.
  if (id.length === 0 || id.length > 64 || /\p{Cc}/u.test(id)) return null;
  return id;
}
