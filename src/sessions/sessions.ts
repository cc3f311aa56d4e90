import { createHash } from "node:crypto";
import { parse as parseCookies } from "cookie";
import { and, desc, eq, gt, isNull, ne, sql } from "drizzle-orm";
import type { Clock } from "../clock.js";
import { type Db, lazyPrepared } from "../db/connection.js";
import { members, sessions } from "../db/schema.js";
import { ApiError } from "../errors.js";
import { sealedMemberColumns } from "../members/member-row.js";
import { randomBytesPooled } from "../vault/random.js";
import { memberSealValues, type RowSeals, sessionSealValues } from "../vault/seals.js";
import type { Acr, Amr } from "./levels.js";

/**
 * Member sessions. The cookie carries a 256-bit random token; the database stores only its
 * SHA-256, so a copy of the sessions table signs nobody in. Each session has an idle and an
 * absolute timeout; a new sign-in always makes a new session (never reuses a presented one).
 * Every session row is sealed, and so is its member's (src/vault/seals.ts): a row written into
 * the database by someone without the keyring, or a member's role or status changed there, signs
 * nobody in.
 */
export const SESSION_COOKIE = "sekisho_session";
/** last_seen_at is written at most this often, so reading a session isn't a write per request. */
const TOUCH_EVERY_MS = 60_000;

export type SessionRow = typeof sessions.$inferSelect;

export interface Session {
  id: string;
  memberId: string;
  kind: "full" | "limited";
  acr: string;
  amr: Amr[];
  authTime: number;
  createdAt: number;
  lastSeenAt: number;
  expiresAt: number;
  ip: string | null;
  userAgent: string | null;
}

/** One cookie's value from a Cookie header, if any (a malformed header counts as none). */
export function cookieValue(cookieHeader: string | undefined, name: string): string | null {
  if (!cookieHeader) return null;
  try {
    return parseCookies(cookieHeader)[name] ?? null;
  } catch {
    return null;
  }
}

/** The session token in a Cookie header, if any. */
export const sessionTokenFrom = (cookieHeader: string | undefined) =>
  cookieValue(cookieHeader, SESSION_COOKIE);

export const hashToken = (token: string) => createHash("sha256").update(token, "utf8").digest("base64url");

function toSession(row: SessionRow): Session {
  return {
    id: row.id,
    memberId: row.memberId,
    kind: row.kind,
    acr: row.acr,
    amr: JSON.parse(row.amr) as Amr[],
    authTime: row.authTime,
    createdAt: row.createdAt,
    lastSeenAt: row.lastSeenAt,
    expiresAt: Math.min(row.idleExpiresAt, row.absoluteExpiresAt),
    ip: row.ip,
    userAgent: row.userAgent,
  };
}

export class SessionService {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #seals: RowSeals;
  readonly idleMs: number;
  readonly absoluteMs: number;

  constructor(deps: { db: Db; clock: Clock; seals: RowSeals; idleMs: number; absoluteMs: number }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#seals = deps.seals;
    this.idleMs = deps.idleMs;
    this.absoluteMs = deps.absoluteMs;
  }

