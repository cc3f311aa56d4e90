import { createHmac, timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { eq, sql } from "drizzle-orm";
import type { RequestHandler } from "express";
import Provider, { type Configuration, interactionPolicy, type KoaContextWithOIDC } from "oidc-provider";
import initializeKeyStore from "oidc-provider/lib/helpers/initialize_keystore.js";
import revoke from "oidc-provider/lib/helpers/revoke.js";
import { lazyPrepared } from "../db/connection.js";
import { members } from "../db/schema.js";
import { ApiError, StartupError } from "../errors.js";
import { pageHeaders } from "../http/hosted.js";
import { errorPage, escapeHtml, LOGOUT_CONFIRMED, langOf, loggedOutPage, logoutPage } from "../http/pages.js";
import { requestIds } from "../logger.js";
import { sealedMemberColumns } from "../members/member-row.js";
import { PROFILE_FIELDS, type Profile, type ProfileField } from "../members/profile.js";
import { meets, type Requirement } from "../policy/mfa-policy.js";
import type { Services } from "../services.js";
import { ACR, requestedLevel } from "../sessions/levels.js";
import { logOut } from "../sessions/member-actions.js";
import { SESSION_COOKIE, type Session, sessionTokenFrom } from "../sessions/sessions.js";
import type { Keyring, SigningKey } from "../vault/keyring.js";
import { memberSealValues } from "../vault/seals.js";
import type { OidcStore } from "./adapter.js";
import { Clients } from "./clients.js";

/**
 * The OpenID provider: panva's oidc-provider, configured for Sekisho. Our parts are the storage
 * (OidcStore), the clients (Clients), the signing keys (keyring), the accounts and claims (the
 * vault, each read audited with the client as the reason), and the rule that the Sekisho session
 * cookie is what decides whether a member is signed in (`sekisho_session` check below).
 */
export const OIDC_ROUTES = {
  authorization: "/oidc/auth",
  token: "/oidc/token",
  userinfo: "/oidc/userinfo",
  jwks: "/oidc/jwks",
  revocation: "/oidc/token/revocation",
  introspection: "/oidc/token/introspection",
  end_session: "/oidc/session/end",
} as const;

/**
 * The provider's JSON endpoints: every answer `Cache-Control: no-store`; express passes them
 * straight to the provider (src/http/app.ts, and the provider lane).
 */
export const OIDC_JSON_ENDPOINTS: ReadonlySet<string> = new Set([
  OIDC_ROUTES.token,
  OIDC_ROUTES.userinfo,
  OIDC_ROUTES.revocation,
  OIDC_ROUTES.introspection,
]);

/** The koa context a provider middleware gets. */
type ProviderContext = Parameters<Parameters<Provider["use"]>[0]>[0];

/** Scope → profile fields decrypted for it (contract claims table). */
export const SCOPE_FIELDS: Record<string, ProfileField[]> = {
  profile: ["name", "birth_date", "gender"],
  email: ["email"],
  phone: ["phone"],
  address: ["address", "postal_code"],
};

export interface Oidc {
  provider: Provider;
  store: OidcStore;
  clients: Clients;
  /** The member's live full session from the request's cookie, if any. */
  sessionOf(cookieHeader: string | undefined): Session | null;
  requirementFor(memberId: string, clientId: string | null, acrValues: string | null): Requirement;
  subjectOf(memberId: string): string | null;
  /**
   * Pick up signing keys added to the keyring file since (`keys rotate` while the server runs):
   * the provider signs with the new active key and publishes every key in its JWKS. Cheap when
   * nothing changed (the keyring store re-reads its file at most once a second). Returns a number
   * that changes whenever the keys did (for caches of the JWKS).
   */
  syncSigningKeys(): number;
}

/**
 * How long a new signing key is published before it signs: member sites that cached the JWKS
 * just before a rotation (jose re-fetches an unknown `kid` at most every 30 s; many libraries
 * cache for minutes) already hold it when the first ID token signed with it arrives.
 */
export const SIGNING_KEY_LEAD_MS = 5 * 60_000;

/**
 * The provider's keys, the one to sign with first (oidc-provider signs with the first): the
 * newest key that has been published for SIGNING_KEY_LEAD_MS (the active key once its lead time
 * is over), or, when none has, the oldest (the only one, in a new keyring). `switchAt`: when the order changes
 * next, if it will.
 */
export function signingPlan(
  keyring: Keyring,
  now: number,
): { jwks: { keys: Array<Record<string, string>> }; switchAt: number | null } {
  const newestFirst = [...keyring.signingKeys].sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  const ready = (k: SigningKey) => Date.parse(k.createdAt) + SIGNING_KEY_LEAD_MS;
  const signer = newestFirst.find((k) => ready(k) <= now) ?? newestFirst.at(-1);
  const newer = signer ? newestFirst.slice(0, newestFirst.indexOf(signer)) : [];
  const pending = newer.map(ready).filter((at) => at > now);
  const order = signer ? [signer, ...newestFirst.filter((k) => k !== signer)] : [];
  return {
    jwks: { keys: order.map((k) => ({ ...k.jwk, kid: k.kid, alg: "ES256", use: "sig" })) },
    switchAt: pending.length > 0 ? Math.min(...pending) : null,
  };
}

/**
 * `clientIp`: the request's client address as the rest of Sekisho computes it (express's `trust
 * proxy` from SEKISHO_TRUST_PROXY). Not koa's `ctx.ip`: with the provider's `proxy` on, that is
 * the first X-Forwarded-For entry, which the client writes itself.
 */
export function createOidc(s: Services, opts: { clientIp: (req: IncomingMessage) => string }): Oidc {
  const store = s.oidcStore;
  const clients = new Clients({ db: s.db, clock: s.clock, audit: s.audit, seals: s.seals });
  const keyring = s.keys.get();
  if (!keyring.signingKeys.some((k) => k.active)) {
    throw new StartupError(
      "the keyring has no active ID-token signing key (made before OIDC existed); run `npx sekisho keys rotate` once",
    );
  }

  // What findAccount uses, and the columns of the member's seal (checked on every token request).
  const memberBySub = lazyPrepared(() =>
    s.db
      .select({ ...sealedMemberColumns, loginId: members.loginId })
      .from(members)
      .where(eq(members.sub, sql.placeholder("sub")))
      .prepare(),
  );
  const subjectOf = (memberId: string) =>
    s.db.select({ sub: members.sub }).from(members).where(eq(members.id, memberId)).get()?.sub ?? null;
  const sessionOf = (cookieHeader: string | undefined): Session | null => {
    const token = sessionTokenFrom(cookieHeader);
    const session = token ? s.sessions.authenticate(token) : null;
    return session?.kind === "full" ? session : null;
  };

  /** What this member's sign-in to this site must reach: the MFA policies and acr_values. */
  const requirementFor = (
    memberId: string,
    clientId: string | null,
    acrValues: string | null,
  ): Requirement => {
    const member = s.db
      .select({ createdAt: members.createdAt, role: members.role, mfaRequired: members.mfaRequired })
      .from(members)
      .where(eq(members.id, memberId))
      .get();
    if (!member) return { acr: ACR.phishingResistant, methods: ["webauthn"], enrol: true, graceEndsAt: null };
    return s.policy.requirement(member, s.factors.of(memberId), { clientId, acrValues });
  };

  // The login prompt also asks whenever the Sekisho session is missing, belongs to someone else,
  // is below the requested level, or is another sign-in than the one the provider's session
  // recorded (signed out and in again, stepped up, or a passkey removed): our session, not
  // oidc-provider's cookie, is the truth, and the ID token must report its acr, amr and auth_time.
  // The prompt completes at once from the Sekisho session when it meets the need.
  const policy = interactionPolicy.base();
  const login = policy.get("login");
  login?.checks.add(
    new interactionPolicy.Check(
      "sekisho_session",
      "Sekisho session missing, changed or too weak",
      "login_required",
      (ctx) => {
        const session = sessionOf(ctx.get("cookie"));
        if (!session) return interactionPolicy.Check.REQUEST_PROMPT;
        const recorded = ctx.oidc.session;
        if (recorded?.accountId !== subjectOf(session.memberId))
          return interactionPolicy.Check.REQUEST_PROMPT;
        if (
          recorded.loginTs !== Math.floor(session.authTime / 1000) ||
          recorded.acr !== session.acr ||
          (recorded.amr ?? []).join(" ") !== session.amr.join(" ")
        )
          return interactionPolicy.Check.REQUEST_PROMPT;
        const need = requirementFor(session.memberId, ctx.oidc.client?.clientId ?? null, requestedAcr(ctx));
        if (!meets(need, session.acr, session.amr)) return interactionPolicy.Check.REQUEST_PROMPT;
        return interactionPolicy.Check.NO_NEED_TO_PROMPT;
      },
    ),
  );

  const cookieKey = (info: string) =>
    createHmac("sha256", keyring.blindIndexKey.key).update(`oidc-cookie-key:${info}`).digest("base64url");

  const configuration: Configuration = {
    adapter: (model: string) =>
      model === "Client"
        ? {
            ...store.adapterFactory()(model),
            find: async (id: string) => clients.metadata(id),
          }
        : store.adapterFactory()(model),
    jwks: signingPlan(keyring, s.clock.now().getTime()).jwks,
    cookies: {
      keys: cookieSigner([cookieKey("1")]) as unknown as string[],
      long: { signed: true },
      short: { signed: true },
    },
    // acr, amr, auth_time and sid ride with `openid`, so every ID token reports the achieved level.
    claims: {
      acr: null,
      amr: null,
      auth_time: null,
      sid: null,
      openid: ["sub", "acr", "amr", "auth_time", "sid"],
      profile: ["name", "preferred_username", "birthdate", "gender"],
      email: ["email", "email_verified"],
      phone: ["phone_number"],
      address: ["address"],
    },
    scopes: ["openid", "offline_access", "profile", "email", "phone", "address", "members:read"],
    acrValues: [ACR.password, ACR.mfa, ACR.phishingResistant],
    responseTypes: ["code"],
    extraParams: ["sekisho_silent"],
    clientAuthMethods: ["client_secret_basic", "client_secret_post", "none"],
    enabledJWA: { idTokenSigningAlgValues: ["ES256"] },
    extraClientMetadata: { properties: ["first_party"] },
    pkce: { required: () => true },
    // redirect_uri is required (OIDC Core 3.1.2.1), at the token endpoint too (RFC 6749 4.1.3),
    // even for a site with a single registered one.
    allowOmittingSingleRegisteredRedirectUri: false,
    routes: OIDC_ROUTES,
    // Request objects (`request=`) are off: say so (absent, OIDC Discovery reads it as true).
    discovery: { claim_types_supported: ["normal"], request_parameter_supported: false },
    // Revoking any token of a grant revokes the grant itself, an access token too (oidc-provider's
    // default keeps the grant then, though it revokes all of its tokens): the store refuses every
    // later token of a revoked grant, so a kept grant would be reused by the member's next sign-in
    // to that site (loadExistingGrant) and refuse every code it issued, until the browser session
    // ended. Gone, the next sign-in makes a new grant (or asks for consent again).
    revokeGrantPolicy: () => true,
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      // A site may introspect its own tokens only (RFC 7662 §4): another site's token answers
      // inactive, so a leaked token can't be checked, or its member and scopes read, elsewhere.
      introspection: {
        enabled: true,
        allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId,
      },
      userinfo: { enabled: true },
      clientCredentials: { enabled: true },
      pushedAuthorizationRequests: { enabled: false },
      // Both off, with conformIdTokenClaims below: ID tokens carry no profile claims, which is
      // why findAccount decrypts nothing for them.
      claimsParameter: { enabled: false },
      resourceIndicators: { enabled: false },
      rpInitiatedLogout: {
        enabled: true,
        // Confirmation page: the provider's form (hidden xsrf) plus our button; no script.
        // Our pages with the hosted pages' headers (framed by nobody, scripts from our files
        // only); the confirmation's form may end at the site's registered logout address.
        logoutSource: async (ctx, form) => {
          const back = ctx.oidc.session?.state?.postLogoutRedirectUri;
          pageHeaders(ctx.res, typeof back === "string" ? [back] : []);
          ctx.type = "html";
          ctx.body = logoutPage(
            langOf(ctx.get("accept-language"), ctx.get("cookie")),
            form,
            ctx.oidc?.client?.clientName,
          );
        },
        // With the site's client_id (oidc-provider forwards it when only that site was signed out):
        // say that Sekisho is still signed in.
        postLogoutSuccessSource: async (ctx) => {
          pageHeaders(ctx.res);
          ctx.type = "html";
          ctx.body = loggedOutPage(
            langOf(ctx.get("accept-language"), ctx.get("cookie")),
            ctx.oidc.client?.clientName,
          );
        },
      },
    },
    ttl: {
      AuthorizationCode: 60,
      AccessToken: 600,
      ClientCredentials: 600,
      IdToken: 3600,
      Interaction: 600,
      Session: Math.floor(s.sessions.absoluteMs / 1000),
      Grant: 14 * 24 * 3600,
      RefreshToken: 14 * 24 * 3600,
    },
    conformIdTokenClaims: true,
    rotateRefreshToken: true,
    // Member sites are first-party: their refresh tokens live their own lifetime (no offline_access
    // dance), independent of the browser session; logout and revocation still end them.
    expiresWithSession: async () => false,
    issueRefreshToken: async (_ctx, client, code) =>
      client.grantTypeAllowed("refresh_token") &&
      client.clientAuthMethod !== "none" &&
      code.scopes.has("openid"),
    interactions: {
      policy,
      url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    // First-party member sites need no consent screen: the grant is made for what was asked.
    loadExistingGrant: async (ctx) => {
      const existingId =
        ctx.oidc.result?.consent?.grantId ?? ctx.oidc.session?.grantIdFor(ctx.oidc.client?.clientId ?? "");
      // A grant revoked meanwhile (token revocation, refresh reuse) is gone: make a new one below.
      const existing = existingId ? await ctx.oidc.provider.Grant.find(existingId) : undefined;
      const client = ctx.oidc.client;
      const firstParty = client?.metadata().first_party === true;
      if (existing) {
        // A first-party site asking for more than before (another page, another scope) gets it
        // added, without a consent page or a consent_required for prompt=none.
        const has = new Set(existing.getOIDCScope().split(" "));
        const missing = [...(ctx.oidc.requestParamScopes ?? new Set<string>())].filter((sc) => !has.has(sc));
        if (firstParty && missing.length > 0) {
          existing.addOIDCScope(missing.join(" "));
          await existing.save();
        }
        return existing;
      }
      if (!firstParty || !ctx.oidc.session?.accountId) return undefined;
      const grant = new ctx.oidc.provider.Grant({
        clientId: client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope([...(ctx.oidc.requestParamScopes ?? new Set<string>())].join(" "));
      await grant.save();
      return grant;
    },
    findAccount: async (ctx, sub) => {
      const member = memberBySub().get({ sub });
      if (member?.status !== "active") return undefined;
      // A sub moved to another member's row in the database (to get their claims on a token of
      // one's own) finds no one (src/vault/seals.ts).
      if (!s.seals.holds("members", memberSealValues(member), member.seal, member.id)) return undefined;
      return {
        accountId: sub,
        claims: async (use, scope) => {
          const scopes = new Set(scope.split(" "));
          // ID tokens carry no profile claims (conformIdTokenClaims, no claims parameter, no
          // resource indicators: the provider keeps only `sub` of what is returned here), so
          // nothing is decrypted for them; UserInfo decrypts the granted scopes' fields.
          const fields =
            use === "id_token"
              ? []
              : [
                  ...new Set(
                    PROFILE_FIELDS.filter((f) => [...scopes].some((sc) => SCOPE_FIELDS[sc]?.includes(f))),
                  ),
                ];
          const clientId = ctx.oidc.client?.clientId ?? "unknown";
          // No profile field (an ID token, or scope `openid` alone): nothing is decrypted, so
          // nothing is audited or budgeted.
          let profile: Profile = {};
          if (fields.length > 0)
            try {
              profile = s.vault.read(member.id, fields, {
                actorType: "client",
                actorId: clientId,
                reason: `oidc_claims:${clientId}`,
                ip: opts.clientIp(ctx.req),
                requestId: requestIds.getStore() ?? null,
              });
            } catch (err) {
              // Past the member site's PII budget (alerted): sign-in still works, without profile claims.
              if (!(err instanceof ApiError && err.code === "pii_budget_exceeded")) throw err;
            }
          return {
            sub,
            ...(scopes.has("profile")
              ? {
                  name: profile.name,
                  preferred_username: member.loginId,
                  birthdate: profile.birth_date,
                  gender: profile.gender,
                }
              : {}),
            ...(scopes.has("email") ? { email: profile.email, email_verified: member.emailVerified } : {}),
            ...(scopes.has("phone") ? { phone_number: profile.phone } : {}),
            ...(scopes.has("address") && (profile.address || profile.postal_code)
              ? { address: { formatted: profile.address, postal_code: profile.postal_code } }
              : {}),
          };
        },
      };
    },
    renderError: async (ctx, out) => {
      pageHeaders(ctx.res);
      ctx.type = "html";
      ctx.body = errorPage(
        langOf(ctx.get("accept-language"), ctx.get("cookie")),
        out.error ?? "error",
        out.error_description ?? "",
        { signingOut: ctx.path.startsWith(OIDC_ROUTES.end_session) },
      );
    },
  };

  // findAccount decrypts nothing for ID tokens. That is right only while ID tokens can't carry
  // profile claims: keep these four together (or teach findAccount the claims an ID token asks).
  if (
    configuration.conformIdTokenClaims !== true ||
    configuration.features?.claimsParameter?.enabled !== false ||
    configuration.features?.resourceIndicators?.enabled !== false ||
    configuration.responseTypes?.join() !== "code"
  )
    throw new StartupError("OIDC configuration lets ID tokens carry profile claims; see findAccount");

  const provider = new Provider(s.config.issuer, configuration);
  provider.proxy = s.config.trustProxy !== undefined;
  // Deferred durability (OidcStore.deferWithin): within a provider request the token endpoint's
  // writes settle at once and share one group commit; no answer leaves before they are committed.
  // If the commit refuses one (its grant revoked meanwhile, its token consumed by someone else) or
  // fails, the request answers that error instead of the tokens or code it computed.
  store.deferWithin(() => Provider.ctx);
  // Every URL the provider writes (discovery's endpoints, redirects, form actions) is built from
  // the request's own URL: its Host header, or an absolute-form request target
  // (`GET http://evil.example/... HTTP/1.1`). Both belong to the caller, so the provider sees
  // every request as one for the issuer's origin: a forged Host can't put another host into a
  // document, whether it is answered to that caller or cached for everyone.
  const { issuerOrigin } = s.config;
  provider.use(async (ctx, next) => {
    Object.defineProperty(ctx.request, "href", {
      value: issuerOrigin + pathAndQueryOf(ctx.originalUrl),
      configurable: true,
    });
    await next();
  });
  /**
   * Without a provider session in the browser, oidc-provider asks nothing at the end-session
   * endpoint: it answers a form that submits itself, whoever sent the browser there. A member's
   * provider session is gone while their Sekisho session lives on after a password change, so a
   * site's logout can't be told apart by it. So with a Sekisho session (full or limited) that
   * answer becomes our confirmation page, the same form with the member's button; and only that
   * button (`logout=confirmed`, not the self-submitting form's `yes`) ends the Sekisho session
   * (end_session.success below), however the endpoint was spelled.
   */
  const confirmEndSession = (ctx: ProviderContext): void => {
    const state = ctx.oidc?.session?.state as
      | { secret?: unknown; postLogoutRedirectUri?: unknown }
      | undefined;
    const token = sessionTokenFrom(ctx.get("cookie"));
    if (
      ctx.method !== "GET" ||
      ctx.oidc?.route !== "end_session" ||
      ctx.status !== 200 ||
      ctx.oidc.session?.accountId ||
      typeof state?.secret !== "string" ||
      !token ||
      !s.sessions.authenticate(token)
    )
      return;
    const action = ctx.oidc.urlFor("end_session_confirm");
    const form = `<form id="op.logoutForm" method="post" action="${escapeHtml(action)}"><input type="hidden" name="xsrf" value="${escapeHtml(state.secret)}"/></form>`;
    pageHeaders(
      ctx.res,
      typeof state.postLogoutRedirectUri === "string" ? [state.postLogoutRedirectUri] : [],
    );
    ctx.type = "html";
    ctx.body = logoutPage(
      langOf(ctx.get("accept-language"), ctx.get("cookie")),
      form,
      ctx.oidc?.client?.clientName,
    );
  };
  /** Grants whose revocation a request has audited (grant.revoked below). */
  const auditedRevocations = new WeakMap<object, Set<string>>();
  /**
   * Two requests with the same refresh token at once: the store lets one win and revokes the
   * grant for the other (OidcStore.consume), without oidc-provider's revocation event. The loser's
   * request audits it here as the reuse it is (the winner, refused because the grant is gone, is
   * not a second reuse).
   */
  const auditLostRace = (ctx: ProviderContext): void => {
    const entities = ctx.oidc?.entities as { RefreshToken?: { grantId?: string } } | undefined;
    const grantId = entities?.RefreshToken?.grantId;
    if (
      ctx.path !== OIDC_ROUTES.token ||
      (ctx.body as { error?: unknown } | undefined)?.error !== "invalid_grant"
    )
      return;
    if (!grantId || !store.lostConsume(ctx) || !store.isRevoked(grantId)) return;
    if (auditedRevocations.get(ctx)?.has(grantId)) return;
    provider.emit("grant.revoked", ctx, grantId);
  };
  provider.use(async (ctx, next) => {
    let error: Error | null;
    try {
      await next();
    } finally {
      error = await store.committed(ctx);
    }
    if (error) answerUncommitted(ctx, error, s.logger);
    await revokeOnReplay(ctx);
    auditLostRace(ctx);
    confirmEndSession(ctx);
    // RFC 6749 §5.2: a grant type the client isn't registered for is `unauthorized_client`;
    // oidc-provider answers `invalid_request` (the test in oidc-flow.test.ts notices if it changes).
    const body = ctx.body as { error?: unknown; error_description?: unknown } | undefined;
    if (
      ctx.path === OIDC_ROUTES.token &&
      ctx.status === 400 &&
      body?.error === "invalid_request" &&
      body.error_description === "requested grant type is not allowed for this client"
    ) {
      ctx.body = { error: "unauthorized_client", error_description: body.error_description };
    }
    // A path the provider has, asked with a method it doesn't take (a POST to the authorization
    // endpoint, a GET to the token endpoint): the provider's router leaves koa's bare text "Not
    // Found"; answer like every other unknown endpoint (src/http/middleware.ts notFound).
    if (ctx.status === 404 && ctx.body === undefined) {
      ctx.set("Cache-Control", "no-store");
      ctx.body = {
        error: "not_found",
        error_description: `No such endpoint: ${ctx.method} ${ctx.path} (see the discovery document for each endpoint's method).`,
      };
      ctx.status = 404; // (setting a body makes it 200)
    }
    // The JSON endpoints' answers are never cached, refusals included: the provider leaves
    // Cache-Control off a few (a revocation's invalid_client, for one).
    if (OIDC_JSON_ENDPOINTS.has(ctx.path) && !ctx.response.get("Cache-Control")) {
      ctx.set("Cache-Control", "no-store");
      ctx.set("Pragma", "no-cache");
    }
  });
  // Client secrets are stored hashed: compare the presented secret's hash (constant time), and the
  // replaced one's while a rotation keeps it (`clients rotate-secret --keep-old-for`).
  provider.Client.prototype.compareClientSecret = function (
    this: { clientId: string; clientSecret: string },
    actual: string,
  ) {
    return clients.secretMatches(this.clientId, this.clientSecret, actual);
  };
  // Every revocation names the member, why, and where from. A refresh token or code presented
  // again after its use means a copy of it is in someone else's hands: oidc-provider revokes the
  // grant, and Sekisho records it as the member's security event and raises an alert.
  provider.on("grant.revoked", (ctx: KoaContextWithOIDC, grantId: string) => {
    const audited = auditedRevocations.get(ctx) ?? new Set<string>();
    auditedRevocations.set(ctx, audited.add(grantId));
    const clientId = ctx.oidc?.client?.clientId ?? null;
    const reason = revocationReason(ctx);
    const entities = ctx.oidc?.entities as { RefreshToken?: { accountId?: string } } | undefined;
    const sub = entities?.RefreshToken?.accountId ?? store.accountOfRevokedGrant(grantId);
    const memberId = sub ? (memberBySub().get({ sub })?.id ?? null) : null;
    const stolen = reason === "refresh_token_reused" || reason === "code_replayed";
    const where = { ip: opts.clientIp(ctx.req), requestId: requestIds.getStore() ?? null };
    s.audit.append({
      action: stolen ? "oidc.token_reused" : "oidc.grant_revoked",
      outcome: stolen ? "failure" : "info",
      actorType: "client",
      actorId: clientId,
      memberId,
      reason,
      ...where,
      details: { grant_id: grantId, client_id: clientId },
    });
    if (stolen)
      s.alerts.raise(
        "token_reused",
        "warning",
        { reason, client_id: clientId, member_id: memberId, ip: where.ip },
        `${clientId}|${memberId ?? grantId}`,
      );
  });
  // Confirmed logout (end-session) revokes the grants of the sites signed in through this browser.
  // oidc-provider skips a grant whose tokens don't expire with the session (`persistsLogout`, set
  // because expiresWithSession is false: refresh tokens outlive the browser session); the flag is
  // cleared once the authorization is answered, before the session is saved.
  provider.on("authorization.success", (ctx: KoaContextWithOIDC) => {
    const clientId = ctx.oidc?.client?.clientId;
    const authorization = clientId ? ctx.oidc.session?.authorizations?.[clientId] : undefined;
    if (authorization) authorization.persistsLogout = false;
  });
  // RP-initiated logout ends the Sekisho session as well, not only oidc-provider's, once the
  // member confirmed it with the button (see confirmEndSession).
  provider.on("end_session.success", (ctx: KoaContextWithOIDC) => {
    if ((ctx.oidc?.params as { logout?: unknown } | undefined)?.logout !== LOGOUT_CONFIRMED) return;
    const session = sessionOf(ctx.get("cookie"));
    if (session) {
      logOut(
        s,
        session,
        { ip: opts.clientIp(ctx.req), requestId: requestIds.getStore() ?? null },
        {
          reason: "rp_initiated_logout",
          details: { via: "end_session", client_id: ctx.oidc?.client?.clientId ?? null },
        },
      );
    }
    ctx.cookies.set(SESSION_COOKIE, null, { signed: false, path: "/", httpOnly: true, sameSite: "lax" });
  });
  // Grants issued and refused at the token endpoint, by grant type (metrics).
  provider.on("grant.success", (ctx: KoaContextWithOIDC) =>
    s.metrics.grant(ctx.oidc?.params?.grant_type, "issued"),
  );
  provider.on("grant.error", (ctx: KoaContextWithOIDC) =>
    s.metrics.grant(ctx.oidc?.params?.grant_type, "refused"),
  );
  provider.on("server_error", (_ctx: unknown, err: Error) => s.logger.error({ err }, "oidc server_error"));

  let keysSeen = keyring;
  const initial = signingPlan(keyring, s.clock.now().getTime());
  let kidsInUse = initial.jwks.keys.map((k) => k.kid).join(" ");
  let switchAt = initial.switchAt;
  let keysGeneration = 0;
  const syncSigningKeys = (): number => {
    let current: Keyring;
    try {
      current = s.keys.get();
    } catch (err) {
      s.logger.error({ err }, "keyring unreadable; ID tokens keep the signing keys in use");
      return keysGeneration;
    }
    const now = s.clock.now().getTime();
    if (current === keysSeen && (switchAt === null || now < switchAt)) return keysGeneration;
    keysSeen = current;
    const plan = signingPlan(current, now);
    switchAt = plan.switchAt;
    const kids = plan.jwks.keys.map((k) => k.kid).join(" ");
    if (kids === kidsInUse || !current.signingKeys.some((k) => k.active)) return keysGeneration;
    try {
      // Builds the new keystore completely before it replaces the old one: a key it refuses
      // throws here and leaves the provider signing as before (not retried until the keyring
      // changes again).
      initializeKeyStore.call(provider, plan.jwks);
    } catch (err) {
      switchAt = null;
      s.logger.error({ err }, "new signing keys refused; ID tokens keep the signing keys in use");
      s.alerts.raise(
        "signing_keys_refused",
        "critical",
        { error: err instanceof Error ? err.message : String(err) },
        "signing",
      );
      return keysGeneration;
    }
    kidsInUse = kids;
    keysGeneration++;
    s.logger.info(
      { signing_kid: plan.jwks.keys[0]?.kid, published: plan.jwks.keys.length, next_switch_at: switchAt },
      "ID-token signing keys reloaded",
    );
    return keysGeneration;
  };
  return { provider, store, clients, sessionOf, subjectOf, requirementFor, syncSigningKeys };
}

/** The level the authorization asks for (see requestedLevel). */
function requestedAcr(ctx: KoaContextWithOIDC): string | null {
  return requestedLevel(ctx.oidc.params?.acr_values);
}

/** A request target's path and query: itself in origin form, its path and query in absolute form. */
function pathAndQueryOf(target: string): string {
  if (target.startsWith("/")) return target;
  try {
    const u = new URL(target);
    return u.pathname + u.search;
  } catch {
    return "/";
  }
}

/** Headers a cached provider document never replays: they belong to the request that made it. */
const PER_REQUEST = new Set(["date", "x-request-id", "set-cookie"]);

/**
 * Serve GET `paths` from a copy of the provider's first 200 answer to each (body and headers).
 * The documents depend only on configuration, fixed for the life of the process, and the signing
 * keys: the copies are dropped whenever `generation()` changes. They don't depend on the request:
 * the provider writes every URL for the issuer's origin, whatever Host the request named (see the
 * first middleware in createOidc; without it, a first request with `Host: evil.example` would
 * hand every later caller endpoints on that host).
 */
export function cachedProviderDocuments(
  paths: readonly string[],
  callback: (req: IncomingMessage, res: ServerResponse) => unknown,
  generation: () => number = () => 0,
): RequestHandler {
  const cache = new Map<string, { headers: Record<string, string | number | string[]>; body: Buffer }>();
  let cachedGeneration = generation();
  return (req, res, next) => {
    if (req.method !== "GET" || !paths.includes(req.path)) return next();
    // JSON never to be sniffed as anything else (the documented header of these answers).
    res.setHeader("X-Content-Type-Options", "nosniff");
    const now = generation();
    if (now !== cachedGeneration) {
      cache.clear();
      cachedGeneration = now;
    }
    const hit = cache.get(req.path);
    const missedAt = now;
    if (hit) {
      for (const [k, v] of Object.entries(hit.headers)) res.setHeader(k, v);
      // As the provider answers: these documents are public, readable from any origin.
      const origin = req.get("origin");
      if (origin) res.setHeader("Access-Control-Allow-Origin", origin);
      res.end(hit.body);
      return;
    }
    const key = req.path;
    const end = res.end.bind(res);
    res.end = ((chunk?: unknown, ...rest: unknown[]) => {
      // Kept only if the keys didn't change while it was being made.
      if (
        res.statusCode === 200 &&
        (typeof chunk === "string" || Buffer.isBuffer(chunk)) &&
        generation() === missedAt
      ) {
        const headers: Record<string, string | number | string[]> = {};
        for (const [k, v] of Object.entries(res.getHeaders())) {
          // Not kept: per-request headers, and CORS, which the provider answers per Origin.
          if (v === undefined || PER_REQUEST.has(k) || k.startsWith("access-control-")) continue;
          headers[k] = v;
        }
        cache.set(key, { headers, body: Buffer.from(chunk) });
      }
      return end(chunk as never, ...(rest as []));
    }) as typeof res.end;
    void callback(req, res);
  };
}

/**
 * A used refresh token presented again revokes its whole grant, whatever else is wrong with the
 * request. oidc-provider checks the requested scope before it looks at whether the token was used,
 * so a replay asking for more than the token had was only refused (`invalid_scope`) and its family
 * lived on. Here such an answer becomes the replay's: the grant revoked by the provider's own
 * helper (its tokens, the grant, the `grant.revoked` event and so the audit entry) and
 * `invalid_grant`.
 */
/** Why a grant is being revoked, from the request that revokes it. */
function revocationReason(ctx: KoaContextWithOIDC): string | null {
  const route = ctx.oidc?.route;
  if (route === "token") {
    const grantType = (ctx.oidc.params as { grant_type?: unknown } | undefined)?.grant_type;
    if (grantType === "refresh_token") return "refresh_token_reused";
    if (grantType === "authorization_code") return "code_replayed";
    return null;
  }
  if (route === "revocation") return "revoked_by_site";
  if (route === "end_session" || route === "end_session_confirm") return "logout";
  return null;
}

async function revokeOnReplay(ctx: ProviderContext): Promise<void> {
  const body = ctx.body as { error?: unknown } | undefined;
  const params = ctx.oidc?.params as { grant_type?: unknown; refresh_token?: unknown } | undefined;
  if (
    ctx.path !== OIDC_ROUTES.token ||
    body?.error !== "invalid_scope" ||
    params?.grant_type !== "refresh_token" ||
    typeof params.refresh_token !== "string"
  )
    return;
  const token = await ctx.oidc.provider.RefreshToken.find(params.refresh_token, { ignoreExpiration: true });
  if (!token?.consumed || token.clientId !== ctx.oidc.client?.clientId || !token.grantId) return;
  await revoke(ctx, token.grantId);
  ctx.status = 400;
  ctx.body = { error: "invalid_grant", error_description: "grant request is invalid" };
}

/** The answer of a provider request whose writes were not committed (see OidcStore.committed). */
function answerUncommitted(ctx: ProviderContext, error: Error, logger: Services["logger"]): void {
  const oidcError = error as Error & { status?: number; error?: string; error_description?: string };
  const known = typeof oidcError.error === "string" && typeof oidcError.status === "number";
  if (!known) logger.error({ err: error }, "oidc: a request's writes were not committed");
  ctx.remove("Location");
  ctx.set("Cache-Control", "no-store");
  ctx.status = known ? (oidcError.status as number) : 500;
  ctx.body = known
    ? { error: oidcError.error, error_description: oidcError.error_description }
    : { error: "server_error", error_description: "oops! something went wrong" };
}

/**
 * The provider's cookie keys as keygrip's interface (`sign`, `verify`, `index`), which koa's
 * cookies take in place of a key list: the same signatures keygrip makes (HMAC-SHA1, base64url;
 * the first key signs, every key verifies), compared with `crypto.timingSafeEqual`. keygrip
 * compares through tsscmp, which HMACs both sides again under fresh random bytes: ~30 µs a
 * hosted-form post (the interaction cookie), which a flood of refused sign-ins pays by the thousand.
 */
export function cookieSigner(keys: readonly string[]) {
  const sign = (data: string, key: string) => createHmac("sha1", key).update(data).digest("base64url");
  const index = (data: string, digest: string): number => {
    const presented = Buffer.from(String(digest));
    for (let i = 0; i < keys.length; i++) {
      const expected = Buffer.from(sign(data, keys[i] as string));
      if (presented.length === expected.length && timingSafeEqual(presented, expected)) return i;
    }
    return -1;
  };
  return {
    sign: (data: string) => sign(data, keys[0] as string),
    verify: (data: string, digest: string) => index(data, digest) > -1,
    index,
  };
}
