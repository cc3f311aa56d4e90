import { type Request, type Response, Router } from "express";
import { z } from "zod";
import { type AdminCtx, AdminOps } from "../../admin/admin-ops.js";
import { ApiError } from "../../errors.js";
import type { FactorMethod } from "../../factors/methods.js";
import { emailInput } from "../../members/profile-input.js";
import type { Services } from "../../services.js";
import { type Session, sessionTokenFrom } from "../../sessions/sessions.js";
import { digits } from "../../validation.js";
import { mfaPage } from "../account-pages.js";
import {
  alertsPage,
  auditPage,
  consoleText,
  dashboardPage,
  memberPage,
  membersPage,
  policyPage,
} from "../admin-pages.js";
import { setDeviceCookie, setSessionCookie } from "../cookies.js";
import { hostedForm, pageHeaders, reqLang } from "../hosted.js";
import {
  loginForm,
  mfaForm,
  mfaLangSwitch,
  passwordStep,
  postedLangSwitch,
  secondStep,
  subjectFor,
} from "../hosted-sign-in.js";
import { fromAnotherSite, locals } from "../middleware.js";
import { errorPage, type LoginError, loginPage, retryAfterOf } from "../pages.js";
import { alertIdParam, auditFilter, auditQuery, parsePolicy, reasonText } from "./admin.js";

const reasonForm = z.object({ reason: reasonText });
const policyForm = z.object({
  mode: z.enum(["off", "optional", "required"]),
  grace_days: digits(0, 365),
  methods: z.union([z.enum(["totp", "webauthn"]), z.array(z.enum(["totp", "webauthn"]))]),
  phishing_resistant: z.literal("true").optional(),
});
/** A query value as typed, for the form to show again (a repeated one, as its values joined). */
const typed = (v: unknown): string | undefined =>
  typeof v === "string" ? v : Array.isArray(v) ? v.map(String).join(",") : undefined;
const ACTIONS = ["revoke-sessions", "reset-mfa", "require-password-reset", "unlock"] as const;

/**
 * The admin console (`/admin`): server-rendered pages over the same operations as the admin API
 * (src/admin/admin-ops.ts): sign-in with a passkey, dashboard (attack status, alerts, MFA
 * adoption), member lookup and view (a reason for personal data, budgeted), member actions, the
 * MFA policy, the audit log with chain verification. Same standards as the hosted pages: strict
 * CSP, forms from our own origin only, no caching.
 */
