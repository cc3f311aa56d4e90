import { and, desc, eq, gt, isNull, ne } from "drizzle-orm";
import type { Clock } from "../clock.js";
import { type Db, lazyPrepared } from "../db/connection.js";
import { devices } from "../db/schema.js";
import { randomBytesPooled } from "../vault/random.js";
import { deviceSealValues, type RowSeals } from "../vault/seals.js";
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

interface SealedDevice {
  id: string;
  memberId: string;
  tokenHash: string;
  expiresAt: number;
  seal: string | null;
}

export interface Device {
  id: string;
  createdAt: number;
  lastSeenAt: number;
  userAgent: string | null;
}

export class DeviceRegistry {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #seals: RowSeals;

  constructor(deps: { db: Db; clock: Clock; seals: RowSeals }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#seals = deps.seals;
  }

  /** Whether a device row's seal holds (one written without the keyring is no device). */
  #sealed(row: { id: string; memberId: string; tokenHash: string; expiresAt: number; seal: string | null }) {
    return this.#seals.holds("devices", deviceSealValues(row), row.seal, row.id);
  }

  /** The live device of this member that the token names, or null (another member's device counts as none). */
  recognise(token: string | null, memberId: string): Device | null {
    if (!token || !/^[A-Za-z0-9_-]{43}$/.test(token)) return null;
    const row = this.#byToken().get(hashToken(token), memberId, this.#clock.now().getTime());
    if (!row || !this.#sealed(row)) return null;
    return { id: row.id, createdAt: row.createdAt, lastSeenAt: row.lastSeenAt, userAgent: row.userAgent };
  }

  /**
   * Whether the token names a live device of the member with this (normalised) login ID: the
   * sign-in lanes' priority check. Another member's device counts as none, so an attacker's own
   * device cookie doesn't put their guesses at other accounts first.
   */
  isLiveFor(token: string | null, loginId: string): boolean {
    if (!token || !/^[A-Za-z0-9_-]{43}$/.test(token)) return false;
    const row = this.#liveFor().get(hashToken(token), loginId, this.#clock.now().getTime());
    return row !== undefined && this.#sealed(row);
  }

  readonly #liveFor = lazyPrepared(() =>
    this.#db.$client.prepare<[string, string, number], SealedDevice>(
      `SELECT d.id, d.member_id AS memberId, d.token_hash AS tokenHash, d.expires_at AS expiresAt, d.seal
         FROM devices d JOIN members m ON m.id = d.member_id
       WHERE d.token_hash = ? AND m.login_id = ? AND d.revoked_at IS NULL AND d.expires_at > ?`,
    ),
  );

  // Prepared once: it runs on every sign-in of a known member and every second step.
  readonly #byToken = lazyPrepared(() =>
    this.#db.$client.prepare<[string, string, number], Device & SealedDevice>(
      `SELECT id, created_at AS createdAt, last_seen_at AS lastSeenAt, user_agent AS userAgent,
              member_id AS memberId, token_hash AS tokenHash, expires_at AS expiresAt, seal FROM devices
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
    const sealed = { id, memberId, tokenHash: hashToken(token), expiresAt: now + DEVICE_TTL_MS };
    this.#db
      .insert(devices)
      .values({
        ...sealed,
        createdAt: now,
        lastSeenAt: now,
        userAgent: userAgent ? userAgent.slice(0, 256) : null,
        seal: this.#seals.seal("devices", deviceSealValues(sealed)),
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
