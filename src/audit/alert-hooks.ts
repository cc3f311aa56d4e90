import { createHmac } from "node:crypto";
import { and, asc, eq, lte } from "drizzle-orm";
import type { Logger } from "pino";
import type { Clock } from "../clock.js";
import { type Db, inTransaction } from "../db/connection.js";
import { alertDeliveries, alerts } from "../db/schema.js";
import { backoffMs } from "../mail/outbox.js";
import { QueueWorker } from "../jobs/queue-worker.js";

/**
 * Alert delivery to a webhook (`SEKISHO_ALERT_WEBHOOK_URL`): each alert is queued in
 * `alert_deliveries` in the transaction that stores it, and a worker POSTs it as JSON with
 *
 *     X-Sekisho-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
 *
 * (verify it, and refuse a `t` more than five minutes old, to stop replays), retrying with the
 * same back-off as mail (30 s doubling to an hour, 30 attempts) until the receiver answers 2xx.
 * The queue is in the database: a restart or a receiver outage loses nothing.
 */
const LEASE_MS = 5 * 60_000;
const MAX_ATTEMPTS = 30;

export function signWebhook(secret: string, body: string, unixSeconds: number): string {
  const mac = createHmac("sha256", secret).update(`${unixSeconds}.${body}`, "utf8").digest("hex");
  return `t=${unixSeconds},v1=${mac}`;
}

export class AlertHooks extends QueueWorker<{ id: number; alertId: number; attempts: number }> {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #url: string;
  readonly #secret: string;

  constructor(deps: { db: Db; clock: Clock; logger: Logger; url: string; secret: string }) {
    super(deps.logger, "alert webhook");
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#url = deps.url;
    this.#secret = deps.secret;
  }

  /** Queue an alert for delivery (inside the transaction that stored it). */
  enqueue(alertId: number): void {
    const now = this.#clock.now().getTime();
    this.#db.insert(alertDeliveries).values({ alertId, nextAttemptAt: now, createdAt: now }).run();
    this.kick();
  }

  protected claim() {
    const now = this.#clock.now().getTime();
    return inTransaction(this.#db, () => {
      const row = this.#db
        .select({
          id: alertDeliveries.id,
          alertId: alertDeliveries.alertId,
          attempts: alertDeliveries.attempts,
        })
        .from(alertDeliveries)
        .where(and(eq(alertDeliveries.status, "pending"), lte(alertDeliveries.nextAttemptAt, now)))
        .orderBy(asc(alertDeliveries.nextAttemptAt))
        .limit(1)
        .get();
      if (!row) return undefined;
      const attempts = row.attempts + 1;
      this.#db
        .update(alertDeliveries)
        .set({ attempts, nextAttemptAt: now + LEASE_MS })
        .where(eq(alertDeliveries.id, row.id))
        .run();
      return { ...row, attempts };
    });
  }

  protected async deliver(job: { id: number; alertId: number; attempts: number }): Promise<boolean> {
    const alert = this.#db.select().from(alerts).where(eq(alerts.id, job.alertId)).get();
    if (!alert) return false;
    const body = JSON.stringify({
      id: alert.id,
      at: new Date(alert.at).toISOString(),
      kind: alert.kind,
      severity: alert.severity,
      details: JSON.parse(alert.details) as unknown,
    });
    let error: string | null = null;
    try {
      const res = await fetch(this.#url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "user-agent": "Sekisho-Alerts/1",
          "x-sekisho-alert-id": String(alert.id),
          "x-sekisho-signature": signWebhook(
            this.#secret,
            body,
            Math.floor(this.#clock.now().getTime() / 1000),
          ),
        },
        body,
        redirect: "error",
        signal: AbortSignal.timeout(10_000),
      });
      if (!res.ok) error = `HTTP ${res.status}`;
      await res.body?.cancel();
    } catch (err) {
      error = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).name;
    }
    const now = this.#clock.now().getTime();
    if (error === null) {
      this.#db
        .update(alertDeliveries)
        .set({ status: "sent", sentAt: now, lastError: null })
        .where(eq(alertDeliveries.id, job.id))
        .run();
      return true;
    }
    const giveUp = job.attempts >= MAX_ATTEMPTS;
    this.log.warn(
      { alert_id: alert.id, attempts: job.attempts, error_code: error, give_up: giveUp },
      "alert webhook not delivered",
    );
    this.#db
      .update(alertDeliveries)
      .set(
        giveUp
          ? { status: "failed", lastError: error }
          : { lastError: error, nextAttemptAt: now + backoffMs(job.attempts) },
      )
      .where(eq(alertDeliveries.id, job.id))
      .run();
    return false;
  }
}
