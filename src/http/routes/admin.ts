import { eq } from "drizzle-orm";
import { type Response, Router } from "express";
import { z } from "zod";
import { members } from "../../db/schema.js";
import { ApiError } from "../../errors.js";
import type { Services } from "../../services.js";
import { satisfies } from "../../sessions/levels.js";
import type { Session } from "../../sessions/sessions.js";
import { locals } from "../middleware.js";
import { auditLog } from "../../db/schema.js";
import { and, desc, lt } from "drizzle-orm";
import { maskEmail } from "../../mail/templates.js";
import { emailInput } from "../../members/profile-input.js";
import { PROFILE_FIELDS, type Profile } from "../../members/profile.js";
import { resolveLoginInput } from "../../members/login-id.js";
import { text } from "../../validation.js";
import { Clients } from "../../oidc/clients.js";
import { policyInput, toJson } from "../../policy/mfa-policy.js";

const memberIdParam = z.string().regex(/^m_[A-Za-z0-9_-]{22}$/);
const reasonText = text(500, { min: 3 });
const unlockBody = z.object({ reason: z.string().min(1).max(500).optional() }).default({});
const reasonBody = z.object({ reason: reasonText });
const optionalReasonBody = z.object({ reason: reasonText.optional() }).default({});
const lookupQuery = z
  .object({ login_id: z.string().min(1).max(256).optional(), email: emailInput.optional() })
  .refine(
    (q) => (q.login_id === undefined) !== (q.email === undefined),
    "give exactly one of login_id and email",
  );
const viewQuery = z.object({ reason: reasonText });
const auditQuery = z.object({
  member_id: memberIdParam.optional(),
  action: z
    .string()
    .regex(/^[a-z_.]{1,64}$/)
    .optional(),
  before: z.coerce.number().int().min(1).optional(),
  limit: z.coerce.number().int().min(1).max(500).default(100),
});
const clientIdParam = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/);

/** `山田 太郎` → `山***`, `taro@example.jp` → `t***@e***.jp`, `090-1234-5678` → `***5678`. */
export function maskProfile(p: Profile): { name: string | null; email: string | null; phone: string | null } {
  return {
    name: p.name ? `${[...p.name][0]}***` : null,
    email: p.email ? maskEmail(p.email) : null,
    phone: p.phone ? `***${p.phone.replace(/\D/g, "").slice(-4)}` : null,
  };
}

/**
 * The admin API (`/api/v1/admin`), the part the login-anomaly engine needs: alerts, and lifting an
 * account's protection. An admin member's session at `SEKISHO_ADMIN_ACR` (phishing-resistant: a
 * passkey) is required; every call is audited with the admin and the target.
 */
