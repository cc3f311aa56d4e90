import * as oidc from "openid-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Clients } from "../src/oidc/clients.js";
import type { Oidc } from "../src/oidc/provider.js";
import { PROFILE, STRONG_PASSWORD } from "./support/app.js";
import { runCli } from "./support/cli.js";
import { type ListeningApp, listenWithMember, memberSiteWithRefreshToken } from "./support/oidc.js";

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
    const client = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals }).add({
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
    const grantTo = async (scope: string, member = sub) => {
      // As a sign-in of the member to this site would leave it (the provider's own Grant model).
      const { provider } = t.app.locals.oidc as Oidc;
      const grant = new provider.Grant({ accountId: member, clientId: client.clientId });
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
    // Budget of 3 members an hour. The same member read again reads no one new…
    expect((await get(sub)).status).toBe(200);
    expect((await get(sub)).status).toBe(200);
    // …but a backend walking the member base is stopped at the fourth member and alerted on.
    const others: string[] = [];
    for (const loginId of ["service.two", "service.three", "service.four"]) {
      const { memberId } = await listening.t.s.registrations.register(
        { loginId, password: STRONG_PASSWORD, profile: PROFILE },
        { ip: null, requestId: null },
      );
      const other = listening.t.s.db.$client
        .prepare("SELECT sub FROM members WHERE id = ?")
        .pluck()
        .get(memberId) as string;
      await grantTo("openid email", other);
      others.push(other);
    }
    expect((await get(others[0] as string)).status).toBe(200);
    expect((await get(others[1] as string)).status).toBe(200);
    const refused = await get(others[2] as string);
    expect(refused.status).toBe(429);
    expect(((await refused.json()) as { error: string }).error).toBe("pii_budget_exceeded");
    expect(listening.t.s.alerts.list().some((a) => a.kind === "pii_budget_exceeded")).toBe(true);
    // Refused from then on, for members read before too.
    expect((await get(sub)).status).toBe(429);
  });

  it("a grant moved to another member's sub in the database reads nothing", async () => {
    // Attack (database write): the site's backend holds a grant of its own account; pointing the
    // grant row's plain account_id at a victim would lend it the victim's profile.
    const { get, grantTo } = await backend("openid members:read email");
    const { memberId } = await listening.t.s.registrations.register(
      { loginId: "service.own", password: STRONG_PASSWORD, profile: PROFILE },
      { ip: null, requestId: null },
    );
    const db = listening.t.s.db.$client;
    const own = db.prepare("SELECT sub FROM members WHERE id = ?").pluck().get(memberId) as string;
    const victim = await listening.t.s.registrations.register(
      {
        loginId: "service.victim",
        password: STRONG_PASSWORD,
        profile: { ...PROFILE, email: "victim@example.jp" },
      },
      { ip: null, requestId: null },
    );
    const victimSub = db
      .prepare("SELECT sub FROM members WHERE id = ?")
      .pluck()
      .get(victim.memberId) as string;
    await grantTo("openid email", own);
    expect((await get(victimSub)).status).toBe(404);
    db.prepare("UPDATE oidc_payloads SET account_id = ? WHERE account_id = ? AND model = 'Grant'").run(
      victimSub,
      own,
    );
    const res = await get(victimSub);
    expect(res.status).toBe(404);
    expect(await res.text()).not.toContain("victim@example.jp");
  });

  it("a member site refreshing one member's tokens more often than its budget keeps its claims; ID tokens decrypt nothing", async () => {
    const { t } = listening;
    // The member signed in to the site once (grant and refresh token as the code exchange leaves them).
    const {
      site,
      config,
      refreshToken: first,
    } = await memberSiteWithRefreshToken(listening, sub, "openid email");
    let refreshToken = first;
    const readsBySite = () =>
      [...t.s.audit.iterate()].filter((e) => e.action === "pii.read" && e.actorId === site.clientId).length;
    // Six refreshes and six UserInfo calls, twice the budget of 3 members an hour: one member.
    for (let i = 0; i < 6; i++) {
      const tokens = await oidc.refreshTokenGrant(config, refreshToken);
      refreshToken = tokens.refresh_token as string;
      expect(tokens.claims()?.sub).toBe(sub);
      expect(tokens.claims()?.email).toBeUndefined();
      expect(readsBySite()).toBe(i); // the ID token decrypted nothing
      const info = await oidc.fetchUserInfo(config, tokens.access_token, sub);
      expect(info.email).toBe(PROFILE.email);
      expect(readsBySite()).toBe(i + 1); // UserInfo did, audited
    }
    expect(t.s.budgets.status({ kind: "client", id: site.clientId })).toMatchObject({
      readLastHour: 1,
      blocked: false,
    });
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

  it("a member site asking for a decoy's sub is answered as for a stranger and raises the alarm", async () => {
    const { t } = listening;
    const made = runCli(t, ["honeytokens", "add", "--count", "1", "--json"]);
    expect(made.status, made.stderr).toBe(0);
    const loginId = (JSON.parse(made.stdout) as { login_ids: string[] }).login_ids[0];
    const decoySub = t.s.db.$client
      .prepare("SELECT sub FROM members WHERE login_id = ?")
      .pluck()
      .get(loginId) as string;
    const { client, get } = await backend("openid profile email members:read");
    const stranger = await get("A".repeat(22));
    const decoy = await get(decoySub);
    expect(decoy.status).toBe(404);
    expect(await decoy.json()).toEqual(await stranger.json());
    await new Promise((r) => setImmediate(r)); // raised after the answer
    const alert = t.s.alerts.list().find((a) => a.kind === "honeytoken_touched");
    expect(JSON.parse(alert?.details ?? "{}")).toMatchObject({
      trigger: "service_api",
      principal: "client",
      principal_id: client.clientId,
    });
  });
});
