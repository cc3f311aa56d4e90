import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from "jose";
import * as oidc from "openid-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Clients } from "../src/oidc/clients.js";
import type { Oidc } from "../src/oidc/provider.js";
import { runCli } from "./support/cli.js";
import { type ListeningApp, listenWithMember } from "./support/oidc.js";

describe("ID-token signing keys rotated while the server runs", () => {
  let listening: ListeningApp;
  let sub: string;
  beforeAll(async () => {
    listening = await listenWithMember("keys.member");
    sub = listening.t.s.db.$client
      .prepare("SELECT sub FROM members WHERE login_id = 'keys.member'")
      .pluck()
      .get() as string;
  });
  afterAll(() => listening.close());

  /** A member site holding a refresh token for the member, as a code exchange leaves it. */
  async function memberSite() {
    const { t, issuer } = listening;
    const site = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit }).add({
      name: "site",
      redirectUris: ["https://site.example/cb"],
    });
    const { provider } = t.app.locals.oidc as Oidc;
    const grant = new provider.Grant({ accountId: sub, clientId: site.clientId });
    grant.addOIDCScope("openid");
    const grantId = await grant.save();
    const client = await provider.Client.find(site.clientId);
    if (!client) throw new Error("client not found");
    let refreshToken = await new provider.RefreshToken({
      accountId: sub,
      client,
      grantId,
      gty: "authorization_code",
      scope: "openid",
      authTime: Math.floor(Date.now() / 1000),
    }).save();
    const config = await oidc.discovery(
      new URL(issuer),
      site.clientId,
      site.clientSecret ?? undefined,
      undefined,
      {
        execute: [oidc.allowInsecureRequests],
      },
    );
    return {
      config,
      /** Refresh, and return the new ID token. */
      async idToken(): Promise<string> {
        const tokens = await oidc.refreshTokenGrant(config, refreshToken);
        refreshToken = tokens.refresh_token as string;
        return tokens.id_token as string;
      },
    };
  }

  const kids = async () => {
    const res = await fetch(`${listening.issuer}/oidc/jwks`);
    return ((await res.json()) as { keys: Array<{ kid: string }> }).keys.map((k) => k.kid);
  };

  it("signs with the new key within seconds of `keys rotate`, no restart, and old ID tokens still verify", async () => {
    const { t, issuer } = listening;
    const site = await memberSite();
    const before = await site.idToken();
    const oldKid = decodeProtectedHeader(before).kid;
    expect(await kids()).toEqual([oldKid]);

    const run = runCli(t, ["keys", "rotate", "--json"]);
    expect(run.status, run.stderr).toBe(0);
    const newKid = t.s.keys.reload().signingKeysActiveFirst()[0]?.kid;
    expect(newKid).toBeDefined();
    expect(newKid).not.toBe(oldKid);

    // The running server (no restart) now signs with the new key and publishes both, new first.
    const after = await site.idToken();
    expect(decodeProtectedHeader(after).kid).toBe(newKid);
    expect(await kids()).toEqual([newKid, oldKid]);
    // A member site verifying against the JWKS accepts the ID token from before the rotation and
    // the one after it.
    const jwks = createRemoteJWKSet(new URL(`${issuer}/oidc/jwks`));
    for (const token of [before, after]) {
      const { payload, protectedHeader } = await jwtVerify(token, jwks, { issuer, algorithms: ["ES256"] });
      expect(payload.sub).toBe(sub);
      expect(protectedHeader.alg).toBe("ES256");
    }
    // The public parts only.
    expect(JSON.stringify(await (await fetch(`${issuer}/oidc/jwks`)).json())).not.toMatch(/"d":/);
  });

  it("an ID token whose signature was made with a key the JWKS doesn't hold is rejected by the member site", async () => {
    const { issuer } = listening;
    const site = await memberSite();
    const token = await site.idToken();
    // Tamper: keep header and payload, sign with a key of the attacker's.
    const { SignJWT, generateKeyPair, decodeJwt } = await import("jose");
    const { privateKey } = await generateKeyPair("ES256");
    const forged = await new SignJWT(decodeJwt(token))
      .setProtectedHeader(decodeProtectedHeader(token) as { alg: string; kid: string })
      .sign(privateKey);
    const jwks = createRemoteJWKSet(new URL(`${issuer}/oidc/jwks`));
    await expect(jwtVerify(forged, jwks, { issuer })).rejects.toThrow(/signature/);
  });
});
