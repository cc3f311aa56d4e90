import { once } from "node:events";
import http from "node:http";
import net from "node:net";
import supertest from "supertest";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { members } from "../src/db/schema.js";
import { answerClientErrors } from "../src/http/client-errors.js";
import {
  makeApp,
  ORIGIN,
  PROFILE,
  post,
  register,
  STRONG_PASSWORD,
  signIn,
  type TestApp,
} from "./support/app.js";

describe("HTTP hardening", () => {
  let t: TestApp;
  let cookie: string;
  beforeAll(async () => {
    t = makeApp();
    await register(t.app, { login_id: "hard.member" });
    cookie = await signIn(t.app, "hard.member");
  });
  afterAll(() => t.close());

  it("sends security headers and no-store on API answers", async () => {
    const res = await supertest(t.app).get("/api/v1/me").set("Cookie", cookie);
    expect(res.headers["cache-control"]).toBe("no-store");
    expect(res.headers["x-content-type-options"]).toBe("nosniff");
    expect(res.headers["content-security-policy"]).toContain("frame-ancestors 'self'");
    expect(res.headers["x-powered-by"]).toBeUndefined();
    expect(res.headers["x-request-id"]).toMatch(/^[\w-]{16}$/);
  });

  it("a member's event ids are opaque and stable: they can't count the audit entries written for others in between", async () => {
    const events = async () =>
      (await supertest(t.app).get("/api/v1/me/events").set("Cookie", cookie)).body.events as {
        id: unknown;
      }[];
    const before = await events();
    // Others' entries in between (a recovery request for someone), then one of the member's own.
    await post(t.app, "/api/v1/recovery/password", { login_id: "someone.else" });
    await t.s.recovery.settled();
    await signIn(t.app, "hard.member");
    const after = await events();
    expect(after.length).toBeGreaterThan(before.length);
    for (const e of after) expect(e.id).toMatch(/^ev_[A-Za-z0-9_-]{22}$/);
    expect(new Set(after.map((e) => e.id)).size).toBe(after.length);
    // The same entry keeps its id.
    expect(after.slice(after.length - before.length).map((e) => e.id)).toEqual(before.map((e) => e.id));
  });

  it("the provider's JSON endpoints answer no-store, their refusals included", async () => {
    for (const path of ["/oidc/token", "/oidc/token/revocation", "/oidc/token/introspection"]) {
      const res = await supertest(t.app).post(path).type("form").send({ token: "x", client_id: "nobody" });
      expect(res.status, path).toBe(401);
      expect(res.headers["cache-control"], path).toBe("no-store");
    }
    const userinfo = await supertest(t.app).get("/oidc/userinfo").set("Authorization", "Bearer not-a-token");
    expect(userinfo.status).toBe(401);
    expect(userinfo.headers["cache-control"]).toBe("no-store");
  });

  it("HEAD on the admin and service APIs and the admin console is an unknown method: no audited read that answers nothing", async () => {
    // Attack (or accident): HEAD runs the GET handler, so an admin's HEAD did the audited,
    // budget-counted PII read of a member and threw the answer away.
    for (const path of [
      "/api/v1/admin/members/m_AAAAAAAAAAAAAAAAAAAAAA?reason=looking",
      "/api/v1/members/some-sub",
      "/admin/members/m_AAAAAAAAAAAAAAAAAAAAAA?reason=looking",
      "/API/V1/ADMIN/alerts",
    ]) {
      const res = await supertest(t.app).head(path).set("Cookie", cookie);
      expect(res.status, path).toBe(404);
    }
    // Elsewhere HEAD is as GET.
    expect((await supertest(t.app).head("/healthz")).status).toBe(200);
  });

  it("answers OPTIONS outside the provider's endpoints with the contract's 404, not express's Allow list", async () => {
    for (const path of ["/api/v1/login", "/api/v1/me", "/healthz"]) {
      const res = await supertest(t.app).options(path).set("Origin", "https://rp.example");
      expect(res.status, path).toBe(404);
      expect(res.body, path).toMatchObject({ error: "not_found" });
      expect(res.headers.allow, path).toBeUndefined();
      if (path.startsWith("/api/v1/")) expect(res.headers["cache-control"], path).toBe("no-store");
    }
    const page = await supertest(t.app).options("/account");
    expect(page.status).toBe(404);
    expect(page.headers["content-type"]).toMatch(/^text\/html/);
    // The provider's JSON endpoints still answer a browser client's CORS preflight.
    const preflight = await supertest(t.app)
      .options("/oidc/token")
      .set("Origin", "https://rp.example")
      .set("Access-Control-Request-Method", "POST");
    expect(preflight.status).toBe(204);
    expect(preflight.headers["access-control-allow-origin"]).toBe("https://rp.example");
  });

  it("health and readiness answer JSON", async () => {
    expect((await supertest(t.app).get("/healthz")).body).toEqual({ status: "ok" });
    expect((await supertest(t.app).get("/readyz")).body).toEqual({
      status: "ready",
      checks: { database: "ok", keys: "ok" },
    });
  });

  it("refuses a body over 64 KiB with 413 and writes nothing", async () => {
    const before = t.s.db.select().from(members).all().length;
    const res = await post(t.app, "/api/v1/registrations", {
      password: STRONG_PASSWORD,
      profile: { ...PROFILE, address: "あ".repeat(30_000) },
    });
    expect(res.status).toBe(413);
    expect(res.body.error).toBe("payload_too_large");
    expect(t.s.db.select().from(members).all().length).toBe(before);
  });

  it("answers a body declared over the limit with 413 at once, without waiting for it to arrive", async () => {
    // Attack: declare gigabytes, send a byte now and then: the body parser read (and threw away)
    // the whole declared body before answering, so each such connection was held for minutes.
    const server = t.app.listen(0, "127.0.0.1");
    await once(server, "listening");
    const port = (server.address() as net.AddressInfo).port;
    try {
      for (const [path, type] of [
        ["/api/v1/registrations", "application/json"],
        ["/api/v1/login", "application/json"],
        ["/recovery/password", "application/x-www-form-urlencoded"],
      ] as const) {
        const socket = net.connect(port, "127.0.0.1");
        let answer = "";
        socket.on("data", (c: Buffer) => {
          answer += c.toString();
        });
        socket.write(
          `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: ${ORIGIN}\r\nContent-Type: ${type}\r\nContent-Length: 99999999999\r\n\r\n{`,
        );
        // Nothing more is sent: the answer must come anyway, and the connection close.
        await once(socket, "close");
        expect(answer, path).toMatch(/^HTTP\/1\.1 413 /);
        expect(answer.toLowerCase()).toContain("connection: close");
      }
    } finally {
      server.close();
    }
  });

  it("a request that doesn't arrive within the request timeout is answered 408, not as malformed HTTP", async () => {
    // The same clientError handler as the server's (src/main.ts), on a server with a short timeout.
    const server = http.createServer({ requestTimeout: 300, connectionsCheckingInterval: 50 }, t.app);
    answerClientErrors(server);
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    try {
      const socket = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
      let answer = "";
      socket.on("data", (c: Buffer) => {
        answer += c.toString();
      });
      socket.write(
        `POST /api/v1/registrations HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: ${ORIGIN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{`,
      );
      await once(socket, "close");
      expect(answer).toMatch(/^HTTP\/1\.1 408 /);
      expect(answer).toContain('"error":"invalid_request"');
    } finally {
      server.close();
    }
  });

  it("answers malformed JSON, wrong types and missing fields with 400 invalid_request", async () => {
    const raw = (body: string) =>
      supertest(t.app)
        .post("/api/v1/login")
        .set("Origin", ORIGIN)
        .set("Content-Type", "application/json")
        .send(body);
    for (const body of ['{"login_id":', "[1,2]", '"text"', "null", "{}", '{"login_id":1,"password":2}']) {
      const res = await raw(body);
      expect(res.status, body).toBe(400);
      expect(res.body.error, body).toBe("invalid_request");
      expect(res.text).not.toMatch(/at .*\.ts|stack/i);
    }
  });

  it("answers a body whose Content-Encoding doesn't decode with 400, not 500, on every kind of endpoint", async () => {
    for (const encoding of ["gzip", "deflate", "br"]) {
      for (const path of ["/api/v1/login", "/api/v1/registrations", "/api/v1/recovery/password"]) {
        const res = await supertest(t.app)
          .post(path)
          .set("Content-Type", "application/json")
          .set("Content-Encoding", encoding)
          .set("Origin", ORIGIN)
          .send('{"login_id":"hard.member","password":"x"}');
        expect(res.status, `${encoding} ${path}: ${res.text}`).toBe(400);
        expect(res.body.error).toBe("invalid_request");
      }
    }
  });

  it("refuses a JSON body in a charset other than UTF-8 with 415", async () => {
    const body = Buffer.from('{"login_id":"hard.member","password":"x"}', "utf16le");
    for (const charset of ["utf-16le", "UTF-16", "utf-32", "latin1"]) {
      const res = await supertest(t.app)
        .post("/api/v1/login")
        .set("Content-Type", `application/json; charset=${charset}`)
        .set("Origin", ORIGIN)
        .send(body);
      expect(res.status, charset).toBe(415);
      expect(res.body.error).toBe("unsupported_media_type");
    }
    const utf8 = await supertest(t.app)
      .post("/api/v1/login")
      .set("Content-Type", "application/json; charset=UTF-8")
      .set("Origin", ORIGIN)
      .send('{"login_id":"hard.member","password":"wrong password here"}');
    expect(utf8.status).toBe(401);
    // A cookie call without a body is held to the same rule as one with a body.
    const cookie = await signIn(t.app, "hard.member");
    const latin1 = await supertest(t.app)
      .post("/api/v1/logout")
      .set("Cookie", cookie)
      .set("Content-Type", "application/json; charset=latin1")
      .set("Origin", ORIGIN);
    expect(latin1.status).toBe(415);
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).status).toBe(200);
  });

  it("answers a path parameter that isn't valid percent-encoding with 400, not 500", async () => {
    for (const path of [
      "/api/v1/me/sessions/%ff",
      "/api/v1/me/passkeys/%E0%A4%A",
      "/api/v1/admin/members/%",
    ]) {
      const res = await supertest(t.app)
        .delete(path)
        .set("Cookie", cookie)
        .set("Origin", ORIGIN)
        .set("Content-Type", "application/json");
      expect(res.status, `${path}: ${res.text}`).toBe(400);
      expect(res.body.error).toBe("invalid_request");
    }
    const page = await supertest(t.app).get("/interaction/%E0%A4%A");
    expect(page.status).toBe(400);
  });

  it("our pages answer a missing page or an oversized form as a page in the reader's language, the API as JSON", async () => {
    for (const path of ["/account/nope", "/admin/nope", "/recovery/nope"]) {
      const res = await supertest(t.app).get(path);
      expect(res.status, path).toBe(404);
      expect(res.headers["content-type"]).toMatch(/text\/html/);
      expect(res.text).toContain("このページを表示できません");
      expect(res.headers["content-security-policy"]).toContain("default-src 'none'");
    }
    const en = await supertest(t.app).get("/account/nope").set("Accept-Language", "en");
    expect(en.text).toMatch(/This page can(&#39;|')t be shown/);
    const big = await supertest(t.app)
      .post("/account/login")
      .set("Origin", ORIGIN)
      .type("form")
      .send({ login_id: "hard.member", password: "x".repeat(9000) });
    expect(big.status).toBe(413);
    expect(big.text).toContain("このページを表示できません");
    const api = await supertest(t.app).get("/api/v1/nope");
    expect(api.status).toBe(404);
    expect(api.body.error).toBe("not_found");
  });

  it("a language chosen with the switch stays for the reader's next pages, whatever the browser asks", async () => {
    const chose = await supertest(t.app).get("/account/login?lang=en").set("Accept-Language", "ja");
    expect(chose.text).toContain('<html lang="en"');
    const jar = String(chose.headers["set-cookie"]).match(/sekisho_lang=en/)?.[0] as string;
    expect(jar).toBeTruthy();
    // After an action's redirect (no ?lang=), the page is still English.
    const next = await supertest(t.app)
      .get("/account")
      .set("Accept-Language", "ja")
      .set("Cookie", `${cookie}; ${jar}`);
    expect(next.text).toContain('<html lang="en"');
    // Without the choice, Accept-Language decides (Japanese first).
    const plain = await supertest(t.app).get("/account").set("Accept-Language", "ja").set("Cookie", cookie);
    expect(plain.text).toContain('<html lang="ja"');
    // Switching back is remembered too.
    const back = await supertest(t.app).get("/account/login?lang=ja").set("Cookie", jar);
    expect(String(back.headers["set-cookie"])).toContain("sekisho_lang=ja");
  });

  it("account page actions say they happened only when they did (a blank name, an unknown id)", async () => {
    const form = (path: string, body: Record<string, string>) =>
      supertest(t.app).post(path).set("Cookie", cookie).set("Origin", ORIGIN).type("form").send(body);
    const rename = await form("/account/passkeys/pk_unknownAAAAAAAAAAAAAAAA/rename", { name: "   " });
    expect(rename.status).toBe(303);
    expect(rename.headers.location).toBe("/account?error=invalid");
    const device = await form("/account/devices/d_madeUpAAAAAAAAAAAAAAAAAA/remove", {});
    expect(device.headers.location).toBe("/account?error=invalid");
  });

  it("refuses NUL bytes, lone surrogates and bidi controls in profile fields, and takes invisible characters out", async () => {
    for (const name of ["Taro\u0000Yamada", "Taro \ud800", "Taro\u202eodamaY", "Taro\u200fYamada"]) {
      const res = await register(t.app, { profile: { ...PROFILE, name } });
      expect(res.status, JSON.stringify(name)).toBe(400);
      expect(res.body.error).toBe("invalid_request");
    }
    const huge = await register(t.app, { profile: { ...PROFILE, name: "x".repeat(5000) } });
    expect(huge.status).toBe(400);
    /** The profile as stored for a member registered with these fields (read back through /me). */
    const stored = async (login_id: string, fields: Record<string, string>) => {
      const res = await register(t.app, { login_id, profile: { ...PROFILE, ...fields } });
      expect(res.status, res.text).toBe(201);
      const me = await supertest(t.app)
        .get("/api/v1/me")
        .set("Cookie", await signIn(t.app, login_id));
      return me.body.profile as Record<string, string>;
    };
    // A name padded with zero-width characters would look like another member's on an admin's
    // screen: they are taken out, joiners and selectors too where they join or select nothing.
    const padded = await stored("invisible.name", {
      name: "\ufeff山田\u200b 花\u00ad子\u2060",
      address: "東京都\u200d",
    });
    expect(padded.name).toBe("山田 花子");
    expect(padded.address).toBe("東京都");
    const lookAlike = await stored("invisible.joiner", { name: "ta\u200dro ya\ufe00ma\u{e0100}da" });
    expect(lookAlike.name).toBe("taro yamada");
    // Where they do something they stay: emoji sequences, a subdivision flag's tags, a keycap,
    // Persian's ZWNJ, Mongolian's variation selector.
    const kept =
      "👩🏽\u200d💻 🏳\ufe0f\u200d🌈 🏴\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f} 1\ufe0f\u20e3 می\u200cخواهم ᠠ\u180bᠡ";
    const joined = await stored("invisible.emoji", { name: kept });
    expect(joined.name).toBe(kept);
    // Taken out before normalising: what is left is NFC like the same name typed plainly.
    const nfc = await stored("invisible.nfc", {
      name: "Rene\u200b\u0301 Dupont",
      address: "葛\u{e0100}飾区",
    });
    expect(nfc.name).toBe("René Dupont".normalize("NFC"));
    expect(nfc.address).toBe("葛\u{e0100}飾区"); // the variant kanji's selector stays
    // A name of fillers, joiners, selectors or marks only is blank.
    for (const name of [
      "\u3164\u3164",
      "\u200d",
      "\ufe0f\ufe0f",
      "\u{e0100}",
      "\u2800",
      "\u0301\u0301",
      " \u200c ",
    ]) {
      const blank = await register(t.app, { profile: { ...PROFILE, name } });
      expect(blank.status, JSON.stringify(name)).toBe(400);
    }
    // A multi-line address sent with CRLF line ends is kept with LF.
    const crlf = await stored("invisible.crlf", { address: "東京都千代田区\r\n千代田1-1" });
    expect(crlf.address).toBe("東京都千代田区\n千代田1-1");
  });

  it("refuses bytes that aren't UTF-8 in a JSON body, a query string or a form, instead of storing U+FFFD", async () => {
    // Attack: a byte that isn't UTF-8 became U+FFFD and passed validation ("Ta\uFFFDro" stored,
    // or %FF%FF%FF as the three-character reason of an audited PII read), where the same text sent
    // as a lone-surrogate escape is refused. The bytes go over a real socket, as they were written.
    const server = t.app.listen(0, "127.0.0.1");
    await once(server, "listening");
    const port = (server.address() as net.AddressInfo).port;
    const raw = (path: string, type: string, bytes: Buffer) =>
      new Promise<{ status: number; type: string; body: string }>((resolve, reject) => {
        const req = http.request(
          {
            host: "127.0.0.1",
            port,
            method: "POST",
            path,
            headers: { "content-type": type, origin: ORIGIN },
          },
          (res) => {
            let body = "";
            res.setEncoding("utf8");
            res.on("data", (c: string) => {
              body += c;
            });
            res.on("end", () =>
              resolve({ status: res.statusCode ?? 0, type: String(res.headers["content-type"]), body }),
            );
          },
        );
        req.on("error", reject);
        req.end(bytes);
      });
    try {
      const json = JSON.stringify({
        login_id: "bytes.member",
        password: STRONG_PASSWORD,
        profile: { ...PROFILE, name: "Ta#ro" },
      });
      const reg = await raw(
        "/api/v1/registrations",
        "application/json",
        Buffer.concat(
          json
            .split("#")
            .flatMap((part, i) => (i ? [Buffer.from([0xff]), Buffer.from(part)] : [Buffer.from(part)])),
        ),
      );
      expect(reg.status, reg.body).toBe(400);
      expect(JSON.parse(reg.body)).toMatchObject({
        error: "invalid_request",
        error_description: expect.stringMatching(/UTF-8/),
      });
      expect(
        t.s.db.$client.prepare("SELECT count(*) FROM members WHERE login_id = 'bytes.member'").pluck().get(),
      ).toBe(0);
      // A hosted page's form.
      for (const body of [
        Buffer.from("login_id=%FF%FEabc"),
        Buffer.from([...Buffer.from("login_id=ab"), 0xff]),
      ]) {
        const form = await raw("/recovery/password", "application/x-www-form-urlencoded", body);
        expect(form.status, body.toString("latin1")).toBe(400);
        expect(form.type).toMatch(/html/);
        expect(form.body).toMatch(/UTF-8/);
      }
      // A literal UTF-8 form value and a percent-encoded one are fine.
      const fine = await raw(
        "/recovery/password",
        "application/x-www-form-urlencoded",
        Buffer.from(`login_id=${encodeURIComponent("たろう")}&x=a+b`),
      );
      expect(fine.body).not.toMatch(/UTF-8/);
    } finally {
      server.close();
    }
    // A query string (an admin's reason, say): refused before any route looks at it.
    const query = await supertest(t.app).get(
      "/api/v1/admin/members/m_AAAAAAAAAAAAAAAAAAAAAA?reason=%FF%FF%FF",
    );
    expect(query.status).toBe(400);
    expect(query.body.error).toBe("invalid_request");
    // ...and well-formed percent-encoding of real text still reads (the same route, unauthenticated).
    expect((await supertest(t.app).get(`/api/v1/me?x=${encodeURIComponent("理由")}`)).status).toBe(401);
  });

  it("refuses a future birth date and an impossible one", async () => {
    for (const birth_date of ["2999-01-01", "2001-02-30", "1850-01-01", "01/02/2000"]) {
      const res = await register(t.app, { profile: { ...PROFILE, birth_date } });
      expect(res.status, birth_date).toBe(400);
    }
  });

  it("refuses cross-origin state changes with 403 forbidden_origin (CSRF)", async () => {
    // Attack: a page on another site posts to our API with the member's cookie.
    const res = await supertest(t.app)
      .post("/api/v1/logout")
      .set("Origin", "https://evil.example")
      .set("Content-Type", "application/json")
      .set("Cookie", cookie)
      .send("{}");
    expect(res.status).toBe(403);
    expect(res.body.error).toBe("forbidden_origin");
    const viaFetchMetadata = await supertest(t.app)
      .post("/api/v1/login")
      .set("Sec-Fetch-Site", "cross-site")
      .set("Content-Type", "application/json")
      .send(JSON.stringify({ login_id: "hard.member", password: STRONG_PASSWORD }));
    expect(viaFetchMetadata.status).toBe(403);
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).status).toBe(200);
  });

  it("refuses a cookie-carrying state change that is not JSON (a plain HTML form)", async () => {
    const res = await supertest(t.app)
      .delete("/api/v1/me/sessions/s_AAAAAAAAAAAAAAAA")
      .set("Cookie", cookie)
      .set("Content-Type", "application/x-www-form-urlencoded")
      .send("a=b");
    expect(res.status).toBe(415);
    expect(res.body.error).toBe("unsupported_media_type");
    const noType = await supertest(t.app).post("/api/v1/logout").set("Cookie", cookie);
    expect(noType.status).toBe(415);
    // A space before "=" is still the session cookie to the parser, so it is to the check too.
    const spaced = cookie.replace(/^sekisho_session=/, "sekisho_session =");
    expect(spaced).not.toBe(cookie);
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", spaced)).status).toBe(200);
    // (no body: with one, the type is checked anyway)
    const sneaky = await supertest(t.app)
      .post("/api/v1/me/totp")
      .set("Cookie", spaced)
      .set("Content-Type", "text/plain");
    expect(sneaky.status).toBe(415);
  });

  it("answers unknown paths with 404 not_found and unauthenticated calls with 401", async () => {
    expect((await supertest(t.app).get("/api/v1/nope")).body.error).toBe("not_found");
    expect((await supertest(t.app).get("/api/v1/me")).status).toBe(401);
    expect((await supertest(t.app).get("/api/v1/me/sessions")).body.error).toBe("unauthenticated");
  });

  it("a crash in the middle of a registration leaves no half member", async () => {
    // Simulate a failure after the member row is written but before the transaction commits.
    const before = t.s.db.select().from(members).all().length;
    const append = t.s.audit.append.bind(t.s.audit);
    t.s.audit.append = (e) => {
      if (e.action === "member.registered") throw new Error("disk full");
      return append(e);
    };
    try {
      const res = await register(t.app, { login_id: "half.member" });
      expect(res.status).toBe(500);
      expect(res.body).toEqual({
        error: "server_error",
        error_description: expect.any(String),
        request_id: res.headers["x-request-id"],
      });
    } finally {
      t.s.audit.append = append;
    }
    expect(t.s.db.select().from(members).all().length).toBe(before);
    expect((await register(t.app, { login_id: "half.member" })).status).toBe(201);
  });
});

