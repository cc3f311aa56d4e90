// A minimal member site that signs its members in with Sekisho (OpenID Connect, code flow + PKCE).
// Plain Node ESM, no framework; the only dependency is openid-client v6 (panva).
//
//   SEKISHO_ISSUER=http://localhost:3000 CLIENT_ID=c_… CLIENT_SECRET=… node examples/relying-party.mjs
//
// then open http://localhost:4000 (RP_PORT). docs/integration.md walks through it step by step.
import { randomBytes } from "node:crypto";
import http from "node:http";
import * as client from "openid-client";

const ISSUER = new URL(process.env.SEKISHO_ISSUER ?? "http://localhost:3000");
// RP_PORT, not PORT: PORT is the Sekisho server's, often exported in the same shell.
const PORT = Number(process.env.RP_PORT ?? 4000);
const BASE = `http://localhost:${PORT}`;
const REDIRECT_URI = `${BASE}/callback`; // must equal a registered redirect URI exactly
const { CLIENT_ID, CLIENT_SECRET } = process.env; // no CLIENT_SECRET: a public client (--public)
if (!CLIENT_ID) throw new Error("set CLIENT_ID (and CLIENT_SECRET) from `npx sekisho clients add`");

// openid-client refuses plain-http issuers. Sekisho in development is http://localhost:3000, so allow
// http for a loopback issuer only; a real deployment's issuer is https and keeps the check.
const loopback = ["localhost", "127.0.0.1", "[::1]"].includes(ISSUER.hostname);
const insecureOk = ISSUER.protocol === "http:" && loopback;

// Discovery: endpoints, algorithms and the signing keys (JWKS) come from
// <issuer>/.well-known/openid-configuration, never from hard-coded paths.
const config = await client.discovery(ISSUER, CLIENT_ID, CLIENT_SECRET, undefined, {
  execute: insecureOk ? [client.allowInsecureRequests] : [],
});

// Browser sessions of this site: random cookie → { pending login } or { tokens, claims, userinfo }.
// In memory for the example (lost on restart); use a real session store in production.
// Browsers share cookies between the ports of one host, so on localhost never name yours like
// Sekisho's (sekisho_session, _session, _interaction…); the port in the name keeps two examples apart.
const COOKIE = `rp_sid_${PORT}`;
const sessions = new Map();

function sessionOf(req, res) {
  const pair = req.headers.cookie?.split(/;\s*/).find((c) => c.startsWith(`${COOKIE}=`));
  const sid = pair?.slice(COOKIE.length + 1);
  if (sid && sessions.has(sid)) return sessions.get(sid);
  const fresh = randomBytes(32).toString("base64url");
  sessions.set(fresh, {});
  // SameSite=Lax keeps the cookie off cross-site POSTs (CSRF); add `Secure` when served over https.
  res.setHeader("Set-Cookie", `${COOKIE}=${fresh}; Path=/; HttpOnly; SameSite=Lax`);
  return sessions.get(fresh);
}

