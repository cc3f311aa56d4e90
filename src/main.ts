import { systemClock } from "./clock.js";
import { checkMailSetting, loadConfig } from "./config.js";
import { startCheckpointer } from "./db/checkpointer.js";
import { migrateDatabase, openDatabase } from "./db/connection.js";
import { StartupError } from "./errors.js";
import { createApp } from "./http/app.js";
import { answerClientErrors } from "./http/client-errors.js";
import { startMetricsServer } from "./http/metrics-routes.js";
import { createLogger } from "./logger.js";
import { removePidFile, writePidFile } from "./ops/pid-file.js";
import { buildServices } from "./services.js";
import { restoreThrottleState, saveThrottleState } from "./throttle/carry-over.js";
import { openKeyring } from "./vault/bootstrap.js";
import { assertKeyringFits } from "./vault/keyring-check.js";
import { assertSealsNotRemoved, sealRowsOnce } from "./vault/seal-rows.js";

/** The only side effects: config → keys → database → migrate → app → listen. */
async function main(): Promise<void> {
  const config = loadConfig();
  const logger = createLogger(config.logLevel);
  const clock = systemClock;
  const keys = openKeyring(config, clock, logger);
  checkMailSetting(config);
  const db = openDatabase(config.dbFile);
  // The wrong keyring (a development one beside a production database, an old copy) must not
  // write a single entry or row under keys the rest can't be read with (checked before migrating:
  // nothing at all is written then).
  assertKeyringFits(db, keys.get(), config.keyringFile);
  assertSealsNotRemoved(db);
  migrateDatabase(db);
  // WAL checkpoints (and their fsync) run on a worker thread, not inside a request's commit.
  const checkpointer = startCheckpointer(db, logger);
  const services = buildServices({ config, db, clock, keys, logger, processMetrics: true });
  // Rows from before member-level revocation existed learn whose they are (once; cheap after).
  // Rows from before row seals existed are sealed, once (src/vault/seal-rows.ts).
  const sealed = sealRowsOnce(db, services.seals, services.audit, { markEmpty: true });
  if (sealed !== null && sealed > 0)
    logger.warn(
      { rows: sealed },
      "row seals turned on: every row found without a seal was sealed as it is (expected once, at the upgrade to them)",
    );
  else if (sealed !== null) logger.info("row seals turned on");
  const backfilled = services.oidcStore.backfillAccountIds();
  if (backfilled > 0) logger.info({ rows: backfilled }, "OIDC rows linked to their members");
  if (config.adminAcr !== "urn:sekisho:acr:phishing-resistant") {
    logger.warn(
      { admin_acr: config.adminAcr },
      "SEKISHO_ADMIN_ACR is below phishing-resistant: a phished admin password and one-time code open the admin API",
    );
  }
  if (config.production && ["localhost", "127.0.0.1", "[::1]"].includes(new URL(config.issuer).hostname)) {
    logger.warn(
      { issuer: config.issuer },
      "NODE_ENV=production with a local issuer: set SEKISHO_ISSUER to the public https URL member sites and browsers use",
    );
  }
  if (!config.alertWebhook) {
    // Without it an alert about an admin (a decoy they touched, a budget they ran past) is seen by
    // the other admins and this log only: with a single admin, by no one at the console.
    logger.warn(
      "no SEKISHO_ALERT_WEBHOOK_URL: security alerts reach only the admin console and this log (an alert about an admin is hidden from that admin)",
    );
  }
  if (config.smtpUrl) {
    logger.info({ mail: services.mailer.sender.describe }, "mail goes out by SMTP");
  } else {
    logger.warn(
      { outbox: services.mailer.sender.describe },
      "no SEKISHO_SMTP_URL: mail (verification and reset links) is written as .eml files, not sent",
    );
  }
  // The audit log's append-only triggers, put back if dropped (and said loudly: someone with the
  // database file did it), and its head as an anchor in the log, now and every five minutes when
  // it moved: with the log shipped, a later cut of the tail is visible against it.
  const restored = services.audit.ensureAppendOnly();
  if (restored.length > 0) {
    logger.error(
      { triggers: restored },
      "audit log: append-only triggers were missing or altered, or others were added; put right",
    );
    services.alerts.raise("audit_protection_missing", "critical", { triggers: restored });
  }
  let anchored = services.audit.head();
  logger.info({ audit_head: anchored }, "audit log head");
  const anchor = setInterval(() => {
    try {
      const head = services.audit.head();
      if (head?.seq === anchored?.seq && head?.mac === anchored?.mac) return;
      anchored = head;
      logger.info({ audit_head: head }, "audit log head");
    } catch (err) {
      logger.error({ err }, "audit head anchor failed");
    }
  }, 5 * 60_000);
  anchor.unref();
  // What the login-anomaly engine had learnt when the server last stopped (src/throttle/carry-over.ts).
  const carried = restoreThrottleState({ db, keys, guard: services.guard });
  if (carried && "error" in carried)
    logger.warn(
      { err: carried.error },
      "throttle counters of the last stop could not be read: starting without them",
    );
  else if (carried)
    logger.info(
      { keys: carried.taken, saved_at: new Date(carried.savedAt).toISOString() },
      "throttle counters carried over from the last stop",
    );
  await services.hasher.warm();
  services.mailer.start();
  services.alertHooks?.start();
  const app = createApp(services);
  // Expired OIDC codes, tokens, sessions, interactions and mfa_tokens are deleted every ten minutes.
  const oidcStore = services.oidcStore;
  const sweep = setInterval(() => {
    try {
      const n = oidcStore.deleteExpired();
      if (n > 0) logger.debug({ deleted: n }, "expired OIDC rows deleted");
      services.mfaTokens.sweep();
      services.memberTokens.sweep();
      services.mailer.sweep();
    } catch (err) {
      logger.error({ err }, "OIDC clean-up failed");
    }
  }, 10 * 60_000);
  sweep.unref();
  const server = app.listen(config.port, config.host, () => {
    writePidFile(config.dataDir);
    logger.info(
      // Open the issuer's URL: the pages' forms, passkeys and member sites accept only its origin.
      { open: config.issuer, listen: `${config.host}:${config.port}`, data: config.dataDir },
      `Sekisho is listening: open ${config.issuer}`,
    );
  });
  answerClientErrors(server);
  // The whole request (headers and body: at most 64 KiB) must arrive within 30 s, the headers
  // within 20 s (Node's defaults, 300 s and 60 s, let slow senders hold connections for minutes).
  server.requestTimeout = 30_000;
  server.headersTimeout = 20_000;
  server.on("error", (err) => {
    logger.fatal({ err }, "server error");
    process.exit(1);
  });
  const metricsServer =
    config.metricsPort === undefined
      ? null
      : await startMetricsServer(services.metrics, {
          host: config.host,
          port: config.metricsPort,
          allow: config.metricsAllow,
        });
  if (metricsServer) logger.info({ port: config.metricsPort }, "metrics served on their own port");

  // Graceful stop (SIGTERM, SIGINT): stop accepting, let the requests in flight finish (at most
  // SHUTDOWN_GRACE_MS, then their connections are cut), finish the mail that answered requests
  // owe and the outbox send in progress, close the database, exit 0. Every write is a
  // transaction, so a request cut at the deadline leaves nothing half-written.
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down: no new connections, finishing requests in flight");
    app.locals.shuttingDown = true;
    clearInterval(sweep);
    clearInterval(anchor);
    const deadline = setTimeout(() => {
      logger.warn({ grace_ms: SHUTDOWN_GRACE_MS }, "requests still in flight at the deadline: cutting them");
      server.closeAllConnections();
    }, SHUTDOWN_GRACE_MS);
    deadline.unref();
    metricsServer?.close();
    server.close(() => {
      clearTimeout(deadline);
      // Kept first, before the mail is finished (a slow mail server could outlast the container's
      // stop timeout): no request is in flight now, so nothing more is learnt.
      try {
        const kept = saveThrottleState({ db, keys, clock, guard: services.guard });
        logger.info({ keys: kept }, "throttle counters kept for the next start");
      } catch (err) {
        logger.error({ err }, "throttle counters could not be kept");
      }
      void services.recovery
        .settled()
        // Recovery mail waits for the outbox's periodic run: send what is due now, before stopping
        // (a link that waited for the next start could be dead by then).
        .then(() => services.mailer.runDue())
        .then(() => Promise.all([services.mailer.stop(), services.alertHooks?.stop()]))
        .catch((err: unknown) => logger.error({ err }, "while finishing mail"))
        .finally(async () => {
          services.oidcStore.flush();
          await checkpointer.stop().catch(() => {});
          db.$client.close();
          removePidFile(config.dataDir);
          logger.info("stopped");
          process.exit(0);
        });
    });
    // Idle keep-alive connections would hold close() open: end them now (busy ones end after
    // their answer, which says `Connection: close`).
    server.closeIdleConnections();
    setTimeout(() => {
      logger.error("shutdown did not finish: exiting");
      process.exit(1);
    }, SHUTDOWN_GRACE_MS + 10_000).unref();
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

const SHUTDOWN_GRACE_MS = 10_000;

main().catch((err: unknown) => {
  if (err instanceof StartupError) {
    console.error(`sekisho: ${err.message}`);
  } else {
    console.error("sekisho: failed to start", err);
  }
  process.exit(1);
});