/** One raw HTTP/1.1 request, written as given (a forged Host, an absolute-form target). */
async function rawGet(port: number, target: string, host: string): Promise<{ status: number; body: string }> {
  const socket = net.connect(port, "127.0.0.1");
  socket.write(`GET ${target} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  const chunks: Buffer[] = [];
  for await (const chunk of socket) chunks.push(chunk as Buffer);
  const text = Buffer.concat(chunks).toString("utf8");
  const [head = "", ...rest] = text.split("\r\n\r\n");
  const body = rest.join("\r\n\r\n");
  // Chunked or not, the JSON document is what sits between the first "{" and the last "}".
  return {
    status: Number(head.split(" ")[1]),
    body: body.slice(body.indexOf("{"), body.lastIndexOf("}") + 1),
  };
}

describe("the provider's documents are written for the issuer, whatever the request says its host is", () => {
  const attacks = [
    ["a forged Host header", "/.well-known/openid-configuration", "evil.example"],
    ["an absolute-form request target", "http://evil.example/.well-known/openid-configuration", null],
  ] as const;
  for (const [what, target, forgedHost] of attacks) {
    it(`a first discovery request with ${what} poisons neither its own answer nor the cached one`, async () => {
      const t = makeApp();
      const server = http.createServer(t.app).listen(0, "127.0.0.1");
      await once(server, "listening");
      const { port } = server.address() as net.AddressInfo;
      const issuerHost = new URL(t.s.config.issuer).host;
      try {
        // The attacker's request comes first, while nothing is cached yet.
        const forged = await rawGet(port, target, forgedHost ?? issuerHost);
        // Then a member site's, for the issuer's host, and one for another name of the server.
        const honest = await rawGet(port, "/.well-known/openid-configuration", issuerHost);
        const other = await rawGet(port, "/.well-known/openid-configuration", `127.0.0.1:${port}`);
        for (const res of [forged, honest, other]) {
          expect(res.status).toBe(200);
          expect(res.body).not.toContain("evil.example");
          const doc = JSON.parse(res.body) as Record<string, unknown>;
          expect(doc.issuer).toBe(t.s.config.issuer);
          for (const key of [
            "authorization_endpoint",
            "token_endpoint",
            "jwks_uri",
            "end_session_endpoint",
          ]) {
            expect(String(doc[key]).startsWith(`${t.s.config.issuer}/`), `${key}: ${doc[key]}`).toBe(true);
          }
        }
      } finally {
        server.close();
        t.close();
      }
    });
  }
});
