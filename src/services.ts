import path from "node:path";
import { eq } from "drizzle-orm";
import type { Logger } from "pino";
import { Decoys } from "./admin/decoys.js";
import { MemberSupport } from "./admin/member-support.js";
import { AlertHooks } from "./audit/alert-hooks.js";
import { Alerts } from "./audit/alerts.js";
import { Honeytokens } from "./audit/honeytokens.js";
import { AuditLog } from "./audit/log.js";
import { PiiBudgets } from "./audit/pii-budget.js";
import type { Clock } from "./clock.js";
import type { Config } from "./config.js";
import type { Db } from "./db/connection.js";
import { members } from "./db/schema.js";
import { FactorEnrolment } from "./factors/enrolment.js";
import { Factors } from "./factors/methods.js";
import { Passkeys } from "./factors/passkeys.js";
import { RecoveryCodes } from "./factors/recovery-codes.js";
import { TotpService } from "./factors/totp.js";
import { SecurityNotices } from "./mail/notices.js";
import { Mailer } from "./mail/outbox.js";
import { FileSender, type MailSender, SmtpSender } from "./mail/sender.js";
import type { SecurityNoticeKind } from "./mail/templates.js";
import { LegacyImport } from "./members/import.js";
import { LegacyPasswords } from "./members/legacy-passwords.js";
import { ProfileVault } from "./members/profile.js";
import { Registrations } from "./members/registration.js";
import { OidcStore } from "./oidc/adapter.js";
import { Metrics } from "./ops/metrics.js";
import { PasswordHasher } from "./passwords/hasher.js";
import { HashQueue } from "./passwords/queue.js";
import { MfaPolicies } from "./policy/mfa-policy.js";
import { EmailAddresses } from "./recovery/email.js";
import { PasswordChange } from "./recovery/password-change.js";
import { PasswordRecovery } from "./recovery/password-reset.js";
import { MemberTokens } from "./recovery/tokens.js";
import { DeviceRegistry } from "./sessions/devices.js";
import { endAccess } from "./sessions/end-access.js";
import { MfaTokens } from "./sessions/mfa-tokens.js";
import { SecondFactorSignIn } from "./sessions/second-factor.js";
import { SessionService } from "./sessions/sessions.js";
import { PasswordSignIn } from "./sessions/sign-in.js";
import { LoginGuard } from "./throttle/engine.js";
import { ProofOfWork } from "./throttle/proof-of-work.js";
import { blindIndex } from "./vault/blind-index.js";
import type { KeyringStore } from "./vault/keyring.js";
import { RowSeals } from "./vault/seals.js";

/** Everything the server and the CLI share, wired once from config, database, keys and clock. */
export interface Services {
  config: Config;
  db: Db;
  clock: Clock;
  keys: KeyringStore;
  logger: Logger;
  audit: AuditLog;
  hasher: PasswordHasher;
  vault: ProfileVault;
  registrations: Registrations;
  sessions: SessionService;
  seals: RowSeals;
  signIn: PasswordSignIn;
  alerts: Alerts;
  budgets: PiiBudgets;
  guard: LoginGuard;
  pow: ProofOfWork;
  factors: Factors;
  mfaTokens: MfaTokens;
  devices: DeviceRegistry;
  secondFactor: SecondFactorSignIn;
  enrolment: FactorEnrolment;
  oidcStore: OidcStore;
  mailer: Mailer;
  memberTokens: MemberTokens;
  emails: EmailAddresses;
  recovery: PasswordRecovery;
  passwordChange: PasswordChange;
  support: MemberSupport;
  policy: MfaPolicies;
  alertHooks: AlertHooks | undefined;
  legacyPasswords: LegacyPasswords;
  legacyImport: LegacyImport;
  decoys: Decoys;
  honeytokens: Honeytokens;
  metrics: Metrics;
}

/** SMTP when configured; otherwise (development) `.eml` files in `<data dir>/outbox/`. */
export function mailSenderFor(config: Config, clock: Clock): MailSender {
  const domain = new URL(config.issuer).hostname;
  return config.smtpUrl
    ? new SmtpSender(config.smtpUrl, domain)
    : new FileSender(path.join(config.dataDir, "outbox"), domain, clock);
}

