import { Router } from "express";
import type { Services } from "../../services.js";
import { decryptField, encryptField } from "../../vault/fields.js";

export function healthRoutes(s: Services): Router {
  const r = Router();
  r.get("/healthz", (_req, res) => {
    res.json({ status: "ok" });
  });
  /** Ready when the database answers and the keyring encrypts and decrypts. */
  r.get("/readyz", (_req, res) => {
    const checks: Record<string, "ok" | "failed"> = { database: "failed", keys: "failed" };
    try {
      s.db.$client.prepare("SELECT count(*) FROM __drizzle_migrations").get();
      checks.database = "ok";
    } catch (err) {
      s.logger.error({ err }, "readiness: database check failed");
    }
    try {
      const ctx = { table: "readyz", column: "probe", rowId: "probe" };
      if (decryptField(s.keys, ctx, encryptField(s.keys, ctx, "probe")) === "probe") checks.keys = "ok";
    } catch (err) {
      s.logger.error({ err }, "readiness: keyring check failed");
    }
    const ok = Object.values(checks).every((v) => v === "ok");
    res.status(ok ? 200 : 503).json({ status: ok ? "ready" : "not_ready", checks });
  });
  return r;
}
