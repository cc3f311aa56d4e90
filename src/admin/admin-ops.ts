import { and, desc, eq, gte, lt, sql } from "drizzle-orm";
import { z } from "zod";
import { auditLog, members } from "../db/schema.js";
import { ApiError } from "../errors.js";
import { maskEmail } from "../mail/templates.js";
import { resolveLoginInput } from "../members/login-id.js";
import { sealedMemberColumns } from "../members/member-row.js";
import { PROFILE_FIELDS, type Profile } from "../members/profile.js";
import { toJson } from "../policy/mfa-policy.js";
import type { Services } from "../services.js";
import { endAccess } from "../sessions/end-access.js";
import { satisfies } from "../sessions/levels.js";
import type { Session } from "../sessions/sessions.js";
import { blindIndex } from "../vault/blind-index.js";
import { memberSealValues } from "../vault/seals.js";

/**
 * What an admin can do, once, for both the admin JSON API and the admin console pages: who may
 * (an admin's full session at SEKISHO_ADMIN_ACR), and every read and action with its audit entry
 * (the admin, the member, the reason, the result).
 */
export interface AdminCtx {
  admin: Session;
  ip: string | null;
  requestId: string | null;
}

export const memberIdParam = z.string().regex(/^m_[A-Za-z0-9_-]{22}$/);

/** Does an alert's details name this admin as the principal it is about? */
function namesAdmin(details: string, adminId: string): boolean {
  try {
    const d = JSON.parse(details) as { principal_id?: unknown; principal?: unknown };
    return d.principal === "admin" && d.principal_id === adminId;
  } catch {
    return false;
  }
}

/**
 * An alert's details as admins see them: a decoy's alert doesn't say which member is the decoy.
 * Anyone can make one (a sign-in attempt with a decoy's login ID): an admin reading the decoy's
 * id off the list would learn which members are decoys. The webhook, the log and `audit export`
 * on the host have it.
 */
function forAdmins(kind: string, details: Record<string, unknown>): Record<string, unknown> {
  if (kind !== "honeytoken_touched" || !("decoy_member_id" in details)) return details;
  // Nor the request or the address that touched it: the audit view, asked for that request id or
  // address, would show the entry naming the decoy (a failed sign-in with its member id).
  return { ...details, decoy_member_id: "[hidden]", request_id: "[hidden]", ip: "[hidden]" };
}

const decoyAlert = (e: { action: string; reason: string | null }) =>
  e.action === "alert.raised" && e.reason === "honeytoken_touched";

/** What the admin audit view filters by (all given ones must match). */
export interface AuditFilter {
  memberId?: string | undefined;
  actorId?: string | undefined;
  /** An action, or `prefix.*` for every action under it. */
  action?: string | undefined;
  requestId?: string | undefined;
  ip?: string | undefined;
  /** ms, inclusive / exclusive. */
  since?: number | undefined;
  until?: number | undefined;
  before?: number | undefined;
  limit: number;
}

