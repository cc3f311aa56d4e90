import fs from "node:fs";
import path from "node:path";
import cliProgress from "cli-progress";
import { Command, InvalidArgumentError } from "commander";
import { eq } from "drizzle-orm";
import pino from "pino";
import { memberIdParam } from "./admin/admin-ops.js";
import { type AuditEntry, AuditLog } from "./audit/log.js";
import { systemClock } from "./clock.js";
import { type Config, loadConfig } from "./config.js";
import { type Db, inTransaction, migrateDatabase, openDatabase } from "./db/connection.js";
import { members } from "./db/schema.js";
import { ApiError, InputError, StartupError } from "./errors.js";
import { resolveLoginInput } from "./members/login-id.js";
import { wrapWeak } from "./members/wrap-weak.js";
import { type ClientSummary, Clients } from "./oidc/clients.js";
import { backupDatabase, restoreDatabase } from "./ops/backup.js";
import { buildServices } from "./services.js";
import { openKeyring } from "./vault/bootstrap.js";
import { Keyring, type KeyringStore, writeKeyringFile } from "./vault/keyring.js";
import { assertKeyringFits } from "./vault/keyring-check.js";
import { rotateKeys } from "./vault/rotation.js";
import { acceptMemberRow, assertSealsNotRemoved, brokenSeals, sealRowsOnce } from "./vault/seal-rows.js";
import { RowSeals } from "./vault/seals.js";

/**
 * `sekisho` command line. Same configuration (environment), keys and database as the server;
 * safe to run while the server runs (SQLite WAL; the server re-reads a rotated keyring).
 */
interface Context {
  config: Config;
  db: Db;
  keys: KeyringStore;
  audit: AuditLog;
}

function open(): Context {
  const config = loadConfig();
  // Diagnostics go to stderr so that --json output on stdout stays machine-readable.
  const logger = pino({ level: config.logLevel === "info" ? "warn" : config.logLevel }, pino.destination(2));
  const keys = openKeyring(config, systemClock, logger);
  const db = openDatabase(config.dbFile);
  assertKeyringFits(db, keys.get(), config.keyringFile); // before migrating: nothing is written
  assertSealsNotRemoved(db);
  migrateDatabase(db);
  const audit = new AuditLog({ db, keys, clock: systemClock });
  // Rows from before row seals existed are sealed, once, by whichever starts first (server or CLI).
  sealRowsOnce(db, new RowSeals({ keys }), audit, { markEmpty: false });
  return { config, db, keys, audit };
}

/** The context and the service objects, for commands that act as the server would (quiet logs). */
function openServices(): { ctx: Context; services: ReturnType<typeof buildServices> } {
  const ctx = open();
  const services = buildServices({
    config: ctx.config,
    db: ctx.db,
    clock: systemClock,
    keys: ctx.keys,
    logger: pino({ level: "silent" }),
  });
  return { ctx, services };
}

const out = (line: string) => process.stdout.write(`${line}\n`);

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) return "";
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}
/** A repeatable option's values, in order. */
const repeat = (v: string, prev: string[]) => [...prev, v];

/** An API refusal as the CLI says it: the code, the description and its particulars (a weak password's reasons). */
function apiRefusal(err: ApiError): StartupError {
  const reasons = err.extra?.reasons;
  const detail = Array.isArray(reasons) && reasons.length > 0 ? ` (${reasons.join(", ")})` : "";
  return new StartupError(`${err.code}: ${err.description}${detail}`);
}

const positiveInt = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("must be a positive whole number");
  return n;
};

/** One exported entry: the stored columns, snake_case, exactly as chained (details as stored text). */
function exportRow(e: AuditEntry) {
  return {
    seq: e.seq,
    at: e.at,
    action: e.action,
    outcome: e.outcome,
    actor_type: e.actorType,
    actor_id: e.actorId,
    member_id: e.memberId,
    reason: e.reason,
    ip: e.ip,
    request_id: e.requestId,
    details: e.details,
    key_id: e.keyId,
    prev_mac: e.prevMac,
    mac: e.mac,
  };
}

