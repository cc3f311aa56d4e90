import type { IncomingMessage, ServerResponse } from "node:http";
import express, { type NextFunction, type Request, type Response } from "express";
import proxyaddr from "proxy-addr";
import { ApiError } from "../errors.js";
import { resolveLoginInput } from "../members/login-id.js";
import { cachedProviderDocuments, createOidc, OIDC_JSON_ENDPOINTS, OIDC_ROUTES } from "../oidc/provider.js";
import type { Services } from "../services.js";
import { deviceTokenFrom } from "../sessions/devices.js";
import { formLane } from "./form-lane.js";
import { assetRoutes, hostedForm, rememberLang, reqLang, sendPageError } from "./hosted.js";
import { httpMetrics, metricsRoute } from "./metrics-routes.js";
import {
  accessLog,
  applyHeaders,
  asApiError,
  clientIpOf,
  declaredBodyLimit,
  errorHandler,
  locals,
  noStore,
  noStoreHeaders,
  notFound,
  originGuard,
  requestContext,
  securityHeaders,
  sessionLoader,
  single,
} from "./middleware.js";
import { providerLane } from "./provider-lane.js";
import { accountRoutes } from "./routes/account.js";
import { adminRoutes } from "./routes/admin.js";
import { adminConsoleRoutes } from "./routes/admin-console.js";
import { factorRoutes } from "./routes/factors.js";
import { healthRoutes } from "./routes/health.js";
import { interactionRoutes, loginPages, silentAuthorization } from "./routes/interactions.js";
import { meRoutes } from "./routes/me.js";
import { registrationAndLoginRoutes } from "./routes/members.js";
import { recoveryRoutes } from "./routes/recovery.js";
import { recoveryPageRoutes } from "./routes/recovery-hosted.js";
import { secondFactorRoutes } from "./routes/second-factor.js";
import { serviceRoutes } from "./routes/service.js";
import { signInLane } from "./sign-in-lane.js";
import { StrangerQueue, waitTurn } from "./stranger-queue.js";
import { assertUtf8Body, utf8Query } from "./utf8.js";

/** The JSON API's body limit (bytes), for the body parser and the sign-in lane alike. */
const BODY_LIMIT = 64 * 1024;
const PAGE_PREFIXES = ["/account", "/admin", "/recovery", "/interaction"];

/** Parse a SEKISHO_TRUST_PROXY value into what express's `trust proxy` setting takes. */
export function trustProxySetting(value: string | undefined): boolean | number | string {
  if (value === undefined) return false;
  if (value === "true" || value === "false") return value === "true";
  if (/^\d+$/.test(value)) return Number(value);
  return value;
}