/** `山田 太郎` → `山***`, `taro@example.jp` → `t***@e***.jp`, `090-1234-5678` → `***5678`. */
export function maskProfile(p: Profile): { name: string | null; email: string | null; phone: string | null } {
  return {
    name: p.name ? `${[...p.name][0]}***` : null,
    email: p.email ? maskEmail(p.email) : null,
    phone: p.phone ? `***${p.phone.replace(/\D/g, "").slice(-4)}` : null,
  };
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

export type MemberRow = typeof members.$inferSelect;

export class AdminOps {
  constructor(readonly s: Services) {}

  /** The admin behind a session, or the reason they can't be one now. */
  authorize(session: Session | null): Session {
    if (session?.kind !== "full") throw new ApiError(401, "unauthenticated", "Sign in first.");
    const member = this.s.db
      .select(sealedMemberColumns)
      .from(members)
      .where(eq(members.id, session.memberId))
      .get();
    // A role set in the database by someone without the keyring makes no admin (src/vault/seals.ts).
    const sealed =
      member !== undefined && this.s.seals.holds("members", memberSealValues(member), member.seal, member.id);
    if (!sealed || member.role !== "admin")
      throw new ApiError(403, "forbidden", "This needs an administrator.");
    if (!satisfies(session.acr, this.s.config.adminAcr)) {
      throw new ApiError(401, "step_up_required", "Sign in with your passkey to use the admin API.", {
        extra: { acr: this.s.config.adminAcr },
      });
    }
    return session;
  }

  record(
    c: AdminCtx,
    action: string,
    extra: {
      memberId?: string;
      reason?: string | null;
      outcome?: "success" | "failure";
      details?: object;
    } = {},
  ) {
    this.s.audit.append({
      action,
      outcome: extra.outcome ?? "success",
      actorType: "admin",
      actorId: c.admin.memberId,
      ip: c.ip,
      requestId: c.requestId,
      ...(extra.memberId ? { memberId: extra.memberId } : {}),
      ...(extra.reason !== undefined ? { reason: extra.reason } : {}),
      ...(extra.details ? { details: extra.details as Record<string, unknown> } : {}),
    });
  }

  #access(c: AdminCtx, reason: string) {
    return {
      actorType: "admin" as const,
      actorId: c.admin.memberId,
      reason,
      ip: c.ip,
      requestId: c.requestId,
      freshSince: c.admin.authTime,
    };
  }

  member(raw: unknown): MemberRow {
    const id = memberIdParam.safeParse(raw);
    const member = id.success
      ? this.s.db.select().from(members).where(eq(members.id, id.data)).get()
      : undefined;
    if (!member) throw new ApiError(404, "not_found", "No such member.");
    return member;
  }

  summary(m: MemberRow) {
    const f = this.s.factors.of(m.id);
    return {
      member_id: m.id,
      login_id: m.loginId,
      role: m.role,
      status: m.status,
      created_at: iso(m.createdAt),
      email_verified: m.emailVerified,
      mfa: { totp: f.totp, passkeys: f.passkeysTotal, recovery_codes: f.recoveryCodes },
      protected_until: iso(this.s.guard.protectedUntil(m.loginId)),
    };
  }

  /**
   * The newest alerts, without those that name this admin as the principal (a decoy it touched, a
   * budget it exceeded): an admin whose session was stolen must not learn from the console that it
   * was seen, or which members are decoys. Other admins and the webhook get them.
   */
  alerts(c: AdminCtx, limit = 200, openCriticalMax = 1_000) {
    const rows = this.s.alerts
      .list(limit, openCriticalMax)
      .filter((a) => !namesAdmin(a.details, c.admin.memberId));
    this.record(c, "admin.alerts_viewed", { details: { count: rows.length } });
    return rows.map((a) => ({
      id: a.id,
      at: new Date(a.at).toISOString(),
      kind: a.kind,
      severity: a.severity,
      details: forAdmins(a.kind, JSON.parse(a.details) as Record<string, unknown>),
      acknowledged_at: iso(a.acknowledgedAt),
    }));
  }

  /** Mark an alert handled (audited with the reason); 404 for an unknown one or one about this admin. */
  acknowledgeAlert(c: AdminCtx, id: number, reason: string | null) {
    const alert = this.s.alerts.one(id);
    if (!alert || namesAdmin(alert.details, c.admin.memberId))
      throw new ApiError(404, "not_found", "No such alert.");
    const changed = this.s.alerts.acknowledge(id);
    this.record(c, "admin.alert_acknowledged", {
      reason,
      details: { alert_id: id, kind: alert.kind, already: !changed },
    });
    return { alert_id: id, acknowledged_at: iso(this.s.alerts.one(id)?.acknowledgedAt ?? null) };
  }

  /** Find members by login ID or e-mail (blind index); masked profiles (masking decrypts: budgeted). */
  lookup(c: AdminCtx, q: { loginId?: string | undefined; email?: string | undefined }) {
    const ids =
      q.loginId !== undefined
        ? [resolveLoginInput(q.loginId)]
            .filter((x): x is string => x !== null)
            .flatMap((loginId) =>
              this.s.db
                .select({ id: members.id })
                .from(members)
                .where(eq(members.loginId, loginId))
                .all()
                .map((r) => r.id),
            )
        : this.s.vault
            .memberIdsByEmail(q.email as string, {
              actorType: "admin",
              actorId: c.admin.memberId,
              ip: c.ip,
              requestId: c.requestId,
            })
            .slice(0, 20);
    const rows = ids
      .map((id) => this.s.db.select().from(members).where(eq(members.id, id)).get())
      .filter((m): m is MemberRow => !!m);
    const profiles = this.s.vault.readMany(
      rows.map((m) => m.id),
      ["name", "email", "phone"],
      this.#access(c, "admin_lookup_masked"),
    );
    // What was searched, found or not (testing a leaked list for who is a member leaves a trace),
    // never in clear unless it is a member's login ID (the members table holds those in clear
    // anyway): what found nobody may be a name, a phone number or a pasted password, so it is kept
    // as a keyed hash; an investigator with the keyring checks a value against it.
    const searched =
      q.loginId !== undefined
        ? rows.length > 0
          ? { by: "login_id", login_id: rows[0]?.loginId }
          : { by: "login_id", login_id_index: this.searchIndex(q.loginId) }
        : { by: "email", email_index: this.s.vault.emailIndex(q.email as string) };
    this.record(c, "admin.members_looked_up", { details: { ...searched, found: rows.length } });
    return rows.map((m) => ({ ...this.summary(m), profile: maskProfile(profiles.get(m.id) ?? {}) }));
  }

  /**
   * The keyed hash an admin's login-ID search that found nobody is recorded as: of the input as a
   * login ID resolves (case and width folded), else of the input as given.
   */
  searchIndex(input: string): string {
    return blindIndex(this.s.keys, "admin_login_id_search", resolveLoginInput(input) ?? input);
  }

  /** A member's page without personal data (login ID, status, factors): recorded, not budgeted. */
  open(c: AdminCtx, member: MemberRow) {
    this.record(c, "admin.member_opened", { memberId: member.id });
    return this.summary(member);
  }

  /** The full profile, for a stated reason (recorded, budgeted). */
  view(c: AdminCtx, member: MemberRow, reason: string) {
    const profile = this.s.vault.read(member.id, PROFILE_FIELDS, this.#access(c, reason));
    this.record(c, "admin.member_viewed", { memberId: member.id, reason });
    return {
      ...this.summary(member),
      profile,
      sessions: this.s.sessions.listActive(member.id).length,
      devices: this.s.devices.list(member.id).length,
    };
  }

  /**
   * Admins are not reset by admins: a reset admin's password alone would enrol a new passkey and
   * sign in (an attacker with one admin account would take over another). The operator does it.
   */
  #notAdmin(member: MemberRow): void {
    if (member.role === "admin") {
      throw new ApiError(
        403,
        "forbidden",
        "Administrators are reset by the operator (npx sekisho admins reset-mfa), not through the admin API.",
      );
    }
  }

  resetMfa(c: AdminCtx, member: MemberRow, reason: string) {
    this.#notAdmin(member);
    const result = this.s.support.resetMfa(member.id, {
      adminId: c.admin.memberId,
      reason,
      ip: c.ip,
      requestId: c.requestId,
    });
    this.record(c, "admin.member_mfa_reset", { memberId: member.id, reason, details: result });
    return result;
  }

  requirePasswordReset(c: AdminCtx, member: MemberRow, reason: string) {
    this.#notAdmin(member);
    const result = this.s.recovery.requireNewPassword(member.id, {
      adminId: c.admin.memberId,
      reason,
      ip: c.ip,
      requestId: c.requestId,
    });
    this.record(c, "admin.member_password_reset_required", { memberId: member.id, reason, details: result });
    return result;
  }

  revokeSessions(c: AdminCtx, member: MemberRow, reason: string | null) {
    const result = endAccess(
      { sessions: this.s.sessions, oidc: this.s.oidcStore, devices: this.s.devices },
      member,
      "admin_revoked",
    );
    this.record(c, "admin.member_sessions_revoked", { memberId: member.id, reason, details: result });
    return result;
  }

  unlock(c: AdminCtx, member: MemberRow, reason: string | null) {
    const lifted = this.s.guard.lift(member.loginId);
    this.record(c, "admin.member_unlocked", {
      memberId: member.id,
      reason,
      details: { protection_lifted: lifted },
    });
    return lifted;
  }

  audit(c: AdminCtx, q: AuditFilter) {
    // `login.*`: the actions under a prefix, compared as a prefix (not LIKE, where `_` is a wildcard).
    const prefix = q.action?.endsWith(".*") ? q.action.slice(0, -1) : null;
    const rows = this.s.db
      .select()
      .from(auditLog)
      .where(
        and(
          q.memberId ? eq(auditLog.memberId, q.memberId) : undefined,
          q.actorId ? eq(auditLog.actorId, q.actorId) : undefined,
          prefix
            ? sql`substr(${auditLog.action}, 1, ${prefix.length}) = ${prefix}`
            : q.action
              ? eq(auditLog.action, q.action)
              : undefined,
          // An alert that names this admin as its principal (a decoy it touched) is not shown to
          // it here either (see alerts()): its audit entry would tell the same.
          sql`NOT (${auditLog.action} = 'alert.raised' AND json_extract(${auditLog.details}, '$.principal') = 'admin' AND json_extract(${auditLog.details}, '$.principal_id') = ${c.admin.memberId})`,
          // Nor another admin's acknowledgement of such an alert (it names the alert and its kind).
          sql`NOT (${auditLog.action} = 'admin.alert_acknowledged' AND json_extract(${auditLog.details}, '$.alert_id') IN (SELECT id FROM alerts WHERE json_extract(details, '$.principal') = 'admin' AND json_extract(details, '$.principal_id') = ${c.admin.memberId}))`,
          q.requestId ? eq(auditLog.requestId, q.requestId) : undefined,
          q.ip ? eq(auditLog.ip, q.ip) : undefined,
          q.since !== undefined ? gte(auditLog.at, q.since) : undefined,
          q.until !== undefined ? lt(auditLog.at, q.until) : undefined,
          q.before ? lt(auditLog.seq, q.before) : undefined,
        ),
      )
      .orderBy(desc(auditLog.seq))
      .limit(q.limit)
      .all();
    this.record(c, "admin.audit_viewed", { details: { count: rows.length, ...q } });
    return rows.map((e) => ({
      seq: e.seq,
      at: iso(e.at) as string,
      action: e.action,
      outcome: e.outcome,
      actor_type: e.actorType,
      actor_id: e.actorId,
      member_id: e.memberId,
      reason: e.reason,
      // A decoy alert's entry keeps the touching request's id and address: asked for them, this
      // view would show the entry naming the decoy (see forAdmins).
      ip: decoyAlert(e) ? "[hidden]" : e.ip,
      request_id: decoyAlert(e) ? "[hidden]" : e.requestId,
      details:
        e.action === "alert.raised"
          ? forAdmins(e.reason ?? "", JSON.parse(e.details) as Record<string, unknown>)
          : (JSON.parse(e.details) as Record<string, unknown>),
      mac: e.mac,
    }));
  }

  verifyAudit(c: AdminCtx) {
    const result = this.s.audit.verify();
    this.record(c, "admin.audit_verified", { details: { ok: result.ok, entries: result.entries } });
    return {
      ok: result.ok,
      entries: result.entries,
      head: result.head,
      ...(result.firstBad ? { first_bad: result.firstBad } : {}),
    };
  }

  adoption(c: AdminCtx) {
    const g = this.s.policy.global();
    const now = this.s.clock.now().getTime();
    const row = this.s.db.$client
      .prepare<[number, number, number, number], Record<string, number | null>>(
        `SELECT count(*) AS members, sum(t) AS totp, sum(p) AS passkeys, sum(t OR p) AS any_factor,
                sum(NOT (t OR p)) AS none,
                sum(NOT (t OR p) AND ? = 1 AND max(?, created_at) + ? <= ?) AS past_grace
           FROM (SELECT m.created_at,
                        EXISTS (SELECT 1 FROM totp_factors f WHERE f.member_id = m.id AND f.secret IS NOT NULL) AS t,
                        EXISTS (SELECT 1 FROM webauthn_credentials w WHERE w.member_id = m.id) AS p
                   FROM members m WHERE m.role = 'member')`,
      )
      .get(g.mode === "required" ? 1 : 0, g.requiredSince ?? 0, g.graceDays * 86_400_000, now) as Record<
      string,
      number | null
    >;
    this.record(c, "admin.mfa_adoption_viewed");
    return {
      members: row.members ?? 0,
      with_totp: row.totp ?? 0,
      with_passkeys: row.passkeys ?? 0,
      with_any_factor: row.any_factor ?? 0,
      without_factor: row.none ?? 0,
      past_grace: row.past_grace ?? 0,
      policy: toJson(g),
    };
  }
}
