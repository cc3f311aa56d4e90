import express, { type Request, type Response, Router } from "express";
import { z } from "zod";
import { ApiError } from "../../errors.js";
import { errors } from "oidc-provider";
import type { Oidc } from "../../oidc/provider.js";
import type { Services } from "../../services.js";
import { satisfies } from "../../sessions/levels.js";
import type { Session } from "../../sessions/sessions.js";
import { setSessionCookie } from "../cookies.js";
import { fromOwnOrigin, locals } from "../middleware.js";
import { consentPage, errorPage, type Lang, loginPage, pickLang } from "../pages.js";

/** Marks an authorization that came in with prompt=none (see silentAuthorization). */
export const SILENT_PARAM = "sekisho_silent";

/**
 * prompt=none with a live Sekisho session but no oidc-provider session yet (the member signed in
 * through our own pages or API) would be answered login_required by oidc-provider, which can't
 * sign anyone in without an interaction. Such a request is passed on without `prompt=none` and
 * marked, so the interaction completes it from the Sekisho session, or answers the prompt=none
 * error, but never shows a page.
 */
export function silentAuthorization(oidc: Oidc, authorizationPath: string) {
  return (req: Request, _res: Response, next: () => void) => {
    if (req.method !== "GET" || req.path !== authorizationPath) return next();
    const url = new URL(req.originalUrl, "http://internal");
    if (url.searchParams.get("prompt") !== "none" || url.searchParams.has(SILENT_PARAM)) return next();
    if (!oidc.sessionOf(req.get("cookie"))) return next();
    url.searchParams.delete("prompt");
    url.searchParams.set(SILENT_PARAM, "1");
    req.url = `${url.pathname}${url.search}`;
    next();
  };
}

const loginForm = z.object({ login_id: z.string().min(1).max(256), password: z.string().min(1).max(1024) });

/**
 * The interaction pages oidc-provider sends members to. A member whose Sekisho session already
 * satisfies the request (level, max_age, prompt=login) is sent straight back; otherwise the login
 * page signs them in through the same PasswordSignIn (throttle, audit) as POST /api/v1/login.
 */
