import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import proxyaddr from "proxy-addr";
import { z } from "zod";
import { StartupError } from "./errors.js";

/**
 * Every environment variable Sekisho reads, in one zod schema parsed once at boot.
 * Nothing else in the code base reads process.env. `.env.example` lists the same variables.
 */
const int = (def: number, min: number, max: number) => z.coerce.number().int().min(min).max(max).default(def);

/** A variable holding a JSON object of some of these fields (unknown ones refused). */
const jsonObject = <T extends z.ZodRawShape>(shape: T) =>
  z
    .string()
    .default("{}")
    .transform((v, ctx) => {
      try {
        return JSON.parse(v) as unknown;
      } catch {
        ctx.addIssue({ code: "custom", message: "must be a JSON object" });
        return z.NEVER;
      }
    })
    .pipe(z.object(shape).partial().strict());

const schema = z
  .object({
    NODE_ENV: z.enum(["development", "production", "test"]).default("development"),
    HOST: z.string().min(1).default("127.0.0.1"),
    PORT: int(3000, 0, 65535),
    LOG_LEVEL: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
    SEKISHO_DATA_DIR: z.string().min(1).default("./data"),
    SEKISHO_KEYRING_FILE: z.string().min(1).optional(),
    SEKISHO_ISSUER: z
      .url({ protocol: /^https?$/, error: "must be an http(s) URL such as http://localhost:3000" })
      .refine((u) => {
        const url = new URL(u);
        return url.search === "" && url.hash === "";
      }, "must not have a query or fragment")
      .optional(),
    SEKISHO_TRUST_PROXY: z.string().min(1).optional(),
    SEKISHO_METRICS_ALLOW: z
      .string()
      .default("loopback")
      .transform((v) =>
        v
          .split(",")
          .map((x) => x.trim())
          .filter(Boolean),
      )
      .refine((list) => {
        try {
          proxyaddr.compile(list);
          return true;
        } catch {
          return false;
        }
      }, "must be a comma-separated list of addresses, CIDR ranges, or loopback/linklocal/uniquelocal"),
    SEKISHO_METRICS_PORT: z.coerce.number().int().min(1).max(65535).optional(),
    SEKISHO_SMTP_URL: z.url({ protocol: /^smtps?$/ }).optional(),
    SEKISHO_MAIL_FROM: z.string().min(3).default("Sekisho <no-reply@localhost>"),
    SEKISHO_ARGON2_MEMORY_KIB: int(19456, 1024, 4 * 1024 * 1024),
    SEKISHO_ARGON2_TIME_COST: int(2, 1, 100),
    SEKISHO_ARGON2_PARALLELISM: int(1, 1, 16),
    SEKISHO_HASH_CONCURRENCY: int(Math.max(1, os.availableParallelism()), 1, 256),
    SEKISHO_HASH_QUEUE_MAX: int(256, 0, 100_000),
    SEKISHO_PASSWORD_MIN_LENGTH: int(12, 8, 64),
    SEKISHO_SESSION_IDLE_MINUTES: int(60, 1, 60 * 24 * 30),
    SEKISHO_SESSION_ABSOLUTE_HOURS: int(12, 1, 24 * 90),
    SEKISHO_REAUTH_MINUTES: int(10, 1, 24 * 60),
    SEKISHO_TOTP_ISSUER: z.string().min(1).max(64).default("Sekisho"),
    SEKISHO_WEBAUTHN_RP_NAME: z.string().min(1).max(64).default("Sekisho"),
    SEKISHO_ADMIN_ACR: z.enum(["phishing-resistant", "mfa"]).default("phishing-resistant"),
    SEKISHO_THROTTLE_POLICY: jsonObject({
      ipSlow: z.number().int().min(1),
      ipBlock: z.number().int().min(1),
      netSlow: z.number().int().min(1),
      netBlock: z.number().int().min(1),
      blockMinutes: z
        .number()
        .int()
        .min(1)
        .max(7 * 24 * 60),
      ipLoginSlow: z.number().int().min(1),
      accountSlow: z.number().int().min(1),
      accountProtect: z.number().int().min(1).max(100),
      secondFactorNotice: z.number().int().min(1).max(100),
      protectMinutes: z
        .number()
        .int()
        .min(1)
        .max(7 * 24 * 60),
      sprayAccounts: z.number().int().min(2),
      attackFloorPerMinute: z.number().int().min(1),
      attackFactor: z.number().min(1),
      overloadBacklog: z.number().int().min(1).max(100_000),
      overloadHoldSeconds: z
        .number()
        .int()
        .min(1)
        .max(24 * 60 * 60),
      trustedDeviceFailures: z.number().int().min(1).max(1000),
      maxKeys: z.number().int().min(1000).max(10_000_000),
      challengeMaxNumber: z.number().int().min(10).max(10_000_000),
      mailIp: z.number().int().min(1),
      mailNet: z.number().int().min(1),
      mailTarget: z.number().int().min(1),
      mailTargetDay: z.number().int().min(1),
      mailGlobal: z.number().int().min(1),
      mailMember: z.number().int().min(1),
    }),
    SEKISHO_ALERT_WEBHOOK_URL: z.url({ protocol: /^https?$/ }).optional(),
    SEKISHO_ALERT_WEBHOOK_SECRET: z.string().min(32, "must be at least 32 characters").optional(),
    SEKISHO_PII_BUDGETS: jsonObject({
      adminHour: z.number().int().min(1),
      adminDay: z.number().int().min(1),
      clientHour: z.number().int().min(1),
      clientDay: z.number().int().min(1),
      adminWeekDistinct: z.number().int().min(1),
      clientDayFactor: z.number().min(1),
      clientDayFloor: z.number().int().min(1),
    }),
    SEKISHO_WEBAUTHN_EXTRA_ORIGINS: z
      .string()
      .default("")
      .transform((v) =>
        v
          .split(",")
          .map((o) => o.trim())
          .filter(Boolean),
      )
      .pipe(
        z.array(
          z
            .url({ protocol: /^https?$/ })
            .refine((o) => new URL(o).origin === o, "must be a bare origin (scheme://host[:port])"),
        ),
      ),
  })
  .superRefine((env, ctx) => {
    if ((env.SEKISHO_ALERT_WEBHOOK_URL === undefined) !== (env.SEKISHO_ALERT_WEBHOOK_SECRET === undefined)) {
      ctx.addIssue({
        code: "custom",
        path: ["SEKISHO_ALERT_WEBHOOK_SECRET"],
        message: "set both SEKISHO_ALERT_WEBHOOK_URL and SEKISHO_ALERT_WEBHOOK_SECRET, or neither",
      });
    }
    // A backlog switch at or past the queue's bound never fires: the queue answers 503 first.
    const backlog = env.SEKISHO_THROTTLE_POLICY.overloadBacklog;
    if (backlog !== undefined && env.SEKISHO_HASH_QUEUE_MAX > 0 && backlog >= env.SEKISHO_HASH_QUEUE_MAX) {
      ctx.addIssue({
        code: "custom",
        path: ["SEKISHO_THROTTLE_POLICY"],
        message: `overloadBacklog (${backlog}) must be below SEKISHO_HASH_QUEUE_MAX (${env.SEKISHO_HASH_QUEUE_MAX})`,
      });
    }
    if (env.SEKISHO_SESSION_IDLE_MINUTES > env.SEKISHO_SESSION_ABSOLUTE_HOURS * 60) {
      ctx.addIssue({
        code: "custom",
        path: ["SEKISHO_SESSION_IDLE_MINUTES"],
        message: "must not exceed SEKISHO_SESSION_ABSOLUTE_HOURS",
      });
    }
  });

