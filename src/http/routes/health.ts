import fs from "node:fs";
import { Router } from "express";
import type { Services } from "../../services.js";
import { decryptField, encryptField } from "../../vault/fields.js";
import { Keyring } from "../../vault/keyring.js";

export function healthRoutes(s: Services): Router {
  const r = Router();
  r.get("/healthz", (_req, res) => {
    res.json({ status: "ok" });
  });
  /**
   * Ready when the database answers and the keyring works: its file reads back (a removed,
   * truncated or hand-broken file fails here, though the server keeps the keys it loaded until the
   * restart that would fail), it encrypts and decrypts, and it holds the newest audit entry's key.
   */
  r.get("/readyz", (_req, res) => {
    const checks: Record<string, "ok" | "failed"> = { database: "failed", keys: "failed" };
    try {
      s.db.$client.prepare("SELECT count(*) FROM __drizzle_migrations").get();
      checks.database = "ok";
    } catch (err) {
      s.logger.error({ err }, "readiness: database check failed");
    }
    try {
      const keyring = s.keys.file
        ? Keyring.parse(fs.readFileSync(s.keys.file, "utf8"), s.keys.file)
        : s.keys.get();
      const head = s.db.$client
        .prepare("SELECT key_id FROM audit_log ORDER BY seq DESC LIMIT 1")
        .pluck()
        .get() as string | undefined;
      const ctx = { table: "readyz", column: "probe", rowId: "probe" };
      if (
        (head === undefined || keyring.auditKey(head)) &&
        decryptField(s.keys, ctx, encryptField(s.keys, ctx, "probe")) === "probe"
      )
        checks.keys = "ok";
    } catch (err) {
      s.logger.error({ err }, "readiness: keyring check failed");
    }
    const ok = Object.values(checks).every((v) => v === "ok");
    res.status(ok ? 200 : 503).json({ status: ok ? "ready" : "not_ready", checks });
  });
  return r;
}
