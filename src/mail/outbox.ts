import { and, asc, eq, lt, lte, sql } from "drizzle-orm";
import type { Logger } from "pino";
import type { Alerts } from "../audit/alerts.js";
import type { Honeytokens } from "../audit/honeytokens.js";
import type { Clock } from "../clock.js";
import { type Db, inTransaction } from "../db/connection.js";
import { outbox } from "../db/schema.js";
import { QueueWorker } from "../jobs/queue-worker.js";
import { decryptField, encryptField, type FieldContext } from "../vault/fields.js";
import type { KeyringStore } from "../vault/keyring.js";
import { randomBytesPooled } from "../vault/random.js";
import { composeAndDiscard, MailSendError, type MailSender } from "./sender.js";
import { type Locale, type MailTemplate, renderMail } from "./templates.js";

/**
 * The persistent outbox and its worker.
 *
 * `enqueue` is synchronous and meant to run inside the transaction that has something to say (the
 * registration, the reset): the mail exists exactly when the change does. The message (recipient,
 * subject, bodies) is rendered then and stored as one vault ciphertext bound to its row; the row
 * keeps only the template name, the member and the delivery state. Once sent the ciphertext is
 * wiped, so the table never accumulates reset links or addresses.
 *
 * The worker sends due messages one at a time. Each is leased first (next attempt pushed out,
 * attempt counted), so a crash mid-send retries it later instead of losing it (delivery is at
 * least once; the Message-ID is the row id, so a duplicate is recognisable), and a message that
 * crashes the process every time runs out of attempts. Failures back off exponentially (30 s,
 * 1 min, 2 min, … capped at an hour, about a day in all); a refusal of the recipient (SMTP
 * 550–553) or the last attempt marks the row `failed` and raises an alert. A server that refuses
 * us (authentication, relaying: a configuration problem) raises an alert at once and is retried.
 */
export const MAX_ATTEMPTS = 30;
const LEASE_MS = 5 * 60_000;

export function backoffMs(attempts: number): number {
  return Math.min(30_000 * 2 ** Math.max(0, attempts - 1), 3_600_000);
}

export interface Enqueue {
  memberId: string | null;
  to: string;
  locale: Locale;
  mail: MailTemplate;
}

interface Stored {
  to: string;
  subject: string;
  text: string;
  html: string;
  locale: Locale;
}

/** What a queued message is encrypted bound to (also key rotation's). */
export const outboxContext = (id: string): FieldContext => ({
  table: "outbox",
  column: "message",
  rowId: id,
});

export class Mailer extends QueueWorker<{ id: string; message: string | null; attempts: number }> {
  readonly #db: Db;
  readonly #keys: KeyringStore;
  readonly #clock: Clock;
  readonly #alerts: Alerts;
  readonly #from: string;
  readonly sender: MailSender;
  readonly #honeytokens: Honeytokens | undefined;

  constructor(deps: {
    db: Db;
    keys: KeyringStore;
    clock: Clock;
    logger: Logger;
    alerts: Alerts;
    from: string;
    sender: MailSender;
    /** Decoy members get no mail: their addresses may be real people's. */
    honeytokens?: Honeytokens;
  }) {
    super(deps.logger, "mail worker");
    this.#honeytokens = deps.honeytokens;
    this.#db = deps.db;
    this.#keys = deps.keys;
    this.#clock = deps.clock;
    this.#alerts = deps.alerts;
    this.#from = deps.from;
    this.sender = deps.sender;
  }

  protected override closed(): void {
    this.sender.close();
  }

