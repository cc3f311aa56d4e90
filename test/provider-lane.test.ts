import type { Express } from "express";
import type Provider from "oidc-provider";
import supertest from "supertest";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createApp } from "../src/http/app.js";
import type { ProviderLane } from "../src/http/provider-lane.js";
import { Clients } from "../src/oidc/clients.js";
import { makeApp, register, type TestApp } from "./support/app.js";
import { headersOf } from "./support/lanes.js";

/**
 * The provider lane (src/http/provider-lane.ts) hands the provider's JSON endpoints to it before
 * express. Each request here goes to two apps on the same services, one with the lane and one
 * without: the answers must be the same, status, headers and body.
 */
describe("provider lane", () => {
  let t: TestApp;
  let plain: Express;
  let lane: ProviderLane;
  let client: { clientId: string; clientSecret: string | null };
  let sub: string;
  async function setup(env: Record<string, string> = {}) {
    t = makeApp(env);
    plain = createApp(t.s, { providerLane: false });
    lane = t.app.locals.providerLane as ProviderLane;
    client = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals }).add({
      name: "lane site",
      redirectUris: ["http://127.0.0.1:9/cb"],
    });
    const reg = await register(t.app, { login_id: "lane.member" });
    sub = (
      t.s.db.$client.prepare("SELECT sub FROM members WHERE id = ?").get(reg.body.member_id) as {
        sub: string;
      }
    ).sub;
  }
  beforeEach(() => setup());
  afterEach(() => t.close());

  const basic = () => `Basic ${Buffer.from(`${client.clientId}:${client.clientSecret}`).toString("base64")}`;

  /** A refresh token issued to the client, as the provider would after a code exchange. */
  async function refreshToken(app: Express, scope = "openid"): Promise<string> {
    const provider = (app.locals.oidc as { provider: Provider }).provider;
    const c = await provider.Client.find(client.clientId);
    if (!c) throw new Error("client missing");
    const grant = new provider.Grant({ clientId: client.clientId, accountId: sub });
    grant.addOIDCScope(scope);
    const grantId = await grant.save();
    return new provider.RefreshToken({
      accountId: sub,
      client: c,
      grantId,
      gty: "authorization_code",
      scope,
      authTime: Math.floor(t.clock.now().getTime() / 1000),
    }).save();
  }

  type Req = {
    method: "GET" | "POST";
    path: string;
    form?: Record<string, string>;
    headers?: Record<string, string>;
  };
  const send = (app: Express, r: Req) => {
    const req = r.method === "GET" ? supertest(app).get(r.path) : supertest(app).post(r.path);
    req.set("X-Request-Id", "provider-lane-01");
    for (const [k, v] of Object.entries(r.headers ?? {})) req.set(k, v);
    return r.form ? req.type("form").send(r.form) : req;
  };

  async function sameAnswer(r: Req) {
    const before = lane.stats.taken;
    const viaLane = await send(t.app, r);
    expect(lane.stats.taken, "the lane took it").toBe(before + 1);
    const viaExpress = await send(plain, r);
    expect(viaLane.status).toBe(viaExpress.status);
    expect(headersOf(viaLane)).toEqual(headersOf(viaExpress));
    expect(viaLane.text).toBe(viaExpress.text);
    return viaLane;
  }

  it("answers the token, userinfo, revocation and introspection endpoints' refusals exactly as express does", async () => {
    const wrong = `Basic ${Buffer.from(`${client.clientId}:not-the-secret`).toString("base64")}`;
    const cases: Req[] = [
      {
        method: "POST",
        path: "/oidc/token",
        form: { grant_type: "refresh_token", refresh_token: "x" },
        headers: { authorization: wrong },
      },
      {
        method: "POST",
        path: "/oidc/token",
        form: { grant_type: "refresh_token", refresh_token: "nope" },
        headers: { authorization: basic() },
      },
      {
        method: "POST",
        path: "/oidc/token",
        form: { grant_type: "password", username: "a", password: "b" },
        headers: { authorization: basic() },
      },
      { method: "POST", path: "/oidc/token?x=1", headers: { authorization: basic() } },
      { method: "GET", path: "/oidc/userinfo" },
      { method: "GET", path: "/oidc/userinfo", headers: { authorization: "Bearer not-a-token" } },
      { method: "POST", path: "/oidc/token/revocation", form: { token: "x" } },
      {
        method: "POST",
        path: "/oidc/token/introspection",
        form: { token: "x" },
        headers: { authorization: basic() },
      },
    ];
    const statuses: number[] = [];
    for (const r of cases) {
      const res = await sameAnswer(r);
      statuses.push(res.status);
      expect(res.headers["x-request-id"]).toBe("provider-lane-01");
      expect(res.headers["x-content-type-options"]).toBe("nosniff");
    }
    // An unknown token is simply inactive to the introspection endpoint.
    expect(statuses).toEqual([401, 400, 400, 400, 401, 401, 400, 200]);
  });

  it("rotates a refresh token through the lane, with the access-log line and the metric express gave it", async () => {
    const rt = await refreshToken(t.app);
    const before = lane.stats.taken;
    const res = await supertest(t.app)
      .post("/oidc/token")
      .set("Authorization", basic())
      .set("X-Request-Id", "provider-lane-02")
      .type("form")
      .send({ grant_type: "refresh_token", refresh_token: rt });
    expect(res.status).toBe(200);
    expect(lane.stats.taken).toBe(before + 1);
    expect(res.body.refresh_token).toBeTruthy();
    expect(res.body.refresh_token).not.toBe(rt);
    // The rotated token is spent: a replay fails (and revokes the family).
    const replay = await supertest(t.app)
      .post("/oidc/token")
      .set("Authorization", basic())
      .type("form")
      .send({ grant_type: "refresh_token", refresh_token: rt });
    expect(replay.status).toBe(400);
    expect(replay.body.error).toBe("invalid_grant");
    const line = t.logs
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l.msg === "request" && l.req_id === "provider-lane-02");
    expect(line).toMatchObject({ method: "POST", path: "/oidc/token", status: 200 });
    expect(JSON.stringify(line)).not.toContain(rt);
    const metrics = (await t.s.metrics.render()).body;
    expect(metrics).toMatch(
      /sekisho_http_request_duration_seconds_count\{[^}]*route="\/oidc\/token"[^}]*\} [1-9]/,
    );
  });

  it("leaves other spellings of the path to express, which answers them as before", async () => {
    const before = lane.stats.taken;
    const res = await supertest(t.app)
      .post("/OIDC/token")
      .set("Authorization", basic())
      .type("form")
      .send({});
    expect(lane.stats.taken).toBe(before);
    expect(res.status).toBe(404);
    const discovery = await supertest(t.app).get("/.well-known/openid-configuration");
    expect(discovery.status).toBe(200);
    expect(lane.stats.taken).toBe(before);
  });

  it("answers invalid_grant, and stores no token, when the member's grants are revoked in the middle of a refresh", async () => {
    // Attack/race: a password reset (revokeAccount) lands between the refresh's writes. Its
    // answer must not carry tokens of a revoked grant, and no row of one may be left behind.
    const rt = await refreshToken(t.app);
    const store = t.s.oidcStore;
    const upsert = store.upsert.bind(store);
    let revoked = false;
    store.upsert = (model, id, payload, expiresIn) => {
      if (model === "RefreshToken" && !revoked) {
        revoked = true;
        setImmediate(() => store.revokeAccount(sub)); // another request's work, the next turn
      }
      return upsert(model, id, payload, expiresIn);
    };
    const res = await supertest(t.app)
      .post("/oidc/token")
      .set("Authorization", basic())
      .type("form")
      .send({ grant_type: "refresh_token", refresh_token: rt });
    expect(revoked).toBe(true);
    expect(res.status).toBe(400);
    expect(res.body.error).toBe("invalid_grant");
    expect(
      t.s.db.$client.prepare("SELECT model FROM oidc_payloads WHERE account_id = ?").pluck().all(sub),
    ).toEqual([]);
  });

  it("answers server_error, with no token, when the refresh's commit fails, and loses nothing: the same refresh token works again", async () => {
    // The writes of a token request settle before their commit (one commit per turn): the answer
    // still waits for it, and a failed commit must not answer with tokens that were never stored.
    const rt = await refreshToken(t.app);
    t.s.db.$client.exec(
      "CREATE TEMP TRIGGER refuse BEFORE INSERT ON oidc_payloads WHEN NEW.model = 'RefreshToken' BEGIN SELECT RAISE(ABORT, 'disk says no'); END",
    );
    const refresh = () =>
      supertest(t.app)
        .post("/oidc/token")
        .set("Authorization", basic())
        .type("form")
        .send({ grant_type: "refresh_token", refresh_token: rt });
    const failed = await refresh();
    expect(failed.status).toBe(500);
    expect(failed.body).toEqual({ error: "server_error", error_description: expect.any(String) });
    expect(failed.headers["cache-control"]).toBe("no-store");
    t.s.db.$client.exec("DROP TRIGGER temp.refuse");
    const retried = await refresh();
    expect(retried.status).toBe(200);
    expect(retried.body.refresh_token).toBeTruthy();
  });

  it("audits a member site's read of the profile with the address the trusted proxy saw, not one the client wrote", async () => {
    // Attack: forge X-Forwarded-For behind a trusted proxy (which appends the address it saw)
    // so that the PII read is recorded as coming from somewhere else.
    t.close();
    await setup({ SEKISHO_TRUST_PROXY: "loopback" });
    const rt = await refreshToken(t.app, "openid profile");
    const tokens = await supertest(t.app)
      .post("/oidc/token")
      .set("Authorization", basic())
      .type("form")
      .send({ grant_type: "refresh_token", refresh_token: rt });
    expect(tokens.status).toBe(200);
    const info = await supertest(t.app)
      .get("/oidc/userinfo")
      .set("Authorization", `Bearer ${tokens.body.access_token}`)
      .set("X-Forwarded-For", "203.0.113.66, 198.51.100.7");
    expect(info.status).toBe(200);
    const reads = [...t.s.audit.iterate()].filter((e) => e.action === "pii.read" && e.actorType === "client");
    expect(reads.length).toBeGreaterThan(0);
    expect(reads.at(-1)?.ip).toBe("198.51.100.7");
  });
});