/** The express app. No listen, no globals: tests build one per file on their own database. */
export function createApp(
  s: Services,
  opts: {
    signInLane?: boolean;
    providerLane?: boolean;
    formLane?: boolean;
    /** Strangers' sign-in attempts that may wait (tests set fewer; src/http/stranger-queue.ts). */
    strangersWaiting?: number;
  } = {},
): express.Express {
  const app = express();
  app.disable("x-powered-by");
  app.set("etag", false);
  app.set("trust proxy", trustProxySetting(s.config.trustProxy));
  app.set("query parser", "simple");
  app.use(requestContext());
  // Stopping (src/main.ts): answer what is in flight and close each connection after it.
  app.use((_req, res, next) => {
    if (app.locals.shuttingDown === true) res.setHeader("Connection", "close");
    next();
  });
  app.use(httpMetrics(s.metrics, app.request));
  // /metrics: here, to the allow-list, unless it has a port of its own (src/http/metrics-routes.ts).
  if (s.config.metricsPort === undefined)
    app.use(metricsRoute(s.metrics, s.config.metricsAllow, trustProxySetting(s.config.trustProxy) !== false));
  // Discovery and JWKS change only with the signing keys: answer them from a copy of the
  // provider's own first answer (body and headers), without the rest of the stack.
  const trustProxy = app.get("trust proxy fn") as (address: string, hop: number) => boolean;
  const oidc = createOidc(s, {
    clientIp: (req) => clientIpOf(proxyaddr(req, trustProxy), req.socket.remoteAddress),
  });
  app.locals.oidc = oidc; // for tools (bench) that need the provider's models
  const callback = oidc.provider.callback();
  // Every request to the provider first picks up signing keys a `keys rotate` added meanwhile.
  const providerCallback = (req: IncomingMessage, res: ServerResponse) => {
    oidc.syncSigningKeys();
    return callback(req, res);
  };
  app.use(
    cachedProviderDocuments(
      ["/.well-known/openid-configuration", OIDC_ROUTES.jwks],
      providerCallback,
      oidc.syncSigningKeys,
    ),
  );
  app.use(accessLog(s.logger));
  // The provider's JSON endpoints (token, userinfo, revocation, introspection) go straight to it:
  // it sets its own no-store and CORS headers, and HTML-page headers add nothing to JSON answers.
  app.use((req, res, next) => {
    if (!OIDC_JSON_ENDPOINTS.has(req.path)) return next();
    res.setHeader("X-Content-Type-Options", "nosniff");
    void providerCallback(req, res);
  });
  const headers = securityHeaders({
    hsts: s.config.secureCookies,
    contentSecurityPolicy: {
      directives: { "upgrade-insecure-requests": s.config.secureCookies ? [] : null },
    },
  });
  app.use((_req, res, next) => {
    applyHeaders(res, headers);
    next();
  });
  const providerPaths = [...Object.values(OIDC_ROUTES), "/.well-known/"];
  // The provider's router also takes its endpoints with a trailing slash, another letter case or
  // doubled slashes (`/oidc/token/`, `/oidc/token/INTROSPECTION`): our rules keyed on the path
  // (reuse detection, no-store, unauthorized_client) would not see them. Only the spelling the
  // discovery document gives reaches the provider; the others are unknown endpoints.
  const routes = new Set<string>([...Object.values(OIDC_ROUTES), "/.well-known/openid-configuration"]);
  const misspelt = (path: string) => {
    const plain = path
      .toLowerCase()
      .replace(/\/{2,}/g, "/")
      .replace(/\/+$/, "");
    return plain !== path && routes.has(plain);
  };
  const isProviderPath = (path: string) =>
    providerPaths.some(
      (p) => path === p || path.startsWith(`${p}/`) || (p.endsWith("/") && path.startsWith(p)),
    );
  // express answers OPTIONS on its own routes by itself (200, text/plain, the Allow list). Nothing
  // of ours takes OPTIONS (no CORS outside the provider's endpoints, whose preflights go to it), so
  // it gets the contract's 404 for an unknown method, as JSON or, on our pages, as a page.
  // HEAD runs a GET's handler and drops the body: on the admin API and console and the service
  // API that is an audited, budgeted read of a member's data that answers nothing. Nothing there
  // is for HEAD, so it is an unknown method (404), as OPTIONS below.
  app.use((req, _res, next) => {
    if (req.method !== "HEAD") return next();
    const p = req.path.toLowerCase();
    const reads = ["/api/v1/admin", "/api/v1/members", "/admin"].some(
      (x) => p === x || p.startsWith(`${x}/`),
    );
    next(reads ? new ApiError(404, "not_found", "No such endpoint.") : undefined);
  });
  app.use((req, res, next) => {
    if (req.method !== "OPTIONS" || isProviderPath(req.path)) return next();
    // The API's answers are never stored, this one included (the router's noStore comes later).
    if (req.path === "/api/v1" || req.path.startsWith("/api/v1/")) noStoreHeaders(res);
    next(new ApiError(404, "not_found", "No such endpoint."));
  });
  app.use(healthRoutes(s));

  // Strangers' sign-in attempts wait their turn, on both lanes and at express's doors alike
  // (src/http/stranger-queue.ts).
  const strangers = new StrangerQueue(
    opts.strangersWaiting !== undefined ? { maxWaiting: opts.strangersWaiting } : {},
  );
  app.locals.strangers = strangers;
  // Whether a sign-in attempt goes first: it comes from a live device of the member it names, or
  // from an address that member signed in from lately (LoginGuard.fromKnownAddress), with failures
  // to spare either way. The same question at every door.
  const goesFirst = (req: IncomingMessage, loginInput: unknown, ip: string) => {
    if (typeof loginInput !== "string") return false;
    const loginId = resolveLoginInput(loginInput);
    if (loginId === null) return false;
    const token = deviceTokenFrom(single(req.headers.cookie));
    if (token && s.devices.isLiveFor(token, loginId) && s.guard.trustedBudgetLeft(loginId)) return true;
    // A known address's turns are counted (see fromKnownAddress): spent only when someone waits,
    // that is when going first means anything (an idle queue decides at once anyway).
    return strangers.backedUp && s.guard.fromKnownAddress(ip, loginId, { queue: "door" });
  };
  const expressTurn = waitTurn(strangers, (req, res: Response) =>
    goesFirst(req, (req as { body?: { login_id?: unknown } }).body?.login_id, locals(res).ip),
  );

  const api = express.Router();
  api.use(noStore);
  api.use(originGuard(s.config.issuerOrigin));
  api.use(utf8Query);
  api.use(declaredBodyLimit(BODY_LIMIT));
  api.use(
    express.json({
      limit: BODY_LIMIT,
      strict: true,
      type: ["application/json", "application/*+json"],
      verify: (_req, _res, buf) => assertUtf8Body(buf),
    }),
  );
  api.use(sessionLoader(s.sessions));
  api.post("/login", expressTurn);
  api.use(registrationAndLoginRoutes(s));
  api.use(secondFactorRoutes(s));
  api.use(meRoutes(s));
  api.use(factorRoutes(s));
  api.use(adminRoutes(s));
  api.use(recoveryRoutes(s));
  api.use(serviceRoutes(s, oidc));
  api.use(notFound());
  app.use("/api/v1", api);

  // Our pages' query strings (the admin console's reasons and filters); the provider's endpoints
  // answer malformed requests themselves.
  app.use(PAGE_PREFIXES, utf8Query);
  app.use(assetRoutes());
  app.use(rememberLang(s.config.secureCookies));
  app.use(accountRoutes(s));
  app.use(recoveryPageRoutes(s));
  app.use(adminConsoleRoutes(s));
  app.post("/interaction/:uid/login", ...hostedForm(s.config.issuerOrigin), expressTurn);
  app.use(interactionRoutes(s, oidc));
  app.use(silentAuthorization(oidc, OIDC_ROUTES.authorization));
  app.use((req, res, next) => {
    if (isProviderPath(req.path) && !misspelt(req.path)) {
      // The provider's own pages end in a cross-origin form post (response_mode=form_post) or a
      // redirect after a form post (logout → post_logout_redirect_uri), which `form-action 'self'`
      // would block in browsers. Their HTML holds no member-supplied markup (all escaped).
      const csp = res.getHeader("Content-Security-Policy");
      if (typeof csp === "string")
        res.setHeader("Content-Security-Policy", csp.replace(/form-action [^;]*;?/, ""));
      void providerCallback(req, res);
      return;
    }
    next();
  });

  app.get("/", (_req, res) => {
    res.json({ service: "sekisho", issuer: s.config.issuer, docs: "see docs/api.md" });
  });
  app.use(notFound());
  // Our own pages (account, admin console, recovery, sign-in interactions) answer a 4xx as a page
  // in the reader's language, not as JSON; the API and the provider's endpoints keep JSON.
  app.use((err: unknown, req: Request, res: Response, next: NextFunction) => {
    const page = PAGE_PREFIXES.some((p) => req.path === p || req.path.startsWith(`${p}/`));
    const api = page ? asApiError(err) : null;
    if (!api || api.status >= 500 || res.headersSent) return next(err);
    sendPageError(res, reqLang(req), api);
  });
  app.use(errorHandler(s.logger));

  // Three lanes before express (each compared with express's answers in its tests): password
  // sign-ins the throttle refuses, on the JSON API (src/http/sign-in-lane.ts) and on the hosted
  // sign-in form (src/http/form-lane.ts), and the provider's JSON endpoints
  // (src/http/provider-lane.ts). Everything else goes through express.
  const signIn =
    opts.signInLane === false
      ? null
      : signInLane({
          signIn: s.signIn,
          logger: s.logger,
          metrics: s.metrics,
          issuerOrigin: s.config.issuerOrigin,
          trustProxy,
          headers,
          bodyLimit: BODY_LIMIT,
          shuttingDown: () => app.locals.shuttingDown === true,
          goesFirst,
          strangers,
        });
  const toProvider =
    opts.providerLane === false
      ? null
      : providerLane({
          paths: [...OIDC_JSON_ENDPOINTS],
          provider: providerCallback,
          logger: s.logger,
          metrics: s.metrics,
          trustProxy,
          shuttingDown: () => app.locals.shuttingDown === true,
        });
  const pages = loginPages(oidc);
  const toForm =
    opts.formLane === false
      ? null
      : formLane({
          signIn: s.signIn,
          interactionDetails: (req, res) => oidc.provider.interactionDetails(req, res),
          renderLogin: pages.renderLoginOrConsent,
          logger: s.logger,
          metrics: s.metrics,
          issuerOrigin: s.config.issuerOrigin,
          secureCookies: s.config.secureCookies,
          trustProxy,
          headers,
          shuttingDown: () => app.locals.shuttingDown === true,
          goesFirst,
          strangers,
        });
  app.locals.signInLane = signIn;
  app.locals.providerLane = toProvider;
  app.locals.formLane = toForm;
  if (signIn || toProvider || toForm) {
    // express calls app.handle for every request the server gives it; without a callback it is
    // the top-level app (a mounted app gets its parent's `next`).
    type Handle = (req: IncomingMessage, res: ServerResponse, callback?: NextFunction) => void;
    const withHandle = app as unknown as { handle: Handle };
    const handle = withHandle.handle;
    withHandle.handle = (req, res, callback) => {
      if (callback === undefined) {
        if (toProvider?.takes(req)) return toProvider.run(req, res);
        if (signIn?.takes(req)) return signIn.run(req, res, () => handle.call(app, req, res));
        if (toForm?.takes(req)) return toForm.run(req, res, () => handle.call(app, req, res));
      }
      handle.call(app, req, res, callback);
    };
  }
  return app;
}
