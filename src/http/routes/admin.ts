import { type Request, type Response, Router } from "express";
import ipaddr from "ipaddr.js";
import { z } from "zod";
import { type AdminCtx, AdminOps, type AuditFilter, memberIdParam } from "../../admin/admin-ops.js";
import { ApiError } from "../../errors.js";
import { emailInput } from "../../members/profile-input.js";
import { Clients } from "../../oidc/clients.js";
import { policyInput, toJson } from "../../policy/mfa-policy.js";
import type { Services } from "../../services.js";
import { digits, text } from "../../validation.js";
import { fromAnotherSite, locals } from "../middleware.js";

export { maskProfile } from "../../admin/admin-ops.js";

export const reasonText = text(500, { min: 3 });
const unlockBody = z.object({ reason: text(500, { min: 1 }).optional() }).default({});
const reasonBody = z.object({ reason: reasonText });
const optionalReasonBody = z.object({ reason: reasonText.optional() }).default({});
/** An alert's id as the path gives it: decimal digits. */
export const alertIdParam = digits(1, Number.MAX_SAFE_INTEGER);
const lookupQuery = z
  .object({ login_id: z.string().min(1).max(256).optional(), email: emailInput.optional() })
  .refine(
    (q) => (q.login_id === undefined) !== (q.email === undefined),
    "give exactly one of login_id and email",
  );
const viewQuery = z.object({ reason: reasonText });
/**
 * An ISO 8601 date and time with a zone, seconds optional (`2026-12-05T09:00Z`,
 * `2026-12-05T09:00:00.000+09:00`; a `+` must be sent as `%2B` in a URL), as ms.
 */
const isoTime = z
  .string()
  .regex(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2})$/)
  // A day or time that doesn't exist is refused, not rolled over (Date.parse reads 2026-02-30 as
  // 2 March): a window an investigator mistyped must not quietly show another one.
  .refine(realTime, "not a date and time that exists")
  .transform((v) => Date.parse(v))
  .pipe(z.number().int().min(0));

function realTime(v: string): boolean {
  const [y, mo, d, h, mi, sec = 0] = (v.match(/\d+/g) ?? []).map(Number) as number[];
  if (y === undefined || mo === undefined || d === undefined || h === undefined || mi === undefined)
    return false;
  const day = new Date(Date.UTC(y, mo - 1, d));
  const zone = /([+-])(\d{2}):(\d{2})$/.exec(v);
  return (
    day.getUTCFullYear() === y &&
    day.getUTCMonth() === mo - 1 &&
    day.getUTCDate() === d &&
    h <= 23 &&
    mi <= 59 &&
    sec <= 59 &&
    (!zone || (Number(zone[2]) <= 14 && Number(zone[3]) <= 59))
  );
}

export const auditQuery = z
  .object({
    member_id: memberIdParam.optional(),
    /** Who acted: a member or admin id (m_…), a member site's client id (c_…). */
    actor_id: z
      .string()
      .regex(/^[A-Za-z0-9_-]{3,64}$/)
      .optional(),
    /** An action, or every action under a prefix: `login.*`. */
    action: z
      .string()
      .regex(/^[a-z_]+(\.[a-z_]+)*(\.\*)?$/)
      .max(64)
      .optional(),
    request_id: z
      .string()
      .regex(/^[A-Za-z0-9._-]{8,64}$/)
      .optional(),
    /** Compared as stored: IPv4-mapped IPv6 unwrapped, IPv6 in its canonical (RFC 5952) form. */
    ip: z
      .union([z.ipv4(), z.ipv6()])
      .transform((v) => ipaddr.process(v).toString())
      .optional(),
    since: isoTime.optional(),
    until: isoTime.optional(),
    before: digits(1, Number.MAX_SAFE_INTEGER).optional(),
    limit: digits(1, 500).default(100),
  })
  // A filter it doesn't know (`member=`, a typo) is refused: answering the unfiltered log would
  // pass for the filtered one.
  .strict();

