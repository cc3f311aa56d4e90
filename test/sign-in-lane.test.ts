import http from "node:http";
import type { AddressInfo } from "node:net";
import { gzipSync } from "node:zlib";
import type { Express } from "express";
import supertest from "supertest";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createApp } from "../src/http/app.js";
import type { SignInLane } from "../src/http/sign-in-lane.js";
import type { StrangerQueue } from "../src/http/stranger-queue.js";
import { makeApp, ORIGIN, register, STRONG_PASSWORD, type TestApp } from "./support/app.js";
import { headersOf } from "./support/lanes.js";

/**
 * The sign-in lane (src/http/sign-in-lane.ts) answers refused password sign-ins before express.
 * Each request here goes to two apps on the same services: one with the lane, one without; the
 * answers must be the same, status, headers and body.
 */
describe("sign-in lane", () => {
  let t: TestApp;
  let plain: Express;
  let lane: SignInLane;
  let strangers: StrangerQueue;
  beforeEach(async () => {
    t = makeApp({ SEKISHO_THROTTLE_POLICY: JSON.stringify({ attackFloorPerMinute: 1000 }) });
    plain = createApp(t.s, { signInLane: false });
    lane = t.app.locals.signInLane as SignInLane;
    strangers = t.app.locals.strangers as StrangerQueue;
    expect((await register(t.app, { login_id: "lane.member" })).status).toBe(201);
  });
  afterEach(() => t.close());

  type Req = {
    path?: string;
    body: string | Buffer;
    headers?: Record<string, string>;
  };
  const send = (app: Express, r: Req) => {
    const req = supertest(app)
      .post(r.path ?? "/api/v1/login")
      .set("Origin", ORIGIN)
      .set("Content-Type", "application/json")
      .set("X-Request-Id", "lane-test-0001");
    for (const [k, v] of Object.entries(r.headers ?? {})) req.set(k, v);
    // The bytes as they are (superagent would serialise a Buffer as JSON).
    return req.serialize((b: unknown) => b as string).send(r.body as string);
  };

  /** The same request through both apps: the lane must have answered it, identically. */
  async function sameAnswer(r: Req, opts: { random?: boolean } = {}) {
    const before = lane.stats.answered;
    const viaLane = await send(t.app, r);
    expect(lane.stats.answered, "the lane answered it").toBe(before + 1);
    const viaExpress = await send(plain, r);
    expect(viaLane.status).toBe(viaExpress.status);
    // A challenge is fresh each time (salt, signature): compare its shape, the rest exactly.
    const skip = opts.random ? ["content-length"] : [];
    expect(headersOf(viaLane, skip)).toEqual(headersOf(viaExpress, skip));
    if (opts.random) {
      const a = viaLane.body as { challenge: Record<string, unknown> };
      const b = viaExpress.body as { challenge: Record<string, unknown> };
      expect(Object.keys(a)).toEqual(Object.keys(b));
      expect(Object.keys(a.challenge)).toEqual(Object.keys(b.challenge));
      expect({ ...a, challenge: null }).toEqual({ ...b, challenge: null });
      expect(a.challenge.maxnumber).toBe(b.challenge.maxnumber);
    } else {
      expect(viaLane.text).toBe(viaExpress.text);
    }
    return viaLane;
  }

  const login = (loginId: string, password = "a wrong password") =>
    JSON.stringify({ login_id: loginId, password });

  it("answers a challenged sign-in exactly as express does, and writes its audit entry", async () => {
    t.s.guard.underAttackUntil = t.clock.now().getTime() + 15 * 60_000;
    const res = await sameAnswer({ body: login("lane.member") }, { random: true });
    expect(res.status).toBe(403);
    expect(res.body.error).toBe("challenge_required");
    expect(res.headers["x-request-id"]).toBe("lane-test-0001");
    expect(res.headers["content-security-policy"]).toContain("default-src 'self'");
    expect(res.headers["cache-control"]).toBe("no-store");
    const audit = t.s.db.$client
      .prepare("SELECT action, reason, request_id FROM audit_log WHERE action = 'login.throttled'")
      .all();
    expect(audit).toContainEqual({
      action: "login.throttled",
      reason: "challenge",
      request_id: "lane-test-0001",
    });
    // A byte-order mark before the JSON is read as express reads it.
    await sameAnswer({ body: `\uFEFF${login("lane.member")}` }, { random: true });
  });

  it("answers a slowed-down sign-in (429, Retry-After) exactly as express does", async () => {
    for (let i = 0; i < 5; i++) {
      const a = { ip: "127.0.0.1", loginId: "lane.member", trustedDevice: false, kind: "password" as const };
      expect(t.s.guard.assess(a).action).toBe("allow");
      t.s.guard.settle(a, "failure");
    }
    const res = await sameAnswer({ body: login("lane.member") });
    expect(res.status).toBe(429);
    expect(Number(res.headers["retry-after"])).toBeGreaterThan(0);
  });

  it("answers bodies that aren't a sign-in (bad JSON, wrong types, a bad login ID) exactly as express does", async () => {
    for (const body of [
      '{"login_id":',
      "null",
      '"lane.member"',
      "[]",
      "{}",
      '{"login_id": 5, "password": "x"}',
      `{"login_id": "lane.member", "password": "${"x".repeat(2000)}"}`,
      `{"login_id": "${"a".repeat(65)}", "password": "x"}`,
      '{"login_id": "\\ud800", "password": "x"}',
      '{"login_id": "\\u0000lane", "password": "x"}',
      "\uFEFF",
    ]) {
      const res = await sameAnswer({ body });
      expect(res.status, body).toBe(400);
    }
    // Bytes that aren't UTF-8 are refused by both, not read as U+FFFD (src/http/utf8.ts).
    const notUtf8 = Buffer.from('{"login_id":"lane.member","password":"correct horse \xff"}', "latin1");
    const refused = await sameAnswer({ body: notUtf8 });
    expect(refused.status).toBe(400);
    expect(refused.body.error_description).toMatch(/not valid UTF-8/);
    // Not JSON at all is refused before express's router: both count it under route "other".
    const other = async () => {
      const scrape = (await supertest(t.app).get("/metrics")).text;
      const line = scrape
        .split("\n")
        .find((l) =>
          l.startsWith(
            'sekisho_http_request_duration_seconds_count{method="POST",route="other",status="4xx"}',
          ),
        );
      return Number(line?.split(" ")[1] ?? 0);
    };
    const before = await other();
    await sameAnswer({ body: '{"login_id":' });
    expect(await other()).toBe(before + 2);
  });

  /** A chunked request (no Content-Length), through a real listening server. */
  async function chunked(
    app: Express,
    parts: string[],
  ): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
    const server = app.listen(0, "127.0.0.1");
    await new Promise((r) => server.once("listening", r));
    const { port } = server.address() as AddressInfo;
    try {
      return await new Promise((resolve, reject) => {
        const req = http.request(
          {
            port,
            host: "127.0.0.1",
            method: "POST",
            path: "/api/v1/login",
            headers: { "content-type": "application/json", origin: ORIGIN, "x-request-id": "lane-test-0001" },
          },
          (res) => {
            let body = "";
            res.setEncoding("utf8");
            res.on("data", (c) => (body += c));
            res.on("end", () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
          },
        );
        req.on("error", reject);
        for (const part of parts) req.write(part);
        req.end();
      });
    } finally {
      server.close();
    }
  }

  it("takes a chunked body too, with the body limit enforced as it arrives", async () => {
    t.s.guard.underAttackUntil = t.clock.now().getTime() + 15 * 60_000;
    const body = login("lane.member");
    const viaLane = await chunked(t.app, [body.slice(0, 10), body.slice(10)]);
    expect(lane.stats.answered).toBe(1);
    const viaExpress = await chunked(plain, [body.slice(0, 10), body.slice(10)]);
    expect(viaLane.status).toBe(403);
    expect(viaExpress.status).toBe(403);
    expect(JSON.parse(viaLane.body).error).toBe(JSON.parse(viaExpress.body).error);
    const huge = JSON.stringify({ login_id: "lane.member", password: "x".repeat(70_000) });
    const tooLarge = await chunked(t.app, [huge.slice(0, 30_000), huge.slice(30_000)]);
    expect(lane.stats.answered).toBe(2);
    const tooLargeExpress = await chunked(plain, [huge.slice(0, 30_000), huge.slice(30_000)]);
    expect([tooLarge.status, tooLarge.body]).toEqual([413, tooLargeExpress.body]);
    expect(tooLargeExpress.status).toBe(413);
  });

  it("answers an attempt with a junk challenge solution as one without (as the sign-in would), not through express", async () => {
    t.s.guard.underAttackUntil = t.clock.now().getTime() + 15 * 60_000;
    for (const solution of ["junk", Buffer.from('{"signature":"x"}').toString("base64")]) {
      const body = JSON.stringify({
        login_id: "lane.member",
        password: "a wrong password",
        challenge_solution: solution,
      });
      const res = await sameAnswer({ body }, { random: true });
      expect(res.body.error).toBe("challenge_required");
    }
  });

  it("takes the path as express routes it (any case, a trailing slash, a query), labelled as one route", async () => {
    t.s.guard.underAttackUntil = t.clock.now().getTime() + 15 * 60_000;
    for (const path of ["/API/V1/LOGIN", "/api/v1/login/", "/api/v1/login?x=1"]) {
      expect((await sameAnswer({ path, body: login("lane.member") }, { random: true })).status).toBe(403);
    }
    const scrape = (await supertest(t.app).get("/metrics")).text;
    const routes = [...scrape.matchAll(/route="([^"]*login[^"]*)"/gi)].map((m) => m[1]);
    expect(new Set(routes)).toEqual(new Set(["/api/v1/login"]));
    const line = t.logs
      .map((l) => JSON.parse(l))
      .find((l) => l.msg === "request" && l.path === "/API/V1/LOGIN");
    expect(line).toMatchObject({ status: 403, req_id: "lane-test-0001", method: "POST" });
  });

  it("passes an admitted attempt on to express, which signs the member in", async () => {
    const res = await send(t.app, { body: login("lane.member", STRONG_PASSWORD) });
    expect(res.status).toBe(200);
    expect(res.body.status).toBe("authenticated");
    expect(lane.stats).toEqual({ answered: 0, passedOn: 1 });
    expect(strangers.stats).toEqual({ waited: 1, busy: 0 });
    // A wrong password is admitted too (the lane refuses only what the throttle refuses). The
    // address the member just signed in from would go first, but nobody waits: it is decided in
    // its turn at once, and its counted turns to go first are not spent.
    expect((await send(t.app, { body: login("lane.member") })).status).toBe(401);
    expect(lane.stats).toEqual({ answered: 0, passedOn: 2 });
    expect(strangers.stats).toEqual({ waited: 2, busy: 0 });
  });

  it("leaves what isn't the plain case to express: another origin, another type, an encoded body", async () => {
    t.s.guard.underAttackUntil = t.clock.now().getTime() + 15 * 60_000;
    const cases: [Req, number][] = [
      [{ body: login("lane.member"), headers: { Origin: "https://evil.example" } }, 403],
      [{ body: login("lane.member"), headers: { "Content-Type": "text/plain" } }, 415],
      [{ body: login("lane.member"), headers: { "Content-Type": "application/json; charset=utf-16" } }, 415],
      [{ body: login("lane.member"), headers: { "Content-Type": "application/json; charset=utf8" } }, 415],
      [{ body: gzipSync(login("lane.member")), headers: { "Content-Encoding": "gzip" } }, 403],
      [{ body: JSON.stringify({ login_id: "lane.member", password: "x".repeat(70_000) }) }, 413],
    ];
    for (const [r, status] of cases) {
      const res = await send(t.app, r);
      expect(res.status, JSON.stringify(r.headers)).toBe(status);
      expect(headersOf(res, ["content-length"])).toEqual(headersOf(await send(plain, r), ["content-length"]));
    }
    expect(lane.stats).toEqual({ answered: 0, passedOn: 0 });
    // The gzip one, which express decodes and decides, waited its turn at express's door (the
    // others were refused before any sign-in).
    expect(strangers.stats).toEqual({ waited: 1, busy: 0 });
    // The gzip one was a challenge from express: the throttle is the same either way.
    expect((await send(t.app, cases[4]?.[0] as Req)).body.error).toBe("challenge_required");
  });

  it("a throttle refusal check of an attempt it would admit changes nothing: no slot held, nothing counted, nothing reported", () => {
    const seen: string[] = [];
    t.s.guard.observer = (_kind, d) => seen.push(d.action);
    const ctx = { ip: "192.0.2.7", requestId: null, userAgent: null, previousToken: null };
    // More checks than the address may fail, and than one attempt in flight allows: none counts.
    for (let i = 0; i < 20; i++) {
      expect(t.s.signIn.refusal({ loginId: "lane.member", password: "wrong" }, ctx)).toBeNull();
    }
    expect(seen).toEqual([]);
    const a = { ip: "192.0.2.7", loginId: "lane.member", trustedDevice: false, kind: "password" as const };
    expect(t.s.guard.assess(a).action).toBe("allow");
    expect(seen).toEqual(["allow"]);
  });

  it("a member on a live device of theirs is decided at once; strangers, forged, revoked and other members' device cookies wait their turn", async () => {
    const memberId = t.s.db.$client
      .prepare("SELECT id FROM members WHERE login_id = 'lane.member'")
      .pluck()
      .get() as string;
    const live = t.s.devices.issue(memberId, null).token;
    const revoked = t.s.devices.issue(memberId, null);
    t.s.db.$client
      .prepare("UPDATE devices SET revoked_at = ? WHERE id = ?")
      .run(t.clock.now().getTime(), revoked.id);
    const attempt = (cookie?: string) =>
      send(t.app, {
        body: login("lane.member"),
        headers: cookie ? { Cookie: `sekisho_device=${cookie}` } : {},
      });
    expect((await attempt(live)).status).toBe(401);
    expect(strangers.stats.waited).toBe(0);
    // Another member's live device (an attacker's own, say) doesn't put attempts at this account first.
    const other = (await register(t.app, { login_id: "lane.other" })).body.member_id as string;
    const othersDevice = t.s.devices.issue(other, null).token;
    for (const cookie of [undefined, "A".repeat(43), revoked.token, "not a token", othersDevice]) {
      const before = strangers.stats.waited;
      // (wrong passwords: refused, and after a few slowed down; either way decided in its turn)
      expect([401, 429]).toContain((await attempt(cookie)).status);
      expect(strangers.stats.waited, String(cookie)).toBe(before + 1);
    }
  });

  it("a password-only member at an address they signed in from lately goes first, a few times in ten minutes; that address for another ID and a new address wait their turn", async () => {
    const p = makeApp({ SEKISHO_TRUST_PROXY: "loopback" });
    try {
      await register(p.app, { login_id: "home.member" });
      await register(p.app, { login_id: "home.other" });
      const busy = createApp(p.s, { strangersWaiting: 0 });
      const HOME = "198.51.100.20";
      const at = (app: Express, ip: string, loginId: string, password = STRONG_PASSWORD, type?: string) =>
        send(app, {
          body: login(loginId, password),
          headers: { "X-Forwarded-For": ip, ...(type ? { "Content-Type": type } : {}) },
        });
      // Never signed in from there: a stranger, turned away when no stranger may wait.
      expect((await at(busy, HOME, "home.member")).status).toBe(503);
      expect((await at(p.app, HOME, "home.member")).status).toBe(200);
      // Now home goes first, at the lane and at express's own door alike.
      expect((await at(busy, HOME, "home.member")).status).toBe(200);
      expect((await at(busy, HOME, "home.member", STRONG_PASSWORD, "application/json; x=1")).status).toBe(
        200,
      );
      // The address is known for that member only, and only that address is.
      expect((await at(busy, HOME, "home.other")).status).toBe(503);
      expect((await at(busy, "198.51.100.21", "home.member")).status).toBe(503);
      // A few times in ten minutes, right passwords or wrong (someone else at that address, a
      // shared NAT, guessing; or someone keeping the line ahead full): then a stranger like any
      // other (test/throttle.test.ts has the rule's numbers).
      expect((await at(busy, HOME, "home.member", "a wrong password")).status).toBe(401);
      expect((await at(busy, HOME, "home.member")).status).toBe(200);
      expect((await at(busy, HOME, "home.member")).status).toBe(200);
      expect((await at(busy, HOME, "home.member")).status).toBe(503);
      // A month later the address is forgotten too.
      const fresh = createApp(p.s, { strangersWaiting: 0 });
      expect((await at(p.app, "198.51.100.30", "home.other")).status).toBe(200);
      expect((await at(fresh, "198.51.100.30", "home.other")).status).toBe(200);
      p.clock.advance(31 * 24 * 3_600_000);
      expect((await at(fresh, "198.51.100.30", "home.other")).status).toBe(503);
    } finally {
      p.close();
    }
  });

  it("past its limit of strangers waiting, the lane answers 503 server_busy at once, counting nothing; members on their devices still sign in", async () => {
    const busy = createApp(t.s, { strangersWaiting: 0 });
    const busyLane = busy.locals.signInLane as SignInLane;
    const busyStrangers = busy.locals.strangers as StrangerQueue;
    const seen: string[] = [];
    t.s.guard.observer = (_kind, d) => seen.push(d.action);
    const auditBefore = [...t.s.audit.iterate()].length;
    const stranger = await send(busy, { body: login("lane.member", STRONG_PASSWORD) });
    expect(stranger.status).toBe(503);
    expect(stranger.body.error).toBe("server_busy");
    expect(stranger.headers["retry-after"]).toBe("1");
    expect(stranger.headers["cache-control"]).toBe("no-store");
    expect(busyLane.stats).toEqual({ answered: 1, passedOn: 0 });
    expect(busyStrangers.stats).toEqual({ waited: 0, busy: 1 });
    // Not decided: nothing counted, reported or written.
    expect(seen).toEqual([]);
    expect([...t.s.audit.iterate()].length).toBe(auditBefore);
    const memberId = t.s.db.$client
      .prepare("SELECT id FROM members WHERE login_id = 'lane.member'")
      .pluck()
      .get() as string;
    const device = t.s.devices.issue(memberId, null).token;
    const member = await send(busy, {
      body: login("lane.member", STRONG_PASSWORD),
      headers: { Cookie: `sekisho_device=${device}` },
    });
    expect(member.status).toBe(200);
    expect(member.body.status).toBe("authenticated");
    // Express's own door to a sign-in (a request the lane doesn't take) holds strangers to the
    // same rule: not a way around the queue. (Another login ID: this address is now known for
    // lane.member, whose sign-ins from it go first.)
    seen.length = 0;
    const odd = await send(busy, {
      body: login("lane.stranger", STRONG_PASSWORD),
      headers: { "Content-Type": "application/json; x=1" },
    });
    expect(odd.status).toBe(503);
    expect(odd.body.error).toBe("server_busy");
    expect(seen).toEqual([]);
    const oddMember = await send(busy, {
      body: login("lane.member", STRONG_PASSWORD),
      headers: { "Content-Type": "application/json; x=1", Cookie: `sekisho_device=${device}` },
    });
    expect(oddMember.status).toBe(200);
  });
});
