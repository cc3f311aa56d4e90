import { eq } from "drizzle-orm";
import { type Request, type Response, Router } from "express";
import QRCode from "qrcode";
import { z } from "zod";
import { members } from "../../db/schema.js";
import { ApiError } from "../../errors.js";
import { cleanPasskeyName } from "../../factors/passkeys.js";
import { emailInput } from "../../members/profile-input.js";
import type { Services } from "../../services.js";
import { deviceTokenFrom } from "../../sessions/devices.js";
import { endOwnSession, forgetOwnDevice, logOut, memberEventRows } from "../../sessions/member-actions.js";
import { type Session, sessionTokenFrom } from "../../sessions/sessions.js";
import {
  type AccountError,
  accountPage,
  type CodeMethod,
  enrolPage,
  mfaPage,
  type Notice,
  reauthNotice,
  recoveryCodesPage,
  totpEnrolPage,
} from "../account-pages.js";
import { clearSessionCookie, setDeviceCookie, setSessionCookie } from "../cookies.js";
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
import { locals } from "../middleware.js";
import { type Lang, type LoginError, loginPage, retryAfterOf } from "../pages.js";
import { passkeyIdParam } from "./factors.js";

const codeForm = z.object({ code: z.string().min(1).max(64) });
const nameForm = z.object({ name: z.string().max(256) });
const NOTICES = new Set<string>([
  "passkey",
  "totp",
  "removed",
  "renamed",
  "email_sent",
  "email_change",
  "password",
]);
const ERRORS = new Set<string>([
  "wrong_password",
  "weak_password",
  "throttled",
  "invalid",
  "factor_required",
]);
const emailForm = z.object({ email: emailInput });
const passwordForm = z.object({
  current_password: z.string().min(1).max(1024),
  new_password: z.string().min(1).max(1024),
});
const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

/**
 * Where a re-authentication returns to (`?then=`): the account page's section of the change that
 * asked for it. A fixed list of our own paths, never a URL from the request (no open redirect).
 */
const THEN: Record<string, string> = {
  passkeys: "/account#passkeys",
  totp: "/account#totp",
  recovery: "/account#recovery",
  email: "/account#email",
  password: "/account#password",
};
/** The `then` of a change's path (the form that was refused for an old sign-in). */
const thenOfPath = (path: string): string | undefined =>
  path.startsWith("/account/passkeys")
    ? "passkeys"
    : path.startsWith("/account/totp")
      ? "totp"
      : path === "/account/recovery-codes"
        ? "recovery"
        : path.startsWith("/account/email")
          ? "email"
          : path === "/account/password"
            ? "password"
            : undefined;

/**
 * The hosted account pages (`/account`): sign in (password, passkey, second step), see and manage
 * factors, sessions, devices and recent security events. Forms work without JavaScript; adding a
 * passkey needs the passkey script. Every change goes through the same services as the JSON API.
 */