export function adminConsoleRoutes(s: Services): Router {
  const r = Router();
  const ops = new AdminOps(s);
  const form = hostedForm(s.config.issuerOrigin);
  const lang = reqLang;
  const html = (res: Response, status: number, body: string) => {
    pageHeaders(res);
    res.status(status).type("html").send(body);
  };
  const sessionOf = (req: Request): Session | null => {
    const token = sessionTokenFrom(req.get("cookie"));
    return token ? s.sessions.authenticate(token) : null;
  };

  /** The admin context, or the answer that replaces the page (sign in, step up, forbidden). */
  const admin = (req: Request, res: Response): AdminCtx | null => {
    try {
      return { admin: ops.authorize(sessionOf(req)), ip: locals(res).ip, requestId: locals(res).requestId };
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      if (err.status === 403) {
        html(res, 403, errorPage(lang(req), "forbidden", consoleText(lang(req)).forbidden, { page: true }));
      } else {
        res.redirect(
          303,
          `/admin/login?lang=${lang(req)}${err.code === "step_up_required" ? "&step_up=1" : ""}`,
        );
      }
      return null;
    }
  };

  // ---- sign-in: a passkey (passwordless), or password and then the passkey as the second step.
  const showLogin = (req: Request, res: Response, status: number, error?: LoginError, challenge?: object) => {
    const l = lang(req);
    html(
      res,
      status,
      loginPage({
        lang: l,
        action: `/admin/login?lang=${l}`,
        clientName: consoleText(l).console,
        error,
        retryAfterSeconds: retryAfterOf(res),
        notice: req.query.step_up ? consoleText(l).stepUp : undefined,
        switchHref: `/admin/login?lang=${l === "ja" ? "en" : "ja"}`,
        next: "/admin",
        challenge,
      }),
    );
  };
  /** The second step after an admin's password (passkey, or TOTP where the console accepts it). */
  const showMfa = (req: Request, res: Response, methods: FactorMethod[], mfaToken: string) => {
    const l = lang(req);
    html(
      res,
      200,
      mfaPage({
        lang: l,
        methods,
        mfaToken,
        action: `/admin/mfa?lang=${l}`,
        next: "/admin",
        switchHref: mfaLangSwitch("/admin/mfa", l, mfaToken, methods),
      }),
    );
  };
  r.get("/admin/login", (req, res) => showLogin(req, res, 200));
  r.post("/admin/login", ...form, async (req, res) => {
    const body = loginForm.safeParse(req.body);
    if (!body.success) return showLogin(req, res, 400, "badRequest");
    const step = await passwordStep(s, req, res, body.data);
    if (!step.ok) return showLogin(req, res, step.status, step.error, step.challenge);
    const result = step.value;
    if (result.status === "failed") return showLogin(req, res, 401, "invalid");
    if (result.status === "password_reset_required") return showLogin(req, res, 403, "resetRequired");
    if (result.status !== "mfa_required") {
      // An admin without a second factor yet (mfa_enrollment_required: a limited session that can
      // only add one): to the account page, which offers adding a passkey; then the console.
      setSessionCookie(res, result.token, s.config.secureCookies);
      res.redirect(303, `/account?lang=${lang(req)}`);
      return;
    }
    showMfa(req, res, result.methods, result.mfaToken);
  });
  r.post("/admin/mfa", ...form, async (req, res) => {
    const again = postedLangSwitch(s, req.body);
    if (again === "expired") return showLogin(req, res, 401, "expired");
    if (again) return showMfa(req, res, again.methods, again.mfaToken);
    const body = mfaForm.safeParse(req.body);
    if (!body.success) return showLogin(req, res, 400, "badRequest");
    const subject = subjectFor(body.data.mfa_token, null);
    if (!subject) return showLogin(req, res, 401, "expired");
    const step = await secondStep(s, req, res, subject, body.data);
    if (!step.ok) return showLogin(req, res, step.status, step.error);
    if (step.value.status !== "authenticated") return showLogin(req, res, 401, "invalid");
    setSessionCookie(res, step.value.token, s.config.secureCookies);
    if (step.value.deviceToken) setDeviceCookie(res, step.value.deviceToken, s.config.secureCookies);
    // (TOTP alone is below the console's level: /admin sends the admin back to sign in with the passkey.)
    res.redirect(303, "/admin");
  });

  // ---- pages
  r.get("/admin", (req, res) => {
    const c = admin(req, res);
    if (!c) return;
    const adoption = ops.adoption(c);
    html(
      res,
      200,
      dashboardPage(lang(req), {
        underAttack: s.guard.underAttack(),
        // The newest ten, and up to ten older critical ones nobody has handled yet.
        alerts: ops.alerts(c, 10, 10),
        adoption,
        policyMode: adoption.policy.mode,
      }),
    );
  });

  r.get("/admin/alerts", (req, res) => {
    const c = admin(req, res);
    if (!c) return;
    html(res, 200, alertsPage(lang(req), ops.alerts(c, 200)));
  });

  r.get("/admin/members", (req, res) => {
    const c = admin(req, res);
    if (!c) return;
    const l = lang(req);
    const q = typeof req.query.q === "string" ? req.query.q.trim().slice(0, 256) : "";
    if (!q) return html(res, 200, membersPage(l, { query: "", results: null }));
    // A search another site linked to is shown, not run: it decrypts against the admin's budget.
    if (fromAnotherSite(req))
      return html(res, 200, membersPage(l, { query: q, results: null, error: consoleText(l).confirmSearch }));
    const email = q.includes("@") ? emailInput.safeParse(q) : null;
    if (email && !email.success)
      return html(res, 400, membersPage(l, { query: q, results: null, error: consoleText(l).invalid }));
    try {
      const results = ops.lookup(c, email ? { email: email.data as string } : { loginId: q });
      html(res, 200, membersPage(l, { query: q, results }));
    } catch (err) {
      if (err instanceof ApiError && err.code === "pii_budget_exceeded")
        return html(res, 429, membersPage(l, { query: q, results: null, error: consoleText(l).budget }));
      throw err;
    }
  });

  r.get("/admin/members/:member_id", (req, res) => {
    const c = admin(req, res);
    if (!c) return;
    const l = lang(req);
    const member = ops.member(req.params.member_id);
    const notice = typeof req.query.done === "string" ? consoleText(l).done : undefined;
    html(
      res,
      200,
      memberPage(l, { member: ops.open(c, member), profile: null, ...(notice ? { notice } : {}) }),
    );
  });

  // Personal data: a POST with the reason in the body (a GET could be triggered from another
  // site, and would put the reason in logs, history and Referer).
  r.post("/admin/members/:member_id/view", ...form, (req, res) => {
    const c = admin(req, res);
    if (!c) return;
    const l = lang(req);
    const member = ops.member(req.params.member_id);
    const reason = reasonForm.safeParse(req.body);
    if (!reason.success) {
      return html(
        res,
        400,
        memberPage(l, { member: ops.summary(member), profile: null, error: consoleText(l).needReason }),
      );
    }
    try {
      const full = ops.view(c, member, reason.data.reason);
      html(res, 200, memberPage(l, { member: full, profile: full.profile as Record<string, string> }));
    } catch (err) {
      if (err instanceof ApiError && err.code === "pii_budget_exceeded") {
        return html(
          res,
          429,
          memberPage(l, { member: ops.summary(member), profile: null, error: consoleText(l).budget }),
        );
      }
      throw err;
    }
  });

  r.post("/admin/alerts/:alert_id/acknowledge", ...form, (req, res) => {
    const c = admin(req, res);
    if (!c) return;
    const id = alertIdParam.safeParse(req.params.alert_id);
    if (!id.success) throw new ApiError(404, "not_found", "No such alert.");
    ops.acknowledgeAlert(c, id.data, null);
    res.redirect(303, `/admin/alerts?lang=${lang(req)}`);
  });

  for (const action of ACTIONS) {
    r.post(`/admin/members/:member_id/${action}`, ...form, (req, res) => {
      const c = admin(req, res);
      if (!c) return;
      const l = lang(req);
      const member = ops.member(req.params.member_id);
      const body = reasonForm.safeParse(req.body);
      if (!body.success)
        return html(
          res,
          400,
          memberPage(l, { member: ops.summary(member), profile: null, error: consoleText(l).needReason }),
        );
      if (action === "revoke-sessions") ops.revokeSessions(c, member, body.data.reason);
      else if (action === "reset-mfa") ops.resetMfa(c, member, body.data.reason);
      else if (action === "require-password-reset") ops.requirePasswordReset(c, member, body.data.reason);
      else ops.unlock(c, member, body.data.reason);
      res.redirect(303, `/admin/members/${member.id}?done=${action}`);
    });
  }

  r.get("/admin/policy", (req, res) => {
    const c = admin(req, res);
    if (!c) return;
    const p = s.policy.global();
    const l = lang(req);
    html(
      res,
      200,
      policyPage(l, {
        mode: p.mode,
        grace_days: p.graceDays,
        methods: p.methods,
        phishing_resistant: p.phishingResistant,
        ...(req.query.saved ? { notice: consoleText(l).saved } : {}),
      }),
    );
  });

  r.post("/admin/policy", ...form, (req, res) => {
    const c = admin(req, res);
    if (!c) return;
    const l = lang(req);
    const parsed = policyForm.safeParse(req.body);
    const input = parsed.success
      ? {
          mode: parsed.data.mode,
          grace_days: parsed.data.grace_days,
          methods: [parsed.data.methods].flat(),
          phishing_resistant: parsed.data.phishing_resistant === "true",
        }
      : null;
    try {
      if (!input) throw new ApiError(400, "invalid_request", "bad form");
      s.policy.set(null, parsePolicy(input), { adminId: c.admin.memberId, ip: c.ip, requestId: c.requestId });
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      const p = s.policy.global();
      return html(
        res,
        400,
        policyPage(l, {
          mode: p.mode,
          grace_days: p.graceDays,
          methods: p.methods,
          phishing_resistant: p.phishingResistant,
          error: `${consoleText(l).invalid} ${err.description}`,
        }),
      );
    }
    res.redirect(303, "/admin/policy?saved=1");
  });

  r.get("/admin/audit", (req, res) => {
    const c = admin(req, res);
    if (!c) return;
    const l = lang(req);
    // `lang` picks the page's language, not a filter.
    const raw = Object.fromEntries(Object.entries(req.query).filter(([k, v]) => v !== "" && k !== "lang"));
    // A filter given twice (`member_id=a&member_id=b`) is an array here, and refused as bad.
    const q = auditQuery.safeParse(raw);
    // A bad filter lists nothing: the whole log under the admin's filter would pass for filtered.
    const entries = q.success ? ops.audit(c, auditFilter(q.data, 100)) : [];
    const last = entries.at(-1);
    const older =
      entries.length === 100 && last
        ? `/admin/audit?${new URLSearchParams({ ...(raw as Record<string, string>), before: String(last.seq) }).toString()}`
        : null;
    html(
      res,
      q.success ? 200 : 400,
      auditPage(l, {
        entries,
        verify: ops.verifyAudit(c),
        // As typed (escaped on the page), so a bad value can be seen and mended.
        filters: {
          member_id: typed(raw.member_id),
          actor_id: typed(raw.actor_id),
          action: typed(raw.action),
          request_id: typed(raw.request_id),
          ip: typed(raw.ip),
          since: typed(raw.since),
          until: typed(raw.until),
        },
        olderHref: older,
        invalidFilter: !q.success,
      }),
    );
  });

  // A missing member or a bad parameter is a page, not JSON: the app's page error handler
  // (src/http/app.ts) answers every page path so.

  return r;
}
