import { createHmac } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import { afterEach, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.js";
import { openDatabase } from "../src/db/connection.js";
import { alertDeliveries } from "../src/db/schema.js";
import { createLogger } from "../src/logger.js";
import { backoffMs } from "../src/mail/outbox.js";
import { buildServices } from "../src/services.js";
import { KeyringStore } from "../src/vault/keyring.js";
import { makeApp, type TestApp } from "./support/app.js";

const SECRET = "a-webhook-secret-of-at-least-32-characters";

/** A receiver for the webhook on loopback, recording what arrives. */
async function receiver(port = 0) {
  const got: Array<{ headers: http.IncomingHttpHeaders; body: string }> = [];
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => {
      body += c;
    });
    req.on("end", () => {
      got.push({ headers: req.headers, body });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => server.listen(port, "127.0.0.1", r));
  return {
    got,
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

describe("alert delivery to a signed webhook", () => {
  let t: TestApp;
  afterEach(() => t?.close());

  it("POSTs each alert as JSON with an HMAC-SHA256 signature the receiver can verify", async () => {
    const hook = await receiver();
    try {
      t = makeApp({
        SEKISHO_ALERT_WEBHOOK_URL: `http://127.0.0.1:${hook.port}/sekisho`,
        SEKISHO_ALERT_WEBHOOK_SECRET: SECRET,
      });
      t.s.alerts.raise("honeytoken_touched", "critical", { trigger: "sign_in", ip: "203.0.113.5" });
      expect(await t.s.alertHooks?.runDue()).toBe(1);
      expect(hook.got).toHaveLength(1);
      const { headers, body } = hook.got[0] as { headers: http.IncomingHttpHeaders; body: string };
      expect(JSON.parse(body)).toMatchObject({
        kind: "honeytoken_touched",
        severity: "critical",
        details: { trigger: "sign_in", ip: "203.0.113.5" },
      });
      // The receiver's check: recompute the MAC over "<t>.<body>" with the shared secret.
      const sig = String(headers["x-sekisho-signature"]);
      const [, ts, mac] = sig.match(/^t=(\d+),v1=([0-9a-f]{64})$/) ?? [];
      expect(mac).toBe(createHmac("sha256", SECRET).update(`${ts}.${body}`).digest("hex"));
      expect(mac).not.toBe(
        createHmac("sha256", "another secret entirely, 32 chars+").update(`${ts}.${body}`).digest("hex"),
      );
      // and the alert is in the log
      expect(t.logs.join("")).toContain('"alert":"honeytoken_touched"');
    } finally {
      await hook.close();
    }
  });

  it("keeps undelivered alerts across a restart and delivers them once the receiver is back", async () => {
    const probe = await receiver();
    const port = probe.port;
    await probe.close(); // the receiver is down
    const env = {
      SEKISHO_ALERT_WEBHOOK_URL: `http://127.0.0.1:${port}/sekisho`,
      SEKISHO_ALERT_WEBHOOK_SECRET: SECRET,
    };
    t = makeApp(env);
    t.s.alerts.raise("pii_budget_exceeded", "critical", { principal: "admin" });
    expect(await t.s.alertHooks?.runDue()).toBe(0);
    const pending = t.s.db.select().from(alertDeliveries).get();
    expect(pending).toMatchObject({ status: "pending", attempts: 1 });

    // "Restart": new services on the same database and keyring.
    const config = loadConfig({
      NODE_ENV: "test",
      SEKISHO_DATA_DIR: t.dir,
      SEKISHO_KEYRING_FILE: t.s.config.keyringFile,
      ...env,
    });
    const db = openDatabase(config.dbFile);
    const again = buildServices({
      config,
      db,
      clock: t.clock,
      keys: KeyringStore.fromFile(config.keyringFile),
      logger: createLogger("silent", new Writable({ write: (_c, _e, cb) => cb() })),
    });
    const hook = await receiver(port);
    try {
      t.clock.advance(backoffMs(1));
      expect(await again.alertHooks?.runDue()).toBe(1);
      expect(JSON.parse(hook.got[0]?.body ?? "{}")).toMatchObject({ kind: "pii_budget_exceeded" });
      expect(again.db.select().from(alertDeliveries).get()?.status).toBe("sent");
    } finally {
      await hook.close();
      db.$client.close();
    }
  });

  it("refuses a webhook URL without a secret (or the other way round) at start", () => {
    expect(() => loadConfig({ SEKISHO_ALERT_WEBHOOK_URL: "https://hooks.example/x" })).toThrow(
      /SEKISHO_ALERT_WEBHOOK_SECRET/,
    );
    expect(() =>
      loadConfig({
        SEKISHO_ALERT_WEBHOOK_URL: "https://hooks.example/x",
        SEKISHO_ALERT_WEBHOOK_SECRET: "short",
      }),
    ).toThrow(/at least 32/);
  });
});
