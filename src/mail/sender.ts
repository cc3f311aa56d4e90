import fs from "node:fs";
import path from "node:path";
import nodemailer, { type Transporter } from "nodemailer";
import type { Clock } from "../clock.js";

/** One message as the outbox hands it to a sender. */
export interface OutgoingMail {
  /** The outbox row id: also the Message-ID's local part, so a retry is recognisably the same mail. */
  id: string;
  from: string;
  to: string;
  subject: string;
  text: string;
  html: string;
  locale: string;
}

/** Where mail goes. `send` resolves once the message is accepted, or throws a MailSendError. */
export interface MailSender {
  readonly describe: string;
  send(mail: OutgoingMail): Promise<void>;
  close(): void;
}

/**
 * A failed send, reduced to what may be stored and logged: an error code (`ECONNREFUSED`, `EAUTH`)
 * or the SMTP reply code, never the server's text (it can repeat the recipient's address).
 * `permanent`: the recipient was refused (550–553) and retrying won't help. `refusedUs`: the server
 * refuses us (authentication, relaying): a configuration problem an operator must hear of now;
 * it is retried, so mail sent meanwhile is not lost once the setting is fixed.
 */
export class MailSendError extends Error {
  constructor(
    readonly code: string,
    readonly permanent: boolean,
    readonly refusedUs = false,
  ) {
    super(`mail not sent: ${code}`);
    this.name = "MailSendError";
  }

  static from(err: unknown): MailSendError {
    const e = err as { code?: unknown; responseCode?: unknown };
    const reply = typeof e.responseCode === "number" ? e.responseCode : null;
    const code = reply !== null ? String(reply) : typeof e.code === "string" ? e.code : "ERROR";
    const permanent = reply !== null && reply >= 550 && reply <= 553;
    const refusedUs = code === "EAUTH" || code === "ENOAUTH" || [530, 535, 554].includes(reply ?? 0);
    return new MailSendError(code, permanent, refusedUs);
  }
}

function message(mail: OutgoingMail, domain: string) {
  return {
    from: mail.from,
    to: mail.to,
    subject: mail.subject,
    text: mail.text,
    html: mail.html,
    messageId: `<${mail.id}@${domain}>`,
    headers: {
      // RFC 3834: an automatic message; well-behaved auto-responders don't answer it.
      "Auto-Submitted": "auto-generated",
      "Content-Language": mail.locale,
    },
    disableUrlAccess: true,
    disableFileAccess: true,
  };
}

const rehearsal = nodemailer.createTransport({ streamTransport: true, buffer: true, newline: "unix" });

/**
 * Build `mail` as a sender would (the MIME message, headers, encodings) and throw it away: the
 * CPU work of a send without sending (see Mailer.rehearse).
 */
export async function composeAndDiscard(mail: OutgoingMail, domain: string): Promise<void> {
  await rehearsal.sendMail(message(mail, domain));
}

/** SMTP through nodemailer (`SEKISHO_SMTP_URL`, e.g. smtp://user:pass@host:587 or smtps://…). */
export class SmtpSender implements MailSender {
  readonly describe: string;
  readonly #transport: Transporter;
  readonly #domain: string;

  constructor(url: string, domain: string) {
    const u = new URL(url);
    this.describe = `SMTP ${u.protocol}//${u.host}`; // never the credentials
    this.#domain = domain;
    this.#transport = nodemailer.createTransport(url, {
      connectionTimeout: 10_000,
      greetingTimeout: 10_000,
      socketTimeout: 30_000,
    } as object);
  }

  async send(mail: OutgoingMail): Promise<void> {
    try {
      await this.#transport.sendMail(message(mail, this.#domain));
    } catch (err) {
      throw MailSendError.from(err);
    }
  }

  close(): void {
    this.#transport.close();
  }
}

/**
 * Development without SMTP: each message becomes one `.eml` file in `<data dir>/outbox/`, readable
 * only by the service's user (the files hold live links and personal data).
 */
export class FileSender implements MailSender {
  readonly describe: string;
  readonly #dir: string;
  readonly #domain: string;
  readonly #clock: Clock;
  readonly #transport = nodemailer.createTransport({ streamTransport: true, buffer: true, newline: "unix" });

  constructor(dir: string, domain: string, clock: Clock) {
    this.#dir = dir;
    this.#domain = domain;
    this.#clock = clock;
    this.describe = `files in ${dir}`;
  }

  async send(mail: OutgoingMail): Promise<void> {
    try {
      const info = await this.#transport.sendMail(message(mail, this.#domain));
      fs.mkdirSync(this.#dir, { recursive: true, mode: 0o700 });
      const file = path.join(
        this.#dir,
        `${this.#clock.now().toISOString().replace(/[:.]/g, "-")}-${mail.id}.eml`,
      );
      // Written whole, then renamed: a reader never sees half a message.
      fs.writeFileSync(`${file}.tmp`, info.message as Buffer, { mode: 0o600 });
      fs.renameSync(`${file}.tmp`, file);
    } catch (err) {
      throw MailSendError.from(err);
    }
  }

  close(): void {}
}