  /**
   * Queue a message (inside the caller's transaction). Returns the outbox id (null: a decoy's,
   * dropped). It is sent at once, or with `sendNow: false` by the worker's next periodic run
   * (within seconds): a mail an anonymous request causes, whose sending must not be timed
   * against the request (see PasswordReset.request).
   */
  enqueue(m: Enqueue, opts: { sendNow?: boolean } = {}): string | null {
    const id = `ob_${randomBytesPooled(16).toString("base64url")}`;
    const now = this.#clock.now().getTime();
    if (this.#honeytokens?.isDecoy(m.memberId)) {
      // A decoy's address may be a real person's: nothing is sent, but the row looks like any
      // sent message's (whose content is wiped), so the outbox doesn't tell decoys apart either,
      // and the work of a send is done and thrown away, so the time taken doesn't either.
      this.rehearse(m);
      this.#db
        .insert(outbox)
        .values({
          id,
          memberId: m.memberId,
          template: m.mail.template,
          message: null,
          status: "sent",
          attempts: 1,
          nextAttemptAt: now,
          createdAt: now,
          sentAt: now,
        })
        .run();
      return id;
    }
    const rendered = renderMail(m.locale, m.mail);
    const stored: Stored = { to: m.to, locale: m.locale, ...rendered };
    this.#db
      .insert(outbox)
      .values({
        id,
        memberId: m.memberId,
        template: m.mail.template,
        message: encryptField(this.#keys, outboxContext(id), JSON.stringify(stored)),
        nextAttemptAt: now,
        createdAt: now,
      })
      .run();
    // After the caller's transaction: better-sqlite3 commits synchronously, before this runs.
    if (opts.sendNow !== false) this.kick();
    return id;
  }

  /**
   * Do the CPU work of queueing and sending `m` (rendering, encrypting, decrypting, building the
   * MIME message) and keep nothing: no row, no file, no connection. For a request that must not
   * be told apart by its cost from one that mails someone (a recovery request for nobody, or for
   * a decoy member), so that the event loop's work is much the same either way.
   */
  rehearse(m: Omit<Enqueue, "memberId">): void {
    const id = `ob_${randomBytesPooled(16).toString("base64url")}`;
    const rendered = renderMail(m.locale, m.mail);
    const stored: Stored = { to: m.to, locale: m.locale, ...rendered };
    const sealed = encryptField(this.#keys, outboxContext(id), JSON.stringify(stored));
    setImmediate(() => {
      const opened = JSON.parse(decryptField(this.#keys, outboxContext(id), sealed)) as Stored;
      composeAndDiscard({ id, from: this.#from, ...opened }, domainOf(this.#from)).catch((err: unknown) =>
        this.log.warn({ err }, "mail rehearsal failed"),
      );
    });
  }

  /** Lease the next due message: its next attempt moves out and the attempt is counted. */
  protected claim(): { id: string; message: string | null; attempts: number } | undefined {
    const now = this.#clock.now().getTime();
    return inTransaction(this.#db, () => {
      const row = this.#db
        .select({ id: outbox.id, message: outbox.message, attempts: outbox.attempts })
        .from(outbox)
        .where(and(eq(outbox.status, "pending"), lte(outbox.nextAttemptAt, now)))
        .orderBy(asc(outbox.nextAttemptAt))
        .limit(1)
        .get();
      if (!row) return undefined;
      const attempts = row.attempts + 1;
      this.#db
        .update(outbox)
        .set({ nextAttemptAt: now + LEASE_MS, attempts })
        .where(eq(outbox.id, row.id))
        .run();
      return { ...row, attempts };
    });
  }

  protected async deliver(row: { id: string; message: string | null; attempts: number }): Promise<boolean> {
    const attempts = row.attempts;
    let stored: Stored;
    try {
      stored = JSON.parse(decryptField(this.#keys, outboxContext(row.id), row.message ?? "")) as Stored;
    } catch (err) {
      this.log.error({ err, outbox_id: row.id }, "outbox message failed to decrypt");
      this.#finish(row.id, attempts, "failed", "DECRYPT");
      return false;
    }
    try {
      await this.sender.send({ id: row.id, from: this.#from, ...stored });
    } catch (err) {
      const failure = err instanceof MailSendError ? err : MailSendError.from(err);
      const giveUp = failure.permanent || attempts >= MAX_ATTEMPTS;
      if (failure.refusedUs) {
        this.#alerts.raise("mail_failing", "critical", { code: failure.code, sender: this.sender.describe });
      }
      this.log.warn(
        { outbox_id: row.id, attempts, error_code: failure.code, give_up: giveUp },
        "mail not sent; will retry unless given up",
      );
      if (giveUp) {
        this.#finish(row.id, attempts, "failed", failure.code);
        this.#alerts.raise("mail_undeliverable", "warning", { outbox_id: row.id, code: failure.code });
      } else {
        this.#db
          .update(outbox)
          .set({
            attempts,
            lastError: failure.code,
            nextAttemptAt: this.#clock.now().getTime() + backoffMs(attempts),
          })
          .where(eq(outbox.id, row.id))
          .run();
      }
      return false;
    }
    this.#finish(row.id, attempts, "sent", null);
    this.log.info({ outbox_id: row.id, attempts }, "mail sent");
    return true;
  }

  /** Sent or given up: the message itself (recipient, links, text) is wiped either way. */
  #finish(id: string, attempts: number, status: "sent" | "failed", error: string | null): void {
    this.#db
      .update(outbox)
      .set({
        status,
        attempts,
        lastError: error,
        message: null,
        sentAt: status === "sent" ? this.#clock.now().getTime() : null,
      })
      .where(eq(outbox.id, id))
      .run();
  }

  /** Counts by state, for operators (`pending` includes retries waiting). */
  stats(): { pending: number; sent: number; failed: number } {
    const rows = this.#db
      .select({ status: outbox.status, n: sql<number>`count(*)` })
      .from(outbox)
      .groupBy(outbox.status)
      .all();
    const out = { pending: 0, sent: 0, failed: 0 };
    for (const r of rows) out[r.status] = r.n;
    return out;
  }

  /** Forget rows sent or failed more than 30 days ago (their content is already gone). */
  sweep(): number {
    const cutoff = this.#clock.now().getTime() - 30 * 24 * 3_600_000;
    return this.#db
      .delete(outbox)
      .where(and(sql`${outbox.status} != 'pending'`, lt(outbox.createdAt, cutoff)))
      .run().changes;
  }
}

/** The domain part of a From address ("Sekisho <no-reply@auth.example>" → "auth.example"). */
function domainOf(from: string): string {
  return /@([^>\s]+)/.exec(from)?.[1] ?? "localhost";
}
