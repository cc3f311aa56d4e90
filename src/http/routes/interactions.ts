import type { ServerResponse } from "node:http";
import { eq } from "drizzle-orm";
import { type Request, type Response, Router } from "express";
import { decodeJwt } from "jose";
import { errors } from "oidc-provider";
import { members } from "../../db/schema.js";
import { ApiError } from "../../errors.js";
import type { FactorMethod } from "../../factors/methods.js";
import type { Oidc } from "../../oidc/provider.js";
import { meets, type Requirement } from "../../policy/mfa-policy.js";
import type { Services } from "../../services.js";
import { ACR, requestedLevel } from "../../sessions/levels.js";
import type { Session } from "../../sessions/sessions.js";
import { type CodeMethod, mfaPage } from "../account-pages.js";
import { setDeviceCookie, setSessionCookie } from "../cookies.js";
import { hostedForm as hostedFormGuard, pageHeaders, reqLang, sendHtml } from "../hosted.js";
import {
  loginForm,
  mfaForm,
  mfaLangSwitch,
  passwordStep,
  postedLangSwitch,
  secondStep,
  subjectFor,
} from "../hosted-sign-in.js";
import { consentPage, errorPage, type Lang, type LoginError, loginPage, retryAfterOf } from "../pages.js";

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

/** The level an authorization asks for through acr_values (see requestedLevel), if any. */
export function requestedAcr(params: Record<string, unknown>): string | undefined {
  return requestedLevel(params.acr_values) ?? undefined;
}

export type InteractionDetails = Awaited<ReturnType<Oidc["provider"]["interactionDetails"]>>;

/**
 * The login (or consent) page of an interaction, for the interaction routes and the form lane
 * (src/http/form-lane.ts) alike: written on the plain response, so both send the same bytes.
 * `loginIdOf` (a subject's login ID, stored in clear) lets the consent page say who is signed in.
 */
export function loginPages(oidc: Oidc, loginIdOf?: (sub: string) => string | undefined) {
  const { provider } = oidc;
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

  const renderLoginOrConsent = async (
    res: ServerResponse,
    details: InteractionDetails,
    lang: Lang,
    status: number,
    page: { error?: LoginError | undefined; loginId?: string | undefined; challenge?: object | undefined },
  ) => {
    const client = await clientView(details.params.client_id as string | undefined);
    pageHeaders(res, client.redirects);
    const base = `/interaction/${encodeURIComponent(details.uid)}`;
    const switchHref = `${base}?lang=${lang === "ja" ? "en" : "ja"}`;
    if (details.prompt.name === "consent") {
      const scopes = String(details.params.scope ?? "")
        .split(" ")
        .filter(Boolean);
      const sub = details.session?.accountId;
      sendHtml(
        res,
        status,
        consentPage({
          lang,
          action: `${base}/consent`,
          clientName: client.name,
          scopes,
          switchHref,
          loginId: sub && loginIdOf ? loginIdOf(sub) : undefined,
        }),
      );
      return;
    }
    sendHtml(
      res,
      status,
      loginPage({
        lang,
        action: `${base}/login?lang=${lang}`,
        clientName: client.name,
        logoUri: client.logoUri,
        error: page.error,
        retryAfterSeconds: retryAfterOf(res),
        loginId: page.loginId,
        switchHref,
        next: base,
        challenge: page.challenge,
      }),
    );
  };

  return { clientView, renderLoginOrConsent };
}

/**
 * The interaction pages oidc-provider sends members to. A member whose Sekisho session already
 * satisfies the request (level, max_age, prompt=login) is sent straight back; otherwise the login
 * page signs them in through the same PasswordSignIn (throttle, audit) as POST /api/v1/login.
 */
