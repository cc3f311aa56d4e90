import fc from "fast-check";
import supertest from "supertest";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { makeApp, ORIGIN, register, signIn, type TestApp } from "./support/app.js";

/**
 * Property: whatever JSON (or not-JSON) arrives at any endpoint, the answer is a 2xx/4xx with a
 * contract error body, never a 500 or a stack trace.
 */
const nasty = fc.oneof(
  fc.string(),
  fc.string({ unit: "grapheme" }),
  fc.string({ unit: "binary" }), // lone surrogates included
  fc.constantFrom(
    "",
    "\u0000",
    "ａｄｍｉｎ",
    "\ud800",
    "__proto__",
    "constructor",
    "a".repeat(3000),
    "😀".repeat(40),
  ),
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.string(), { maxLength: 3 }),
  fc.dictionary(fc.string(), fc.string(), { maxKeys: 3 }),
);
const shaped = fc.record(
  {
    login_id: nasty,
    password: nasty,
    profile: fc.oneof(
      nasty,
      fc.record(
        {
          name: nasty,
          email: nasty,
          phone: nasty,
          postal_code: nasty,
          address: nasty,
          birth_date: nasty,
          gender: nasty,
        },
        { requiredKeys: [] },
      ),
    ),
    __proto__: nasty,
    mfa_token: nasty,
    code: nasty,
    name: nasty,
    response: fc.oneof(
      nasty,
      fc.record(
        {
          id: nasty,
          rawId: nasty,
          type: fc.oneof(nasty, fc.constant("public-key")),
          response: fc.oneof(
            nasty,
            fc.record(
              {
                clientDataJSON: fc.oneof(
                  nasty,
                  fc.jsonValue().map((v) => Buffer.from(JSON.stringify(v)).toString("base64url")),
                  fc.constant(
                    Buffer.from('{"challenge":"AAAAAAAAAAAAAAAAAAAAAA","type":"webauthn.get"}').toString(
                      "base64url",
                    ),
                  ),
                ),
                attestationObject: nasty,
                authenticatorData: nasty,
                signature: nasty,
                userHandle: nasty,
                transports: nasty,
              },
              { requiredKeys: [] },
            ),
          ),
          clientExtensionResults: nasty,
        },
        { requiredKeys: [] },
      ),
    ),
  },
  { requiredKeys: [] },
);
const anyBody = fc.oneof(
  fc.jsonValue().map((v) => JSON.stringify(v)),
  shaped.map((v) => JSON.stringify(v)),
  fc.string(),
);

const ENDPOINTS: Array<["get" | "post" | "put" | "delete" | "patch", string]> = [
  ["post", "/api/v1/registrations"],
  ["post", "/api/v1/login"],
  ["post", "/api/v1/login/totp"],
  ["post", "/api/v1/login/recovery-code"],
  ["post", "/api/v1/login/webauthn/options"],
  ["post", "/api/v1/login/webauthn"],
  ["post", "/api/v1/logout"],
  ["get", "/api/v1/me"],
  ["get", "/api/v1/me/sessions"],
  ["get", "/api/v1/me/events"],
  ["get", "/api/v1/me/devices"],
  ["delete", "/api/v1/me/sessions/x"],
  ["delete", "/api/v1/me/devices/x"],
  ["post", "/api/v1/me/totp"],
  ["post", "/api/v1/me/totp/verify"],
  ["delete", "/api/v1/me/totp"],
  ["post", "/api/v1/me/recovery-codes"],
  ["post", "/api/v1/me/passkeys/options"],
  ["post", "/api/v1/me/passkeys"],
  ["patch", "/api/v1/me/passkeys/x"],
  ["delete", "/api/v1/me/passkeys/x"],
  ["get", "/api/v1/admin/alerts"],
  ["post", "/api/v1/admin/members/x/unlock"],
  ["get", "/api/v1/admin/members"],
  ["get", "/api/v1/admin/members/x"],
  ["post", "/api/v1/admin/members/x/reset-mfa"],
  ["post", "/api/v1/admin/members/x/revoke-sessions"],
  ["post", "/api/v1/admin/members/x/require-password-reset"],
  ["get", "/api/v1/admin/audit"],
  ["get", "/api/v1/admin/audit/verify"],
  ["post", "/api/v1/admin/clients/x/pii-approval"],
  ["get", "/api/v1/admin/mfa-policy"],
  ["put", "/api/v1/admin/mfa-policy"],
  ["get", "/api/v1/admin/clients/x/mfa-policy"],
  ["put", "/api/v1/admin/clients/x/mfa-policy"],
  ["delete", "/api/v1/admin/clients/x/mfa-policy"],
  ["get", "/api/v1/admin/mfa-adoption"],
  ["get", "/api/v1/members/x"],
  ["post", "/api/v1/recovery/password"],
  ["post", "/api/v1/recovery/login-id"],
  ["post", "/api/v1/recovery/password/check"],
  ["post", "/api/v1/recovery/password/totp"],
  ["post", "/api/v1/recovery/password/recovery-code"],
  ["post", "/api/v1/recovery/password/webauthn/options"],
  ["post", "/api/v1/recovery/password/webauthn"],
  ["post", "/api/v1/recovery/password/reset"],
  ["post", "/api/v1/email/verify"],
  ["post", "/api/v1/me/email/verification"],
  ["post", "/api/v1/me/email"],
  ["post", "/api/v1/me/password"],
];

