import { and, desc, eq, gt, isNull, ne } from "drizzle-orm";
import type { Clock } from "../clock.js";
import { type Db, lazyPrepared } from "../db/connection.js";
import { devices } from "../db/schema.js";
import { randomBytesPooled } from "../vault/random.js";
import { cookieValue, hashToken } from "./sessions.js";

/**
 * Known devices. A browser that completed a sign-in with a second factor or a passkey gets the
 * `sekisho_device` cookie: 256 random bits, stored as SHA-256, bound to that one member, kept
 * across logout, revocable by the member. Sekisho uses it to tell "a sign-in from a new device"
 * (a security event) and, in the throttle, to keep trusting a member's own device.
 */
export const DEVICE_COOKIE = "sekisho_device";
export const DEVICE_TTL_MS = 365 * 24 * 3_600_000;

export const deviceTokenFrom = (cookieHeader: string | undefined) => cookieValue(cookieHeader, DEVICE_COOKIE);

export interface Device {
  id: string;
  createdAt: number;
  lastSeenAt: number;
  userAgent: string | null;
}

export class DeviceRegistry {
  readonly #db: Db;
  readonly #clock: Clock;

  constructor(deps: { db: Db; clock: Clock }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
  }

  /** The live device of this member that the token names, or null (another member's device counts as none). */
  recognise(token: string | null, memberId: string): Device | null {
    if (!token || !/^[A-Za-z0-9_-]{43}$/.test(token)) return null;
    const row = this.#byToken().get(hashToken(token), memberId, this.#clock.now().getTime());
    return row ?? null;
  }

  /**
   * Whether the token names a live device of the member with this (normalised) login ID: the
   * sign-in lanes' priority check. Another member's device counts as none, so an attacker's own
   * device cookie doesn't put their guesses at other accounts first.
   */
  isLiveFor(token: string | null, loginId: string): boolean {
    if (!token || !/^[A-Za-z0-9_-]{43}$/.test(token)) return false;
    return this.#liveFor().get(hashToken(token), loginId, this.#clock.now().getTime()) !== undefined;
  }

  readonly #liveFor = lazyPrepared(() =>
    this.#db.$client.prepare<[string, string, number], { one: number }>(
      `SELECT 1 AS one FROM devices d JOIN members m ON m.id = d.member_id
       WHERE d.token_hash = ? AND m.login_id = ? AND d.revoked_at IS NULL AND d.expires_at > ?`,
    ),
  );

  // Prepared once: it runs on every sign-in of a known member and every second step.
  readonly #byToken = lazyPrepared(() =>
    this.#db.$client.prepare<[string, string, number], Device>(
      `SELECT id, created_at AS createdAt, last_seen_at AS lastSeenAt, user_agent AS userAgent FROM devices
       WHERE token_hash = ? AND member_id = ? AND revoked_at IS NULL AND expires_at > ?`,
    ),
  );

  touch(deviceId: string): void {
    this.#db
      .update(devices)
      .set({ lastSeenAt: this.#clock.now().getTime() })
      .where(eq(devices.id, deviceId))
      .run();
  }

  /** Call inside the sign-in transaction; returns the cookie token once. */
  issue(memberId: string, userAgent: string | null): { token: string; id: string } {
    const now = this.#clock.now().getTime();
    const token = randomBytesPooled(32).toString("base64url");
    const id = `d_${randomBytesPooled(12).toString("base64url")}`;
    this.#db
      .insert(devices)
      .values({
        id,
        memberId,
        tokenHash: hashToken(token),
        createdAt: now,
        lastSeenAt: now,
        expiresAt: now + DEVICE_TTL_MS,
        userAgent: userAgent ? userAgent.slice(0, 256) : null,
      })
      .run();
    return { token, id };
  }

  list(memberId: string): Device[] {
    return this.#db
      .select()
      .from(devices)
      .where(
        and(
          eq(devices.memberId, memberId),
          isNull(devices.revokedAt),
          gt(devices.expiresAt, this.#clock.now().getTime()),
        ),
      )
      .orderBy(desc(devices.lastSeenAt))
      .all()
      .map((r) => ({ id: r.id, createdAt: r.createdAt, lastSeenAt: r.lastSeenAt, userAgent: r.userAgent }));
  }

  revoke(memberId: string, deviceId: string): boolean {
    return (
      this.#db
        .update(devices)
        .set({ revokedAt: this.#clock.now().getTime() })
        .where(and(eq(devices.id, deviceId), eq(devices.memberId, memberId), isNull(devices.revokedAt)))
        .run().changes > 0
    );
  }

  /** Revoke every trusted device of the member except `keepId` (the one that did a reset). */
  revokeAllExcept(memberId: string, keepId: string | null): number {
    return this.#db
      .update(devices)
      .set({ revokedAt: this.#clock.now().getTime() })
      .where(
        and(
          eq(devices.memberId, memberId),
          isNull(devices.revokedAt),
          keepId ? ne(devices.id, keepId) : undefined,
        ),
      )
      .run().changes;
  }
}