export function interactionRoutes(s: Services, oidc: Oidc): Router {
  const r = Router();
  const { provider } = oidc;

  /** A hosted page's form post: from our own origin only (login CSRF), small, urlencoded. */
  const hostedForm = [
    (req: Request, res: Response, next: () => void) => {
      if (fromOwnOrigin(req, s.config.issuerOrigin)) return next();
      pageHeaders(res, []);
      res
        .status(403)
        .type("html")
        .send(
          errorPage(
            pickLang(req.get("accept-language")),
            "forbidden_origin",
            "Cross-origin requests are not allowed.",
          ),
        );
    },
    express.urlencoded({ extended: false, limit: "8kb" }),
  ];

  const clientView = async (clientId: string | undefined) => {
    const client = clientId ? await provider.Client.find(clientId) : undefined;
    const meta = client?.metadata() as
      | { client_name?: string; logo_uri?: string; redirect_uris?: string[] }
      | undefined;
    return {
      name: meta?.client_name ?? clientId ?? "Sekisho",
      logoUri: meta?.logo_uri,
      redirects: meta?.redirect_uris ?? [],
    };
  };

  /** Is this session good enough for the interaction? */
  const sessionSatisfies = (
    session: Session | null,
    details: { params: Record<string, unknown>; prompt: { reasons: string[] }; iat?: number },
  ) => {
    if (!session) return false;
    const acr = String(details.params.acr_values ?? "")
      .split(" ")
      .find((v) => v.startsWith("urn:sekisho:acr:"));
    if (acr && !satisfies(session.acr, acr)) return false;
    const now = s.clock.now().getTime();
    const maxAge = details.params.max_age;
    if (maxAge !== undefined && now - session.authTime > Number(maxAge) * 1000) return false;
    // prompt=login: only a sign-in made after this authorization request started counts.
    if (details.prompt.reasons.includes("login_prompt") && session.authTime < (details.iat ?? 0) * 1000)
      return false;
    return true;
  };

  /** Pages are framed by nothing, cached by nobody, and may post to us and redirect to the client. */
  const pageHeaders = (res: Response, redirects: string[]) => {
    res.setHeader("Cache-Control", "no-store");
    // Same-origin referrers let the browser send our Origin on the form post (no-referrer makes it "null").
    res.setHeader("Referrer-Policy", "same-origin");
    const origins = [...new Set(redirects.map((u) => new URL(u).origin))].join(" ");
    res.setHeader(
      "Content-Security-Policy",
      `default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; form-action 'self' ${origins}; frame-ancestors 'none'; base-uri 'none'`,
    );
  };

  const render = async (
    req: Request,
    res: Response,
    status: number,
    error?: "invalid" | "throttled" | "badRequest",
    loginId?: string,
  ) => {
    const details = await provider.interactionDetails(req, res);
    const client = await clientView(details.params.client_id as string | undefined);
    const lang: Lang = pickLang(req.get("accept-language"), req.query.lang);
    pageHeaders(res, client.redirects);
    const base = `/interaction/${encodeURIComponent(details.uid)}`;
    const switchHref = `${base}?lang=${lang === "ja" ? "en" : "ja"}`;
    if (details.prompt.name === "consent") {
      const scopes = String(details.params.scope ?? "")
        .split(" ")
        .filter(Boolean);
      res
        .status(status)
        .type("html")
        .send(consentPage({ lang, action: `${base}/consent`, clientName: client.name, scopes, switchHref }));
      return;
    }
    res
      .status(status)
      .type("html")
      .send(
        loginPage({
          lang,
          action: `${base}/login?lang=${lang}`,
          clientName: client.name,
          logoUri: client.logoUri,
          error,
          loginId,
          switchHref,
        }),
      );
  };

  const finishLogin = async (req: Request, res: Response, session: Session) => {
    const accountId = oidc.subjectOf(session.memberId);
    if (!accountId) throw new ApiError(401, "unauthenticated", "Sign in first.");
    await provider.interactionFinished(
      req,
      res,
      { login: { accountId, acr: session.acr, amr: session.amr, ts: Math.floor(session.authTime / 1000) } },
      { mergeWithLastSubmission: false },
    );
  };

  r.get("/interaction/:uid", async (req, res) => {
    const details = await provider.interactionDetails(req, res);
    if (details.prompt.name === "login") {
      const session = oidc.sessionOf(req.get("cookie"));
      if (sessionSatisfies(session, details) && session) return finishLogin(req, res, session);
    }
    // A prompt=none request (see silentAuthorization) never shows a page: answer the error instead.
    if (details.params[SILENT_PARAM]) {
      const error = details.prompt.name === "consent" ? "consent_required" : "login_required";
      await provider.interactionFinished(req, res, { error }, { mergeWithLastSubmission: false });
      return;
    }
    return render(req, res, 200);
  });

  r.post("/interaction/:uid/login", ...hostedForm, async (req, res) => {
    const details = await provider.interactionDetails(req, res);
    if (details.prompt.name !== "login") return render(req, res, 400, "badRequest");
    const form = loginForm.safeParse(req.body);
    if (!form.success) return render(req, res, 400, "badRequest");
    const l = locals(res);
    try {
      const result = await s.signIn.signIn(
        { loginId: form.data.login_id, password: form.data.password },
        { ip: l.ip, requestId: l.requestId, userAgent: req.get("user-agent") ?? null, previousToken: null },
      );
      if (result.status !== "authenticated") return render(req, res, 401, "invalid", form.data.login_id);
      setSessionCookie(res, result.token, s.config.secureCookies);
      return finishLogin(req, res, result.session);
    } catch (err) {
      if (err instanceof ApiError && err.status === 429) {
        for (const [k, v] of Object.entries(err.headers ?? {})) res.setHeader(k, v);
        return render(req, res, 429, "throttled", form.data.login_id);
      }
      if (err instanceof ApiError && err.status === 400)
        return render(req, res, 400, "invalid", form.data.login_id);
      throw err;
    }
  });

  r.post("/interaction/:uid/consent", ...hostedForm, async (req, res) => {
    const details = await provider.interactionDetails(req, res);
    if (details.prompt.name !== "consent" || !details.session?.accountId)
      return render(req, res, 400, "badRequest");
    if ((req.body as { decision?: string }).decision !== "allow") {
      await provider.interactionFinished(
        req,
        res,
        { error: "access_denied", error_description: "The member declined." },
        { mergeWithLastSubmission: false },
      );
      return;
    }
    const grant = new provider.Grant({
      accountId: details.session.accountId,
      clientId: details.params.client_id as string,
    });
    const missing = details.prompt.details as { missingOIDCScope?: string[]; missingOIDCClaims?: string[] };
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(" "));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  });

  // Protocol errors on these pages (expired interaction, missing cookie) are shown, never redirected.
  r.use("/interaction", (err: unknown, req: Request, res: Response, next: (err?: unknown) => void) => {
    if (!(err instanceof errors.OIDCProviderError)) return next(err);
    pageHeaders(res, []);
    res
      .status(err.statusCode ?? 400)
      .type("html")
      .send(
        errorPage(
          pickLang(req.get("accept-language"), req.query.lang),
          err.error,
          err.error_description ?? "",
        ),
      );
  });

  return r;
}