  /** Create a session; call inside the sign-in transaction. Returns the cookie token once. */
  create(input: {
    memberId: string;
    acr: Acr;
    amr: Amr[];
    kind?: "full" | "limited";
    ip: string | null;
    userAgent: string | null;
  }): { token: string; session: Session } {
    // Whatever proved who this is (a password, a second step, a passkey), a member row changed
    // in the database without the keyring gets no session (src/vault/seals.ts).
    const member = this.#member().get({ id: input.memberId });
    if (!member || !this.#seals.holds("members", memberSealValues(member), member.seal, member.id))
      throw new ApiError(401, "invalid_credentials", "This account can't be signed in to now.");
    const now = this.#clock.now().getTime();
    const token = randomBytesPooled(32).toString("base64url");
    const row: SessionRow = {
      id: `s_${randomBytesPooled(12).toString("base64url")}`,
      tokenHash: hashToken(token),
      memberId: input.memberId,
      kind: input.kind ?? "full",
      acr: input.acr,
      amr: JSON.stringify(input.amr),
      authTime: now,
      createdAt: now,
      lastSeenAt: now,
      idleExpiresAt: now + this.idleMs,
      absoluteExpiresAt: now + this.absoluteMs,
      revokedAt: null,
      revokeReason: null,
      ip: input.ip,
      userAgent: input.userAgent ? input.userAgent.slice(0, 256) : null,
      seal: null,
    };
    row.seal = this.#seals.seal("sessions", sessionSealValues(row));
    this.#insert().run(row);
    return { token, session: toSession(row) };
  }

  /** The live session for a cookie token, or null (unknown, revoked, idle or past its lifetime). */
  authenticate(token: string): Session | null {
    if (!/^[A-Za-z0-9_-]{43}$/.test(token)) return null;
    const found = this.#byTokenHash().get({ tokenHash: hashToken(token) });
    const now = this.#clock.now().getTime();
    const row = found?.session;
    if (!row || row.revokedAt !== null || row.idleExpiresAt <= now || row.absoluteExpiresAt <= now)
      return null;
    // A disabled member's sessions stop at once, whoever disabled them and however.
    if (found.member.status !== "active") return null;
    // Written by someone without the keyring (a session for a token they chose, or moved to
    // another member), or its member's row changed that way: no one is signed in by it.
    if (!this.#seals.holds("sessions", sessionSealValues(row), row.seal, row.id)) return null;
    if (!this.#seals.holds("members", memberSealValues(found.member), found.member.seal, found.member.id))
      return null;
    // At most once a minute, and at least four times per idle window (a 1-minute idle timeout
    // must still be extended by a member who is active).
    if (now - row.lastSeenAt >= Math.min(TOUCH_EVERY_MS, this.idleMs / 4)) {
      const idleExpiresAt = Math.min(now + this.idleMs, row.absoluteExpiresAt);
      this.#db.update(sessions).set({ lastSeenAt: now, idleExpiresAt }).where(eq(sessions.id, row.id)).run();
      row.lastSeenAt = now;
      row.idleExpiresAt = idleExpiresAt;
    }
    return toSession(row);
  }

  readonly #member = lazyPrepared(() =>
    this.#db
      .select(sealedMemberColumns)
      .from(members)
      .where(eq(members.id, sql.placeholder("id")))
      .prepare(),
  );

  // Prepared once: both run on every sign-in or every authenticated request.
  readonly #insert = lazyPrepared(() =>
    this.#db.$client.prepare(
      `INSERT INTO sessions (id, token_hash, member_id, kind, acr, amr, auth_time, created_at, last_seen_at,
         idle_expires_at, absolute_expires_at, revoked_at, revoke_reason, ip, user_agent, seal)
       VALUES (@id, @tokenHash, @memberId, @kind, @acr, @amr, @authTime, @createdAt, @lastSeenAt,
         @idleExpiresAt, @absoluteExpiresAt, @revokedAt, @revokeReason, @ip, @userAgent, @seal)`,
    ),
  );
  readonly #byTokenHash = lazyPrepared(() =>
    this.#db
      .select({
        session: sessions,
        member: sealedMemberColumns,
      })
      .from(sessions)
      .innerJoin(members, eq(members.id, sessions.memberId))
      .where(eq(sessions.tokenHash, sql.placeholder("tokenHash")))
      .prepare(),
  );

  listActive(memberId: string): Session[] {
    const now = this.#clock.now().getTime();
    return this.#db
      .select()
      .from(sessions)
      .where(
        and(
          eq(sessions.memberId, memberId),
          isNull(sessions.revokedAt),
          gt(sessions.idleExpiresAt, now),
          gt(sessions.absoluteExpiresAt, now),
        ),
      )
      .orderBy(desc(sessions.createdAt))
      .all()
      .map(toSession);
  }

  /** Revoke one of a member's sessions; false when it isn't theirs or is already gone. */
  revoke(memberId: string, sessionId: string, reason: string): boolean {
    const result = this.#db
      .update(sessions)
      .set({ revokedAt: this.#clock.now().getTime(), revokeReason: reason })
      .where(and(eq(sessions.id, sessionId), eq(sessions.memberId, memberId), isNull(sessions.revokedAt)))
      .run();
    return result.changes > 0;
  }

  /**
   * Revoke every live session of the member, except `keepId` when given (password change, reset,
   * support's actions); returns how many. Second steps still pending (a right password, the
   * factor not yet given) end too: the password they began with may be the reason for this.
   */
  revokeAll(memberId: string, reason: string, keepId?: string): number {
    this.#db.$client
      .prepare("UPDATE mfa_tokens SET consumed_at = ? WHERE member_id = ? AND consumed_at IS NULL")
      .run(this.#clock.now().getTime(), memberId);
    return this.#db
      .update(sessions)
      .set({ revokedAt: this.#clock.now().getTime(), revokeReason: reason })
      .where(
        and(
          eq(sessions.memberId, memberId),
          isNull(sessions.revokedAt),
          keepId ? ne(sessions.id, keepId) : undefined,
        ),
      )
      .run().changes;
  }
}