const ENTITIES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (v) => String(v).replace(/[&<>"']/g, (c) => ENTITIES[c]);
const json = (v) => `<pre>${escapeHtml(JSON.stringify(v, null, 2))}</pre>`;
const button = (action, label) => `<form method="post" action="${action}"><button>${label}</button></form>`;
const redirect = (res, to) => res.writeHead(302, { Location: to, "Cache-Control": "no-store" }).end();

function page(res, status, body) {
  res.writeHead(status, {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Content-Security-Policy": `default-src 'none'; style-src 'unsafe-inline'; form-action 'self' ${ISSUER.origin}`,
  });
  res.end(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Example member site</title>
</head><body style="font-family: system-ui, sans-serif; max-width: 50rem; margin: 2rem auto">${body}</body></html>`);
}

const routes = {
  "GET /": async ({ res, s }) => {
    if (!s.tokens)
      return page(res, 200, `<h1>Example member site</h1><a href="/login">Sign in with Sekisho</a>`);
    const refresh = s.tokens.refresh_token
      ? button("/refresh", "Refresh tokens")
      : "(public client: no refresh)";
    page(
      res,
      200,
      `<h1>Signed in</h1><h2>ID token claims</h2>${json(s.claims)}<h2>UserInfo</h2>${json(s.userinfo)}
<p>Access token expires in ${escapeHtml(s.tokens.expiresIn() ?? "?")} s.</p>${refresh}${button("/logout", "Sign out")}`,
    );
  },

  // Start an authorization: a fresh PKCE verifier (S256; Sekisho refuses plain or none), state and
  // nonce, kept server-side until the callback.
  "GET /login": async ({ res, s }) => {
    const verifier = client.randomPKCECodeVerifier();
    s.pending = { verifier, state: client.randomState(), nonce: client.randomNonce() };
    const url = client.buildAuthorizationUrl(config, {
      redirect_uri: REDIRECT_URI,
      scope: "openid profile email",
      code_challenge: await client.calculatePKCECodeChallenge(verifier),
      code_challenge_method: "S256",
      state: s.pending.state,
      nonce: s.pending.nonce,
    });
    redirect(res, url.href);
  },

  // Back from Sekisho: openid-client checks the response (error, state, iss per RFC 9207), redeems the
  // code with the verifier and validates the ID token (ES256 signature from the JWKS, iss, aud, exp,
  // nonce). Then UserInfo, which must be about the same `sub`.
  "GET /callback": async ({ req, res, s }) => {
    const pending = s.pending;
    delete s.pending; // one attempt per authorization request
    if (!pending) return page(res, 400, `<p>No sign-in in progress. <a href="/">Start again</a></p>`);
    const tokens = await client.authorizationCodeGrant(config, new URL(req.url, BASE), {
      pkceCodeVerifier: pending.verifier,
      expectedState: pending.state,
      expectedNonce: pending.nonce,
      idTokenExpected: true,
    });
    const claims = tokens.claims();
    const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
    Object.assign(s, { tokens, claims, userinfo });
    redirect(res, "/");
  },

  // Refresh tokens rotate: every use returns a new one and the old one stops working (presenting it
  // again revokes the whole family, this session included), so always keep the newest. A failed
  // refresh (invalid_grant: revoked, expired, or the member signed out at Sekisho) signs the member
  // out of this site.
  "POST /refresh": async ({ res, s }) => {
    const refreshToken = s.tokens?.refresh_token;
    if (!refreshToken) return redirect(res, "/");
    delete s.tokens;
    s.tokens = await client.refreshTokenGrant(config, refreshToken);
    s.claims = s.tokens.claims() ?? s.claims;
    redirect(res, "/");
  },

  // RP-initiated logout: forget the local session, then send the browser to Sekisho's end-session
  // endpoint, which asks the member to confirm and ends the Sekisho session too.
  // (Register a post_logout_redirect_uri with `clients add --post-logout-redirect-uri` to be sent
  // back here afterwards; this example leaves the member on Sekisho's signed-out page.)
  "POST /logout": async ({ res, s }) => {
    const idToken = s.tokens?.id_token;
    for (const k of Object.keys(s)) delete s[k];
    if (!idToken) return redirect(res, "/");
    redirect(res, client.buildEndSessionUrl(config, { id_token_hint: idToken }).href);
  },
};

http
  .createServer(async (req, res) => {
    const route = routes[`${req.method} ${new URL(req.url, BASE).pathname}`];
    if (!route) return page(res, 404, "<p>Not found</p>");
    // CSRF, second layer: browsers send Origin with a POST; refuse one from another origin.
    if (req.method === "POST" && req.headers.origin && req.headers.origin !== BASE)
      return page(res, 403, "<p>Forbidden</p>");
    try {
      await route({ req, res, s: sessionOf(req, res) });
    } catch (err) {
      // e.g. ?error=login_required or access_denied from Sekisho, a state mismatch, invalid_grant.
      console.error(err);
      const detail = err.error ? `${err.error}: ${err.error_description ?? ""}` : err.message;
      page(res, 400, `<h1>Sign-in failed</h1><p>${escapeHtml(detail)}</p><a href="/">Back</a>`);
    }
  })
  .listen(PORT, "localhost", () => {
    console.log(`example member site on ${BASE} (issuer ${config.serverMetadata().issuer})`);
  });
