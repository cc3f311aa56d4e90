import fs from "node:fs";
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from "jose";
import * as oidc from "openid-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Clients } from "../src/oidc/clients.js";
import type { Oidc } from "../src/oidc/provider.js";
import { Keyring } from "../src/vault/keyring.js";
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
    const newKid = Keyring.parse(
      fs.readFileSync(t.s.config.keyringFile, "utf8"),
      "file",
    ).signingKeysActiveFirst()[0]?.kid;
    // The server's store looks at the file at most once a second (its clock: the test's).
    t.clock.advance(2_000);
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

  it("a keyring file broken on disk changes nothing: the keys in use keep signing, and an alert is raised", async () => {
    const { t } = listening;
    const site = await memberSite();
    const kid = decodeProtectedHeader(await site.idToken()).kid;
    const jwksBefore = await kids();
    const good = fs.readFileSync(t.s.config.keyringFile, "utf8");
    try {
      fs.writeFileSync(t.s.config.keyringFile, good.slice(0, good.length / 2)); // cut short
      t.clock.advance(2_000); // past the store's once-a-second look at the file
      expect(decodeProtectedHeader(await site.idToken()).kid).toBe(kid);
      expect(await kids()).toEqual(jwksBefore);
      // Member data keeps decrypting with the keys in memory.
      expect((await fetch(`${listening.issuer}/healthz`)).status).toBe(200);
      const alert = t.s.alerts.list().find((a) => a.kind === "keyring_unreadable");
      expect(alert?.severity).toBe("critical");
      expect(t.logs.join("")).toMatch(/keyring file unreadable/);
    } finally {
      fs.writeFileSync(t.s.config.keyringFile, good);
    }
    t.clock.advance(2_000);
    expect(decodeProtectedHeader(await site.idToken()).kid).toBe(kid);
  });
});