export function buildCli(): Command {
  const program = new Command("sekisho")
    .description("Sekisho (関所): authentication hardening service")
    .showHelpAfterError();

  program
    .command("migrate")
    .description("apply the migrations in drizzle/ to the database")
    .action(() => {
      const config = loadConfig();
      const db = openDatabase(config.dbFile);
      migrateDatabase(db);
      db.$client.close();
      out(`database ${config.dbFile} is up to date`);
    });

  const keys = program.command("keys").description("the keyring");
  keys
    .command("generate")
    .description("write a new keyring file (for SEKISHO_KEYRING_FILE); refuses to overwrite one")
    .requiredOption("--out <file>", "where to write it (outside the data directory)")
    .option("--no-pepper", "no argon2 pepper")
    .action((opts: { out: string; pepper: boolean }) => {
      if (fs.existsSync(opts.out))
        throw new StartupError(`${opts.out} exists; refusing to overwrite a keyring`);
      writeKeyringFile(opts.out, Keyring.generate(new Date(), { pepper: opts.pepper }));
      out(`wrote ${opts.out} (mode 600). Keep it outside the data directory and back it up separately.`);
    });
  keys
    .command("rotate")
    .description(
      "add new active keys and re-encrypt member data in batches (resumes an interrupted rotation)",
    )
    .option("--batch-size <n>", "members per transaction", positiveInt, 500)
    .option("--json", "print a JSON summary")
    .action(async (opts: { batchSize: number; json?: boolean }) => {
      const ctx = open();
      const result = await rotateKeys({
        db: ctx.db,
        keys: ctx.keys,
        audit: ctx.audit,
        clock: systemClock,
        batchSize: opts.batchSize,
        onProgress: (p) => {
          if (!opts.json) process.stderr.write(`re-encrypted ${p.rowsDone}, ${p.remaining} to go\n`);
        },
      });
      ctx.db.$client.close();
      if (opts.json)
        out(JSON.stringify({ key_id: result.newKeyId, rows: result.rowsDone, resumed: result.resumed }));
      else
        out(
          `${result.resumed ? "resumed and finished" : "finished"} rotation to ${result.newKeyId}: ${result.rowsDone} rows re-encrypted`,
        );
    });

  keys
    .command("retire-signing")
    .description(
      "remove old ID-token signing keys from the keyring and so from the JWKS (a key that may have leaked)",
    )
    .option("--kid <kid>", "an old signing key's kid (repeat for several)", repeat, [] as string[])
    .option("--all-old", "every signing key but the active one")
    .option("--json", "print a JSON summary")
    .action((opts: { kid: string[]; allOld?: boolean; json?: boolean }) => {
      const ctx = open();
      const keyring = ctx.keys.reload();
      const kids = opts.allOld ? keyring.signingKeys.filter((k) => !k.active).map((k) => k.kid) : opts.kid;
      if (kids.length === 0 && !opts.allOld)
        throw new InvalidArgumentError("name the keys to retire (--kid) or use --all-old");
      ctx.keys.replace(keyring.withoutSigningKeys(kids));
      ctx.audit.append({
        action: "keys.signing_retired",
        outcome: "info",
        actorType: "operator",
        details: { kids },
      });
      ctx.db.$client.close();
      const left = ctx.keys.get().signingKeys.map((k) => k.kid);
      if (opts.json) out(JSON.stringify({ retired: kids, published: left }));
      else
        out(
          `retired ${kids.length} signing key(s)${kids.length ? `: ${kids.join(", ")}` : ""}; published now: ${left.join(", ")}`,
        );
    });

  const clients = program.command("clients").description("member sites (OIDC clients)");
  clients
    .command("add")
    .description("register a member site; prints its client_id and (once) its client_secret")
    .requiredOption("--name <name>", "shown to members on the sign-in page")
    .requiredOption("--redirect-uri <uri>", "exact redirect URI (repeat for several)", repeat, [] as string[])
    .option("--public", "a public client (no secret; PKCE only)")
    .option("--grant <grant>", "extra grant type: client_credentials", repeat, [] as string[])
    .option(
      "--scope <scope>",
      'scopes the client may ask for (default "openid profile email phone address offline_access", plus members:read with --grant client_credentials)',
    )
    .option("--third-party", "not first-party: members see a consent page")
    .option("--logo-uri <uri>", "logo shown on the sign-in page (https; http for localhost only)")
    .option("--auth-method <method>", "client_secret_basic (default) or client_secret_post")
    .option(
      "--post-logout-redirect-uri <uri>",
      "where RP-initiated logout may return the member (repeat for several)",
      repeat,
      [] as string[],
    )
    .option("--json", "print JSON")
    .action(
      (opts: {
        name: string;
        redirectUri: string[];
        public?: boolean;
        grant: string[];
        scope?: string;
        thirdParty?: boolean;
        logoUri?: string;
        authMethod?: string;
        postLogoutRedirectUri: string[];
        json?: boolean;
      }) => {
        if (
          opts.authMethod &&
          opts.authMethod !== "client_secret_basic" &&
          opts.authMethod !== "client_secret_post"
        ) {
          throw new StartupError("--auth-method is client_secret_basic or client_secret_post");
        }
        for (const g of opts.grant) {
          if (g !== "client_credentials")
            throw new StartupError(`unknown --grant ${g} (only client_credentials)`);
        }
        const ctx = open();
        const created = new Clients({
          db: ctx.db,
          clock: systemClock,
          audit: ctx.audit,
          seals: new RowSeals({ keys: ctx.keys }),
        }).add({
          name: opts.name,
          redirectUris: opts.redirectUri,
          public: !!opts.public,
          grants: opts.grant as Array<"client_credentials">,
          ...(opts.scope ? { scope: opts.scope } : {}),
          firstParty: !opts.thirdParty,
          ...(opts.logoUri ? { logoUri: opts.logoUri } : {}),
          ...(opts.authMethod
            ? { authMethod: opts.authMethod as "client_secret_basic" | "client_secret_post" }
            : {}),
          postLogoutRedirectUris: opts.postLogoutRedirectUri,
        });
        ctx.db.$client.close();
        const out1 = opts.public
          ? { client_id: created.clientId }
          : { client_id: created.clientId, client_secret: created.clientSecret };
        if (opts.json) out(JSON.stringify(out1));
        else {
          out(`client_id:     ${created.clientId}`);
          if (created.clientSecret)
            out(`client_secret: ${created.clientSecret}   (shown once; store it now)`);
        }
      },
    );

  const clientsOf = (ctx: Context) =>
    new Clients({
      db: ctx.db,
      clock: systemClock,
      audit: ctx.audit,
      seals: new RowSeals({ keys: ctx.keys }),
    });
  const printClient = (c: ClientSummary) => {
    out(`${c.client_id}  ${c.name}`);
    out(
      `  ${c.type}${c.type === "confidential" ? ` (${c.auth_method})` : ""}, ${c.first_party ? "first-party" : "third-party (consent page)"}, registered ${c.created_at}`,
    );
    out(`  redirect URIs:     ${c.redirect_uris.join(" ")}`);
    if (c.post_logout_redirect_uris.length)
      out(`  after logout:      ${c.post_logout_redirect_uris.join(" ")}`);
    out(`  grant types:       ${c.grant_types.join(" ")}`);
    out(`  scope:             ${c.scope}`);
    if (c.logo_uri) out(`  logo:              ${c.logo_uri}`);
    if (c.previous_secret_until) out(`  old secret valid until ${c.previous_secret_until}`);
  };

  clients
    .command("list")
    .description("the registered member sites (no secrets)")
    .option("--json", "print JSON")
    .action((opts: { json?: boolean }) => {
      const ctx = open();
      const all = clientsOf(ctx).list();
      ctx.db.$client.close();
      if (opts.json) out(JSON.stringify(all));
      else if (all.length === 0) out("no clients registered");
      else for (const c of all) printClient(c);
    });

  clients
    .command("update")
    .description("change a member site's name, addresses, logo, scopes or consent; takes effect at once")
    .argument("<client_id>")
    .option("--name <name>", "shown to members on the sign-in page")
    .option(
      "--add-redirect-uri <uri>",
      "add an exact redirect URI (repeat for several)",
      repeat,
      [] as string[],
    )
    .option(
      "--remove-redirect-uri <uri>",
      "remove a redirect URI (at least one stays)",
      repeat,
      [] as string[],
    )
    .option("--add-post-logout-redirect-uri <uri>", "add a post-logout address", repeat, [] as string[])
    .option("--remove-post-logout-redirect-uri <uri>", "remove a post-logout address", repeat, [] as string[])
    .option("--logo-uri <uri>", "a new logo (https; http for localhost only)")
    .option("--no-logo-uri", "show no logo")
    .option(
      "--add-scope <scope>",
      "let the site ask for one more scope (scopes are never taken away here)",
      repeat,
      [] as string[],
    )
    .option("--first-party", "members see no consent page")
    .option("--third-party", "members see a consent page")
    .option("--json", "print JSON")
    .action(
      (
        clientId: string,
        opts: {
          name?: string;
          addRedirectUri: string[];
          removeRedirectUri: string[];
          addPostLogoutRedirectUri: string[];
          removePostLogoutRedirectUri: string[];
          logoUri?: string | boolean;
          addScope: string[];
          firstParty?: boolean;
          thirdParty?: boolean;
          json?: boolean;
        },
      ) => {
        if (opts.firstParty && opts.thirdParty)
          throw new StartupError("give --first-party or --third-party, not both");
        const ctx = open();
        try {
          const updated = clientsOf(ctx).update(clientId, {
            ...(opts.name !== undefined ? { name: opts.name } : {}),
            addRedirectUris: opts.addRedirectUri,
            removeRedirectUris: opts.removeRedirectUri,
            addPostLogoutRedirectUris: opts.addPostLogoutRedirectUri,
            removePostLogoutRedirectUris: opts.removePostLogoutRedirectUri,
            ...(typeof opts.logoUri === "string" ? { logoUri: opts.logoUri } : {}),
            ...(opts.logoUri === false ? { logoUri: null } : {}),
            addScopes: opts.addScope,
            ...(opts.firstParty ? { firstParty: true } : {}),
            ...(opts.thirdParty ? { firstParty: false } : {}),
          });
          if (opts.json) out(JSON.stringify(updated));
          else printClient(updated);
        } finally {
          ctx.db.$client.close();
        }
      },
    );

  clients
    .command("rotate-secret")
    .description("give a confidential member site a new secret (shown once); the old one stops working")
    .argument("<client_id>")
    .option(
      "--keep-old-for <minutes>",
      "accept the old secret this many minutes more (a planned change; at most a week)",
      (v: string) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError("a whole number of minutes");
        return n;
      },
      0,
    )
    .option("--json", "print JSON")
    .action((clientId: string, opts: { keepOldFor: number; json?: boolean }) => {
      const { ctx, services } = openServices();
      try {
        const rotated = clientsOf(ctx).rotateSecret(clientId, opts.keepOldFor, (id) =>
          services.oidcStore.revokeClientCredentials(id),
        );
        const until = rotated.oldSecretUntil?.toISOString() ?? null;
        if (opts.json)
          out(
            JSON.stringify({
              client_id: clientId,
              client_secret: rotated.clientSecret,
              old_secret_until: until,
              client_credentials_tokens_revoked: rotated.tokensRevoked,
            }),
          );
        else {
          out(`client_secret: ${rotated.clientSecret}   (shown once; store it now)`);
          out(until ? `the old secret is accepted until ${until}` : "the old secret no longer works");
        }
      } finally {
        ctx.db.$client.close();
      }
    });

  clients
    .command("remove")
    .description("delete a member site and everything issued to it (grants, codes, tokens)")
    .argument("<client_id>")
    .option("--json", "print JSON")
    .action((clientId: string, opts: { json?: boolean }) => {
      const { ctx, services } = openServices();
      try {
        const { revoked } = clientsOf(ctx).remove(clientId, (id) => services.oidcStore.revokeClient(id));
        if (opts.json) out(JSON.stringify({ client_id: clientId, removed: true, revoked_rows: revoked }));
        else out(`removed ${clientId}; ${revoked} grant, code and token row(s) deleted`);
      } finally {
        ctx.db.$client.close();
      }
    });

  /** The member a login ID (or member number, or member id m_…) names, or a clear error. */
  const memberNamed = (ctx: Context, who: string) => {
    // A member id (m_ and 22 characters), else a login ID or member number (`m_taro` is a login ID).
    const loginId = memberIdParam.safeParse(who).success ? null : resolveLoginInput(who);
    const row = ctx.db
      .select({ id: members.id, loginId: members.loginId, role: members.role, status: members.status })
      .from(members)
      .where(loginId === null ? eq(members.id, who) : eq(members.loginId, loginId))
      .get();
    if (!row) throw new StartupError(`no member ${who}`);
    return row;
  };
  /** memberNamed, for a command that only admins are handled by (`otherwise`: what members do). */
  const adminNamed = (ctx: Context, who: string, otherwise: string) => {
    const member = memberNamed(ctx, who);
    if (member.role !== "admin") throw new StartupError(`${who} is not an admin: ${otherwise}`);
    return member;
  };
  const operator = (reason: string) => ({ adminId: null, reason, ip: null, requestId: null });
  const reasonOption = ["--reason <text>", "why (kept in the audit log)"] as const;
  const admins = program.command("admins").description("administrators");
  admins
    .command("set-password")
    .description(
      "give an admin a new password, read from standard input (their old one may be known): sessions, site tokens and devices end",
    )
    .argument("<login_id>", "the admin's login ID")
    .requiredOption(...reasonOption)
    .option("--json", "print JSON")
    .action(async (who: string, opts: { reason: string; json?: boolean }) => {
      const password = (await readStdin()).replace(/\r?\n$/, "");
      if (!password) throw new StartupError("give the new password on standard input");
      const { ctx, services } = openServices();
      try {
        const member = adminNamed(ctx, who, "members set their own through a reset link");
        const result = await services.support.setPassword(member.id, password, operator(opts.reason));
        if (opts.json) out(JSON.stringify({ member_id: member.id, ...result }));
        else out(`${member.loginId}: new password set; ${result.sessions_revoked} session(s) ended.`);
      } catch (err) {
        if (err instanceof ApiError) throw apiRefusal(err);
        throw err;
      } finally {
        ctx.db.$client.close();
      }
    });

  admins
    .command("reset-mfa")
    .description(
      "an admin lost their passkey: remove their second factors and end their sessions; they add a new passkey at their next sign-in",
    )
    .argument("<login_id>", "the admin's login ID")
    .requiredOption(...reasonOption)
    .option("--json", "print JSON")
    .action((who: string, opts: { reason: string; json?: boolean }) => {
      const { ctx, services } = openServices();
      try {
        const member = adminNamed(ctx, who, "members are reset through the admin API or console");
        const result = services.support.resetMfa(member.id, operator(opts.reason));
        if (opts.json) out(JSON.stringify({ member_id: member.id, ...result }));
        else
          out(
            `${member.loginId}: ${result.factors_removed} factor(s) removed, ${result.sessions_revoked} session(s) ended. ` +
              "They sign in with their password and add a passkey on /account before the admin API opens again.",
          );
      } finally {
        ctx.db.$client.close();
      }
    });
  admins
    .command("add")
    .description("create an admin member; the password is read from standard input")
    .requiredOption("--login-id <id>", "the admin's login ID")
    .option("--json", "print JSON")
    .action(async (opts: { loginId: string; json?: boolean }) => {
      const password = (await readStdin()).replace(/\r?\n$/, "");
      if (!password) throw new StartupError("give the password on standard input");
      const { ctx, services } = openServices();
      try {
        const created = await services.registrations.register(
          { loginId: opts.loginId, password, profile: {} },
          { ip: null, requestId: null },
          { role: "admin" },
        );
        const result = { member_id: created.memberId, login_id: created.loginId };
        if (opts.json) out(JSON.stringify(result));
        else {
          out(`admin ${created.loginId} (${created.memberId}) created.`);
          out("At the first sign-in, add a passkey on /account: the admin API needs a passkey sign-in.");
        }
      } catch (err) {
        if (err instanceof ApiError) throw apiRefusal(err);
        throw err;
      } finally {
        ctx.db.$client.close();
      }
    });

  const membersCmd = program.command("members").description("members: disable, enable, legacy import");
  for (const [name, status, description] of [
    [
      "disable",
      "disabled",
      "disable a member: no sign-in or recovery; every session and member-site token ends now",
    ],
    ["enable", "active", "enable a disabled member again (they sign in as before)"],
  ] as const) {
    membersCmd
      .command(name)
      .description(description)
      .argument("<login_id>", "login ID, member number or member id (m_…)")
      .requiredOption(...reasonOption)
      .option("--json", "print JSON")
      .action((who: string, opts: { reason: string; json?: boolean }) => {
        const { ctx, services } = openServices();
        try {
          const member = memberNamed(ctx, who);
          const result = services.support.setStatus(member.id, status, operator(opts.reason));
          if (opts.json) out(JSON.stringify({ member_id: member.id, status, ...result }));
          else if (!result.changed) out(`${member.loginId} (${member.id}) was already ${status}`);
          else
            out(
              `${member.loginId} (${member.id}) is ${status}` +
                (status === "disabled"
                  ? `; ${result.sessions_revoked} session(s) and ${result.oidc_rows_revoked} member-site grant/token row(s) ended`
                  : ""),
            );
        } finally {
          ctx.db.$client.close();
        }
      });
  }
  program
    .command("sessions")
    .description("signed-in state across all members")
    .command("revoke-all")
    .description(
      "end every member's and admin's session and trusted device now (an incident you can't scope); the server may keep running",
    )
    .requiredOption(...reasonOption)
    .option(
      "--site-tokens",
      "also delete every member-site grant, token and provider session (sites sign members in again)",
    )
    .option("--json", "print JSON")
    .action((opts: { reason: string; siteTokens?: boolean; json?: boolean }) => {
      const ctx = open();
      try {
        const now = Date.now();
        const result = inTransaction(ctx.db, () => {
          const sessionsEnded = ctx.db.$client
            .prepare("UPDATE sessions SET revoked_at = ? WHERE revoked_at IS NULL")
            .run(now).changes;
          const devicesEnded = ctx.db.$client
            .prepare("UPDATE devices SET revoked_at = ? WHERE revoked_at IS NULL")
            .run(now).changes;
          // Second steps still pending end too.
          ctx.db.$client.prepare("UPDATE mfa_tokens SET consumed_at = ? WHERE consumed_at IS NULL").run(now);
          const siteRows = opts.siteTokens
            ? ctx.db.$client
                .prepare(
                  "DELETE FROM oidc_payloads WHERE model IN ('AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode', 'BackchannelAuthenticationRequest', 'Grant', 'Session')",
                )
                .run().changes
            : 0;
          const counts = {
            sessions_revoked: sessionsEnded,
            devices_revoked: devicesEnded,
            site_rows_deleted: siteRows,
          };
          ctx.audit.append({
            action: "operator.sessions_revoked_all",
            outcome: "success",
            actorType: "operator",
            reason: opts.reason,
            details: { ...counts, site_tokens: opts.siteTokens === true },
          });
          return counts;
        });
        if (opts.json) out(JSON.stringify(result));
        else
          out(
            `${result.sessions_revoked} session(s) and ${result.devices_revoked} trusted device(s) ended` +
              (opts.siteTokens
                ? `; ${result.site_rows_deleted} member-site grant/token row(s) deleted`
                : "") +
              ". Every member signs in anew.",
          );
      } finally {
        ctx.db.$client.close();
      }
    });

  membersCmd
    .command("import")
    .description(
      "import legacy members from JSON Lines or CSV (streamed; resumable; idempotent by legacy_id)",
    )
    .argument("<file>", "the legacy member file")
    .option("--format <format>", "jsonl or csv (default: from the file name)")
    .option("--batch-size <n>", "rows per transaction", (v) => Number.parseInt(v, 10), 500)
    .option(
      "--require-password-change-after <date>",
      "from this date (ISO 8601) a member still on a legacy hash is mailed a reset link instead of signing in",
      (v) => {
        const ms = Date.parse(v);
        if (Number.isNaN(ms)) throw new InvalidArgumentError("an ISO 8601 date, e.g. 2027-03-31");
        return ms;
      },
    )
    .option("--require-mfa-enrollment", "imported members must add a second factor at their first sign-in")
    .option("--json", "print a JSON summary")
    .action(
      async (
        file: string,
        opts: {
          format?: string;
          batchSize: number;
          json?: boolean;
          requirePasswordChangeAfter?: number;
          requireMfaEnrollment?: boolean;
        },
      ) => {
        if (opts.format !== undefined && opts.format !== "jsonl" && opts.format !== "csv")
          throw new StartupError("--format must be jsonl or csv");
        if (!fs.existsSync(file)) throw new StartupError(`no such file: ${file}`);
        const { ctx, services } = openServices();
        const started = Date.now();
        try {
          const progress = progressReporter(opts.json ? "silent" : undefined, "bytes");
          const summary = await services.legacyImport.importFile(file, {
            ...(opts.format ? { format: opts.format as "jsonl" | "csv" } : {}),
            batchSize: opts.batchSize,
            requirePasswordChangeAfter: opts.requirePasswordChangeAfter ?? null,
            requireMfaEnrollment: opts.requireMfaEnrollment === true,
            onProgress: (c) =>
              progress.update(c.bytes, c.totalBytes, {
                rows: c.read,
                rate: Math.round(c.read / Math.max(0.001, (Date.now() - started) / 1000)),
                imported: c.imported,
                rejected: c.rejected,
              }),
          });
          progress.stop();
          if (opts.json) out(JSON.stringify(summary));
          else {
            out(`imported ${summary.imported}, rejected ${summary.rejected}, skipped ${summary.skipped}`);
            if (summary.reject_file) out(`rejected rows (line and reason): ${summary.reject_file}`);
            if (summary.mapping_file)
              out(`generated member numbers (legacy_id → login_id): ${summary.mapping_file}`);
          }
        } finally {
          ctx.db.$client.close();
        }
      },
    );

  membersCmd
    .command("wrap-weak")
    .description("wrap imported fast/unsalted legacy hashes in argon2id (resumable, paced)")
    .option(
      "--rate <n>",
      "rows a second at most (leave argon2 capacity for sign-ins)",
      (v) => Number.parseFloat(v),
      20,
    )
    .option("--json", "print a JSON summary")
    .action(async (opts: { rate: number; json?: boolean }) => {
      if (!(opts.rate > 0)) throw new StartupError("--rate must be a positive number");
      const { ctx, services } = openServices();
      try {
        const progress = progressReporter(opts.json ? "silent" : undefined, "rows");
        const result = await wrapWeak({
          legacy: services.legacyPasswords,
          hasher: services.hasher,
          audit: services.audit,
          clock: systemClock,
          ratePerSecond: opts.rate,
          onProgress: (done, total) => progress.update(done, total, {}),
        });
        progress.stop();
        const rate = result.seconds > 0 ? Math.round((result.wrapped / result.seconds) * 10) / 10 : 0;
        if (opts.json)
          out(
            JSON.stringify({
              wrapped: result.wrapped,
              rows_per_second: rate,
              argon2: services.hasher.params,
            }),
          );
        else
          out(
            `wrapped ${result.wrapped} weak legacy hashes (${rate} rows/s, argon2id m=${services.hasher.params.memoryCost} t=${services.hasher.params.timeCost})`,
          );
      } finally {
        ctx.db.$client.close();
      }
    });

  const honeytokens = program.command("honeytokens").description("decoy members that raise alarms");
  honeytokens
    .command("add")
    .description("create decoy members; any touch of one raises a critical alert")
    .option("--count <n>", "how many (1-1000)", (v) => Number.parseInt(v, 10), 10)
    .option("--json", "print JSON")
    .action(async (opts: { count: number; json?: boolean }) => {
      if (!Number.isInteger(opts.count) || opts.count < 1 || opts.count > 1000)
        throw new StartupError("--count must be 1 to 1000");
      const { ctx, services } = openServices();
      try {
        const loginIds = await services.decoys.add(opts.count, { ip: null });
        // The login IDs are printed once for the operator's sealed record (to seed them where a
        // thief would look, e.g. a staging copy); they are stored nowhere else.
        if (opts.json) out(JSON.stringify({ added: loginIds.length, login_ids: loginIds }));
        else {
          out(
            `${loginIds.length} decoy members added. Their login IDs (keep them sealed; they are not stored):`,
          );
          for (const id of loginIds) out(`  ${id}`);
        }
      } finally {
        ctx.db.$client.close();
      }
    });

  program
    .command("backup")
    .description(
      "consistent online copy of the database (safe while the server runs); checked before it is kept",
    )
    .argument("<file>", "where to write the copy (refuses to overwrite)")
    .option("--json", "print a JSON summary")
    .action(async (file: string, opts: { json?: boolean }) => {
      const ctx = open();
      try {
        const progress = progressReporter(opts.json ? "silent" : undefined, "rows");
        const result = await backupDatabase(ctx.db, file, {
          keys: ctx.keys,
          clock: systemClock,
          onProgress: (done, total) => progress.update(done, total, {}),
        });
        progress.stop();
        // Kept either way (it is the data), but a copy `restore` would refuse is a failed backup:
        // exit 1, so that a scheduled backup says so instead of piling up unusable copies.
        const usable = result.check.audit.ok && result.check.missing_keys.length === 0;
        ctx.audit.append({
          action: "database.backed_up",
          outcome: usable ? "success" : "failure",
          actorType: "operator",
          details: {
            file: result.file,
            bytes: result.bytes,
            members: result.check.members,
            ...(usable ? {} : { audit: result.check.audit, missing_keys: result.check.missing_keys }),
          },
        });
        if (!usable) {
          process.exitCode = 1;
          process.stderr.write(
            `backup ${result.file} was written, but restore will refuse it: ${
              result.check.audit.ok
                ? `data keys missing from the keyring: ${result.check.missing_keys.join(", ")}`
                : `the audit log is BROKEN at entry #${result.check.audit.first_bad?.seq} (${result.check.audit.first_bad?.problem})`
            }. Investigate now (docs/incident-response.md).\n`,
          );
        }
        if (opts.json)
          out(
            JSON.stringify({
              file: result.file,
              bytes: result.bytes,
              pages: result.pages,
              integrity: result.check.integrity,
              audit: result.check.audit,
              members: result.check.members,
              missing_keys: result.check.missing_keys,
              usable,
            }),
          );
        else {
          out(`backed up to ${result.file} (${result.bytes} bytes, ${result.check.members} members)`);
          out(
            `checked: integrity ${result.check.integrity}; audit log ${result.check.audit.ok ? "intact" : "BROKEN"} (${result.check.audit.entries} entries)`,
          );
          out("The copy is useless without the keyring: keep the keyring's backup somewhere else.");
        }
      } finally {
        ctx.db.$client.close();
      }
    });

  program
    .command("restore")
    .description(
      "replace the database by a backup (the server must be stopped); checks it against the keyring first",
    )
    .argument("<file>", "a file made by `sekisho backup`")
    .option("--json", "print a JSON summary")
    .option(
      "--accept-broken-audit",
      "restore even if the backup's audit log doesn't verify (it was broken before the backup; recorded)",
    )
    .action((file: string, opts: { json?: boolean; acceptBrokenAudit?: boolean }) => {
      const config = loadConfig();
      const logger = pino({ level: "warn" }, pino.destination(2));
      const keys = openKeyring(config, systemClock, logger);
      const result = restoreDatabase(file, {
        dbFile: config.dbFile,
        dataDir: config.dataDir,
        keys,
        clock: systemClock,
        acceptBrokenAudit: opts.acceptBrokenAudit === true,
      });
      const db = openDatabase(config.dbFile);
      new AuditLog({ db, keys, clock: systemClock }).append({
        action: "database.restored",
        outcome: "success",
        actorType: "operator",
        details: {
          from: path.resolve(file),
          previous: result.previous,
          members: result.check.members,
          ...(result.check.audit.ok ? {} : { accepted_broken_audit: result.check.audit.first_bad }),
        },
      });
      db.$client.close();
      if (opts.json)
        out(
          JSON.stringify({
            restored: result.restored,
            previous: result.previous,
            members: result.check.members,
            audit: result.check.audit,
          }),
        );
      else {
        out(`restored ${result.restored} from ${path.resolve(file)} (${result.check.members} members)`);
        if (result.previous) out(`the database it replaced is kept as ${result.previous}`);
        out("Start the server; member sessions and tokens issued after the backup no longer exist.");
      }
    });

  const sealsCmd = program
    .command("seals")
    .description("row seals: sessions, passkeys, links and members' roles that only the keyring can make");
  sealsCmd
    .command("check")
    .description("list every row whose seal doesn't hold (written without the keyring); exit 1 if any")
    .option("--json", "print JSON")
    .action((opts: { json?: boolean }) => {
      const ctx = open();
      try {
        const broken = brokenSeals(ctx.db, new RowSeals({ keys: ctx.keys }));
        if (opts.json) out(JSON.stringify({ ok: broken.length === 0, broken }));
        else if (broken.length === 0) out("every sealed row holds");
        else
          for (const b of broken)
            out(
              `${b.table} ${b.row}${b.member_id && b.table !== "members" ? ` (member ${b.member_id})` : ""}`,
            );
        process.exitCode = broken.length === 0 ? 0 : 1;
      } finally {
        ctx.db.$client.close();
      }
    });
  sealsCmd
    .command("accept")
    .description(
      "after an investigation, seal a member's row as it now is: a new password is required, their sessions end, and their rows with broken seals are deleted",
    )
    .argument("<login_id>", "login ID, member number or member id (m_…)")
    .requiredOption(...reasonOption)
    .option("--json", "print JSON")
    .action((who: string, opts: { reason: string; json?: boolean }) => {
      const { ctx, services } = openServices();
      try {
        const member = memberNamed(ctx, who);
        const result = acceptMemberRow(ctx.db, services.seals, ctx.audit, member.id, opts.reason, (id, why) =>
          services.sessions.revokeAll(id, why),
        );
        const siteRows = services.oidcStore.revokeAccount(result.sub);
        if (opts.json) out(JSON.stringify({ member_id: member.id, ...result, oidc_rows_revoked: siteRows }));
        else
          out(
            `${member.loginId} (${member.id}) sealed as role ${result.role}, status ${result.status}, sub ${result.sub}, ` +
              `mfa_required ${result.mfa_required}, email_verified ${result.email_verified}; a new password is required ` +
              `(the member uses "forgot password"); ${result.sessions_revoked} session(s) ended, ` +
              `${siteRows} member-site row(s) revoked; deleted: ${JSON.stringify(result.deleted)}`,
          );
      } finally {
        ctx.db.$client.close();
      }
    });

  const audit = program.command("audit").description("the tamper-evident audit log");
  audit
    .command("verify")
    .description("check the whole hash chain; exit 0 intact, 1 broken (naming the first bad entry)")
    .option("--json", "print a JSON result")
    .action((opts: { json?: boolean }) => {
      const ctx = open();
      const result = ctx.audit.verify();
      ctx.db.$client.close();
      if (opts.json) {
        out(
          JSON.stringify({
            ok: result.ok,
            entries: result.entries,
            head: result.head,
            ...(result.firstBad ? { first_bad: result.firstBad } : {}),
          }),
        );
      } else if (result.ok) {
        out(
          `audit log intact: ${result.entries} entries; head #${result.head?.seq ?? 0} ${result.head?.mac ?? ""}`,
        );
      } else {
        out(`audit log BROKEN at entry #${result.firstBad?.seq}: ${result.firstBad?.problem}`);
      }
      process.exitCode = result.ok ? 0 : 1;
    });
  audit
    .command("export")
    .description("stream entries as JSON lines to stdout, for shipping to an outside store")
    .option(
      "--after <seq>",
      "only entries after this sequence number (0: all)",
      (v) => {
        // A shipping script's empty or garbled state file must fail loudly, not export nothing.
        if (!/^\d{1,15}$/.test(v)) throw new InvalidArgumentError("a sequence number: 0 or a whole number");
        return Number(v);
      },
      0,
    )
    .action(async (opts: { after: number }) => {
      const ctx = open();
      for (const e of ctx.audit.iterate(opts.after)) {
        const line = `${JSON.stringify(exportRow(e))}\n`;
        if (!process.stdout.write(line)) await new Promise((r) => process.stdout.once("drain", r));
      }
      ctx.db.$client.close();
    });

  return program;
}

