import { systemClock } from "./clock.js";
import { loadConfig } from "./config.js";
import { migrateDatabase, openDatabase } from "./db/connection.js";
import { StartupError } from "./errors.js";
import { createApp } from "./http/app.js";
import { createLogger } from "./logger.js";
import { OidcStore } from "./oidc/adapter.js";
import { buildServices } from "./services.js";
import { openKeyring } from "./vault/bootstrap.js";

/** The only side effects: config → keys → database → migrate → app → listen. */
async function main(): Promise<void> {
  const config = loadConfig();
  const logger = createLogger(config.logLevel);
  const clock = systemClock;
  const keys = openKeyring(config, clock, logger);
  const db = openDatabase(config.dbFile);
  migrateDatabase(db);
  const services = buildServices({ config, db, clock, keys, logger });
  if (config.adminAcr !== "urn:sekisho:acr:phishing-resistant") {
    logger.warn(
      { admin_acr: config.adminAcr },
      "SEKISHO_ADMIN_ACR is below phishing-resistant: a phished admin password and one-time code open the admin API",
    );
  }
  await services.hasher.warm();
  const app = createApp(services);
  // Expired OIDC codes, tokens, sessions, interactions and mfa_tokens are deleted every ten minutes.
  const oidcStore = new OidcStore({ db, clock, keys });
  const sweep = setInterval(() => {
    try {
      const n = oidcStore.deleteExpired();
      if (n > 0) logger.debug({ deleted: n }, "expired OIDC rows deleted");
      services.mfaTokens.sweep();
    } catch (err) {
      logger.error({ err }, "OIDC clean-up failed");
    }
  }, 10 * 60_000);
  sweep.unref();
  const server = app.listen(config.port, config.host, () => {
    logger.info(
      { url: `http://${config.host}:${config.port}`, issuer: config.issuer, data: config.dataDir },
      "Sekisho is listening",
    );
  });
  server.on("error", (err) => {
    logger.fatal({ err }, "server error");
    process.exit(1);
  });
  const stop = (signal: string) => {
    logger.info({ signal }, "shutting down");
    server.close(() => {
      db.$client.close();
      process.exit(0);
    });
    setTimeout(() => process.exit(0), 10_000).unref();
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

main().catch((err: unknown) => {
  if (err instanceof StartupError) {
    console.error(`sekisho: ${err.message}`);
  } else {
    console.error("sekisho: failed to start", err);
  }
  process.exit(1);
});