export type Env = z.infer<typeof schema>;

export interface Config {
  readonly env: Env["NODE_ENV"];
  readonly production: boolean;
  readonly host: string;
  readonly port: number;
  readonly logLevel: Env["LOG_LEVEL"];
  readonly dataDir: string;
  readonly dbFile: string;
  /** Where the keyring lives; in production it must be outside dataDir. */
  readonly keyringFile: string;
  /** True when the keyring path was not given and a development keyring may be generated. */
  readonly devKeyring: boolean;
  readonly issuer: string;
  readonly issuerOrigin: string;
  readonly secureCookies: boolean;
  readonly trustProxy: string | undefined;
  /** Who may read /metrics (addresses, CIDR ranges, loopback/linklocal/uniquelocal). */
  readonly metricsAllow: readonly string[];
  /** Serve /metrics on this port (on HOST) instead of the main one. */
  readonly metricsPort: number | undefined;
  readonly smtpUrl: string | undefined;
  readonly mailFrom: string;
  readonly argon2: { readonly memoryCost: number; readonly timeCost: number; readonly parallelism: number };
  readonly hashConcurrency: number;
  readonly hashQueueMax: number;
  readonly passwordMinLength: number;
  readonly sessionIdleMs: number;
  readonly sessionAbsoluteMs: number;
  /** How recent a sign-in must be for sensitive changes (removing a factor). */
  readonly reauthMs: number;
  readonly totpIssuer: string;
  /** WebAuthn relying party: RP ID is the issuer's host name; origins the issuer's plus extras. */
  readonly webauthn: { readonly rpId: string; readonly rpName: string; readonly origins: readonly string[] };
  /** The sign-in level the admin API needs (phishing-resistant; `mfa` is allowed with a warning). */
  readonly adminAcr: string;
  /** Overrides of the login-anomaly engine's thresholds (src/throttle/engine.ts DEFAULT_POLICY). */
  readonly throttle: Readonly<Record<string, number>>;
  /** Where alerts are POSTed, signed with the secret (HMAC-SHA256), if anywhere. */
  readonly alertWebhook: { readonly url: string; readonly secret: string } | undefined;
  /** Overrides of the PII read budgets (src/audit/pii-budget.ts DEFAULT_PII_BUDGETS). */
  readonly piiBudgets: Readonly<Record<string, number>>;
}