export function accountRoutes(s: Services): Router {
  const r = Router();
  const form = hostedForm(s.config.issuerOrigin);
  const lang = reqLang;
  const ctx = (res: Response) => ({ ip: locals(res).ip, requestId: locals(res).requestId });
  const html = (res: Response, status: number, body: string) => {
    pageHeaders(res);
    res.status(status).type("html").send(body);
  };
  const sessionOf = (req: Request, opts: { limited?: boolean } = {}): Session | null => {
    const token = sessionTokenFrom(req.get("cookie"));
    const session = token ? s.sessions.authenticate(token) : null;
    return session?.kind === "full" || (opts.limited && session?.kind === "limited") ? session : null;
  };
  const backTo = (res: Response, where: string) => res.redirect(303, where);
  /** The re-authentication's return (`?then=`), if it is one of ours. */
  const thenOf = (req: Request): string | undefined => {
    const then = req.query.then;
    return typeof then === "string" && Object.hasOwn(THEN, then) ? then : undefined;
  };
  /** Where a finished sign-in goes: the section a re-authentication came from, else the account page. */
  const doneTo = (req: Request) => THEN[thenOf(req) ?? ""] ?? "/account";
  /** The query of the sign-in pages' own links and forms: language, and the re-authentication's. */
  const signInQuery = (req: Request, l: Lang) => {
    const then = thenOf(req);
    return `${req.query.reauth ? "reauth=1&" : ""}lang=${l}${then ? `&then=${then}` : ""}`;
  };

  const showLogin = (
    req: Request,
    res: Response,
    status: number,
    error?: LoginError,
    loginId?: string,
    challenge?: object,
  ) => {
    const l = lang(req);
    const reauth = !!req.query.reauth;
    // A re-authentication is for the member already signed in here: their login ID (stored in
    // clear, no profile read) is filled in.
    const current = reauth && loginId === undefined ? sessionOf(req, { limited: true }) : null;
    html(
      res,
      status,
      loginPage({
        lang: l,
        action: `/account/login?${signInQuery(req, l)}`,
        clientName: l === "ja" ? "関所（Sekisho）アカウント" : "your Sekisho account",
        error,
        retryAfterSeconds: retryAfterOf(res),
        notice: reauth ? reauthNotice(l) : undefined,
        loginId: loginId ?? (current ? s.enrolment.member(current).loginId : undefined),
        switchHref: `/account/login?${signInQuery(req, l === "ja" ? "en" : "ja")}`,
        next: doneTo(req),
        challenge,
      }),
    );
  };

  const showMfa = (
    req: Request,
    res: Response,
    status: number,
    memberId: string,
    token?: string,
    error?: CodeMethod,
  ) => {
    const l = lang(req);
    const then = thenOf(req);
    const methods = s.factors.methods(memberId);
    html(
      res,
      status,
      mfaPage({
        lang: l,
        methods,
        mfaToken: token,
        action: `/account/mfa?lang=${l}${then ? `&then=${then}` : ""}`,
        next: doneTo(req),
        error,
        switchHref: token
          ? mfaLangSwitch("/account/mfa", l, token, methods, then ? `&then=${then}` : "")
          : undefined,
      }),
    );
  };

  r.get("/account/login", (req, res) => showLogin(req, res, 200));

  r.post("/account/login", ...form, async (req, res) => {
    const body = loginForm.safeParse(req.body);
    if (!body.success) return showLogin(req, res, 400, "badRequest");
    const step = await passwordStep(s, req, res, body.data);
    if (!step.ok) return showLogin(req, res, step.status, step.error, body.data.login_id, step.challenge);
    const result = step.value;
    if (result.status === "failed") return showLogin(req, res, 401, "invalid", body.data.login_id);
    if (result.status === "password_reset_required")
      return showLogin(req, res, 403, "resetRequired", body.data.login_id);
    if (result.status === "mfa_required") return showMfa(req, res, 200, result.memberId, result.mfaToken);
    // (mfa_enrollment_required: a limited session; the account page shows only adding a factor.)
    setSessionCookie(res, result.token, s.config.secureCookies);
    return backTo(res, doneTo(req));
  });

  r.post("/account/mfa", ...form, async (req, res) => {
    const again = postedLangSwitch(s, req.body);
    if (again === "expired") return showLogin(req, res, 401, "expired");
    if (again) return showMfa(req, res, 200, again.memberId, again.mfaToken);
    const body = mfaForm.safeParse(req.body);
    if (!body.success) return showLogin(req, res, 400, "badRequest");
    const session = sessionOf(req);
    const subject = subjectFor(body.data.mfa_token, session);
    if (!subject) return showLogin(req, res, 401, "expired");
    const step = await secondStep(s, req, res, subject, body.data);
    if (!step.ok) return showLogin(req, res, step.status, step.error);
    const result = step.value;
    if (result.status === "authenticated") {
      setSessionCookie(res, result.token, s.config.secureCookies);
      if (result.deviceToken) setDeviceCookie(res, result.deviceToken, s.config.secureCookies);
      return backTo(res, doneTo(req));
    }
    const memberId =
      session?.memberId ?? (body.data.mfa_token ? s.mfaTokens.find(body.data.mfa_token)?.memberId : null);
    if (!memberId) return showLogin(req, res, 401, "expired");
    return showMfa(req, res, 401, memberId, body.data.mfa_token, body.data.method);
  });

  r.get("/account", (req, res) => {
    const session = sessionOf(req, { limited: true });
    if (!session) return backTo(res, `/account/login?lang=${lang(req)}`);
    if (session.kind === "limited") {
      // The MFA policy wants a factor before anything else.
      return html(
        res,
        200,
        enrolPage(lang(req), {
          totp: s.policy.enrolmentAllowed("totp", s.enrolment.member(session).role, { required: true }),
          passkey: s.policy.enrolmentAllowed("webauthn", s.enrolment.member(session).role, {
            required: true,
          }),
        }),
      );
    }
    const member = s.enrolment.member(session);
    const f = s.factors.of(session.memberId);
    const device = s.devices.recognise(deviceTokenFrom(req.get("cookie")), session.memberId);
    const events = memberEventRows(s, session.memberId, 20);
    const notice =
      typeof req.query.notice === "string" && NOTICES.has(req.query.notice) ? req.query.notice : undefined;
    const error =
      typeof req.query.error === "string" && ERRORS.has(req.query.error) ? req.query.error : undefined;
    const email =
      s.vault.read(session.memberId, ["email"], {
        actorType: "member",
        actorId: session.memberId,
        reason: "self_view",
        ...ctx(res),
      }).email ?? null;
    html(
      res,
      200,
      accountPage(
        lang(req),
        {
          loginId: member.loginId,
          email,
          passwordMinLength: s.config.passwordMinLength,
          emailVerified:
            s.db
              .select({ v: members.emailVerified })
              .from(members)
              .where(eq(members.id, session.memberId))
              .get()?.v ?? false,
          acr: session.acr,
          totp: f.totp,
          passkeys: s.factors.passkeys.list(session.memberId).map((p) => ({
            id: p.id,
            name: p.name,
            createdAt: iso(p.createdAt) as string,
            lastUsedAt: iso(p.lastUsedAt),
            synced: p.backupEligible,
            suspected: p.suspectedCloneAt !== null,
          })),
          recoveryCodes: f.recoveryCodes,
          sessions: s.sessions.listActive(session.memberId).map((x) => ({
            id: x.id,
            current: x.id === session.id,
            lastSeenAt: iso(x.lastSeenAt) as string,
            userAgent: x.userAgent,
            ip: x.ip,
          })),
          devices: s.devices.list(session.memberId).map((d) => ({
            id: d.id,
            current: d.id === device?.id,
            lastSeenAt: iso(d.lastSeenAt) as string,
            userAgent: d.userAgent,
          })),
          events: events.map((x) => ({
            at: iso(x.at) as string,
            type: x.action,
            outcome: x.outcome,
            ip: x.ip,
          })),
        },
        notice as Notice | undefined,
        error as AccountError | undefined,
        req.query.in === "email" || req.query.in === "password" ? req.query.in : undefined,
      ),
    );
  });

  /** A signed-in form post; an old sign-in is sent to sign in again for sensitive changes. */
  const signedIn =
    (
      handler: (req: Request, res: Response, session: Session) => Promise<void> | void,
      opts: { limited?: boolean } = {},
    ) =>
    async (req: Request, res: Response) => {
      const session = sessionOf(req, opts);
      if (!session) return backTo(res, "/account/login");
      try {
        await handler(req, res, session);
      } catch (err) {
        if (err instanceof ApiError && err.code === "reauthentication_required") {
          const then = thenOfPath(req.baseUrl + req.path);
          return backTo(res, `/account/login?reauth=1&lang=${lang(req)}${then ? `&then=${then}` : ""}`);
        }
        if (err instanceof ApiError && err.code === "factor_required")
          return backTo(res, "/account?error=factor_required");
        if (err instanceof ApiError && err.status < 500) return backTo(res, "/account");
        throw err;
      }
    };

  const qr = (uri: string) => QRCode.toString(uri, { type: "svg", errorCorrectionLevel: "M", margin: 2 });

  r.post(
    "/account/totp",
    ...form,
    signedIn(
      async (req, res, session) => {
        const { secret, otpauthUri } = s.enrolment.beginTotp(session);
        html(res, 200, totpEnrolPage(lang(req), { qrSvg: await qr(otpauthUri), secret }));
      },
      { limited: true },
    ),
  );

  r.post(
    "/account/totp/verify",
    ...form,
    signedIn(
      async (req, res, session) => {
        const body = codeForm.safeParse(req.body);
        const codes = body.success ? s.enrolment.activateTotp(session, body.data.code, ctx(res)) : null;
        if (codes) {
          const upgraded = s.enrolment.upgradeLimited(session, "totp");
          if (upgraded) setSessionCookie(res, upgraded.token, s.config.secureCookies);
          return html(res, 200, recoveryCodesPage(lang(req), codes));
        }
        const pending = s.enrolment.pendingTotp(session);
        if (!pending) return backTo(res, "/account");
        html(
          res,
          400,
          totpEnrolPage(lang(req), {
            qrSvg: await qr(pending.otpauthUri),
            secret: pending.secret,
            error: true,
          }),
        );
      },
      { limited: true },
    ),
  );

  r.post(
    "/account/totp/remove",
    ...form,
    signedIn((_req, res, session) => {
      s.enrolment.removeTotp(session, ctx(res));
      backTo(res, "/account?notice=removed");
    }),
  );

  r.post(
    "/account/recovery-codes",
    ...form,
    signedIn((req, res, session) => {
      html(res, 200, recoveryCodesPage(lang(req), s.enrolment.regenerateRecoveryCodes(session, ctx(res))));
    }),
  );

  r.post(
    "/account/passkeys/:id/rename",
    ...form,
    signedIn((req, res, session) => {
      const id = passkeyIdParam.safeParse(req.params.id);
      const body = nameForm.safeParse(req.body);
      const name = body.success ? cleanPasskeyName(body.data.name) : null;
      // Said only when it happened: a blank name or another member's passkey changes nothing.
      const done = id.success && name !== null && s.enrolment.renamePasskey(session, id.data, name, ctx(res));
      backTo(res, done ? "/account?notice=renamed" : "/account?error=invalid");
    }),
  );

  r.post(
    "/account/passkeys/:id/remove",
    ...form,
    signedIn((req, res, session) => {
      const id = passkeyIdParam.safeParse(req.params.id);
      const done = id.success && s.enrolment.removePasskey(session, id.data, ctx(res));
      backTo(res, done ? "/account?notice=removed" : "/account?error=invalid");
    }),
  );

  r.post(
    "/account/sessions/:id/end",
    ...form,
    signedIn((req, res, session) => {
      endOwnSession(s, session, String(req.params.id), ctx(res));
      backTo(res, "/account");
    }),
  );

  r.post(
    "/account/devices/:id/remove",
    ...form,
    signedIn((req, res, session) => {
      const done = forgetOwnDevice(s, session, String(req.params.id), ctx(res));
      backTo(res, done ? "/account?notice=removed" : "/account?error=invalid");
    }),
  );

  r.post(
    "/account/email/resend",
    ...form,
    signedIn((_req, res, session) => {
      try {
        s.emails.resend(session, ctx(res));
      } catch (err) {
        if (err instanceof ApiError && err.status === 429) return backTo(res, "/account?error=throttled");
        throw err;
      }
      backTo(res, "/account?notice=email_sent");
    }),
  );

  r.post(
    "/account/email",
    ...form,
    signedIn((req, res, session) => {
      const body = emailForm.safeParse(req.body);
      if (!body.success) return backTo(res, "/account?error=invalid&in=email#email");
      try {
        s.emails.requestChange(session, body.data.email, ctx(res));
      } catch (err) {
        if (err instanceof ApiError && err.status === 429)
          return backTo(res, "/account?error=throttled&in=email#email");
        if (err instanceof ApiError && err.code === "invalid_request")
          return backTo(res, "/account?error=invalid&in=email#email");
        throw err;
      }
      backTo(res, "/account?notice=email_change");
    }),
  );

  r.post(
    "/account/password",
    ...form,
    signedIn(async (req, res, session) => {
      const body = passwordForm.safeParse(req.body);
      if (!body.success) return backTo(res, "/account?error=invalid&in=password#password");
      try {
        await s.passwordChange.change(session, body.data.current_password, body.data.new_password, {
          ...ctx(res),
          deviceToken: deviceTokenFrom(req.get("cookie")),
        });
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        if (err.status === 429) return backTo(res, "/account?error=throttled&in=password#password");
        if (err.code === "invalid_credentials")
          return backTo(res, "/account?error=wrong_password&in=password#password");
        if (err.code === "weak_password")
          return backTo(res, "/account?error=weak_password&in=password#password");
        throw err;
      }
      backTo(res, "/account?notice=password");
    }),
  );

  r.post("/account/logout", ...form, (req, res) => {
    const session = sessionOf(req, { limited: true });
    if (session) logOut(s, session, ctx(res));
    clearSessionCookie(res, s.config.secureCookies);
    backTo(res, "/account/login");
  });

  return r;
}
