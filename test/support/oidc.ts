import http from "node:http";
import type { AddressInfo } from "node:net";
import * as oidc from "openid-client";
import supertest from "supertest";
import { answerClientErrors } from "../../src/http/client-errors.js";
import { Clients } from "../../src/oidc/clients.js";
import type { Oidc } from "../../src/oidc/provider.js";
import { makeApp, PROFILE, STRONG_PASSWORD, type TestApp } from "./app.js";

/** A Sekisho app listening on an ephemeral loopback port, issuer set to it, with one member. */
export interface ListeningApp {
  t: TestApp;
  issuer: string;
  close(): Promise<void>;
}

export async function listenWithMember(
  loginId: string,
  env: Record<string, string> = {},
): Promise<ListeningApp> {
  const server = http.createServer();
  answerClientErrors(server); // as src/main.ts does
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const issuer = `http://localhost:${(server.address() as AddressInfo).port}`;
  // The real clock's time: oidc-provider stamps tokens with the system clock.
  const t = makeApp({ SEKISHO_ISSUER: issuer, ...env }, { clockStart: new Date() });
  server.on("request", t.app);
  const reg = await supertest(t.app)
    .post("/api/v1/registrations")
    .set("Origin", issuer)
    .set("Content-Type", "application/json")
    .send(JSON.stringify({ login_id: loginId, password: STRONG_PASSWORD, profile: PROFILE }));
  if (reg.status !== 201) throw new Error(`registration failed: ${reg.status} ${reg.text}`);
  return {
    t,
    issuer,
    async close() {
      await new Promise((resolve) => server.close(resolve));
      t.close();
    },
  };
}

/**
 * A member site that signed `sub` in once with `scope`: a new confidential client, the grant and
 * the refresh token a code exchange leaves (the provider's own models), and openid-client's
 * configuration for it.
 */
export async function memberSiteWithRefreshToken(listening: ListeningApp, sub: string, scope: string) {
  const { t, issuer } = listening;
  const site = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals }).add({
    name: "site",
    redirectUris: ["https://site.example/cb"],
  });
  const { provider } = t.app.locals.oidc as Oidc;
  const grant = new provider.Grant({ accountId: sub, clientId: site.clientId });
  grant.addOIDCScope(scope);
  const grantId = await grant.save();
  const client = await provider.Client.find(site.clientId);
  if (!client) throw new Error("client not found");
  const refreshToken = await new provider.RefreshToken({
    accountId: sub,
    client,
    grantId,
    gty: "authorization_code",
    scope,
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
  return { site, config, refreshToken };
}
