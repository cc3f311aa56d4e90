import type { AddressInfo } from "node:net";
import { type ParsedMail, simpleParser } from "mailparser";
import { SMTPServer } from "smtp-server";

export interface ReceivedMail {
  to: string;
  from: string;
  subject: string;
  text: string;
  html: string;
  headers: Map<string, unknown>;
  raw: string;
}

/**
 * A real SMTP server on loopback (the `smtp-server` package): what Sekisho's SMTP sender talks to
 * in the tests. Every accepted message is parsed (mailparser) into `inbox`. `stop()` and `start()`
 * take it down and bring it back on the same port, for outage tests.
 */
export class TestSmtp {
  readonly inbox: ReceivedMail[] = [];
  port = 0;
  /** Refuse every message with this SMTP reply code: at MAIL FROM (the server refuses us) or RCPT TO. */
  refuse: { stage: "mail" | "rcpt"; code: number } | null = null;
  #server: SMTPServer | null = null;

  #make(): SMTPServer {
    return new SMTPServer({
      authOptional: true,
      disabledCommands: ["STARTTLS", "AUTH"],
      logger: false,
      onMailFrom: (_address, _session, callback) => {
        if (this.refuse?.stage === "mail") return callback(this.#refusal(this.refuse.code));
        callback();
      },
      onRcptTo: (_address, _session, callback) => {
        if (this.refuse?.stage === "rcpt") return callback(this.#refusal(this.refuse.code));
        callback();
      },
      onData: (stream, _session, callback) => {
        const chunks: Buffer[] = [];
        stream.on("data", (c: Buffer) => chunks.push(c));
        stream.on("end", () => {
          const raw = Buffer.concat(chunks).toString("utf8");
          simpleParser(raw)
            .then((m: ParsedMail) => {
              const to = Array.isArray(m.to) ? m.to[0] : m.to;
              this.inbox.push({
                to: to?.value[0]?.address ?? "",
                from: m.from?.value[0]?.address ?? "",
                subject: m.subject ?? "",
                text: m.text ?? "",
                html: typeof m.html === "string" ? m.html : "",
                headers: m.headers as Map<string, unknown>,
                raw,
              });
              callback();
            })
            .catch((err: Error) => callback(err));
        });
      },
    });
  }

  #refusal(code: number): Error {
    return Object.assign(new Error("refused by the test server"), { responseCode: code });
  }

  async start(): Promise<void> {
    const server = this.#make();
    await new Promise<void>((resolve, reject) => {
      server.server.once("error", reject);
      server.listen(this.port, "127.0.0.1", () => resolve());
    });
    this.port = (server.server.address() as AddressInfo).port;
    this.#server = server;
  }

  async stop(): Promise<void> {
    const server = this.#server;
    this.#server = null;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  get url(): string {
    return `smtp://127.0.0.1:${this.port}`;
  }

  /** Mails to `address`, oldest first. */
  to(address: string): ReceivedMail[] {
    return this.inbox.filter((m) => m.to === address);
  }
}

/** The first link to the issuer in a mail's text with this path, and its token. */
export function linkIn(mail: ReceivedMail, pathname: string): { url: string; token: string } {
  const match = mail.text.match(/https?:\/\/\S+/g)?.find((u) => new URL(u).pathname === pathname);
  if (!match) throw new Error(`no ${pathname} link in: ${mail.text}`);
  return { url: match, token: new URL(match).searchParams.get("token") as string };
}
