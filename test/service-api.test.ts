import * as oidc from "openid-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Clients } from "../src/oidc/clients.js";
import type { Oidc } from "../src/oidc/provider.js";
import { PROFILE } from "./support/app.js";
import { type ListeningApp, listenWithMember } from "./support/oidc.js";

describe("service API for member-site backends: GET /api/v1/members/:sub", () => {
  let listening: ListeningApp;
  let sub: string;
  beforeAll(async () => {
    listening = await listenWithMember("service.member", {
      SEKISHO_PII_BUDGETS: JSON.stringify({ clientHour: 3 }),
    });
    sub = listening.t.s.db.$client
      .prepare("SELECT sub FROM members WHERE login_id = 'service.member'")
      .pluck()
      .get() as string;
  });
  afterAll(() => listening.close());

  async function backend(scope: string, tokenScope = "members:read") {
    const { t, issuer } = listening;
    const client = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit }).add({
      name: `backend ${scope}`,
      redirectUris: ["https://site.example/cb"],
      grants: ["client_credentials"],
      scope,
    });
    const config = await oidc.discovery(
      new URL(issuer),
      client.clientId,
      client.clientSecret ?? undefined,
      undefined,
      {
        execute: [oidc.allowInsecureRequests],
      },
    );
    const token = await oidc.clientCredentialsGrant(config, { scope: tokenScope });
    const grantTo = async (scope: string) => {
      // As a sign-in of the member to this site would leave it (the provider's own Grant model).
      const { provider } = t.app.locals.oidc as Oidc;
      const grant = new provider.Grant({ accountId: sub, clientId: client.clientId });
      grant.addOIDCScope(scope);
      await grant.save();
    };
    const get = (s: string, bearer = token.access_token) =>
      fetch(`${issuer}/api/v1/members/${s}`, { headers: { authorization: `Bearer ${bearer}` } });
    return { client, get, grantTo };
  }

  it("answers the fields the site's scopes allow, audited and budgeted", async () => {
    const { client, get, grantTo } = await backend("openid members:read email address");
    // A member who never signed in to this site is not this site's to read.
    expect((await get(sub)).status).toBe(404);
    // The member granted email and profile (not address): only what both allow is answered.
    await grantTo("openid email profile");
    const res = await get(sub);
    expect(res.status).toBe(200);
    const body = (await res.json()) as { sub: string; profile: Record<string, string> };
    expect(body.sub).toBe(sub);
    expect(body.profile).toEqual({ email: PROFILE.email });
    const reads = [...listening.t.s.audit.iterate()].filter(
      (e) => e.action === "pii.read" && e.actorId === client.clientId,
    );
    expect(reads.at(-1)?.reason).toBe(`service_api:${client.clientId}`);
    // Budget of 3 an hour: a backend walking the member base is stopped and alerted on.
    expect((await get(sub)).status).toBe(200);
    expect((await get(sub)).status).toBe(200);
    const refused = await get(sub);
    expect(refused.status).toBe(429);
    expect(((await refused.json()) as { error: string }).error).toBe("pii_budget_exceeded");
  });

  it("refuses no token, a bad token, a token without members:read, and unknown members", async () => {
    const { get } = await backend("openid members:read profile");
    expect((await fetch(`${listening.issuer}/api/v1/members/${sub}`)).status).toBe(401);
    expect((await get(sub, "A".repeat(43))).status).toBe(401);
    expect((await get("x".repeat(22))).status).toBe(404);
    const { get: narrow } = await backend("openid members:read profile", "openid");
    const res = await narrow(sub);
    expect(res.status).toBe(403);
    expect(((await res.json()) as { error: string }).error).toBe("insufficient_scope");
  });
});