/** The audit filters of a parsed query, as AdminOps.audit takes them. */
export function auditFilter(q: z.infer<typeof auditQuery>, limit = q.limit): AuditFilter {
  return {
    memberId: q.member_id,
    actorId: q.actor_id,
    action: q.action,
    requestId: q.request_id,
    ip: q.ip,
    since: q.since,
    until: q.until,
    before: q.before,
    limit,
  };
}

/** What a refused filter is told (the first problem, by parameter). */
export function auditQueryProblem(error: z.ZodError): string {
  const issue = error.issues[0];
  const where = issue?.path.join(".") || (issue?.code === "unrecognized_keys" ? issue.keys.join(", ") : "");
  return `Filters: member_id, actor_id, action (or a prefix such as login.*), request_id, ip, since and until (ISO 8601 with a zone), before, limit (≤ 500); each at most once.${where ? ` Check: ${where}.` : ""}`;
}
const clientIdParam = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/);

/** Turn a zod failure of a policy body into the API's 400. */
export function parsePolicy(body: unknown) {
  const p = policyInput.safeParse(body);
  if (!p.success) {
    throw new ApiError(
      400,
      "invalid_request",
      p.error.issues.map((i) => `${i.path.join(".") || "body"}: ${i.message}`).join("; "),
    );
  }
  return p.data;
}

/**
 * The admin API (`/api/v1/admin`): an admin member's session at `SEKISHO_ADMIN_ACR`
 * (phishing-resistant: a passkey) is required; every call is audited with the admin, the member
 * and the reason (src/admin/admin-ops.ts, shared with the console pages).
 */
