import supertest from "supertest";
import { afterEach, describe, expect, it } from "vitest";
import { makeApp, PROFILE, post, register, STRONG_PASSWORD, type TestApp } from "./support/app.js";

describe("logs", () => {
  let t: TestApp;
  afterEach(() => t.close());

  it("never contain passwords, session tokens or profile values, on success and failure paths alike", async () => {
    // Attack: read the log files (or the log pipeline) instead of the database.
    t = makeApp({ LOG_LEVEL: "trace" });
    await register(t.app, { login_id: "logged.member" });
    await register(t.app, { login_id: "logged.member" }); // 409
    await register(t.app, { login_id: "weak.one", password: "password1234" }); // 400 weak
    await post(t.app, "/api/v1/login", { login_id: "logged.member", password: "a wrong password here" });
    await post(t.app, "/api/v1/login", { login_id: "no.such.member", password: STRONG_PASSWORD });
    const ok = await post(t.app, "/api/v1/login", { login_id: "logged.member", password: STRONG_PASSWORD });
    const cookie = String(ok.headers["set-cookie"]).split(";")[0] as string;
    const token = cookie.split("=")[1] as string;
    await supertest(t.app).get("/api/v1/me").set("Cookie", cookie);
    await post(t.app, "/api/v1/registrations", {
      password: STRONG_PASSWORD,
      profile: { ...PROFILE, email: 42 },
    });
    // An unexpected error path: the logger gets an error object carrying a secret-looking body.
    t.s.logger.error({ body: { password: STRONG_PASSWORD }, profile: PROFILE, token }, "synthetic");

    const text = t.logs.join("");
    expect(t.logs.length).toBeGreaterThan(8);
    expect(text).toContain(`"msg":"request"`);
    for (const secret of [
      STRONG_PASSWORD,
      "a wrong password here",
      "password1234",
      token,
      ...Object.values(PROFILE),
    ]) {
      expect(text.includes(secret), `log contains ${secret}`).toBe(false);
    }
    expect(text).toContain("[redacted]");
    // One access-log line per request, with a request id.
    const access = t.logs.map((l) => JSON.parse(l)).filter((l) => l.msg === "request");
    expect(access).toHaveLength(8);
    for (const line of access) expect(line.req_id).toMatch(/^[\w-]{16}$/);
  });
});
