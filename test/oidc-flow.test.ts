import { createHash } from "node:crypto";
import * as oidc from "openid-client";
import { generateSync } from "otplib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Clients } from "../src/oidc/clients.js";
import { langSwitchIn, PROFILE, STRONG_PASSWORD, type TestApp } from "./support/app.js";
import { Jar } from "./support/browser-jar.js";
import { type ListeningApp, listenWithMember } from "./support/oidc.js";
import { SoftAuthenticator } from "./support/soft-authenticator.js";

const REDIRECT = "http://127.0.0.1:9/callback"; // never contacted: the flow stops at the redirect

describe("OIDC code flow with a real relying party (openid-client)", () => {
  let t: TestApp;
  let listening: ListeningApp;
  let issuer: string;
  let client: { clientId: string; clientSecret: string | null };
  let config: oidc.Configuration;

  beforeAll(async () => {
    listening = await listenWithMember("oidc.member");
    ({ t, issuer } = listening);
    client = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals }).add({
      name: "カーナビ会員サイト",
      redirectUris: [REDIRECT],
    });
    config = await oidc.discovery(
      new URL(issuer),
      client.clientId,
      client.clientSecret ?? undefined,
      undefined,
      {
        execute: [oidc.allowInsecureRequests],
      },
    );
  });
  afterAll(() => listening.close());

  /** Register another member site and discover the provider for it. */
  async function newClient(input: Parameters<Clients["add"]>[0]) {
    const created = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals }).add(
      input,
    );
    const cfg = await oidc.discovery(
      new URL(issuer),
      created.clientId,
      created.clientSecret ?? undefined,
      undefined,
      {
        execute: [oidc.allowInsecureRequests],
      },
    );
    return { client: created, config: cfg };
  }

  async function authorize(extra: Record<string, string> = {}) {
    const verifier = oidc.randomPKCECodeVerifier();
    const state = oidc.randomState();
    const nonce = oidc.randomNonce();
    const url = oidc.buildAuthorizationUrl(config, {
      redirect_uri: REDIRECT,
      scope: "openid profile email address",
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
      code_challenge_method: "S256",
      state,
      nonce,
      ...extra,
    });
    return { url: url.toString(), verifier, state, nonce };
  }

  async function signInThroughApi(jar: Jar, loginId = "oidc.member") {
    const res = await jar.fetch(`${issuer}/api/v1/login`, {
      method: "POST",
      headers: { "content-type": "application/json", origin: issuer },
      body: JSON.stringify({ login_id: loginId, password: STRONG_PASSWORD }),
    });
    expect(res.status, await res.clone().text()).toBe(200);
  }

  /** An authorization in a signed-in browser, through to the code exchange (state and nonce checked). */
  async function codeTokens(jar: Jar, extra: Record<string, string> = {}) {
    const req = await authorize(extra);
    const callback = new URL((await jar.follow(req.url, issuer)).url);
    expect(callback.searchParams.get("error"), callback.toString()).toBeNull();
    return oidc.authorizationCodeGrant(config, callback, {
      pkceCodeVerifier: req.verifier,
      expectedState: req.state,
      expectedNonce: req.nonce,
    });
  }

  it("an endpoint asked with a method it doesn't take answers a JSON not_found, like any unknown endpoint", async () => {
    for (const [method, path] of [
      ["POST", "/oidc/auth"],
      ["POST", "/oidc/session/end"],
      ["GET", "/oidc/token"],
      ["PUT", "/oidc/token/revocation"],
    ] as const) {
      const res = await fetch(`${issuer}${path}`, { method, headers: { origin: issuer } });
      expect(res.status, `${method} ${path}`).toBe(404);
      expect(res.headers.get("content-type")).toMatch(/^application\/json/);
      expect(((await res.json()) as { error: string }).error).toBe("not_found");
    }
  });

  it("an authorization request over the header limit answers 431 with a JSON invalid_request body", async () => {
    const req = await authorize({ state: "s".repeat(50_000) });
    const res = await fetch(req.url);
    expect(res.status).toBe(431);
    expect(res.headers.get("content-type")).toMatch(/^application\/json/);
    expect(((await res.json()) as { error: string }).error).toBe("invalid_request");
  });

  it("discovery names the issuer exactly and ES256 only", () => {
    const meta = config.serverMetadata();
    expect(meta.issuer).toBe(issuer);
    expect(meta.id_token_signing_alg_values_supported).toEqual(["ES256"]);
    expect(meta.response_types_supported).toEqual(["code"]);
    expect(meta.code_challenge_methods_supported).toEqual(["S256"]);
    expect(meta.authorization_response_iss_parameter_supported).toBe(true);
    // Request objects are not supported, and discovery says so (absent would mean true).
    expect(meta.request_parameter_supported).toBe(false);
    expect(meta.request_uri_parameter_supported).toBe(false);
  });

  it("signs a member in: login page, POST /api/v1/login, code + PKCE, ID token, userinfo, refresh, revocation", async () => {
    const jar = new Jar();
    const req = await authorize();
    // 1. No session: the authorization ends on the hosted login page.
    const first = await jar.follow(req.url, issuer);
    expect(first.res.status).toBe(200);
    const page = await first.res.text();
    expect(page).toContain("カーナビ会員サイト");
    expect(page).toContain('name="password"');
    // 2. Sign in through the JSON API.
    await signInThroughApi(jar);
    // 3. The same authorization URL again: redirects end at the redirect_uri with code, state, iss.
    const second = await jar.follow(req.url, issuer);
    const callback = new URL(second.url);
    expect(`${callback.origin}${callback.pathname}`).toBe(REDIRECT);
    expect(callback.searchParams.get("state")).toBe(req.state);
    expect(callback.searchParams.get("iss")).toBe(issuer);

    const tokens = await oidc.authorizationCodeGrant(config, callback, {
      pkceCodeVerifier: req.verifier,
      expectedState: req.state,
      expectedNonce: req.nonce,
    });
    const claims = tokens.claims();
    expect(claims?.sub).toMatch(/^[\w-]{22}$/);
    expect(claims?.sub).not.toBe("oidc.member");
    expect(claims?.acr).toBe("urn:sekisho:acr:password");
    expect(claims?.amr).toEqual(["pwd"]);
    expect(typeof claims?.auth_time).toBe("number");
    expect(tokens.refresh_token).toBeTruthy();

    const info = await oidc.fetchUserInfo(config, tokens.access_token, claims?.sub as string);
    expect(info).toMatchObject({
      sub: claims?.sub,
      name: PROFILE.name,
      preferred_username: "oidc.member",
      birthdate: PROFILE.birth_date,
      email: PROFILE.email,
      email_verified: false,
      address: { formatted: PROFILE.address, postal_code: PROFILE.postal_code },
    });
    expect(info.phone_number).toBeUndefined(); // phone scope not granted: not decrypted
    const reads = [...t.s.audit.iterate()].filter((e) => e.action === "pii.read" && e.actorType === "client");
    expect(reads.at(-1)?.reason).toBe(`oidc_claims:${client.clientId}`);
    expect(JSON.parse(reads.at(-1)?.details ?? "{}").fields).not.toContain("phone");

    const refreshed = await oidc.refreshTokenGrant(config, tokens.refresh_token as string);
    expect(refreshed.refresh_token).not.toBe(tokens.refresh_token);
    await oidc.tokenRevocation(config, refreshed.refresh_token as string);
    await expect(oidc.refreshTokenGrant(config, refreshed.refresh_token as string)).rejects.toMatchObject({
      error: "invalid_grant",
    });
  });

  it("a member's first factor ends member sites' tokens taken before it (with a phished password, say)", async () => {
    // A member of its own: the others' tests sign in with the password alone.
    await t.s.registrations.register(
      { loginId: "oidc.first.factor", password: STRONG_PASSWORD, profile: PROFILE },
      { ip: null, requestId: null },
    );
    const jar = new Jar();
    await signInThroughApi(jar, "oidc.first.factor");
    const before = await codeTokens(jar);
    // The member turns on an authenticator app.
    const api = (path: string, body: unknown) =>
      jar.fetch(`${issuer}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json", origin: issuer },
        body: JSON.stringify(body),
      });
    const secret = ((await (await api("/api/v1/me/totp", {})).json()) as { secret: string }).secret;
    const code = generateSync({ secret, epoch: Math.floor(t.clock.now().getTime() / 1000) });
    expect((await api("/api/v1/me/totp/verify", { code })).status).toBe(200);
    await expect(oidc.refreshTokenGrant(config, before.refresh_token as string)).rejects.toMatchObject({
      error: "invalid_grant",
    });
  });

  it("after a site revokes an access token, the member can sign in to that site again from the same browser", async () => {
    const jar = new Jar();
    await signInThroughApi(jar);
    const tokens = await codeTokens(jar);
    // The site revokes its access token (say, on its own logout): everything of that grant dies…
    await oidc.tokenRevocation(config, tokens.access_token, { token_type_hint: "access_token" });
    await expect(oidc.refreshTokenGrant(config, tokens.refresh_token as string)).rejects.toMatchObject({
      error: "invalid_grant",
    });
    // …and the next sign-in to the site gets a new grant and a working code, not invalid_grant.
    for (const extra of [{}, { prompt: "none" }] as Record<string, string>[]) {
      const fresh = await codeTokens(jar, extra);
      expect(fresh.access_token).toBeTruthy();
      expect((await oidc.fetchUserInfo(config, fresh.access_token, fresh.claims()?.sub as string)).sub).toBe(
        tokens.claims()?.sub,
      );
    }
  });

  it("rejects a replayed authorization code and revokes the tokens it issued", async () => {
    // Attack: an intercepted code is redeemed a second time.
    const jar = new Jar();
    const req = await authorize();
    await signInThroughApi(jar);
    const { url } = await jar.follow(req.url, issuer);
    const checks = { pkceCodeVerifier: req.verifier, expectedState: req.state, expectedNonce: req.nonce };
    const tokens = await oidc.authorizationCodeGrant(config, new URL(url), checks);
    await expect(oidc.authorizationCodeGrant(config, new URL(url), checks)).rejects.toMatchObject({
      error: "invalid_grant",
    });
    const introspected = await oidc.tokenIntrospection(config, tokens.access_token);
    expect(introspected.active).toBe(false);
  });

  it("revokes the whole family when a rotated refresh token is presented again with a wider scope", async () => {
    // Attack: the replay asks for a scope the token never had; the provider checks scope first.
    const jar = new Jar();
    await signInThroughApi(jar);
    const tokens = await codeTokens(jar);
    const rotated = await oidc.refreshTokenGrant(config, tokens.refresh_token as string);
    await expect(
      oidc.refreshTokenGrant(config, tokens.refresh_token as string, { scope: "openid phone" }),
    ).rejects.toMatchObject({ error: "invalid_grant" });
    await expect(oidc.refreshTokenGrant(config, rotated.refresh_token as string)).rejects.toMatchObject({
      error: "invalid_grant",
    });
    // An unused refresh token asking for more than it has is only refused: the family lives.
    const tokens2 = await codeTokens(jar);
    await expect(
      oidc.refreshTokenGrant(config, tokens2.refresh_token as string, { scope: "openid phone" }),
    ).rejects.toMatchObject({ error: "invalid_scope" });
    expect((await oidc.refreshTokenGrant(config, tokens2.refresh_token as string)).access_token).toBeTruthy();
  });

  it("the provider answers only at the spelling discovery gives: a replay at /oidc/token/ can't skip reuse detection", async () => {
    // Attack: the provider's router also matched a trailing slash or another letter case, where
    // our rules keyed on the path (reuse revocation, no-store, unauthorized_client) didn't look.
    const jar = new Jar();
    await signInThroughApi(jar);
    const tokens = await codeTokens(jar);
    const rotated = await oidc.refreshTokenGrant(config, tokens.refresh_token as string);
    const basic = `Basic ${Buffer.from(`${client.clientId}:${client.clientSecret}`).toString("base64")}`;
    for (const path of [
      "/oidc/token/",
      "/oidc/token//",
      "/oidc//token",
      "/oidc/token/INTROSPECTION",
      "/oidc/token/revocation/",
    ]) {
      const res = await fetch(`${issuer}${path}`, {
        method: "POST",
        headers: { authorization: basic, "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({
          grant_type: "refresh_token",
          refresh_token: tokens.refresh_token as string,
          scope: "openid phone",
        }),
      });
      expect(res.status, path).toBe(404);
      expect(((await res.json()) as { error: string }).error).toBe("not_found");
    }
    // The same replay at the token endpoint itself ends the family.
    await expect(
      oidc.refreshTokenGrant(config, tokens.refresh_token as string, { scope: "openid phone" }),
    ).rejects.toMatchObject({ error: "invalid_grant" });
    await expect(oidc.refreshTokenGrant(config, rotated.refresh_token as string)).rejects.toMatchObject({
      error: "invalid_grant",
    });
    // The discovery document too has one spelling (the others skipped its cache and headers).
    for (const path of ["/.well-known/openid-configuration/", "/.well-known/OpenID-Configuration"]) {
      const res = await fetch(`${issuer}${path}`);
      expect(res.status, path).toBe(404);
      expect(((await res.json()) as { error: string }).error).toBe("not_found");
    }
    expect((await fetch(`${issuer}/.well-known/openid-configuration`)).status).toBe(200);
  });

  it("two requests with one refresh token at once: the grant is revoked for both and it is recorded as reuse", async () => {
    // Attack: the thief and the site redeem the same refresh token in the same moment.
    const jar = new Jar();
    await signInThroughApi(jar);
    const tokens = await codeTokens(jar);
    const before = [...t.s.audit.iterate()].filter((e) => e.action === "oidc.token_reused").length;
    const results = await Promise.allSettled([
      oidc.refreshTokenGrant(config, tokens.refresh_token as string),
      oidc.refreshTokenGrant(config, tokens.refresh_token as string),
    ]);
    // At most one is answered with tokens, and those die with the family.
    expect(results.filter((r) => r.status === "rejected").length).toBeGreaterThanOrEqual(1);
    for (const r of results)
      if (r.status === "fulfilled")
        await expect(oidc.refreshTokenGrant(config, r.value.refresh_token as string)).rejects.toMatchObject({
          error: "invalid_grant",
        });
      else expect(r.reason).toMatchObject({ error: "invalid_grant" });
    const after = [...t.s.audit.iterate()].filter((e) => e.action === "oidc.token_reused");
    expect(after.length).toBe(before + 1);
    expect(after.at(-1)?.reason).toBe("refresh_token_reused");
  });

  it("records a refresh token found used only at the commit (used through another process) as reuse", async () => {
    // The token is marked used in the database behind this process's back, as another server
    // process redeeming it in the same moment would: this process answers from what it knew,
    // finds out at the commit, revokes the grant, and records it like any other reuse.
    const jar = new Jar();
    await signInThroughApi(jar);
    const tokens = await codeTokens(jar);
    t.s.db.$client
      .prepare("UPDATE oidc_payloads SET consumed_at = ? WHERE model = 'RefreshToken' AND id_hash = ?")
      .run(
        Date.now(),
        createHash("sha256")
          .update(tokens.refresh_token as string)
          .digest("base64url"),
      );
    const before = [...t.s.audit.iterate()].filter((e) => e.action === "oidc.token_reused").length;
    await expect(oidc.refreshTokenGrant(config, tokens.refresh_token as string)).rejects.toMatchObject({
      error: "invalid_grant",
    });
    const after = [...t.s.audit.iterate()].filter((e) => e.action === "oidc.token_reused");
    expect(after.length).toBe(before + 1);
    expect(after.at(-1)?.reason).toBe("refresh_token_reused");
  });

  it("a member disabled behind the service's back (on the host) is signed out everywhere at once, without an error page", async () => {
    const jar = new Jar();
    const reg = await jar.fetch(`${issuer}/api/v1/registrations`, {
      method: "POST",
      headers: { "content-type": "application/json", origin: issuer },
      body: JSON.stringify({ login_id: "oidc.disabled", password: STRONG_PASSWORD, profile: PROFILE }),
    });
    expect(reg.status).toBe(201);
    const login = await jar.fetch(`${issuer}/api/v1/login`, {
      method: "POST",
      headers: { "content-type": "application/json", origin: issuer },
      body: JSON.stringify({ login_id: "oidc.disabled", password: STRONG_PASSWORD }),
    });
    expect(login.status).toBe(200);
    const tokens = await codeTokens(jar); // the browser now holds a provider session too
    t.s.db.$client.prepare("UPDATE members SET status = 'disabled' WHERE login_id = ?").run("oidc.disabled");
    expect((await jar.fetch(`${issuer}/api/v1/me`)).status).toBe(401);
    // A site's sign-in link leads to the login page (not a 500), and the site's tokens are refused.
    const { res } = await jar.follow((await authorize()).url, issuer);
    expect(res.status).toBe(200);
    expect(await res.text()).toContain('name="password"');
    await expect(oidc.refreshTokenGrant(config, tokens.refresh_token as string)).rejects.toMatchObject({
      error: "invalid_grant",
    });
  });

  it("an ID token reports the sign-in the member has now, not an earlier one the browser still remembers", async () => {
    // Signed out and in again (here 10 s later): the provider's own session cookie still records
    // the first sign-in, but acr, amr and auth_time must be the new one's.
    const jar = new Jar();
    await signInThroughApi(jar);
    const first = (await codeTokens(jar)).claims();
    const out = await jar.fetch(`${issuer}/api/v1/logout`, {
      method: "POST",
      headers: { "content-type": "application/json", origin: issuer },
      body: "{}",
    });
    expect(out.status).toBe(204);
    t.clock.advance(10_000);
    await signInThroughApi(jar);
    const second = (await codeTokens(jar)).claims();
    expect(second?.auth_time).toBeGreaterThanOrEqual((first?.auth_time as number) + 9);
    expect(second?.acr).toBe("urn:sekisho:acr:password");
  });

  it("revokes the whole family when a rotated refresh token is presented again", async () => {
    // Attack: a stolen refresh token is used after the legitimate client rotated it.
    const jar = new Jar();
    const req = await authorize();
    await signInThroughApi(jar);
    const { url } = await jar.follow(req.url, issuer);
    const tokens = await oidc.authorizationCodeGrant(config, new URL(url), {
      pkceCodeVerifier: req.verifier,
      expectedState: req.state,
      expectedNonce: req.nonce,
    });
    const rotated = await oidc.refreshTokenGrant(config, tokens.refresh_token as string);
    await expect(oidc.refreshTokenGrant(config, tokens.refresh_token as string)).rejects.toMatchObject({
      error: "invalid_grant",
    });
    await expect(oidc.refreshTokenGrant(config, rotated.refresh_token as string)).rejects.toMatchObject({
      error: "invalid_grant",
    });
    // ...and it is on record as the member's security event, with where it came from, and alerted:
    // a copy of the token is in someone else's hands.
    const member = t.s.db.$client.prepare("SELECT id FROM members WHERE login_id = ?").get("oidc.member") as {
      id: string;
    };
    const reused = [...t.s.audit.iterate()].filter((e) => e.action === "oidc.token_reused").at(-1);
    expect(reused).toMatchObject({
      memberId: member.id,
      actorType: "client",
      actorId: client.clientId,
      reason: "refresh_token_reused",
      outcome: "failure",
    });
    expect(reused?.ip).toBeTruthy();
    expect(reused?.requestId).toMatch(/\S/);
    const alert = t.s.db.$client.prepare("SELECT details FROM alerts WHERE kind = 'token_reused'").get() as
      | { details: string }
      | undefined;
    expect(JSON.parse(alert?.details ?? "{}")).toMatchObject({
      member_id: member.id,
      client_id: client.clientId,
    });
    const events = await jar.fetch(`${issuer}/api/v1/me/events`);
    const actions = ((await events.json()) as { events: Array<{ action?: string; type?: string }> }).events;
    expect(JSON.stringify(actions)).toContain("oidc.token_reused");
    // A first-party site signs the member in again without a consent page (a new grant is made).
    const next = await authorize();
    const { url: after } = await jar.follow(next.url, issuer);
    expect(new URL(after).searchParams.get("code")).toBeTruthy();
  });

  it("refuses a swapped redirect_uri with an error page, never a redirect", async () => {
    // Attack: send the code to the attacker's host or a look-alike of the registered URI.
    for (const bad of [
      `${REDIRECT}/`,
      REDIRECT.replace("callback", "Callback"),
      `${REDIRECT}?x=1`,
      "https://evil.example/callback",
    ]) {
      const jar = new Jar();
      const req = await authorize({ redirect_uri: bad });
      const res = await jar.fetch(req.url);
      expect(res.status, bad).toBe(400);
      expect(res.headers.get("location")).toBeNull();
      const html = await res.text();
      expect(html).toContain("redirect_uri");
      // The member reads what went wrong in their language; the technical detail follows.
      expect(html).toContain("戻り先のアドレスが、サイトの登録内容と一致しません。");
    }
    const en = await new Jar().fetch((await authorize({ redirect_uri: `${REDIRECT}/` })).url, {
      headers: { "accept-language": "en" },
    });
    expect(await en.text()).toContain("The return address does not match the site");
  });

  it("requires redirect_uri at the authorization and token endpoints, even with one registered", async () => {
    const jar = new Jar();
    const req = await authorize();
    const url = new URL(req.url);
    url.searchParams.delete("redirect_uri");
    const res = await jar.fetch(url.toString());
    expect(res.status).toBe(400);
    expect(res.headers.get("location")).toBeNull();
    expect(await res.text()).toContain("redirect_uri");
    // A code redeemed without the redirect_uri its request carried is refused.
    const { callback, checks } = await codeFor(new Jar());
    const form = new URLSearchParams({
      grant_type: "authorization_code",
      code: callback.searchParams.get("code") as string,
      code_verifier: checks.pkceCodeVerifier,
    });
    const token = await fetch(`${issuer}/oidc/token`, {
      method: "POST",
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        authorization: `Basic ${Buffer.from(`${client.clientId}:${client.clientSecret}`).toString("base64")}`,
      },
      body: form.toString(),
    });
    expect(token.status).toBe(400);
    expect(((await token.json()) as { error: string }).error).toBe("invalid_request");
  });

  it("refuses an authorization request without PKCE or with plain PKCE", async () => {
    for (const params of [{ code_challenge_method: "plain", code_challenge: "x".repeat(43) }]) {
      const jar = new Jar();
      const req = await authorize(params);
      const { url } = await jar.follow(req.url, issuer);
      expect(new URL(url).searchParams.get("error")).toBe("invalid_request");
    }
    const noPkce = new URL(`${issuer}/oidc/auth`);
    for (const [k, v] of Object.entries({
      client_id: client.clientId,
      redirect_uri: REDIRECT,
      response_type: "code",
      scope: "openid",
      state: "s",
    })) {
      noPkce.searchParams.set(k, v);
    }
    const { url } = await new Jar().follow(noPkce.toString(), issuer);
    expect(new URL(url).searchParams.get("error")).toBe("invalid_request");
  });

  it("answers prompt=none without a session with login_required", async () => {
    const jar = new Jar();
    const req = await authorize({ prompt: "none" });
    const { url } = await jar.follow(req.url, issuer);
    expect(new URL(url).searchParams.get("error")).toBe("login_required");
  });

  it("asks again when the Sekisho session ends (logout), even though oidc-provider had a session", async () => {
    const jar = new Jar();
    await signInThroughApi(jar);
    const req = await authorize();
    const ok = await jar.follow(req.url, issuer);
    expect(new URL(ok.url).searchParams.get("code")).toBeTruthy();
    const out = await jar.fetch(`${issuer}/api/v1/logout`, {
      method: "POST",
      headers: { "content-type": "application/json", origin: issuer },
      body: "{}",
    });
    expect(out.status).toBe(204);
    const again = await authorize({ prompt: "none" });
    const { url } = await jar.follow(again.url, issuer);
    expect(new URL(url).searchParams.get("error")).toBe("login_required");
  });

  /** Sign in (API) and authorize: the callback URL with a fresh code. */
  async function codeFor(jar: Jar, extra: Record<string, string> = {}) {
    await signInThroughApi(jar);
    const req = await authorize(extra);
    const { url } = await jar.follow(req.url, issuer);
    const checks = { pkceCodeVerifier: req.verifier, expectedState: req.state, expectedNonce: req.nonce };
    return { callback: new URL(url), checks };
  }

  it("signs in through the hosted login form without JavaScript", async () => {
    const jar = new Jar();
    const req = await authorize();
    const page = await jar.follow(req.url, issuer);
    const html = await page.res.text();
    const action = /<form method="post" action="([^"]+)"/.exec(html)?.[1]?.replace(/&amp;/g, "&");
    expect(action).toMatch(/^\/interaction\/[\w-]+\/login/);
    // The passkey button needs JavaScript: it comes hidden, and the script shows it.
    expect(html).toMatch(/<button[^>]* hidden data-passkey-login/);
    const wrong = await jar.fetch(`${issuer}${action}`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", origin: issuer },
      body: new URLSearchParams({ login_id: "oidc.member", password: "not the password" }).toString(),
    });
    expect(wrong.status).toBe(401);
    const wrongPage = await wrong.text();
    expect(wrongPage).toContain("ログインIDまたはパスワードが正しくありません");
    // The error is tied to the fields for screen readers.
    expect(wrongPage).toContain('id="login_error"');
    expect(wrongPage).toMatch(/id="password"[^>]*aria-describedby="login_error"/);
    const res = await jar.fetch(`${issuer}${action}`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", origin: issuer },
      body: new URLSearchParams({ login_id: "oidc.member", password: STRONG_PASSWORD }).toString(),
    });
    expect(res.status).toBe(303);
    const { url } = await jar.follow(
      new URL(res.headers.get("location") as string, issuer).toString(),
      issuer,
    );
    expect(new URL(url).searchParams.get("code")).toBeTruthy();
  });

  it("refuses a cross-site post to the hosted login form", async () => {
    // Attack: login CSRF, a foreign page posts the attacker's credentials into the victim's browser.
    const jar = new Jar();
    const req = await authorize();
    const page = await jar.follow(req.url, issuer);
    const action = /<form method="post" action="([^"]+)"/
      .exec(await page.res.text())?.[1]
      ?.replace(/&amp;/g, "&");
    const res = await jar.fetch(`${issuer}${action}`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", origin: "https://evil.example" },
      body: new URLSearchParams({ login_id: "oidc.member", password: STRONG_PASSWORD }).toString(),
    });
    expect(res.status).toBe(403);
    expect(jar.cookies.has("sekisho_session")).toBe(false);
  });

  it("a code issued to one client cannot be redeemed by another", async () => {
    const { config: otherConfig } = await newClient({
      name: "Other site",
      redirectUris: [REDIRECT],
    });
    const { callback, checks } = await codeFor(new Jar());
    await expect(oidc.authorizationCodeGrant(otherConfig, callback, checks)).rejects.toMatchObject({
      error: "invalid_grant",
    });
  });

  it("refuses a wrong code_verifier", async () => {
    const { callback, checks } = await codeFor(new Jar());
    await expect(
      oidc.authorizationCodeGrant(config, callback, {
        ...checks,
        pkceCodeVerifier: oidc.randomPKCECodeVerifier(),
      }),
    ).rejects.toMatchObject({ error: "invalid_grant" });
  });

  it("refuses a code older than 60 seconds (clock moved, not slept)", async () => {
    const { callback, checks } = await codeFor(new Jar());
    t.clock.advance(61_000);
    await expect(oidc.authorizationCodeGrant(config, callback, checks)).rejects.toMatchObject({
      error: "invalid_grant",
    });
  });

  it("stops on the step-up page when acr_values demands more than the session has", async () => {
    const jar = new Jar();
    await signInThroughApi(jar);
    const req = await authorize({ acr_values: "urn:sekisho:acr:mfa" });
    const { res, url } = await jar.follow(req.url, issuer);
    expect(new URL(url).origin).toBe(issuer);
    expect(res.status).toBe(200);
    // This member has no second factor yet: the page says so and links to the account page.
    const html = await res.text();
    expect(html).toContain("2段階認証");
    expect(html).toContain('href="/account"');
    expect(url).not.toContain("code=");
    // …and offers the way back to the site: the site gets access_denied (and its state), no code.
    const action = /<form method="post" action="([^"]*\/abort[^"]*)"/.exec(html)?.[1] as string;
    expect(action).toBeTruthy();
    const back = await jar.fetch(new URL(action.replaceAll("&amp;", "&"), issuer).toString(), {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", origin: issuer },
      body: "",
    });
    const location = back.headers.get("location") as string;
    const { url: landed } = await jar.follow(new URL(location, issuer).toString(), issuer);
    const params = new URL(landed).searchParams;
    expect(landed.startsWith(REDIRECT)).toBe(true);
    expect(params.get("error")).toBe("access_denied");
    expect(params.get("state")).toBe(new URL(req.url).searchParams.get("state"));
    expect(params.has("code")).toBe(false);
    // Someone else's page can't send a member back for them (the form needs our origin).
    const forged = await jar.fetch(new URL(action.replaceAll("&amp;", "&"), issuer).toString(), {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", origin: "https://evil.example" },
      body: "",
    });
    expect(forged.status).toBe(403);
  });

  it("RP-initiated logout ends the Sekisho session too", async () => {
    const jar = new Jar();
    const { callback, checks } = await codeFor(jar);
    const tokens = await oidc.authorizationCodeGrant(config, callback, checks);
    const before = jar.cookies.get("sekisho_session") as string;
    const endUrl = oidc.buildEndSessionUrl(config, { id_token_hint: tokens.id_token as string });
    const confirm = await jar.follow(endUrl.toString(), issuer);
    const html = await confirm.res.text();
    const action = /action="([^"]+)"/.exec(html)?.[1] as string;
    const xsrf = /name="xsrf" value="([^"]+)"/.exec(html)?.[1] as string;
    expect(xsrf).toBeTruthy();
    const done = await jar.fetch(new URL(action, issuer).toString(), {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", origin: issuer },
      body: new URLSearchParams({ xsrf, logout: "confirmed" }).toString(),
    });
    expect(done.status).toBe(303);
    // Revoked server-side, not just forgotten by the browser: the old cookie no longer works.
    const me = await fetch(`${issuer}/api/v1/me`, { headers: { cookie: `sekisho_session=${before}` } });
    expect(me.status).toBe(401);
    expect(jar.cookies.has("sekisho_session")).toBe(false);
    // The site's grant is revoked too: its refresh token and access token stop working.
    await expect(oidc.refreshTokenGrant(config, tokens.refresh_token as string)).rejects.toMatchObject({
      error: "invalid_grant",
    });
    expect((await oidc.tokenIntrospection(config, tokens.access_token)).active).toBe(false);
  });

  it("RP-initiated logout names the site and lets the member sign out of that site only, staying signed in to Sekisho", async () => {
    const jar = new Jar();
    const { callback, checks } = await codeFor(jar);
    const tokens = await oidc.authorizationCodeGrant(config, callback, checks);
    const endUrl = oidc.buildEndSessionUrl(config, { id_token_hint: tokens.id_token as string });
    const page = await jar.follow(endUrl.toString(), issuer);
    const html = await page.res.text();
    expect(html).toContain("「カーナビ会員サイト」からのサインアウトです。");
    expect(html).toContain("「カーナビ会員サイト」だけサインアウト");
    const action = (/action="([^"]+)"/.exec(html)?.[1] ?? "").replaceAll("&amp;", "&");
    const xsrf = /name="xsrf" value="([^"]+)"/.exec(html)?.[1] as string;
    // The second button: the form without `logout`.
    const done = await jar.fetch(new URL(action, issuer).toString(), {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", origin: issuer },
      body: new URLSearchParams({ xsrf }).toString(),
    });
    expect(done.status).toBe(303);
    // The page after it says what ended, and what didn't.
    const after = await (
      await jar.fetch(new URL(done.headers.get("location") as string, issuer).toString())
    ).text();
    expect(after).toContain("「カーナビ会員サイト」からサインアウトしました");
    expect(after).toContain("関所（Sekisho）にはサインインしたままです。");
    expect((await jar.fetch(`${issuer}/api/v1/me`)).status).toBe(200); // still signed in to Sekisho
    await expect(oidc.refreshTokenGrant(config, tokens.refresh_token as string)).rejects.toMatchObject({
      error: "invalid_grant",
    }); // the site's sign-in is over
    // Sent to the endpoint without a site (no id_token_hint): there is no site to sign out of
    // alone, so only the full sign-out is offered (a "site only" button would end nothing).
    await codeFor(jar);
    const bare = await (await jar.follow(`${issuer}/oidc/session/end`, issuer)).res.text();
    expect(bare).toContain(`value="confirmed"`);
    expect(bare).not.toContain("だけサインアウト");
  });

  /** The end-session page's confirmation form, and a post of it (the member's button). */
  async function endSessionPage(jar: Jar, url: string) {
    const page = await jar.follow(url, issuer);
    const html = await page.res.text();
    const action = (/action="([^"]+)"/.exec(html)?.[1] ?? "").replaceAll("&amp;", "&");
    const xsrf = /name="xsrf" value="([^"]+)"/.exec(html)?.[1] as string;
    expect(xsrf).toBeTruthy();
    const confirm = () =>
      jar.fetch(new URL(action, issuer).toString(), {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", origin: issuer },
        body: new URLSearchParams({ xsrf, logout: "confirmed" }).toString(),
      });
    return { res: page.res, html, confirm };
  }

  it("a page that sends a member signed in only to Sekisho to the logout endpoint gets a confirmation, not a form that submits itself", async () => {
    // Signed in through the API (or the account page): a Sekisho session, no provider session.
    const jar = new Jar();
    await signInThroughApi(jar);
    const before = jar.cookies.get("sekisho_session") as string;
    // Attack: another site navigates the browser to the end-session endpoint. With no provider
    // session oidc-provider would answer a form that submits itself (and so sign the member out).
    const end = await endSessionPage(jar, `${issuer}/oidc/session/end`);
    expect(end.html).not.toContain("<script");
    expect(end.html).toContain('name="logout"'); // the member's button
    expect(end.res.headers.get("content-security-policy")).toContain("frame-ancestors 'none'");
    // Nobody clicked: the member is still signed in.
    expect((await jar.fetch(`${issuer}/api/v1/me`)).status).toBe(200);
    // Another spelling of the endpoint (the provider's router would take a trailing slash) is no
    // endpoint at all; and what the self-submitting form would have sent (logout=yes) ends nothing.
    const slash = await jar.fetch(`${issuer}/oidc/session/end/`);
    expect(slash.status).toBe(404);
    expect(await slash.text()).not.toContain("<script");
    const xsrf = /name="xsrf" value="([^"]+)"/.exec(end.html)?.[1] as string;
    const auto = await jar.fetch(`${issuer}/oidc/session/end/confirm`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", origin: issuer },
      body: new URLSearchParams({ xsrf, logout: "yes" }).toString(),
    });
    expect(auto.status).toBe(303);
    expect((await jar.fetch(`${issuer}/api/v1/me`)).status).toBe(200);
    expect(jar.cookies.get("sekisho_session")).toBe(before);
    // The member confirms (a new page: the form above used its one-time xsrf): signed out.
    expect((await (await endSessionPage(jar, `${issuer}/oidc/session/end`)).confirm()).status).toBe(303);
    const me = await fetch(`${issuer}/api/v1/me`, { headers: { cookie: `sekisho_session=${before}` } });
    expect(me.status).toBe(401);
  });

  it("a site's logout after the member changed the password (the provider session gone, the Sekisho one kept) still ends the Sekisho session", async () => {
    const api = (jar: Jar, path: string, body: unknown) =>
      jar.fetch(`${issuer}/api/v1${path}`, {
        method: "POST",
        headers: { "content-type": "application/json", origin: issuer },
        body: JSON.stringify(body),
      });
    const jar = new Jar();
    const profile = { ...PROFILE, email: "pw.change@example.jp" };
    expect(
      (await api(jar, "/registrations", { login_id: "pw.changer", password: STRONG_PASSWORD, profile }))
        .status,
    ).toBe(201);
    expect((await api(jar, "/login", { login_id: "pw.changer", password: STRONG_PASSWORD })).status).toBe(
      200,
    );
    const tokens = await codeTokens(jar); // signed in as pw.changer already
    const changed = await api(jar, "/me/password", {
      current_password: STRONG_PASSWORD,
      new_password: "another strong pass phrase 77",
    });
    expect(changed.status).toBe(204);
    const end = await endSessionPage(
      jar,
      oidc.buildEndSessionUrl(config, { id_token_hint: tokens.id_token as string }).toString(),
    );
    expect(end.html).not.toContain("<script");
    expect((await end.confirm()).status).toBe(303);
    expect((await jar.fetch(`${issuer}/api/v1/me`)).status).toBe(401);
    // The next authorization in this browser asks for a sign-in.
    const next = await jar.follow((await authorize()).url, issuer);
    expect(next.url).toContain("/interaction/");
  });

  it("introspection answers a site for its own tokens only (another site's token is inactive)", async () => {
    const jar = new Jar();
    const { callback, checks } = await codeFor(jar);
    const tokens = await oidc.authorizationCodeGrant(config, callback, checks);
    expect((await oidc.tokenIntrospection(config, tokens.access_token)).active).toBe(true);
    // Attack: another site, holding a leaked token, checks it and reads whose it is.
    const { config: other } = await newClient({ name: "Other site", redirectUris: [REDIRECT] });
    for (const token of [tokens.access_token, tokens.refresh_token as string]) {
      const seen = await oidc.tokenIntrospection(other, token);
      expect(seen).toEqual({ active: false });
    }
  });

  it("discovery and JWKS answer each origin with its own CORS header, not the first caller's, and nosniff", async () => {
    for (const path of ["/.well-known/openid-configuration", "/oidc/jwks"]) {
      for (const origin of ["https://first.example", "https://second.example.jp"]) {
        const res = await fetch(`${issuer}${path}`, { headers: { origin } });
        expect(res.status).toBe(200);
        expect(res.headers.get("access-control-allow-origin")).toBe(origin);
        // Cached or not (the second origin's answer is the cached one), never to be sniffed.
        expect(res.headers.get("x-content-type-options")).toBe("nosniff");
      }
      const plain = await fetch(`${issuer}${path}`);
      expect(plain.headers.get("access-control-allow-origin")).toBeNull();
    }
  });

  it("a first-party site asking for more scopes later gets them without a consent page, also with prompt=none", async () => {
    const jar = new Jar();
    await signInThroughApi(jar);
    const first = await authorize({ scope: "openid" });
    expect(new URL((await jar.follow(first.url, issuer)).url).searchParams.get("code")).toBeTruthy();
    const asks: Record<string, string>[] = [
      { scope: "openid email" },
      { scope: "openid email phone", prompt: "none" },
    ];
    for (const extra of asks) {
      const more = await authorize(extra);
      const { url } = await jar.follow(more.url, issuer);
      const callback = new URL(url);
      expect(`${callback.origin}${callback.pathname}`, url).toBe(REDIRECT);
      const tokens = await oidc.authorizationCodeGrant(config, callback, {
        pkceCodeVerifier: more.verifier,
        expectedState: more.state,
        expectedNonce: more.nonce,
      });
      expect(tokens.scope?.split(" ").sort()).toEqual(extra.scope?.split(" ").sort());
    }
  });

  it("accepts client_secret_post for a client registered with it, and refuses a wrong secret", async () => {
    const post = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals }).add({
      name: "Post site",
      redirectUris: [REDIRECT],
      authMethod: "client_secret_post",
    });
    const postConfig = await oidc.discovery(
      new URL(issuer),
      post.clientId,
      undefined,
      oidc.ClientSecretPost(post.clientSecret as string),
      { execute: [oidc.allowInsecureRequests] },
    );
    const jar = new Jar();
    await signInThroughApi(jar);
    const verifier = oidc.randomPKCECodeVerifier();
    const url = oidc.buildAuthorizationUrl(postConfig, {
      redirect_uri: REDIRECT,
      scope: "openid",
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
      code_challenge_method: "S256",
    });
    const { url: cb } = await jar.follow(url.toString(), issuer);
    const tokens = await oidc.authorizationCodeGrant(postConfig, new URL(cb), { pkceCodeVerifier: verifier });
    expect(tokens.id_token).toBeTruthy();
    // Attack: guess the secret; the stored hash itself is not the secret either.
    const wrong = await oidc.discovery(
      new URL(issuer),
      post.clientId,
      undefined,
      oidc.ClientSecretPost("guess"),
      {
        execute: [oidc.allowInsecureRequests],
      },
    );
    await expect(oidc.refreshTokenGrant(wrong, tokens.refresh_token as string)).rejects.toMatchObject({
      error: "invalid_client",
    });
    const stored = t.s.db.$client
      .prepare("SELECT secret_hash FROM oidc_clients WHERE client_id = ?")
      .get(post.clientId) as {
      secret_hash: string;
    };
    const withHash = await oidc.discovery(
      new URL(issuer),
      post.clientId,
      undefined,
      oidc.ClientSecretPost(stored.secret_hash),
      {
        execute: [oidc.allowInsecureRequests],
      },
    );
    await expect(oidc.refreshTokenGrant(withHash, tokens.refresh_token as string)).rejects.toMatchObject({
      error: "invalid_client",
    });
  });

  it("shows a consent page to a third-party client, and issues a code only after Allow", async () => {
    const { config: thirdConfig } = await newClient({
      name: "Partner shop",
      redirectUris: [REDIRECT],
      firstParty: false,
    });
    const jar = new Jar();
    await signInThroughApi(jar);
    const verifier = oidc.randomPKCECodeVerifier();
    const url = oidc.buildAuthorizationUrl(thirdConfig, {
      redirect_uri: REDIRECT,
      scope: "openid email",
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
      code_challenge_method: "S256",
    });
    const page = await jar.follow(url.toString(), issuer);
    const html = await page.res.text();
    expect(html).toContain("Partner shop");
    expect(html).toContain('value="allow"');
    const action = /<form method="post" action="([^"]+)"/.exec(html)?.[1] as string;
    const denied = await jar.fetch(`${issuer}${action}`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", origin: issuer },
      body: "decision=deny",
    });
    const deniedEnd = await jar.follow(
      new URL(denied.headers.get("location") as string, issuer).toString(),
      issuer,
    );
    expect(new URL(deniedEnd.url).searchParams.get("error")).toBe("access_denied");

    const again = await jar.follow(url.toString(), issuer);
    const action2 = /<form method="post" action="([^"]+)"/.exec(await again.res.text())?.[1] as string;
    const allowed = await jar.fetch(`${issuer}${action2}`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", origin: issuer },
      body: "decision=allow",
    });
    const end = await jar.follow(
      new URL(allowed.headers.get("location") as string, issuer).toString(),
      issuer,
    );
    expect(new URL(end.url).searchParams.get("code")).toBeTruthy();
  });

  it("prompt=login asks again even when the session was made in the same second as the request", async () => {
    // oidc-provider stamps the interaction in whole seconds of the system clock: sign in at the
    // very start of the current second, then ask with prompt=login within it.
    t.clock.set(Math.floor(Date.now() / 1000) * 1000);
    const jar = new Jar();
    await signInThroughApi(jar);
    const req = await authorize({ prompt: "login" });
    const first = await jar.follow(req.url, issuer);
    expect(new URL(first.url).origin).toBe(issuer);
    expect(await first.res.text()).toContain('name="password"');
    // A sign-in after the request started completes it.
    t.clock.set(Date.now() + 1500);
    await signInThroughApi(jar);
    const again = await jar.follow(first.url, issuer);
    expect(new URL(again.url).searchParams.get("code")).toBeTruthy();
  });

  it("max_age=0 asks for a sign-in even right after one, and a sign-in made for that request completes it", async () => {
    // oidc-provider turns max_age=0 into prompt=login and stamps the interaction in whole seconds
    // of the system clock: start this test's clock there, so that the sign-in and the request
    // below fall within one second.
    t.clock.set(Date.now());
    const jar = new Jar();
    // Signed in, and already signed in to the site once (oidc-provider has its session too).
    const { callback } = await codeFor(jar);
    expect(callback.searchParams.get("code")).toBeTruthy();
    t.clock.advance(5); // a few milliseconds later: within the same second
    const req = await authorize({ max_age: "0" });
    const first = await jar.follow(req.url, issuer);
    expect(new URL(first.url).origin).toBe(issuer);
    expect(await first.res.text()).toContain('name="password"');
    // The member signs in on that page (here through the API, as its script does), and the
    // interaction completes: no loop back to the login page.
    t.clock.advance(3000);
    await signInThroughApi(jar);
    const again = await jar.follow(first.url, issuer);
    expect(new URL(again.url).searchParams.get("code"), again.url).toBeTruthy();
  });

  it("honours max_age: an older sign-in is asked again", async () => {
    const jar = new Jar();
    await signInThroughApi(jar);
    t.clock.advance(120_000);
    const req = await authorize({ max_age: "60" });
    const { res, url } = await jar.follow(req.url, issuer);
    expect(new URL(url).origin).toBe(issuer);
    expect(await res.text()).toContain('name="password"');
    const fresh = await authorize({ max_age: "600" });
    const ok = await jar.follow(fresh.url, issuer);
    expect(new URL(ok.url).searchParams.get("code")).toBeTruthy();
  });

  it("prompt=none signs in silently from a Sekisho session alone, and never shows a page", async () => {
    const jar = new Jar();
    await signInThroughApi(jar); // no earlier authorization in this browser
    const req = await authorize({ prompt: "none" });
    const { url } = await jar.follow(req.url, issuer);
    expect(new URL(url).searchParams.get("code")).toBeTruthy();
    // A level the session lacks: the prompt=none error, not the login page.
    const strong = await authorize({ prompt: "none", acr_values: "urn:sekisho:acr:mfa" });
    const { url: refused } = await jar.follow(strong.url, issuer);
    expect(new URL(refused).searchParams.get("error")).toBe("login_required");
    // Of several values the first Sekisho level listed is required (not the weakest)…
    const listed = await authorize({
      prompt: "none",
      acr_values: "urn:sekisho:acr:mfa urn:sekisho:acr:password",
    });
    expect(new URL((await jar.follow(listed.url, issuer)).url).searchParams.get("error")).toBe(
      "login_required",
    );
    // …and a value Sekisho doesn't know is passed over.
    const unknown = await authorize({
      prompt: "none",
      acr_values: "urn:sekisho:acr:unheard-of urn:sekisho:acr:password",
    });
    expect(new URL((await jar.follow(unknown.url, issuer)).url).searchParams.get("code")).toBeTruthy();
  });

  it("an id_token_hint naming another member than the one signed in gets login_required, never that member's code", async () => {
    // A site checks silently whether its member is still signed in; meanwhile someone else signed
    // in to Sekisho in this browser (a shared computer).
    const first = new Jar();
    await signInThroughApi(first);
    const idToken = (await codeTokens(first)).id_token as string;
    await t.s.registrations.register(
      { loginId: "oidc.other", password: STRONG_PASSWORD, profile: {} },
      { ip: null, requestId: null },
    );
    const shared = new Jar();
    const login = await shared.fetch(`${issuer}/api/v1/login`, {
      method: "POST",
      headers: { "content-type": "application/json", origin: issuer },
      body: JSON.stringify({ login_id: "oidc.other", password: STRONG_PASSWORD }),
    });
    expect(login.status).toBe(200);
    const silent = await authorize({ prompt: "none", id_token_hint: idToken });
    const answer = new URL((await shared.follow(silent.url, issuer)).url);
    expect(answer.searchParams.get("code")).toBeNull();
    expect(answer.searchParams.get("error")).toBe("login_required");
    // Without prompt=none the login page is shown, not a code for the other member.
    const asked = await authorize({ id_token_hint: idToken });
    const page = await shared.follow(asked.url, issuer);
    expect(new URL(page.url).searchParams.get("code")).toBeNull();
    expect(new URL(page.url).pathname).toMatch(/^\/interaction\//);
    // The member the hint names, signed in, is answered silently as before.
    const same = await authorize({ prompt: "none", id_token_hint: idToken });
    expect(new URL((await first.follow(same.url, issuer)).url).searchParams.get("code")).toBeTruthy();
  });

  it("a member-site token doesn't follow its sub when it is moved to another member's row in the database", async () => {
    // Attack (database write, no keyring): give a victim's row the sub of one's own token, to read
    // the victim's claims through it (userinfo, the service API).
    const jar = new Jar();
    await signInThroughApi(jar);
    const tokens = await codeTokens(jar);
    const sub = tokens.claims()?.sub as string;
    await t.s.registrations.register(
      {
        loginId: "oidc.victim",
        password: STRONG_PASSWORD,
        profile: { name: "被害 花子", email: "hanako@example.jp" },
      },
      { ip: null, requestId: null },
    );
    const sql = (q: string, ...a: unknown[]) => t.s.db.$client.prepare(q).run(...a);
    const victimSub = t.s.db.$client
      .prepare("SELECT sub FROM members WHERE login_id = 'oidc.victim'")
      .pluck()
      .get();
    sql("UPDATE members SET sub = 'moved-away' WHERE login_id = 'oidc.member'");
    sql("UPDATE members SET sub = ? WHERE login_id = 'oidc.victim'", sub);
    try {
      await expect(oidc.fetchUserInfo(config, tokens.access_token, sub)).rejects.toBeTruthy();
      await expect(oidc.refreshTokenGrant(config, tokens.refresh_token as string)).rejects.toBeTruthy();
    } finally {
      sql("UPDATE members SET sub = ? WHERE login_id = 'oidc.victim'", victimSub);
      sql("UPDATE members SET sub = ? WHERE login_id = 'oidc.member'", sub);
    }
    expect(
      t.s.alerts
        .list()
        .some(
          (a) =>
            a.kind === "row_seal_broken" && (JSON.parse(a.details) as { table: string }).table === "members",
        ),
    ).toBe(true);
  });

  it("client_credentials works only for a client registered with it", async () => {
    // Attack: a member site's ordinary credentials used for a machine token it was never given.
    const refused = await oidc.clientCredentialsGrant(config, { scope: "openid" }).catch((e: unknown) => e);
    expect(refused).toMatchObject({
      error: "unauthorized_client", // RFC 6749 §5.2
      error_description: expect.stringMatching(/grant type is not allowed/),
    });
    const { config: backendConfig } = await newClient({
      name: "Site backend",
      redirectUris: [REDIRECT],
      grants: ["client_credentials"],
      scope: "openid members:read",
    });
    const token = await oidc.clientCredentialsGrant(backendConfig, { scope: "members:read" });
    expect(token.access_token).toBeTruthy();
    expect(token.refresh_token).toBeUndefined();
  });

  it("returns the member to a registered post_logout_redirect_uri, and refuses an unregistered one", async () => {
    const AFTER = "http://127.0.0.1:9/signed-out";
    const { config: cfg } = await newClient({
      name: "Logout site",
      redirectUris: [REDIRECT],
      postLogoutRedirectUris: [AFTER],
    });
    const jar = new Jar();
    await signInThroughApi(jar);
    const verifier = oidc.randomPKCECodeVerifier();
    const authUrl = oidc.buildAuthorizationUrl(cfg, {
      redirect_uri: REDIRECT,
      scope: "openid",
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
      code_challenge_method: "S256",
    });
    const { url: cb } = await jar.follow(authUrl.toString(), issuer);
    const tokens = await oidc.authorizationCodeGrant(cfg, new URL(cb), { pkceCodeVerifier: verifier });
    // Attack: an open redirect through the logout endpoint.
    const evil = oidc.buildEndSessionUrl(cfg, {
      id_token_hint: tokens.id_token as string,
      post_logout_redirect_uri: "https://evil.example/",
    });
    const refused = await jar.fetch(evil.toString(), { headers: { accept: "text/html" } });
    expect(refused.status).toBe(400);
    expect(refused.headers.get("location")).toBeNull();
    // A browser gets a page that says what failed: signing out, not signing in.
    expect(await refused.text()).toContain("サインアウトを続けられません");
    expect(refused.headers.get("content-security-policy")).toContain("frame-ancestors 'none'");

    const end = oidc.buildEndSessionUrl(cfg, {
      id_token_hint: tokens.id_token as string,
      post_logout_redirect_uri: AFTER,
      state: "bye",
    });
    const confirm = await jar.follow(end.toString(), issuer);
    const html = await confirm.res.text();
    // The hosted pages' headers: framed by nobody; the form may end at the registered address.
    const csp = confirm.res.headers.get("content-security-policy") as string;
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).toContain("form-action 'self' http://127.0.0.1:9;");
    expect(csp).toContain("script-src 'self';");
    const action = /action="([^"]+)"/.exec(html)?.[1] as string;
    const xsrf = /name="xsrf" value="([^"]+)"/.exec(html)?.[1] as string;
    const done = await jar.fetch(new URL(action, issuer).toString(), {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", origin: issuer },
      body: new URLSearchParams({ xsrf, logout: "confirmed" }).toString(),
    });
    const back = new URL(done.headers.get("location") as string);
    expect(`${back.origin}${back.pathname}`).toBe(AFTER);
    expect(back.searchParams.get("state")).toBe("bye");
  });

  it("response_mode=form_post answers a self-submitting form whose CSP lets it post to the site", async () => {
    const jar = new Jar();
    await signInThroughApi(jar);
    const req = await authorize({ response_mode: "form_post" });
    const { res } = await jar.follow(req.url, issuer);
    expect(res.status).toBe(200);
    const html = await res.text();
    expect(html).toContain(`action="${REDIRECT}"`);
    expect(html).toMatch(/name="code" value="[\w-]+"/);
    const csp = res.headers.get("content-security-policy") ?? "";
    expect(csp).not.toContain("form-action");
    expect(csp).toMatch(/script-src[^;]*'sha256-/); // only the provider's own inline script, by hash
  });

  describe("second factors and step-up, without a browser", () => {
    const LOGIN = "oidc.factors";
    const authenticator = new SoftAuthenticator();
    let totpSecret = "";
    const totp = () =>
      generateSync({ secret: totpSecret, epoch: Math.floor(t.clock.now().getTime() / 1000) });
    const api = (jar: Jar, path: string, body: unknown) =>
      jar.fetch(`${issuer}/api/v1${path}`, {
        method: "POST",
        headers: { "content-type": "application/json", origin: issuer },
        body: JSON.stringify(body),
      });

    beforeAll(async () => {
      // A member with TOTP and a passkey, enrolled through the API.
      const jar = new Jar();
      expect(
        (await api(jar, "/registrations", { login_id: LOGIN, password: STRONG_PASSWORD, profile: PROFILE }))
          .status,
      ).toBe(201);
      expect((await api(jar, "/login", { login_id: LOGIN, password: STRONG_PASSWORD })).status).toBe(200);
      const begin = (await (await api(jar, "/me/totp", {})).json()) as { secret: string };
      totpSecret = begin.secret;
      expect((await api(jar, "/me/totp/verify", { code: totp() })).status).toBe(200);
      // With a factor set up, adding another needs a sign-in that used it: step up first.
      t.clock.advance(30_000);
      expect((await api(jar, "/login/totp", { code: totp() })).status).toBe(200);
      const options = (await (await api(jar, "/me/passkeys/options", {})).json()) as never;
      const added = await api(jar, "/me/passkeys", {
        response: authenticator.register(options, { origin: issuer }),
      });
      expect(added.status).toBe(201);
      t.clock.advance(30_000); // the enrolment code's time step is spent
    });

    it("acr_values=mfa: password, then TOTP through the API, then the authorization completes at acr mfa", async () => {
      const jar = new Jar();
      const login = await api(jar, "/login", { login_id: LOGIN, password: STRONG_PASSWORD });
      const step = (await login.json()) as { status: string; mfa_token: string; methods: string[] };
      expect(step.status).toBe("mfa_required");
      expect(step.methods).toEqual(["totp", "webauthn", "recovery_code"]);
      expect(jar.cookies.has("sekisho_session")).toBe(false);
      expect((await api(jar, "/login/totp", { mfa_token: step.mfa_token, code: totp() })).status).toBe(200);
      const req = await authorize({ acr_values: "urn:sekisho:acr:mfa" });
      const { url } = await jar.follow(req.url, issuer);
      const tokens = await oidc.authorizationCodeGrant(config, new URL(url), {
        pkceCodeVerifier: req.verifier,
        expectedState: req.state,
        expectedNonce: req.nonce,
      });
      expect(tokens.claims()?.acr).toBe("urn:sekisho:acr:mfa");
      expect(tokens.claims()?.amr).toEqual(["pwd", "otp", "mfa"]);
      t.clock.advance(30_000);
    });

    it("acr_values=phishing-resistant on a TOTP session: the step-up page, a passkey by cookie, then the code", async () => {
      const jar = new Jar();
      const step = (await (
        await api(jar, "/login", { login_id: LOGIN, password: STRONG_PASSWORD })
      ).json()) as {
        mfa_token: string;
      };
      expect((await api(jar, "/login/totp", { mfa_token: step.mfa_token, code: totp() })).status).toBe(200);
      const req = await authorize({ acr_values: "urn:sekisho:acr:phishing-resistant" });
      const first = await jar.follow(req.url, issuer);
      expect(new URL(first.url).origin).toBe(issuer); // stopped on the step-up page
      const html = await first.res.text();
      expect(html).toContain("data-passkey-mfa");
      expect(html).not.toContain('name="code"'); // TOTP can't reach phishing-resistant
      const options = (await (await api(jar, "/login/webauthn/options", {})).json()) as never;
      const stepUp = await api(jar, "/login/webauthn", {
        response: authenticator.assert(options, { origin: issuer }),
      });
      expect(stepUp.status).toBe(200);
      const second = await jar.follow(req.url, issuer);
      const tokens = await oidc.authorizationCodeGrant(config, new URL(second.url), {
        pkceCodeVerifier: req.verifier,
        expectedState: req.state,
        expectedNonce: req.nonce,
      });
      expect(tokens.claims()?.acr).toBe("urn:sekisho:acr:phishing-resistant");
      expect(tokens.claims()?.amr).toEqual(["pwd", "otp", "mfa", "hwk", "user"]);
      t.clock.advance(30_000);
    });

    it("the hosted form's second step works without JavaScript (password page, then the TOTP form)", async () => {
      const jar = new Jar();
      const req = await authorize();
      const page = await jar.follow(req.url, issuer);
      const action = /<form method="post" action="([^"]+)"/
        .exec(await page.res.text())?.[1]
        ?.replace(/&amp;/g, "&");
      const form = (body: Record<string, string>, path: string) =>
        jar.fetch(`${issuer}${path}`, {
          method: "POST",
          headers: { "content-type": "application/x-www-form-urlencoded", origin: issuer },
          body: new URLSearchParams(body).toString(),
        });
      const mfa = await form({ login_id: LOGIN, password: STRONG_PASSWORD }, action as string);
      expect(mfa.status).toBe(200);
      const mfaHtml = await mfa.text();
      const mfaAction = /<form method="post" action="([^"]+)">/
        .exec(mfaHtml)?.[1]
        ?.replace(/&amp;/g, "&") as string;
      const token = /name="mfa_token" value="([^"]+)"/.exec(mfaHtml)?.[1] as string;
      expect(mfaAction).toMatch(/^\/interaction\/[\w-]+\/mfa/);
      const wrong = await form({ mfa_token: token, method: "totp", code: "000000" }, mfaAction);
      expect(wrong.status).toBe(401);
      const wrongHtml = await wrong.text();
      expect(wrongHtml).toContain("コードが正しくありません");
      // The code field is marked invalid and points at the message (screen readers).
      expect(wrongHtml).toContain('id="mfa_error"');
      expect(wrongHtml).toMatch(/id="code"[^>]*aria-invalid="true" aria-describedby="mfa_error"/);
      // The page in English: its switch posts the pending sign-in back (no address can show it).
      const switchTo = langSwitchIn(wrongHtml);
      expect(switchTo.fields).toEqual({
        mfa_token: token,
        switch: "lang",
        methods: "totp webauthn recovery_code",
      });
      const english = await form(switchTo.fields, switchTo.action);
      expect(english.status).toBe(200);
      const englishHtml = await english.text();
      expect(englishHtml).toContain('<html lang="en">');
      expect(englishHtml).toContain("6-digit code from your authenticator app");
      expect(englishHtml).toContain(`name="mfa_token" value="${token}"`);
      expect(langSwitchIn(englishHtml).action).toContain("lang=ja");
      const englishAction = /<form method="post" action="([^"]+)">/
        .exec(englishHtml)?.[1]
        ?.replace(/&amp;/g, "&") as string;
      expect(englishAction).toContain("lang=en");
      const ok = await form({ mfa_token: token, method: "totp", code: totp() }, englishAction);
      expect(ok.status).toBe(303);
      const { url } = await jar.follow(
        new URL(ok.headers.get("location") as string, issuer).toString(),
        issuer,
      );
      const tokens = await oidc.authorizationCodeGrant(config, new URL(url), {
        pkceCodeVerifier: req.verifier,
        expectedState: req.state,
        expectedNonce: req.nonce,
      });
      expect(tokens.claims()?.amr).toEqual(["pwd", "otp", "mfa"]);
      expect(jar.cookies.has("sekisho_device")).toBe(true);
      t.clock.advance(30_000);
    });
  });
});
