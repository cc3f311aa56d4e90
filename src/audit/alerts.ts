import { and, desc, eq, isNull, lt } from "drizzle-orm";
import type { Logger } from "pino";
import type { Clock } from "../clock.js";
import { type Db, inTransaction } from "../db/connection.js";
import { alerts } from "../db/schema.js";
import { requestIds } from "../logger.js";
import type { AlertHooks } from "./alert-hooks.js";
import type { AuditLog } from "./log.js";

export type Severity = "info" | "warning" | "critical";

/**
 * Security alerts for admins: stored (the admin API lists them), audited (`alert.raised`), logged,
 * and sent to the configured webhook (src/audit/alert-hooks.ts). The same alert (kind and subject) is raised at most once per ten minutes, so an attack
 * makes one alert, not one per attempt.
 */
export class Alerts {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #audit: AuditLog;
  readonly #recent = new Map<string, number>();
  readonly #log: Logger | undefined;
  /** Where alerts are also sent (the configured webhook), if anywhere. */
  hooks: AlertHooks | undefined;

  constructor(deps: { db: Db; clock: Clock; audit: AuditLog; logger?: Logger; hooks?: AlertHooks }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#audit = deps.audit;
    this.#log = deps.logger;
    this.hooks = deps.hooks;
  }

  raise(kind: string, severity: Severity, details: Record<string, unknown>, subject = ""): boolean {
    const now = this.#clock.now().getTime();
    const key = `${kind}|${subject}`;
    const last = this.#recent.get(key);
    if (last !== undefined && now - last < 10 * 60_000) return false;

    const row = inTransaction(this.#db, () => {
      const inserted = this.#db
        .insert(alerts)
        .values({ at: now, kind, severity, details: JSON.stringify(details) })
        .returning({ id: alerts.id })
        .get();
      this.hooks?.enqueue(inserted.id);
      return inserted;
    });
    // Remembered only once stored (an alert lost with a rolled-back transaction isn't muted).
    if (this.#recent.size > 10_000) this.#recent.clear();
    this.#recent.set(key, now);
    const line = { alert_id: row.id, alert: kind, severity, details };
    if (severity === "critical") this.#log?.error(line, "security alert");
    else this.#log?.warn(line, "security alert");
    this.#audit.append({
      action: "alert.raised",
      outcome: "info",
      actorType: "system",
      // The member it names, and the request that raised it, so the audit filters find it.
      memberId: typeof details.member_id === "string" ? details.member_id : null,
      requestId: requestIds.getStore() ?? null,
      reason: kind,
      details: { alert_id: row.id, severity, ...details },
    });
    return true;
  }

  /**
   * The newest `limit` alerts, and with them every critical alert not yet acknowledged (up to
   * 1,000), however many newer ones there are: a flood of lesser alerts (anyone can have
   * `account_protected` raised for login IDs of their choosing) must not push a critical one out of
   * sight before someone has handled it (at most `openCriticalMax` of them). Newest first.
   */
  list(limit = 100, openCriticalMax = 1_000) {
    const newest = this.#db.select().from(alerts).orderBy(desc(alerts.id)).limit(limit).all();
    const oldest = newest.at(-1)?.id;
    if (oldest === undefined || newest.length < limit) return newest;
    const open = this.#db
      .select()
      .from(alerts)
      .where(and(lt(alerts.id, oldest), eq(alerts.severity, "critical"), isNull(alerts.acknowledgedAt)))
      .orderBy(desc(alerts.id))
      .limit(openCriticalMax)
      .all();
    return [...newest, ...open];
  }

  one(id: number) {
    return this.#db.select().from(alerts).where(eq(alerts.id, id)).get();
  }

  /** Mark an alert handled; false when it already was. */
  acknowledge(id: number): boolean {
    return (
      this.#db
        .update(alerts)
        .set({ acknowledgedAt: this.#clock.now().getTime() })
        .where(and(eq(alerts.id, id), isNull(alerts.acknowledgedAt)))
        .run().changes > 0
    );
  }
}
