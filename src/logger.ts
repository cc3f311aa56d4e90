import { AsyncLocalStorage } from "node:async_hooks";
import { createRequire } from "node:module";
import { type DestinationStream, type Logger, pino } from "pino";

/** The id of the request being handled (set by requestContext): on every log line made for it. */
export const requestIds = new AsyncLocalStorage<string>();

/**
 * pino with a redaction list: passwords, codes, tokens, secrets, cookies and every profile field
 * are censored wherever they appear in a logged object. Code also never logs request bodies.
 */
const SECRET_KEYS = [
  "password",
  "new_password",
  "current_password",
  "token",
  "mfa_token",
  "secret",
  "client_secret",
  "otp",
  "cookie",
  "authorization",
  "body",
  "profile",
  "email",
  "phone",
  "postal_code",
  "address",
  "birth_date",
  "gender",
];
// `code` and `name` are secret in a request body (a TOTP code, a member's name) but not on an
// error object (err.code, err.name), so they are censored only where a body could be.
export const REDACT_PATHS = [
  ...SECRET_KEYS.flatMap((k) => [k, `*.${k}`]),
  "code",
  "name",
  "req.body",
  "request.body",
];

const HEADER_PATHS = [
  "req.headers.cookie",
  "req.headers.authorization",
  'req.headers["x-csrf-token"]',
  'res.headers["set-cookie"]',
];

export function createLogger(level: string, destination?: DestinationStream): Logger {
  const options = {
    level,
    base: { service: "sekisho" },
    mixin: () => {
      const id = requestIds.getStore();
      return id ? { req_id: id } : {};
    },
    redact: { paths: [...REDACT_PATHS, ...HEADER_PATHS], censor: "[redacted]" },
  };
  if (destination) return pino(options, destination);
  // Pretty lines on a terminal, when pino-pretty is installed: it is a development dependency, so
  // an `npm ci --omit=dev` install (the systemd and container setups) logs JSON there too.
  if (process.stdout.isTTY && hasPretty()) {
    return pino({ ...options, transport: { target: "pino-pretty", options: { colorize: true } } });
  }
  return pino(options);
}

function hasPretty(): boolean {
  try {
    createRequire(import.meta.url).resolve("pino-pretty");
    return true;
  } catch {
    return false;
  }
}
