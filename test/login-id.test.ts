import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { checkChosenLoginId, resolveLoginInput } from "../src/members/login-id.js";
import { generateMemberNumber, parseMemberNumber } from "../src/members/member-number.js";
import { makeApp, post, register, STRONG_PASSWORD, type TestApp } from "./support/app.js";

const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";

describe("login IDs", () => {
  let t: TestApp;
  beforeEach(() => {
    t = makeApp();
  });
  afterEach(() => t.close());

  it("refuses an e-mail address as a login ID, also written in full-width characters", async () => {
    for (const loginId of ["taro@example.jp", "ｔａｒｏ＠ｅｘａｍｐｌｅ．ｊｐ"]) {
      const res = await register(t.app, { login_id: loginId });
      expect(res.status).toBe(400);
      expect(res.body).toMatchObject({ error: "invalid_login_id", reason: "email" });
    }
  });

  it("treats full-width and upper-case letters as the same ID: a look-alike of a taken ID is login_id_taken", async () => {
    // Attack: register ＴＡＲＯ.ＹＡＭＡＤＡ to impersonate taro.yamada.
    expect((await register(t.app, { login_id: "taro.yamada" })).status).toBe(201);
    const res = await register(t.app, { login_id: "ＴＡＲＯ.Ｙａｍａｄａ" });
    expect(res.status).toBe(409);
    expect(res.body.error).toBe("login_id_taken");
    // ...and the full-width form signs in to the same account.
    const login = await post(t.app, "/api/v1/login", {
      login_id: "ＴＡＲＯ．ＹＡＭＡＤＡ",
      password: STRONG_PASSWORD,
    });
    expect(login.status).toBe(200);
  });

  it("registration can't be used to check login IDs for free: 20 an address in 10 minutes", async () => {
    // Attack: ask to register taken IDs one after another; `409 login_id_taken` needs no hash.
    expect((await register(t.app, { login_id: "boss.account" })).status).toBe(201);
    const answers: number[] = [];
    for (let i = 0; i < 25; i++) answers.push((await register(t.app, { login_id: "boss.account" })).status);
    expect(answers.slice(0, 19).every((s) => s === 409)).toBe(true); // 20 requests with the first
    expect(answers.slice(19).every((s) => s === 429)).toBe(true);
    t.clock.advance(20 * 60_000);
    expect((await register(t.app, { login_id: "boss.account" })).status).toBe(409);
  });

  it("refuses reserved words and staff look-alikes", async () => {
    for (const loginId of [
      "admin",
      "ROOT",
      "support",
      "admin2",
      "support.desk",
      "sekisho-team",
      "official_news",
    ]) {
      const res = await register(t.app, { login_id: loginId });
      expect(res.status, loginId).toBe(400);
      expect(res.body).toMatchObject({ error: "invalid_login_id", reason: "reserved" });
    }
    expect(checkChosenLoginId("supportive").ok).toBe(true);
  });

  it("refuses IDs with the wrong length or characters, zero-width and bidi tricks included", () => {
    for (const id of [
      "abc",
      "a".repeat(33),
      "taro yamada",
      "taro\u200byamada",
      "taro\u202eyamada",
      ".taro",
      "taro-",
      "太郎さん",
      "ta\u0000ro",
    ]) {
      expect(checkChosenLoginId(id).ok, JSON.stringify(id)).toBe(false);
    }
    expect(checkChosenLoginId("\ud800abc").ok).toBe(false);
    expect(checkChosenLoginId("Taro_Yamada-1984")).toEqual({ ok: true, loginId: "taro_yamada-1984" });
  });

  it("generates a member number when no login ID is chosen, and it signs in typed in any case or spacing", async () => {
    const res = await register(t.app, {});
    expect(res.status).toBe(201);
    const number = res.body.login_id as string;
    expect(number).toMatch(/^[0-9a-hjkmnp-tv-z]{4}-[0-9a-hjkmnp-tv-z]{4}-[0-9a-hjkmnp-tv-z]{3}$/);
    for (const typed of [number, number.toUpperCase(), number.replace(/-/g, " "), number.replace(/-/g, "")]) {
      const login = await post(t.app, "/api/v1/login", { login_id: typed, password: STRONG_PASSWORD });
      expect(login.status, typed).toBe(200);
    }
  });

  it("recognises a member number with one mistyped character as invalid before any lookup", async () => {
    const number = generateMemberNumber();
    const symbols = number.replace(/-/g, "");
    let checked = 0;
    for (let i = 0; i < symbols.length; i++) {
      for (const c of ALPHABET) {
        if (c === symbols[i]) continue;
        const typo = symbols.slice(0, i) + c + symbols.slice(i + 1);
        const typed = `${typo.slice(0, 4)}-${typo.slice(4, 8)}-${typo.slice(8)}`;
        expect(parseMemberNumber(typed).kind, typed).toBe("invalid_number");
        checked++;
      }
    }
    expect(checked).toBe(11 * 31);
    const typo = `${number.slice(0, -1)}${number.endsWith("0") ? "1" : "0"}`;
    // Typed with or without separators, a typo is refused before any lookup.
    for (const typed of [typo, typo.replace(/-/g, ""), typo.replace(/-/g, " ").toUpperCase()]) {
      const res = await post(t.app, "/api/v1/login", { login_id: typed, password: STRONG_PASSWORD });
      expect(res.status, typed).toBe(400);
      expect(res.body.error).toBe("invalid_login_id");
    }
  });

  it("reads Crockford look-alikes (I, L as 1; O as 0) in a typed member number", () => {
    let number = generateMemberNumber();
    while (!/[01]/.test(number)) number = generateMemberNumber();
    const typed = number.replace(/1/g, "l").replace(/0/g, "O");
    expect(parseMemberNumber(typed.toLowerCase())).toEqual({ kind: "number", value: number });
    expect(resolveLoginInput(typed)).toBe(number);
  });

  it("a chosen ID can never look like a member number", () => {
    const number = generateMemberNumber();
    expect(checkChosenLoginId(number)).toEqual({ ok: false, problem: "looks_like_member_number" });
    expect(checkChosenLoginId(number.replace(/-/g, ""))).toEqual({
      ok: false,
      problem: "looks_like_member_number",
    });
    expect(checkChosenLoginId("abcd-efgh-jkm")).toEqual({ ok: false, problem: "looks_like_member_number" });
    // Eleven plain letters and digits are the plain form of a number, valid or not.
    expect(checkChosenLoginId("hellokitty1")).toEqual({ ok: false, problem: "looks_like_member_number" });
    expect(checkChosenLoginId("hello.kitty1").ok).toBe(true);
    expect(checkChosenLoginId("hellokitty12").ok).toBe(true);
  });
});