export function adminRoutes(s: Services): Router {
  const r = Router();
  const ops = new AdminOps(s);
  const ctx = (res: Response): AdminCtx => ({
    admin: ops.authorize(locals(res).session),
    ip: locals(res).ip,
    requestId: locals(res).requestId,
  });
  const reasonOf = (body: unknown): string => {
    const parsed = reasonBody.safeParse(body ?? {});
    if (!parsed.success)
      throw new ApiError(400, "invalid_request", "A reason is required (3–500 characters).");
    return parsed.data.reason;
  };

  r.get("/admin/alerts", (_req, res) => {
    res.json({ alerts: ops.alerts(ctx(res)) });
  });

  // The budgeted reads are not run for a request another site started (see fromAnotherSite).
  const sameSiteOnly = (req: Request) => {
    if (fromAnotherSite(req))
      throw new ApiError(403, "forbidden_origin", "Member lookups can't be started from another site.");
  };

  r.post("/admin/alerts/:alert_id/acknowledge", (req, res) => {
    const c = ctx(res);
    const body = optionalReasonBody.safeParse(req.body ?? {});
    if (!body.success) throw new ApiError(400, "invalid_request", "reason: 3–500 characters.");
    const id = alertIdParam.safeParse(req.params.alert_id);
    if (!id.success) throw new ApiError(404, "not_found", "No such alert.");
    res.json(ops.acknowledgeAlert(c, id.data, body.data.reason ?? null));
  });

  r.get("/admin/members", (req, res) => {
    const c = ctx(res);
    sameSiteOnly(req);
    const q = lookupQuery.safeParse(req.query);
    if (!q.success) throw new ApiError(400, "invalid_request", "Give exactly one of login_id and email.");
    res.json({ members: ops.lookup(c, { loginId: q.data.login_id, email: q.data.email }) });
  });

  r.get("/admin/members/:member_id", (req, res) => {
    const c = ctx(res);
    sameSiteOnly(req);
    const q = viewQuery.safeParse(req.query);
    if (!q.success) throw new ApiError(400, "invalid_request", "Say why you need the profile: ?reason=…");
    res.json(ops.view(c, ops.member(req.params.member_id), q.data.reason));
  });

  r.post("/admin/members/:member_id/reset-mfa", (req, res) => {
    const c = ctx(res);
    const reason = reasonOf(req.body);
    const member = ops.member(req.params.member_id);
    res.json({ member_id: member.id, ...ops.resetMfa(c, member, reason) });
  });

  r.post("/admin/members/:member_id/require-password-reset", (req, res) => {
    const c = ctx(res);
    const reason = reasonOf(req.body);
    const member = ops.member(req.params.member_id);
    res.json({ member_id: member.id, ...ops.requirePasswordReset(c, member, reason) });
  });

  r.post("/admin/members/:member_id/revoke-sessions", (req, res) => {
    const c = ctx(res);
    const body = optionalReasonBody.safeParse(req.body ?? {});
    if (!body.success) throw new ApiError(400, "invalid_request", "reason: 3–500 characters.");
    const member = ops.member(req.params.member_id);
    res.json({ member_id: member.id, ...ops.revokeSessions(c, member, body.data.reason ?? null) });
  });

  r.post("/admin/members/:member_id/unlock", (req, res) => {
    const c = ctx(res);
    const body = unlockBody.parse(req.body ?? {});
    const member = ops.member(req.params.member_id);
    res.json({ member_id: member.id, protection_lifted: ops.unlock(c, member, body.reason ?? null) });
  });

  r.get("/admin/audit", (req, res) => {
    const c = ctx(res);
    const q = auditQuery.safeParse(req.query);
    if (!q.success) throw new ApiError(400, "invalid_request", auditQueryProblem(q.error));
    res.json({ entries: ops.audit(c, auditFilter(q.data)) });
  });

  r.get("/admin/audit/verify", (_req, res) => {
    res.json(ops.verifyAudit(ctx(res)));
  });

  // A member site past its PII budget reads again only after an admin approves it.
  r.post("/admin/clients/:client_id/pii-approval", (req, res) => {
    const c = ctx(res);
    const reason = reasonOf(req.body);
    const id = knownClient(req.params.client_id);
    const was = s.budgets.approve({ kind: "client", id });
    ops.record(c, "admin.client_pii_approved", {
      reason,
      outcome: was ? "success" : "failure",
      details: { client_id: id, was_blocked: was },
    });
    // Nothing to approve: a site within its budget keeps its counts (approving after every few
    // reads would make the budget no limit at all).
    if (!was)
      throw new ApiError(409, "not_blocked", "This site is within its PII budget: nothing to approve.");
    // Every lifted block is shown to the other admins (an alert naming this admin is hidden from
    // them: src/admin/admin-ops.ts), so one admin and a site's backend can't read on unseen.
    s.alerts.raise(
      "pii_budget_approved",
      "warning",
      { principal: "admin", principal_id: c.admin.memberId, client_id: id, reason },
      `${c.admin.memberId}|${id}|${s.clock.now().getTime()}`,
    );
    res.json({ client_id: id, was_blocked: was });
  });

  const by = (c: AdminCtx) => ({ adminId: c.admin.memberId, ip: c.ip, requestId: c.requestId });
  function knownClient(raw: unknown): string {
    const id = clientIdParam.safeParse(raw);
    const meta = id.success
      ? new Clients({ db: s.db, clock: s.clock, audit: s.audit, seals: s.seals }).metadata(id.data)
      : undefined;
    if (!id.success || !meta) throw new ApiError(404, "not_found", "No such client.");
    return id.data;
  }

  r.get("/admin/mfa-policy", (_req, res) => {
    ctx(res);
    res.json(toJson(s.policy.global()));
  });

  r.put("/admin/mfa-policy", (req, res) => {
    const c = ctx(res);
    res.json(toJson(s.policy.set(null, parsePolicy(req.body), by(c))));
  });

  r.get("/admin/clients/:client_id/mfa-policy", (req, res) => {
    ctx(res);
    const clientId = knownClient(req.params.client_id);
    const own = s.policy.client(clientId);
    res.json({ client_id: clientId, override: own ? toJson(own) : null, global: toJson(s.policy.global()) });
  });

  r.put("/admin/clients/:client_id/mfa-policy", (req, res) => {
    const c = ctx(res);
    const clientId = knownClient(req.params.client_id);
    res.json({ client_id: clientId, ...toJson(s.policy.set(clientId, parsePolicy(req.body), by(c))) });
  });

  r.delete("/admin/clients/:client_id/mfa-policy", (req, res) => {
    const c = ctx(res);
    s.policy.clear(knownClient(req.params.client_id), by(c));
    res.status(204).end();
  });

  r.get("/admin/mfa-adoption", (_req, res) => {
    res.json(ops.adoption(ctx(res)));
  });

  return r;
}