export function interactionRoutes(s: Services, oidc: Oidc): Router {
  const r = Router();
  const { provider } = oidc;

  const hostedForm = hostedFormGuard(s.config.issuerOrigin);

  // Only the login ID (stored in clear): no profile field is read for the consent page.
  const { clientView, renderLoginOrConsent } = loginPages(
    oidc,
    (sub) =>
      s.db.select({ loginId: members.loginId }).from(members).where(eq(members.sub, sub)).get()?.loginId,
  );

  type Details = { params: Record<string, unknown>; prompt: { reasons: string[] }; iat?: number };
  /** What this member's sign-in must reach here: the MFA policies (global, site, admins') and acr_values. */
  const needed = (memberId: string, details: Details) =>
    oidc.requirementFor(
      memberId,
      (details.params.client_id as string | undefined) ?? null,
      requestedAcr(details.params) ?? null,
    );
  /** Does this session meet it (level, and a factor the policies count)? */
  const meetsHere = (session: Session, details: Details) =>
    meets(needed(session.memberId, details), session.acr, session.amr);
  /** Is this session good enough for the interaction? */
  const sessionSatisfies = (session: Session | null, details: Details) =>
    !!session && fresh(session, details) && meetsHere(session, details);
  /**
   * The member an `id_token_hint` names (its `sub`; the provider checked the token's signature at
   * the authorization endpoint), or null when there is none.
   */
  const hinted = (details: Details): string | null => {
    const hint = details.params.id_token_hint;
    if (typeof hint !== "string") return null;
    try {
      const sub = decodeJwt(hint).sub;
      return typeof sub === "string" ? sub : "";
    } catch {
      return "";
    }
  };
  /**
   * Is the session recent enough (max_age, prompt=login), whatever its level, and of the member an
   * id_token_hint names? A site checking silently whether its member is still signed in must not
   * get whoever else is signed in here now (OIDC Core 3.1.2.1).
   */
  const fresh = (session: Session | null, details: Details) => {
    if (!session) return false;
    const hint = hinted(details);
    if (hint !== null && hint !== oidc.subjectOf(session.memberId)) return false;
    const now = s.clock.now().getTime();
    const maxAge = details.params.max_age;
    if (maxAge !== undefined && now - session.authTime > Number(maxAge) * 1000) return false;
    // prompt=login: only a sign-in made after this authorization request started counts. The
    // interaction's `iat` is in whole seconds, so a sign-in within that same second can't be told
    // apart from one just before the request: it doesn't count.
    if (details.prompt.reasons.includes("login_prompt") && session.authTime < ((details.iat ?? 0) + 1) * 1000)
      return false;
    return true;
  };

  const render = async (
    req: Request,
    res: Response,
    status: number,
    error?: LoginError,
    loginId?: string,
    challenge?: object,
    known?: InteractionDetails,
  ) => {
    const details = known ?? (await provider.interactionDetails(req, res));
    await renderLoginOrConsent(res, details, reqLang(req), status, { error, loginId, challenge });
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

  /** The second-step page: after the password (with an mfa_token) or as a step-up (session cookie). */
  const renderMfa = async (
    req: Request,
    res: Response,
    status: number,
    opts: { methods: FactorMethod[]; mfaToken?: string; stepUp?: boolean; error?: CodeMethod },
  ) => {
    const details = await provider.interactionDetails(req, res);
    const client = await clientView(details.params.client_id as string | undefined);
    const lang: Lang = reqLang(req);
    pageHeaders(res, client.redirects);
    const base = `/interaction/${encodeURIComponent(details.uid)}`;
    res
      .status(status)
      .type("html")
      .send(
        mfaPage({
          lang,
          methods: opts.methods,
          mfaToken: opts.mfaToken,
          action: `${base}/mfa?lang=${lang}`,
          next: base,
          clientName: client.name,
          stepUp: opts.stepUp ?? false,
          error: opts.error,
          abortAction: `${base}/abort?lang=${lang}`,
          // A step-up is shown again by the interaction's own address (its session cookie is the
          // subject); a second step after the password by posting its token back (mfaLangSwitch).
          switchHref: opts.stepUp
            ? `${base}?lang=${lang === "ja" ? "en" : "ja"}`
            : opts.mfaToken
              ? mfaLangSwitch(`${base}/mfa`, lang, opts.mfaToken, opts.methods)
              : undefined,
        }),
      );
  };

  /** Methods that can lift a session to what is needed (where codes don't count, only passkeys). */
  const stepUpMethods = (memberId: string, need: Requirement): FactorMethod[] => {
    const methods = s.factors.methods(memberId);
    const codesCount = need.acr !== ACR.phishingResistant && need.methods.includes("totp");
    return codesCount ? methods : methods.filter((m) => m === "webauthn");
  };

  r.get("/interaction/:uid", async (req, res) => {
    const details = await provider.interactionDetails(req, res);
    if (details.prompt.name === "login") {
      const session = oidc.sessionOf(req.get("cookie"));
      if (sessionSatisfies(session, details) && session) return finishLogin(req, res, session);
      // Signed in recently enough but at too low a level: step up instead of a new password.
      if (session && fresh(session, details) && !details.params[SILENT_PARAM]) {
        // (No usable method: the page says to add a factor on the account page first.)
        const methods = stepUpMethods(session.memberId, needed(session.memberId, details));
        return renderMfa(req, res, 200, { methods, stepUp: true });
      }
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
    if (details.prompt.name !== "login")
      return render(req, res, 400, "badRequest", undefined, undefined, details);
    const form = loginForm.safeParse(req.body);
    if (!form.success) return render(req, res, 400, "badRequest", undefined, undefined, details);
    const step = await passwordStep(
      s,
      req,
      res,
      { ...form.data },
      {
        clientId: (details.params.client_id as string | undefined) ?? null,
        acrValues: requestedAcr(details.params) ?? null,
      },
    );
    if (!step.ok)
      return render(req, res, step.status, step.error, form.data.login_id, step.challenge, details);
    const result = step.value;
    if (result.status === "failed")
      return render(req, res, 401, "invalid", form.data.login_id, undefined, details);
    if (result.status === "password_reset_required")
      return render(req, res, 403, "resetRequired", form.data.login_id, undefined, details);
    if (result.status === "mfa_required") {
      return renderMfa(req, res, 200, { methods: result.methods, mfaToken: result.mfaToken });
    }
    setSessionCookie(res, result.token, s.config.secureCookies);
    // The site's MFA policy wants a factor this member doesn't have yet: the page sends them to the
    // account page, where the limited session can add one.
    if (result.status === "mfa_enrollment_required") return renderMfa(req, res, 200, { methods: [] });
    // A password session where the site's policy needs more (a member in the grace period of the
    // global policy signing in to a stricter site): step up, or add a factor.
    if (!meetsHere(result.session, details)) {
      const methods = stepUpMethods(result.session.memberId, needed(result.session.memberId, details));
      return renderMfa(req, res, 200, { methods, stepUp: true });
    }
    return finishLogin(req, res, result.session);
  });

  r.post("/interaction/:uid/mfa", ...hostedForm, async (req, res) => {
    const details = await provider.interactionDetails(req, res);
    if (details.prompt.name !== "login") return render(req, res, 400, "badRequest");
    const again = postedLangSwitch(s, req.body);
    if (again === "expired") return render(req, res, 401, "expired");
    if (again) return renderMfa(req, res, 200, { methods: again.methods, mfaToken: again.mfaToken });
    const form = mfaForm.safeParse(req.body);
    if (!form.success) return render(req, res, 400, "badRequest");
    const session = oidc.sessionOf(req.get("cookie"));
    const subject = subjectFor(form.data.mfa_token, session);
    if (!subject) return render(req, res, 401, "expired");
    const step = await secondStep(s, req, res, subject, form.data);
    if (!step.ok) return render(req, res, step.status, step.error);
    const result = step.value;
    if (result.status !== "authenticated") {
      const memberId =
        "session" in subject ? subject.session.memberId : s.mfaTokens.find(subject.mfaToken)?.memberId;
      if (!memberId) return render(req, res, 401, "expired");
      const methods =
        "session" in subject
          ? stepUpMethods(memberId, needed(memberId, details))
          : s.factors.methods(memberId);
      return renderMfa(req, res, 401, {
        methods,
        ...("mfaToken" in subject ? { mfaToken: subject.mfaToken } : { stepUp: true }),
        error: form.data.method,
      });
    }
    setSessionCookie(res, result.token, s.config.secureCookies);
    if (result.deviceToken) setDeviceCookie(res, result.deviceToken, s.config.secureCookies);
    // Still below what the site needs (e.g. TOTP where only a passkey will do): step up again.
    if (!meetsHere(result.session, details)) {
      return renderMfa(req, res, 200, {
        methods: stepUpMethods(result.session.memberId, needed(result.session.memberId, details)),
        stepUp: true,
      });
    }
    return finishLogin(req, res, result.session);
  });

  // The member gives up on the second step (no factor the site accepts, a lost phone): back to
  // the site with access_denied, as after declining consent, instead of a dead end.
  r.post("/interaction/:uid/abort", ...hostedForm, async (req, res) => {
    await provider.interactionDetails(req, res); // this browser's interaction, or an error page
    await provider.interactionFinished(
      req,
      res,
      { error: "access_denied", error_description: "The member did not complete the sign-in." },
      { mergeWithLastSubmission: false },
    );
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
        errorPage(reqLang(req), err.error, err.error_description ?? "", {
          // The interaction expired, or its cookie is in another browser: not the member's mistake.
          expired: err instanceof errors.SessionNotFound,
        }),
      );
  });

  return r;
}