describe("arbitrary input at every endpoint", () => {
  let t: TestApp;
  let cookie: string;
  beforeAll(async () => {
    t = makeApp();
    await register(t.app, { login_id: "fuzz.member" });
  });
  // A fresh session per endpoint: the logout fuzz ends the one it is given.
  beforeEach(async () => {
    t.clock.advance(15 * 60_000); // past the throttle window the login fuzz may have filled
    cookie = await signIn(t.app, "fuzz.member");
  });
  afterAll(() => t.close());

  for (const [method, path] of ENDPOINTS) {
    it(`${method.toUpperCase()} ${path} never answers 5xx`, async () => {
      await fc.assert(
        fc.asyncProperty(
          anyBody,
          fc.boolean(),
          fc.string({ maxLength: 40 }),
          async (body, withCookie, suffix) => {
            const url = path.endsWith("/x") ? path.replace(/x$/, encodeURIComponent(suffix) || "x") : path;
            const req = supertest(t.app)
              [method](url)
              .set("Origin", ORIGIN)
              .set("Content-Type", "application/json");
            if (withCookie) req.set("Cookie", cookie);
            const res = await req.send(body);
            expect(res.status, `${res.status} ${res.text}`).toBeLessThan(500);
            if (res.status >= 400) {
              expect(typeof res.body.error).toBe("string");
              expect(res.text).not.toMatch(/\.ts:\d+|at [A-Z]\w+\./);
            }
          },
        ),
        { numRuns: path.endsWith("registrations") ? 150 : 60 },
      );
    });
  }

  it("hostile query strings and paths never answer 5xx", async () => {
    await fc.assert(
      fc.asyncProperty(fc.string({ unit: "binary", maxLength: 60 }), async (s) => {
        const res = await supertest(t.app).get(
          `/api/v1/me/events?${encodeURIComponent(s)}=${encodeURIComponent(s)}`,
        );
        expect(res.status).toBeLessThan(500);
      }),
      { numRuns: 100 },
    );
  });

  it("hostile input at the OIDC endpoints and hosted pages never answers 5xx", async () => {
    const paths = [
      ["get", "/oidc/auth"],
      ["post", "/oidc/token"],
      ["post", "/oidc/token/revocation"],
      ["post", "/oidc/token/introspection"],
      ["get", "/oidc/userinfo"],
      ["get", "/oidc/session/end"],
      ["get", "/interaction/x"],
      ["post", "/interaction/x/login"],
      ["post", "/interaction/x/consent"],
      ["post", "/interaction/x/mfa"],
      ["post", "/interaction/x/abort"],
      ["get", "/account"],
      ["get", "/account/login"],
      ["post", "/account/login"],
      ["post", "/account/mfa"],
      ["post", "/account/totp/verify"],
      ["post", "/account/passkeys/x/rename"],
      ["post", "/account/passkeys/x/remove"],
      ["post", "/account/sessions/x/end"],
      ["post", "/account/email"],
      ["post", "/account/email/resend"],
      ["post", "/account/password"],
      ["get", "/recovery/password"],
      ["post", "/recovery/password"],
      ["get", "/recovery/login-id"],
      ["post", "/recovery/login-id"],
      ["get", "/recovery/reset"],
      ["post", "/recovery/reset/mfa"],
      ["post", "/recovery/reset"],
      ["get", "/email/verify"],
      ["post", "/email/verify"],
      ["get", "/admin"],
      ["get", "/admin/members"],
      ["get", "/admin/members/x"],
      ["post", "/admin/members/x/reset-mfa"],
      ["get", "/admin/policy"],
      ["post", "/admin/policy"],
      ["get", "/admin/audit"],
      ["post", "/admin/login"],
      ["post", "/admin/mfa"],
    ] as const;
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...paths),
        fc.dictionary(fc.string({ maxLength: 12 }), fc.string({ unit: "binary", maxLength: 40 }), {
          maxKeys: 4,
        }),
        fc.string({ maxLength: 30 }),
        fc.boolean(),
        async ([method, path], params, uid, withCookie) => {
          const url = path.replace("/x", `/${encodeURIComponent(uid) || "x"}`);
          const form = new URLSearchParams(params).toString();
          const jar = withCookie ? cookie : "";
          const res =
            method === "get"
              ? await supertest(t.app).get(`${url}?${form}`).set("Cookie", jar)
              : await supertest(t.app)
                  .post(url)
                  .set("Origin", ORIGIN)
                  .set("Cookie", jar)
                  .set("Content-Type", "application/x-www-form-urlencoded")
                  .send(form);
          expect(res.status, `${method} ${url} ${res.status} ${res.text.slice(0, 200)}`).toBeLessThan(500);
        },
      ),
      { numRuns: 150 },
    );
  });
});
