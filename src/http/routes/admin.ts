import { eq } from "drizzle-orm";
import { type Response, Router } from "express";
import { z } from "zod";
import { members } from "../../db/schema.js";
import { ApiError } from "../../errors.js";
import type { Services } from "../../services.js";
import { satisfies } from "../../sessions/levels.js";
import type { Session } from "../../sessions/sessions.js";
import { locals } from "../middleware.js";

const memberIdParam = z.string().regex(/^m_[A-Za-z0-9_-]{22}$/);
const unlockBody = z.object({ reason: z.string().min(1).max(500).optional() }).default({});

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
