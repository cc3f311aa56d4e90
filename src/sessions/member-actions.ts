import { and, desc, eq, inArray, sql } from "drizzle-orm";
import { z } from "zod";
import type { AuditLog } from "../audit/log.js";
import type { Db } from "../db/connection.js";
import { auditLog } from "../db/schema.js";
import type { DeviceRegistry } from "./devices.js";
import type { Session, SessionService } from "./sessions.js";

/**
 * What a signed-in member does to their own sessions and devices, and the events they see: one
 * place for the JSON API, the hosted account page and RP-initiated logout.
 */
export interface MemberActionDeps {
  db: Db;
  sessions: SessionService;
  devices: DeviceRegistry;
  audit: AuditLog;
}

/** Audit actions a member sees as their own security events. */
export const MEMBER_EVENT_ACTIONS = [
  "member.registered",
  "login.password",
  "login.second_factor",
  "login.passkey",
  "login.new_device",
  "login.throttled",
  "account.protected",
  "account.second_factor_guessing",
  "session.step_up",
  "session.logout",
  "session.revoked",
  "factor.totp_added",
  "factor.totp_removed",
  "factor.passkey_added",
  "factor.passkey_renamed",
  "factor.passkey_removed",
  "factor.recovery_codes_generated",
  "mfa.recovery_code_used",
  "mfa.passkey_clone_suspected",
  "oidc.token_reused",
  "device.revoked",
  "email.verification_sent",
  "email.verified",
  "email.change_requested",
  "email.changed",
  "password.changed",
  "password.reset",
  "recovery.password_requested",
  "recovery.login_id_requested",
  "recovery.second_factor",
  "mfa.reset_by_admin",
  "password.reset_required",
] as const;

const sessionIdParam = z.string().regex(/^s_[A-Za-z0-9_-]{16}$/);
const deviceIdParam = z.string().regex(/^d_[A-Za-z0-9_-]{16}$/);

export type Ctx = { ip: string | null; requestId: string | null };

/**
 * The member's own security events, newest first (the API and the account page). Not shown:
 * - an admin's or operator's reason and address: investigation notes and staff networks, not the
 *   member's (the event itself is);
 * - a recovery request that named this member only through an e-mail address they never verified:
 *   anyone can register with someone else's address, and would see that person's recovery
 *   requests (when, from where) among their own events. The mail goes to the address all the same.
 */
export function memberEventRows(s: MemberActionDeps, memberId: string, limit: number) {
  return s.db
    .select()
    .from(auditLog)
    .where(
      and(
        eq(auditLog.memberId, memberId),
        inArray(auditLog.action, [...MEMBER_EVENT_ACTIONS]),
        sql`coalesce(json_extract(${auditLog.details}, '$.address_verified'), 1) != 0`,
      ),
    )
    .orderBy(desc(auditLog.seq))
    .limit(limit)
    .all()
    .map((e) =>
      e.actorType === "admin" || e.actorType === "operator" ? { ...e, reason: null, ip: null } : e,
    );
}

/** End one of the member's own sessions (the current one included); false if it isn't theirs or is gone. */
export function endOwnSession(s: MemberActionDeps, session: Session, id: string, ctx: Ctx): boolean {
  const parsed = sessionIdParam.safeParse(id);
  if (!parsed.success || !s.sessions.revoke(session.memberId, parsed.data, "revoked_by_member")) return false;
  s.audit.append({
    action: "session.revoked",
    outcome: "success",
    actorType: "member",
    actorId: session.memberId,
    memberId: session.memberId,
    ...ctx,
    details: { session_id: parsed.data, current: parsed.data === session.id },
  });
  return true;
}

/** Forget one of the member's trusted devices. */
export function forgetOwnDevice(s: MemberActionDeps, session: Session, id: string, ctx: Ctx): boolean {
  const parsed = deviceIdParam.safeParse(id);
  if (!parsed.success || !s.devices.revoke(session.memberId, parsed.data)) return false;
  s.audit.append({
    action: "device.revoked",
    outcome: "success",
    actorType: "member",
    actorId: session.memberId,
    memberId: session.memberId,
    ...ctx,
    details: { device_id: parsed.data },
  });
  return true;
}

/** Sign out: revoke the session and audit it (`how` names another way out, e.g. RP-initiated logout). */
export function logOut(
  s: MemberActionDeps,
  session: Session,
  ctx: Ctx,
  how: { reason: string; details: Record<string, unknown> } = { reason: "logout", details: {} },
): void {
  s.sessions.revoke(session.memberId, session.id, how.reason);
  s.audit.append({
    action: "session.logout",
    outcome: "success",
    actorType: "member",
    actorId: session.memberId,
    memberId: session.memberId,
    ...ctx,
    details: { session_id: session.id, ...how.details },
  });
}