/** Parse the environment. Throws a StartupError naming each bad variable. */
export function loadConfig(source: Record<string, string | undefined> = process.env): Config {
  // An empty variable means "unset", as in most shells' `VAR= cmd`.
  const cleaned = Object.fromEntries(Object.entries(source).filter(([, v]) => v !== undefined && v !== ""));
  const parsed = schema.safeParse(cleaned);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => {
      const name = String(i.path[0] ?? "environment");
      return `  ${name}: ${i.message}${name in cleaned ? ` (got ${JSON.stringify(cleaned[name])})` : ""}`;
    });
    throw new StartupError(`invalid configuration:\n${lines.join("\n")}`);
  }
  const e = parsed.data;
  const dataDir = path.resolve(e.SEKISHO_DATA_DIR);
  // Unset: the server's own address on this machine, on the port it listens on (a PORT of its own
  // without an issuer would otherwise advertise port 3000, and refuse its pages' own origin).
  const issuer = (e.SEKISHO_ISSUER ?? `http://localhost:${e.PORT === 0 ? 3000 : e.PORT}`).replace(/\/+$/, "");
  const url = new URL(issuer);
  return Object.freeze({
    env: e.NODE_ENV,
    production: e.NODE_ENV === "production",
    host: e.HOST,
    port: e.PORT,
    logLevel: e.LOG_LEVEL,
    dataDir,
    dbFile: path.join(dataDir, "sekisho.db"),
    keyringFile: path.resolve(e.SEKISHO_KEYRING_FILE ?? path.join(dataDir, "keyring.dev.json")),
    devKeyring: e.SEKISHO_KEYRING_FILE === undefined,
    issuer,
    issuerOrigin: url.origin,
    secureCookies: url.protocol === "https:",
    trustProxy: e.SEKISHO_TRUST_PROXY,
    metricsAllow: Object.freeze([...e.SEKISHO_METRICS_ALLOW]),
    metricsPort: e.SEKISHO_METRICS_PORT,
    smtpUrl: e.SEKISHO_SMTP_URL,
    mailFrom: e.SEKISHO_MAIL_FROM,
    argon2: Object.freeze({
      memoryCost: e.SEKISHO_ARGON2_MEMORY_KIB,
      timeCost: e.SEKISHO_ARGON2_TIME_COST,
      parallelism: e.SEKISHO_ARGON2_PARALLELISM,
    }),
    hashConcurrency: e.SEKISHO_HASH_CONCURRENCY,
    hashQueueMax: e.SEKISHO_HASH_QUEUE_MAX,
    passwordMinLength: e.SEKISHO_PASSWORD_MIN_LENGTH,
    sessionIdleMs: e.SEKISHO_SESSION_IDLE_MINUTES * 60_000,
    sessionAbsoluteMs: e.SEKISHO_SESSION_ABSOLUTE_HOURS * 3_600_000,
    reauthMs: e.SEKISHO_REAUTH_MINUTES * 60_000,
    adminAcr: `urn:sekisho:acr:${e.SEKISHO_ADMIN_ACR}`,
    throttle: Object.freeze({ ...e.SEKISHO_THROTTLE_POLICY }) as Readonly<Record<string, number>>,
    piiBudgets: Object.freeze({ ...e.SEKISHO_PII_BUDGETS }) as Readonly<Record<string, number>>,
    alertWebhook:
      e.SEKISHO_ALERT_WEBHOOK_URL && e.SEKISHO_ALERT_WEBHOOK_SECRET
        ? Object.freeze({ url: e.SEKISHO_ALERT_WEBHOOK_URL, secret: e.SEKISHO_ALERT_WEBHOOK_SECRET })
        : undefined,
    totpIssuer: e.SEKISHO_TOTP_ISSUER,
    webauthn: Object.freeze({
      rpId: url.hostname,
      rpName: e.SEKISHO_WEBAUTHN_RP_NAME,
      origins: Object.freeze([url.origin, ...e.SEKISHO_WEBAUTHN_EXTRA_ORIGINS]),
    }),
  });
}

