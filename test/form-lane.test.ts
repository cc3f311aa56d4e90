import http from "node:http";
import type { Express } from "express";
import supertest from "supertest";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createApp } from "../src/http/app.js";
import { type FormLane, formLane } from "../src/http/form-lane.js";
import { securityHeaders } from "../src/http/middleware.js";
import { StrangerQueue } from "../src/http/stranger-queue.js";
import { Clients } from "../src/oidc/clients.js";
import type { Oidc } from "../src/oidc/provider.js";
import { makeApp, ORIGIN, register, STRONG_PASSWORD, type TestApp } from "./support/app.js";
import { headersOf } from "./support/lanes.js";

/**
 * The form lane (src/http/form-lane.ts) answers refused sign-ins on the hosted login form before
 * express. Each request here goes to two apps on the same services, one with the lane and one
 * without: the answers must be the same, status, headers and page.
 */
describe("form lane", () => {
  let t: TestApp;
  let plain: Express;
  let lane: FormLane;
  let form: { path: string; cookie: string };
  const REDIRECT = "http://127.0.0.1:9/cb";

  beforeEach(async () => {
    t = makeApp({ SEKISHO_THROTTLE_POLICY: JSON.stringify({ attackFloorPerMinute: 1000 }) });
    plain = createApp(t.s, { formLane: false });
    lane = t.app.locals.formLane as FormLane;
    expect((await register(t.app, { login_id: "form.member" })).status).toBe(201);
    const client = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals }).add({
      name: "フォーム会員サイト",
      redirectUris: [REDIRECT],
    });
    const auth = await supertest(t.app).get("/oidc/auth").query({
      client_id: client.clientId,
      response_type: "code",
      scope: "openid",
      redirect_uri: REDIRECT,
      state: "s",
      code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
      code_challenge_method: "S256",
    });
    expect(auth.status).toBe(303);
    const uid = new URL(auth.headers.location as string, ORIGIN).pathname.split("/")[2] as string;
    const cookies = ([] as string[]).concat(auth.headers["set-cookie"] ?? []);
    form = { path: `/interaction/${uid}/login`, cookie: cookies.map((c) => c.split(";")[0]).join("; ") };
  });
  afterEach(() => t.close());

  type Req = { body: string; path?: string; headers?: Record<string, string> };
  const send = (app: Express, r: Req) => {
    const req = supertest(app)
      .post(r.path ?? `${form.path}?lang=ja`)
      .set("Origin", ORIGIN)
      .set("Cookie", form.cookie)
      .set("Content-Type", "application/x-www-form-urlencoded")
      .set("X-Request-Id", "form-lane-test-01");
    for (const [k, v] of Object.entries(r.headers ?? {})) req.set(k, v);
    return req.send(r.body);
  };
  /** A challenge is fresh each time (salt, signature): the page is compared without it. */
  const withoutChallenge = (html: string) => html.replace(/challenge="[^"]*"/, 'challenge="…"');

  /** The same request through both apps: the lane must have answered it, identically. */
  async function sameAnswer(r: Req, opts: { random?: boolean } = {}) {
    const before = lane.stats.answered;
    const viaLane = await send(t.app, r);
    expect(lane.stats.answered, "the lane answered it").toBe(before + 1);
    const viaExpress = await send(plain, r);
    expect(viaLane.status).toBe(viaExpress.status);
    const skip = opts.random ? ["content-length"] : [];
    expect(headersOf(viaLane, skip)).toEqual(headersOf(viaExpress, skip));
    if (opts.random) expect(withoutChallenge(viaLane.text)).toBe(withoutChallenge(viaExpress.text));
    else expect(viaLane.text).toBe(viaExpress.text);
    return viaLane;
  }

  /** The lane passed it on: express answered it. */
  async function passedOn(r: Req) {
    const before = lane.stats;
    const answered = before.answered;
    const passed = before.passedOn;
    const res = await send(t.app, r);
    expect(lane.stats.answered).toBe(answered);
    expect(lane.stats.passedOn).toBe(passed + 1);
    return res;
  }

  const attempt = (loginId: string, password = "a wrong password") =>
    new URLSearchParams({ login_id: loginId, password }).toString();

  it("answers a challenged sign-in on the hosted form exactly as express does, with its audit entry", async () => {
    t.s.guard.underAttackUntil = t.clock.now().getTime() + 15 * 60_000;
    const res = await sameAnswer({ body: attempt("form.member") }, { random: true });
    expect(res.status).toBe(403);
    expect(res.text).toContain("<altcha-widget");
    expect(res.text).toContain("フォーム会員サイト");
    expect(res.headers["x-request-id"]).toBe("form-lane-test-01");
    expect(res.headers["content-security-policy"]).toContain("form-action 'self' http://127.0.0.1:9");
    expect(res.headers["cache-control"]).toBe("no-store");
    expect(res.headers["set-cookie"]).toEqual([expect.stringMatching(/^sekisho_lang=ja;/)]);
    const audit = t.s.db.$client
      .prepare("SELECT reason, request_id FROM audit_log WHERE action = 'login.throttled'")
      .all();
    expect(audit).toContainEqual({ reason: "challenge", request_id: "form-lane-test-01" });
    // Unknown login IDs are answered the same way (nothing tells whether one exists).
    const unknown = await sameAnswer({ body: attempt("no.such.member") }, { random: true });
    expect(unknown.status).toBe(403);
  });

  it("answers a slowed-down sign-in (429, Retry-After) exactly as express does, in English too", async () => {
    for (let i = 0; i < 5; i++) {
      const a = { ip: "127.0.0.1", loginId: "form.member", trustedDevice: false, kind: "password" as const };
      expect(t.s.guard.assess(a).action).toBe("allow");
      t.s.guard.settle(a, "failure");
    }
    const res = await sameAnswer({ body: attempt("form.member"), path: `${form.path}?lang=en` });
    expect(res.status).toBe(429);
    expect(Number(res.headers["retry-after"])).toBeGreaterThan(0);
    expect(res.text).toContain('lang="en"');
    // Without ?lang, the language comes from Accept-Language, and no cookie is set.
    const ja = await sameAnswer({
      body: attempt("form.member"),
      path: form.path,
      headers: { "Accept-Language": "ja" },
    });
    expect(ja.headers["set-cookie"]).toBeUndefined();
  });

  it("answers a form with too many fields as express does (its error page)", async () => {
    const body = `${attempt("form.member")}${"&x=1".repeat(1000)}`;
    const res = await sameAnswer({ body });
    expect(res.status).toBe(400);
    expect(res.text).toContain("invalid_request");
  });

  it("passes everything but a refusal on to express: a right password signs in, a bad form, a stale interaction", async () => {
    // Admitted: the route signs the member in and the authorization goes on.
    const ok = await passedOn({ body: attempt("form.member", STRONG_PASSWORD) });
    expect([200, 303]).toContain(ok.status);
    expect(([] as string[]).concat(ok.headers["set-cookie"] ?? []).join()).toContain("sekisho_session=");
    // Not a sign-in form: the route's own bad-request page.
    const bad = await passedOn({ body: "login_id=form.member" });
    expect(bad.status).toBe(400);
    // No interaction cookie: the route's error page, not a login page.
    t.s.guard.underAttackUntil = t.clock.now().getTime() + 15 * 60_000;
    const before = lane.stats.passedOn;
    const stale = await supertest(t.app)
      .post(form.path)
      .set("Origin", ORIGIN)
      .type("form")
      .send(attempt("form.member"));
    expect(lane.stats.passedOn).toBe(before + 1);
    expect(stale.status).toBeGreaterThanOrEqual(400);
    expect(stale.text).not.toContain("<altcha-widget");
    // A tampered interaction cookie signature: the same.
    const tampered = form.cookie.replace(
      /(_interaction\.sig=[^;]*?)(.)(;|$)/,
      (_m, a, c, e) => `${a}${c === "A" ? "B" : "A"}${e}`,
    );
    expect(tampered).not.toBe(form.cookie);
    const forged = await passedOn({ body: attempt("form.member"), headers: { Cookie: tampered } });
    expect(forged.status).toBeGreaterThanOrEqual(400);
    expect(forged.text).not.toContain("<altcha-widget");
  });

  it("past its limit of strangers waiting, the form answers a busy page at once, deciding nothing", async () => {
    const busy = createApp(t.s, { strangersWaiting: 0 });
    const seen: string[] = [];
    t.s.guard.observer = (_kind, d) => seen.push(d.action);
    const res = await supertest(busy)
      .post(`${form.path}?lang=ja`)
      .set("Origin", ORIGIN)
      .set("Cookie", form.cookie)
      .type("form")
      .send(attempt("form.member"));
    expect(res.status).toBe(503);
    expect(res.headers["retry-after"]).toBe("1");
    expect(res.headers["cache-control"]).toBe("no-store");
    expect(res.text).toContain("ただいま混み合っています");
    expect(seen).toEqual([]);
    expect((busy.locals.strangers as StrangerQueue).stats).toEqual({ waited: 0, busy: 1 });
  });

  it("answers a refusal page that fails to render with a 500 and the request id, never an unhandled rejection", async () => {
    // The lane answers outside express: an error in its async work has no express to catch it.
    const oidc = t.app.locals.oidc as Oidc;
    const failing = formLane({
      signIn: t.s.signIn,
      interactionDetails: (req, res) => oidc.provider.interactionDetails(req, res),
      renderLogin: async () => {
        throw new Error("the page broke");
      },
      logger: t.s.logger,
      metrics: t.s.metrics,
      issuerOrigin: t.s.config.issuerOrigin,
      secureCookies: false,
      trustProxy: () => false,
      headers: securityHeaders({}),
      shuttingDown: () => false,
      goesFirst: () => false,
      strangers: new StrangerQueue(),
    });
    const server = http.createServer((req, res) => {
      if (!failing.takes(req)) throw new Error("not taken");
      failing.run(req, res, () => res.writeHead(418).end());
    });
    t.s.guard.underAttackUntil = t.clock.now().getTime() + 15 * 60_000;
    const res = await supertest(server)
      .post(`${form.path}?lang=ja`)
      .set("Origin", ORIGIN)
      .set("Cookie", form.cookie)
      .set("X-Request-Id", "form-lane-test-02")
      .type("form")
      .send(attempt("form.member"));
    expect(res.status).toBe(500);
    expect(res.body).toMatchObject({ error: "server_error", request_id: "form-lane-test-02" });
    expect(res.text).not.toContain("the page broke");
  });

  it("leaves other spellings, types and origins to express (which refuses a cross-origin post)", async () => {
    const before = { ...lane.stats };
    const cross = await send(t.app, {
      body: attempt("form.member"),
      headers: { Origin: "https://evil.example" },
    });
    expect(cross.status).toBe(403);
    await send(t.app, {
      body: JSON.stringify({ login_id: "x" }),
      headers: { "Content-Type": "application/json" },
    });
    await send(t.app, { body: attempt("form.member"), path: form.path.toUpperCase() });
    expect(lane.stats).toEqual(before);
  });
});
