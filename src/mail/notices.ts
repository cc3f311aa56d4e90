import { eq } from "drizzle-orm";
import type { Clock } from "../clock.js";
import type { Db } from "../db/connection.js";
import { members } from "../db/schema.js";
import type { ProfileVault } from "../members/profile.js";
import { deviceLabel } from "../sessions/user-agent.js";
import { subnetOf } from "../throttle/network.js";
import type { Mailer } from "./outbox.js";
import type { SecurityNoticeKind } from "./templates.js";

/**
 * Security notices to members, through the mail outbox: a sign-in from a new device, a factor
 * added or removed, new recovery codes, account protection switched on. Each says what happened,
 * when, from where (the network, never a precise address: `203.0.113.0/24`), with what browser,
 * and what to do if it wasn't them. Called inside the transaction of the change it reports.
 */
export class SecurityNotices {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #vault: ProfileVault;
  readonly #mailer: Mailer;

  constructor(deps: { db: Db; clock: Clock; vault: ProfileVault; mailer: Mailer }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#vault = deps.vault;
    this.#mailer = deps.mailer;
  }

  send(
    memberId: string,
    kind: SecurityNoticeKind,
    ctx: { ip?: string | null; requestId?: string | null; userAgent?: string | null; detail?: string },
  ): void {
    const member = this.#db
      .select({ locale: members.locale, role: members.role })
      .from(members)
      .where(eq(members.id, memberId))
      .get();
    if (!member) return;
    const email = this.#vault.mailAddress(memberId, `security_notice:${kind}`, ctx);
    if (!email) return;
    this.#mailer.enqueue({
      memberId,
      to: email,
      locale: member.locale,
      mail: {
        template: "security_notice",
        kind,
        at: this.#clock.now().toISOString(),
        where: ctx.ip ? subnetOf(ctx.ip).replace(/^other:.*/, "") : "",
        device: deviceLabel(ctx.userAgent),
        ...(ctx.detail ? { detail: ctx.detail } : {}),
      },
    });
  }
}