export function buildServices(deps: {
  config: Config;
  db: Db;
  clock: Clock;
  keys: KeyringStore;
  logger: Logger;
  /** Where mail goes (default: from config); tests pass their own. */
  mailSender?: MailSender;
  /** Process metrics (CPU, memory, event loop, GC) in /metrics: the server turns them on. */
  processMetrics?: boolean;
}): Services {
  const { config, db, clock, keys, logger } = deps;
  const audit = new AuditLog({ db, keys, clock });
  const hashQueue = new HashQueue(config.hashConcurrency, config.hashQueueMax);
  const hasher = new PasswordHasher({ params: config.argon2, keys, queue: hashQueue });
  const alertHooks = config.alertWebhook
    ? new AlertHooks({ db, clock, logger, url: config.alertWebhook.url, secret: config.alertWebhook.secret })
    : undefined;
  const alerts = new Alerts({ db, clock, audit, logger, ...(alertHooks ? { hooks: alertHooks } : {}) });
  // The entry this process appended last is gone: someone cut the log's tail (src/audit/log.ts).
  audit.onTruncated = ({ expected, head }) => {
    logger.error(
      { expected_seq: expected.seq, expected_mac: expected.mac, head_seq: head },
      "audit log: entries this server wrote are gone (the log's end was cut)",
    );
    alerts.raise("audit_truncated", "critical", {
      missing_from_seq: expected.seq,
      head_seq_found: head,
      expected_mac: expected.mac,
    });
  };
  // A keyring file that can no longer be read: keep serving with the keys in memory, and say so
  // loudly (at most one alert in 10 minutes).
  keys.onReloadError = (err) => {
    logger.error({ err, file: keys.file }, "keyring file unreadable; still using the keys loaded before");
    try {
      alerts.raise(
        "keyring_unreadable",
        "critical",
        { file: keys.file ?? null, error: err instanceof Error ? err.message : String(err) },
        "keyring",
      );
    } catch {
      // (logged above)
    }
  };
  // A row whose seal doesn't hold was written by someone without the keyring (src/vault/seals.ts).
  // Said at once in the log; the alert (its writes) after the current turn, outside whatever
  // transaction found the row, which may yet roll back.
  const seals = new RowSeals({ keys });
  seals.onBroken = (table, rowId) => {
    logger.error({ table, row: rowId }, "row seal broken: a row was written or changed without the keyring");
    setImmediate(() => {
      try {
        alerts.raise("row_seal_broken", "critical", { table, row: rowId }, `${table}:${rowId}`);
      } catch (err) {
        logger.error({ err }, "row_seal_broken alert not raised");
      }
    });
  };
  const budgets = new PiiBudgets({ clock, alerts, limits: config.piiBudgets, db });
  const honeytokens = new Honeytokens({ keys, alerts, logger });
  const vault = new ProfileVault({ db, keys, audit, clock, logger, budgets, honeytokens });
  const oidcStore = new OidcStore({ db, clock, keys });
  const mailer = new Mailer({
    db,
    keys,
    clock,
    logger,
    alerts,
    from: config.mailFrom,
    sender: deps.mailSender ?? mailSenderFor(config, clock),
    honeytokens,
  });
  const notices = new SecurityNotices({ db, clock, vault, mailer });
  const policy = new MfaPolicies({ db, clock, audit, adminAcr: config.adminAcr });
  const sessions = new SessionService({
    db,
    clock,
    seals,
    idleMs: config.sessionIdleMs,
    absoluteMs: config.sessionAbsoluteMs,
  });
  /**
   * What the login-anomaly engine saw about a login ID, told its member (if it is one): an entry
   * among their security events and a notice by mail. Returns the member's id.
   */
  const tellMember = (
    loginId: string,
    action: string,
    reason: string,
    notice: SecurityNoticeKind,
    details?: Record<string, unknown>,
  ): string | undefined => {
    const memberId = db.$client.prepare("SELECT id FROM members WHERE login_id = ?").pluck().get(loginId) as
      | string
      | undefined;
    if (!memberId) return undefined;
    audit.append({
      action,
      outcome: "info",
      actorType: "system",
      memberId,
      reason,
      ...(details ? { details } : {}),
    });
    notices.send(memberId, notice, {});
    return memberId;
  };
  const guard = new LoginGuard({
    db,
    clock,
    alerts,
    loginKey: (loginId) => blindIndex(keys, "login_key", loginId),
    // The member (if the login ID is one) sees the protection among their security events.
    onProtect: (loginId, until) =>
      tellMember(loginId, "account.protected", "account_failures_day", "account_protected", {
        until: new Date(until).toISOString(),
      }),
    // Someone who knows the password keeps failing the second step: the member is told to change it.
    onSecondFactorGuessing: (loginId) =>
      tellMember(
        loginId,
        "account.second_factor_guessing",
        "second_factor_failures_day",
        "second_factor_guessing",
      ),
    policy: config.throttle,
    backlog: () => hashQueue.waitingAttempts,
    reconsider: () => hashQueue.reconsider(),
  });
  const factors = new Factors(
    db,
    new TotpService({ db, keys, clock, issuer: config.totpIssuer }),
    new RecoveryCodes({ db, clock, seals }),
    new Passkeys({ db, clock, rp: config.webauthn, seals }),
  );
  const mfaTokens = new MfaTokens({ db, clock, seals });
  const devices = new DeviceRegistry({ db, clock, seals });
  const pow = new ProofOfWork({ clock, maxNumber: guard.policy.challengeMaxNumber });
  const legacyPasswords = new LegacyPasswords({ db, keys, clock });
  const signIn = new PasswordSignIn({
    seals,
    legacy: legacyPasswords,
    legacyExpired: (memberId, ctx) => recovery.legacyPasswordExpired(memberId, ctx),
    clock,
    policy,
    honeytokens,
    db,
    hasher,
    sessions,
    audit,
    guard,
    devices,
    pow,
    keys,
    factors,
    mfaTokens,
  });
  const secondFactor = new SecondFactorSignIn({
    policy,
    notices,
    db,
    sessions,
    tokens: mfaTokens,
    factors,
    devices,
    audit,
    guard,
    onCloneSuspected: (memberId, ctx) => {
      const who = db
        .select({ sub: members.sub, role: members.role })
        .from(members)
        .where(eq(members.id, memberId))
        .get();
      const ended = endAccess(
        { sessions, oidc: oidcStore, devices },
        { id: memberId, sub: who?.sub },
        "passkey_clone_suspected",
      );
      // Links the copy's sessions may have started (a reset, a change of address) die too.
      memberTokens.voidAll(memberId, "reset_password", "change_email");
      // Factors added lately may be the copy's holder's: named for the admins (and the member's
      // mail asks them to check); not removed, since they may as well be the member's own.
      const since = clock.now().getTime() - 30 * 24 * 3_600_000;
      const recent = factors.passkeys
        .list(memberId)
        .filter((p) => p.createdAt >= since && p.suspectedCloneAt === null)
        .map((p) => p.id);
      alerts.raise(
        "passkey_clone_suspected",
        "warning",
        {
          member_id: memberId,
          // An admin's: not shown to that admin (whoever holds the copy may be using the account).
          ...(who?.role === "admin" ? { principal: "admin", principal_id: memberId } : {}),
          ip: ctx.ip,
          ...ended,
          passkeys_added_last_30_days: recent,
        },
        memberId,
      );
      notices.send(memberId, "passkey_clone_suspected", ctx);
    },
  });
  const enrolment = new FactorEnrolment({
    db,
    clock,
    factors,
    audit,
    reauthMs: config.reauthMs,
    notices,
    policy,
    sessions,
    alerts,
    revokeSites: (sub) => oidcStore.revokeAccount(sub),
  });
  const memberTokens = new MemberTokens({ db, clock, seals });
  const emails = new EmailAddresses({
    seals,
    db,
    keys,
    vault,
    tokens: memberTokens,
    mailer,
    audit,
    guard,
    issuer: config.issuer,
    requireStrongRecent: (session) => enrolment.requireStrongRecent(session),
  });
  const registrations = new Registrations({
    seals,
    db,
    clock,
    hasher,
    vault,
    audit,
    passwordMinLength: config.passwordMinLength,
    emails,
    honeytokens,
  });
  const recovery = new PasswordRecovery({
    seals,
    honeytokens,
    db,
    clock,
    keys,
    logger,
    hasher,
    vault,
    tokens: memberTokens,
    mailer,
    audit,
    guard,
    pow,
    sessions,
    devices,
    factors,
    oidc: oidcStore,
    issuer: config.issuer,
    passwordMinLength: config.passwordMinLength,
  });
  const passwordChange = new PasswordChange({
    seals,
    tokens: memberTokens,
    db,
    clock,
    hasher,
    vault,
    mailer,
    audit,
    guard,
    sessions,
    devices,
    oidc: oidcStore,
    passwordMinLength: config.passwordMinLength,
  });
  const decoys = new Decoys({ db, clock, seals, hasher, vault, audit, honeytokens });
  const support = new MemberSupport({
    seals,
    db,
    sessions,
    devices,
    oidc: oidcStore,
    tokens: memberTokens,
    mailer,
    vault,
    audit,
    hasher,
    guard,
    clock,
    passwordMinLength: config.passwordMinLength,
  });
  const legacyImport = new LegacyImport({
    seals,
    db,
    clock,
    vault,
    legacy: legacyPasswords,
    audit,
    totp: factors.totp,
  });
  const metrics = new Metrics({ processMetrics: deps.processMetrics === true });
  metrics.attach({ audit, guard, queue: hasher.queue });
  return {
    seals,
    metrics,
    legacyImport,
    legacyPasswords,
    alertHooks,
    policy,
    support,
    decoys,
    honeytokens,
    config,
    db,
    clock,
    keys,
    logger,
    oidcStore,
    budgets,
    mailer,
    memberTokens,
    emails,
    recovery,
    passwordChange,
    enrolment,
    audit,
    hasher,
    vault,
    registrations,
    sessions,
    signIn,
    alerts,
    guard,
    pow,
    factors,
    mfaTokens,
    devices,
    secondFactor,
  };
}