/**
 * Progress for long commands: a bar with rate and ETA on a terminal (cli-progress), plain lines
 * every few seconds otherwise (logs, CI), nothing with `--json`.
 */
function progressReporter(mode: "silent" | undefined, unit: "bytes" | "rows") {
  if (mode === "silent") return { update: () => {}, stop: () => {} };
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        stream: process.stderr,
        format:
          unit === "bytes"
            ? "{bar} {percentage}% | {rows} rows | {rate} rows/s | imported {imported} rejected {rejected} | ETA {eta_formatted}"
            : "{bar} {percentage}% | {value}/{total} | ETA {eta_formatted}",
      },
      cliProgress.Presets.shades_classic,
    );
    let started = false;
    return {
      update: (value: number, total: number, payload: Record<string, number>) => {
        if (!started) {
          bar.start(total, value, payload);
          started = true;
        } else bar.update(value, payload);
      },
      stop: () => bar.stop(),
    };
  }
  let last = 0;
  return {
    update: (value: number, total: number, payload: Record<string, number>) => {
      const now = Date.now();
      if (now - last < 2000 && value < total) return;
      last = now;
      const pct = total > 0 ? Math.floor((value / total) * 100) : 100;
      const parts = Object.entries(payload).map(([k, v]) => `${k} ${v}`);
      process.stderr.write(`${pct}% ${parts.join(" · ")}\n`);
    },
    stop: () => {},
  };
}

export async function runCli(argv: string[]): Promise<void> {
  try {
    await buildCli().parseAsync(argv);
  } catch (err) {
    console.error(
      `sekisho: ${err instanceof StartupError || err instanceof InputError ? err.message : String((err as Error).stack ?? err)}`,
    );
    process.exitCode = 1;
  }
}