/** In production the keyring must not sit beside the database it protects. */
export function checkKeyringPlacement(config: Config): void {
  if (!config.production) return;
  if (config.devKeyring) {
    throw new StartupError(
      "NODE_ENV=production needs SEKISHO_KEYRING_FILE: keys must come from a file outside the data " +
        "directory, so that a copy of the data directory alone decrypts nothing. " +
        "Create one with `npx sekisho keys generate --out /etc/sekisho/keyring.json`.",
    );
  }
  // Where the files really are: a symlink in /etc pointing into the data dir is inside it.
  const real = (p: string) => {
    try {
      return fs.realpathSync(p);
    } catch {
      return p; // not there (yet): its path as given
    }
  };
  const rel = path.relative(real(config.dataDir), real(config.keyringFile));
  if (rel === "" || (!rel.startsWith("..") && !path.isAbsolute(rel))) {
    throw new StartupError(
      `SEKISHO_KEYRING_FILE (${config.keyringFile}) is inside SEKISHO_DATA_DIR (${config.dataDir}); ` +
        "in production keys must live outside the data directory, so a stolen copy of it decrypts nothing.",
    );
  }
}

/**
 * In production, mail must really go out: the development fallback writes reset links to files in
 * the data directory, which is neither delivery nor safe to leave on a server.
 */
export function checkMailSetting(config: Config): void {
  if (config.production && !config.smtpUrl) {
    throw new StartupError(
      "NODE_ENV=production needs SEKISHO_SMTP_URL (e.g. smtp://user:pass@mail.example.jp:587): " +
        "verification and password-reset mail must be delivered, not written to the data directory.",
    );
  }
}