export function adminRoutes(s: Services): Router {
  const r = Router();

  const requireAdmin = (res: Response): Session => {
    const session = locals(res).session;
    if (session?.kind !== "full") throw new ApiError(401, "unauthenticated", "Sign in first.");
    const role = s.db
      .select({ role: members.role })
      .from(members)
      .where(eq(members.id, session.memberId))
      .get()?.role;
    if (role !== "admin") throw new ApiError(403, "forbidden", "This needs an administrator.");
    if (!satisfies(session.acr, s.config.adminAcr)) {
      throw new ApiError(401, "step_up_required", "Sign in with your passkey to use the admin API.", {
        extra: { acr: s.config.adminAcr },
      });
    }
    return session;
  };

  const audit = (res: Response, admin: Session, action: string, extra: Record<string, unknown>) => {
    const l = locals(res);
    s.audit.append({
      action,
      outcome: "success",
      actorType: "admin",
      actorId: admin.memberId,
      ip: l.ip,
      requestId: l.requestId,
      ...extra,
    });
  };

  r.get("/admin/alerts", (_req, res) => {
    const admin = requireAdmin(res);
    const rows = s.alerts.list(200);
    audit(res, admin, "admin.alerts_viewed", { details: { count: rows.length } });
    res.json({
      alerts: rows.map((a) => ({
        id: a.id,
        at: new Date(a.at).toISOString(),
        kind: a.kind,
        severity: a.severity,
        details: JSON.parse(a.details) as unknown,
        acknowledged_at: a.acknowledgedAt === null ? null : new Date(a.acknowledgedAt).toISOString(),
      })),
    });
  });

  const memberOr404 = (raw: unknown) => {
    const id = memberIdParam.safeParse(raw);
    const member = id.success ? s.db.select().from(members).where(eq(members.id, id.data)).get() : undefined;
    if (!member) throw new ApiError(404, "not_found", "No such member.");
    return member;
  };
  const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());
  const summary = (m: typeof members.$inferSelect) => {
    const f = s.factors.of(m.id);
    return {
      member_id: m.id,
      login_id: m.loginId,
      role: m.role,
      status: m.status,
      created_at: iso(m.createdAt),
      email_verified: m.emailVerified,
      mfa: { totp: f.totp, passkeys: f.passkeysTotal, recovery_codes: f.recoveryCodes },
    };
  };
  const access = (res: Response, admin: Session, reason: string) => ({
    actorType: "admin" as const,
    actorId: admin.memberId,
    reason,
    ip: locals(res).ip,
    requestId: locals(res).requestId,
    freshSince: admin.authTime,
  });

  // Lookup by login ID or e-mail (blind index): masked profile only. Each member shown counts
  // against the admin's PII budget (masking decrypts).
  r.get("/admin/members", (req, res) => {
    const admin = requireAdmin(res);
    const q = lookupQuery.safeParse(req.query);
    if (!q.success) throw new ApiError(400, "invalid_request", "Give exactly one of login_id and email.");
    const ids =
      q.data.login_id !== undefined
        ? [resolveLoginInput(q.data.login_id)]
            .filter((x): x is string => x !== null)
            .flatMap((loginId) =>
              s.db
                .select({ id: members.id })
                .from(members)
                .where(eq(members.loginId, loginId))
                .all()
                .map((r) => r.id),
            )
        : s.vault
            .memberIdsByEmail(q.data.email as string, {
              actorType: "admin",
              actorId: admin.memberId,
              ip: locals(res).ip,
              requestId: locals(res).requestId,
            })
            .slice(0, 20);
    const rows = ids
      .map((id) => s.db.select().from(members).where(eq(members.id, id)).get())
      .filter((m) => !!m);
    const profiles = s.vault.readMany(
      rows.map((m) => m.id),
      ["name", "email", "phone"],
      access(res, admin, "admin_lookup_masked"),
    );
    audit(res, admin, "admin.members_looked_up", {
      details: { by: q.data.login_id !== undefined ? "login_id" : "email", found: rows.length },
    });
    res.json({
      members: rows.map((m) => ({ ...summary(m), profile: maskProfile(profiles.get(m.id) ?? {}) })),
    });
  });

  // The full profile: a reason is required, recorded, and the read counts against the budget.
  r.get("/admin/members/:member_id", (req, res) => {
    const admin = requireAdmin(res);
    const q = viewQuery.safeParse(req.query);
    if (!q.success) throw new ApiError(400, "invalid_request", "Say why you need the profile: ?reason=…");
    const member = memberOr404(req.params.member_id);
    const profile = s.vault.read(member.id, PROFILE_FIELDS, access(res, admin, q.data.reason));
    audit(res, admin, "admin.member_viewed", { memberId: member.id, reason: q.data.reason });
    res.json({
      ...summary(member),
      profile,
      sessions: s.sessions.listActive(member.id).length,
      devices: s.devices.list(member.id).length,
    });
  });

  // Start a member's recovery: every factor and recovery code removed, every session and
  // member-site token revoked, the member told by mail. The admin never sees or sets a password.
  r.post("/admin/members/:member_id/reset-mfa", (req, res) => {
    const admin = requireAdmin(res);
    const body = reasonBody.safeParse(req.body ?? {});
    if (!body.success) throw new ApiError(400, "invalid_request", "A reason is required.");
    const member = memberOr404(req.params.member_id);
    const result = s.support.resetMfa(member.id, {
      adminId: admin.memberId,
      reason: body.data.reason,
      ip: locals(res).ip,
      requestId: locals(res).requestId,
    });
    audit(res, admin, "admin.member_mfa_reset", {
      memberId: member.id,
      reason: body.data.reason,
      details: result,
    });
    res.json({ member_id: member.id, ...result });
  });

  // Require a new password: the current one stops working, the member is mailed a reset link.
  r.post("/admin/members/:member_id/require-password-reset", (req, res) => {
    const admin = requireAdmin(res);
    const body = reasonBody.safeParse(req.body ?? {});
    if (!body.success) throw new ApiError(400, "invalid_request", "A reason is required.");
    const member = memberOr404(req.params.member_id);
    const result = s.recovery.requireNewPassword(member.id, {
      adminId: admin.memberId,
      reason: body.data.reason,
      ip: locals(res).ip,
      requestId: locals(res).requestId,
    });
    audit(res, admin, "admin.member_password_reset_required", {
      memberId: member.id,
      reason: body.data.reason,
      details: result,
    });
    res.json({ member_id: member.id, ...result });
  });

  r.post("/admin/members/:member_id/revoke-sessions", (req, res) => {
    const admin = requireAdmin(res);
    const body = optionalReasonBody.safeParse(req.body ?? {});
    if (!body.success) throw new ApiError(400, "invalid_request", "reason: 3–500 characters.");
    const member = memberOr404(req.params.member_id);
    const sessions = s.sessions.revokeAll(member.id, "admin_revoked");
    const oidcRows = s.oidcStore.revokeAccount(member.sub);
    audit(res, admin, "admin.member_sessions_revoked", {
      memberId: member.id,
      reason: body.data.reason ?? null,
      details: { sessions_revoked: sessions, oidc_rows_revoked: oidcRows },
    });
    res.json({ member_id: member.id, sessions_revoked: sessions, oidc_rows_revoked: oidcRows });
  });

  r.get("/admin/audit", (req, res) => {
    const admin = requireAdmin(res);
    const q = auditQuery.safeParse(req.query);
    if (!q.success) throw new ApiError(400, "invalid_request", "member_id, action, before, limit (≤ 500).");
    const rows = s.db
      .select()
      .from(auditLog)
      .where(
        and(
          q.data.member_id ? eq(auditLog.memberId, q.data.member_id) : undefined,
          q.data.action ? eq(auditLog.action, q.data.action) : undefined,
          q.data.before ? lt(auditLog.seq, q.data.before) : undefined,
        ),
      )
      .orderBy(desc(auditLog.seq))
      .limit(q.data.limit)
      .all();
    audit(res, admin, "admin.audit_viewed", { details: { count: rows.length, ...q.data } });
    res.json({
      entries: rows.map((e) => ({
        seq: e.seq,
        at: iso(e.at),
        action: e.action,
        outcome: e.outcome,
        actor_type: e.actorType,
        actor_id: e.actorId,
        member_id: e.memberId,
        reason: e.reason,
        ip: e.ip,
        request_id: e.requestId,
        details: JSON.parse(e.details) as unknown,
        mac: e.mac,
      })),
    });
  });

  r.get("/admin/audit/verify", (_req, res) => {
    const admin = requireAdmin(res);
    const result = s.audit.verify();
    audit(res, admin, "admin.audit_verified", { details: { ok: result.ok, entries: result.entries } });
    res.json({
      ok: result.ok,
      entries: result.entries,
      head: result.head,
      ...(result.firstBad ? { first_bad: result.firstBad } : {}),
    });
  });

  // A member site past its PII budget reads again only after an admin approves it.
  r.post("/admin/clients/:client_id/pii-approval", (req, res) => {
    const admin = requireAdmin(res);
    const body = reasonBody.safeParse(req.body ?? {});
    if (!body.success) throw new ApiError(400, "invalid_request", "A reason is required.");
    const id = clientIdParam.safeParse(req.params.client_id);
    if (!id.success) throw new ApiError(404, "not_found", "No such client.");
    const was = s.budgets.approve({ kind: "client", id: id.data });
    audit(res, admin, "admin.client_pii_approved", {
      reason: body.data.reason,
      details: { client_id: id.data, was_blocked: was },
    });
    res.json({ client_id: id.data, was_blocked: was });
  });

  const by = (res: Response, admin: Session) => ({
    adminId: admin.memberId,
    ip: locals(res).ip,
    requestId: locals(res).requestId,
  });
  const parsePolicy = (body: unknown) => {
    const p = policyInput.safeParse(body);
    if (!p.success) {
      throw new ApiError(
        400,
        "invalid_request",
        p.error.issues.map((i) => `${i.path.join(".") || "body"}: ${i.message}`).join("; "),
      );
    }
    return p.data;
  };
  const knownClient = async (raw: unknown): Promise<string> => {
    const id = clientIdParam.safeParse(raw);
    const meta = id.success
      ? await new Clients({ db: s.db, clock: s.clock, audit: s.audit }).metadata(id.data)
      : undefined;
    if (!id.success || !meta) throw new ApiError(404, "not_found", "No such client.");
    return id.data;
  };

  r.get("/admin/mfa-policy", (_req, res) => {
    requireAdmin(res);
    res.json(toJson(s.policy.global()));
  });

  r.put("/admin/mfa-policy", (req, res) => {
    const admin = requireAdmin(res);
    res.json(toJson(s.policy.set(null, parsePolicy(req.body), by(res, admin))));
  });

  r.get("/admin/clients/:client_id/mfa-policy", async (req, res) => {
    requireAdmin(res);
    const clientId = await knownClient(req.params.client_id);
    const own = s.policy.client(clientId);
    res.json({ client_id: clientId, override: own ? toJson(own) : null, global: toJson(s.policy.global()) });
  });

  r.put("/admin/clients/:client_id/mfa-policy", async (req, res) => {
    const admin = requireAdmin(res);
    const clientId = await knownClient(req.params.client_id);
    res.json({
      client_id: clientId,
      ...toJson(s.policy.set(clientId, parsePolicy(req.body), by(res, admin))),
    });
  });

  r.delete("/admin/clients/:client_id/mfa-policy", async (req, res) => {
    const admin = requireAdmin(res);
    const clientId = await knownClient(req.params.client_id);
    s.policy.clear(clientId, by(res, admin));
    res.status(204).end();
  });

  // MFA adoption: how many members have what, and how many are past the grace period.
  r.get("/admin/mfa-adoption", (_req, res) => {
    const admin = requireAdmin(res);
    const g = s.policy.global();
    const now = s.clock.now().getTime();
    const row = s.db.$client
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
    audit(res, admin, "admin.mfa_adoption_viewed", {});
    res.json({
      members: row.members ?? 0,
      with_totp: row.totp ?? 0,
      with_passkeys: row.passkeys ?? 0,
      with_any_factor: row.any_factor ?? 0,
      without_factor: row.none ?? 0,
      past_grace: row.past_grace ?? 0,
      policy: toJson(g),
    });
  });

  r.post("/admin/members/:member_id/unlock", (req, res) => {
    const admin = requireAdmin(res);
    const body = unlockBody.parse(req.body ?? {});
    const id = memberIdParam.safeParse(req.params.member_id);
    const member = id.success
      ? s.db
          .select({ id: members.id, loginId: members.loginId })
          .from(members)
          .where(eq(members.id, id.data))
          .get()
      : undefined;
    if (!member) throw new ApiError(404, "not_found", "No such member.");
    const lifted = s.guard.lift(member.loginId);
    audit(res, admin, "admin.member_unlocked", {
      memberId: member.id,
      reason: body.reason ?? null,
      details: { protection_lifted: lifted },
    });
    res.json({ member_id: member.id, protection_lifted: lifted });
  });

  return r;
}
