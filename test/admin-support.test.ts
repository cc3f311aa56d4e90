import supertest from "supertest";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AdminOps } from "../src/admin/admin-ops.js";
import { PiiBudgets } from "../src/audit/pii-budget.js";
import { Clients } from "../src/oidc/clients.js";
import { adminPasskeySession, adminWithPasskey } from "./support/admin.js";
import {
  langSwitchIn,
  makeApp,
  ORIGIN,
  PROFILE,
  post,
  register,
  STRONG_PASSWORD,
  signIn,
  type TestApp,
} from "./support/app.js";

describe("admin member support and PII read budgets", () => {
  let t: TestApp;
  let admin: string;
  let auth: Awaited<ReturnType<typeof adminWithPasskey>>["auth"];

  beforeEach(async () => {
    t = makeApp({ SEKISHO_PII_BUDGETS: JSON.stringify({ adminHour: 5, adminDay: 8 }) });
    ({ auth } = await adminWithPasskey(t));
    admin = await adminPasskeySession(t, auth);
  });
  afterEach(() => t.close());

  const get = (url: string, cookie = admin) => supertest(t.app).get(url).set("Cookie", cookie);

  it("looks members up by login ID or e-mail with masked PII, and shows the full profile only with a reason", async () => {
    const id = (await register(t.app, { login_id: "taro.support" })).body.member_id as string;
    const byId = await get("/api/v1/admin/members?login_id=TARO.SUPPORT");
    expect(byId.status).toBe(200);
    expect(byId.body.members).toHaveLength(1);
    expect(byId.body.members[0]).toMatchObject({
      member_id: id,
      login_id: "taro.support",
      profile: { name: "山***", email: "t***@e***.jp", phone: "***5678" },
    });
    expect(JSON.stringify(byId.body)).not.toContain(PROFILE.email);
    const byEmail = await get(`/api/v1/admin/members?email=${encodeURIComponent(PROFILE.email)}`);
    expect(byEmail.body.members.map((m: { member_id: string }) => m.member_id)).toEqual([id]);
    // Attack: test a leaked list for who is a member. A search that finds nobody costs no budget,
    // but says what was searched: the login ID, or the address's blind index (never the address).
    const leaked = "someone.else@example.org";
    expect((await get(`/api/v1/admin/members?email=${encodeURIComponent(leaked)}`)).body.members).toEqual([]);
    expect((await get("/api/v1/admin/members?login_id=hanako.leaked")).body.members).toEqual([]);
    // A search that isn't a login ID at all (a phone number, a pasted password) is no clearer.
    expect((await get("/api/v1/admin/members?login_id=090-9999-1234")).body.members).toEqual([]);
    const searches = [...t.s.audit.iterate()]
      .filter((e) => e.action === "admin.members_looked_up")
      .map((e) => JSON.parse(e.details));
    const ops = new AdminOps(t.s);
    expect(searches.slice(-3)).toEqual([
      { by: "email", email_index: t.s.vault.emailIndex(leaked), found: 0 },
      { by: "login_id", login_id_index: ops.searchIndex("HANAKO.leaked"), found: 0 },
      { by: "login_id", login_id_index: ops.searchIndex("090-9999-1234"), found: 0 },
    ]);
    // Found: the member's login ID, as the members table has it.
    expect(searches.find((s) => s.found === 1 && s.by === "login_id")).toEqual({
      by: "login_id",
      login_id: "taro.support",
      found: 1,
    });
    expect(JSON.stringify(searches)).not.toMatch(/example\.org|hanako|9999/);

    const noReason = await get(`/api/v1/admin/members/${id}`);
    expect(noReason.status).toBe(400);
    const full = await get(
      `/api/v1/admin/members/${id}?reason=${encodeURIComponent("ticket 4711: address check")}`,
    );
    expect(full.status).toBe(200);
    expect(full.body.profile).toMatchObject({ email: PROFILE.email, address: PROFILE.address });
    // Never a password or its hash.
    expect(JSON.stringify(full.body)).not.toMatch(/argon2|password/i);
    // …and no way to set one: there is no such call.
    for (const path of [`/api/v1/admin/members/${id}/password`, `/api/v1/admin/members/${id}/set-password`]) {
      expect((await post(t.app, path, { password: "chosen by the admin 123" }, admin)).status).toBe(404);
    }
    const hash = t.s.db.$client.prepare("SELECT password_hash FROM members WHERE id = ?").pluck().get(id);
    expect(
      (await post(t.app, "/api/v1/login", { login_id: "taro.support", password: STRONG_PASSWORD })).status,
    ).toBe(200);
    expect(t.s.db.$client.prepare("SELECT password_hash FROM members WHERE id = ?").pluck().get(id)).toBe(
      hash,
    );
    const reads = [...t.s.audit.iterate()].filter((e) => e.action === "pii.read" && e.actorType === "admin");
    expect(reads.at(-1)?.reason).toBe("ticket 4711: address check");
    const viewed = [...t.s.audit.iterate()].filter((e) => e.action === "admin.member_viewed");
    expect(viewed.at(-1)).toMatchObject({ memberId: id, reason: "ticket 4711: address check" });
  });

  it("stops an admin reading members one by one at the budget, alerts, and re-arms only the hour after a fresh sign-in, never the day", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 7; i++) ids.push((await register(t.app, { login_id: `member.${i}` })).body.member_id);
    const statuses: number[] = [];
    for (const id of ids)
      statuses.push((await get(`/api/v1/admin/members/${id}?reason=export+check`)).status);
    expect(statuses).toEqual([200, 200, 200, 200, 200, 429, 429]);
    const refused = await get(`/api/v1/admin/members/${ids[0]}?reason=export+check`);
    expect(refused.body.error).toBe("pii_budget_exceeded");
    const alert = t.s.alerts.list().find((a) => a.kind === "pii_budget_exceeded");
    expect(alert?.severity).toBe("critical");
    expect(JSON.parse(alert?.details ?? "{}")).toMatchObject({ principal: "admin", window: "1h" });
    // The same (perhaps stolen) session stays refused however long it waits: only a fresh sign-in
    // with the passkey re-arms the budget.
    t.clock.advance(55 * 60_000);
    expect((await get(`/api/v1/admin/members/${ids[5]}?reason=again`)).status).toBe(429);
    t.clock.advance(1000);
    const stale = admin;
    const adminId = t.s.db.$client
      .prepare("SELECT id FROM members WHERE login_id = 'ops.admin'")
      .pluck()
      .get() as string;
    admin = await adminPasskeySession(t, auth);
    expect((await get(`/api/v1/admin/members/${ids[5]}?reason=again`)).status).toBe(200);
    expect((await get(`/api/v1/admin/members/${ids[6]}?reason=again`)).status).toBe(200);
    // The session that ran into the block stays refused, even now that the admin re-armed it.
    expect((await get(`/api/v1/admin/members/${ids[6]}?reason=again`, stale)).status).toBe(429);
    // A fresh sign-in re-arms the hour, not the day: past the day's budget (8 here), signing in
    // again doesn't buy another day's worth of reads (an admin's own passkey included).
    for (let i = 7; i < 9; i++) ids.push((await register(t.app, { login_id: `member.${i}` })).body.member_id);
    expect((await get(`/api/v1/admin/members/${ids[7]}?reason=again`)).status).toBe(200);
    expect((await get(`/api/v1/admin/members/${ids[8]}?reason=again`)).status).toBe(429);
    t.clock.advance(1000);
    admin = await adminPasskeySession(t, auth);
    expect((await get(`/api/v1/admin/members/${ids[8]}?reason=again`)).status).toBe(429);
    // And a restart (new services on the same database) lifts nothing.
    const again = new PiiBudgets({
      clock: t.clock,
      alerts: t.s.alerts,
      db: t.s.db,
      limits: t.s.budgets.limits,
    });
    expect(() => again.charge({ kind: "admin", id: adminId }, ["m_x"], { freshSince: 0 })).toThrow(
      /pii_budget_exceeded/,
    );
  });

  it("a member site past its budget gets no profile claims and an alert, until an admin approves it", async () => {
    const client = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals }).add({
      name: "site",
      redirectUris: ["https://site.example/cb"],
    });
    const id = (await register(t.app, { login_id: "taro.claims" })).body.member_id as string;
    const next = (await register(t.app, { login_id: "jiro.claims" })).body.member_id as string;
    const read = (member = id) =>
      t.s.vault.read(member, ["email"], { actorType: "client", actorId: client.clientId, reason: "test" });
    t.s.budgets.charge(
      { kind: "client", id: client.clientId },
      Array.from({ length: t.s.budgets.limits.clientHour - 1 }, (_, i) => `m_other${i}`),
    );
    expect(read().email).toBe(PROFILE.email);
    // Reading the same member again reads no one new: the budget counts members, not reads.
    expect(read().email).toBe(PROFILE.email);
    expect(t.s.budgets.status({ kind: "client", id: client.clientId }).readLastHour).toBe(
      t.s.budgets.limits.clientHour,
    );
    expect(() => read(next)).toThrow(/pii_budget_exceeded/);
    // Once refused, refused for every member, the ones read before too.
    expect(() => read()).toThrow(/pii_budget_exceeded/);
    expect(t.s.alerts.list().some((a) => a.kind === "pii_budget_exceeded")).toBe(true);
    const approved = await post(
      t.app,
      `/api/v1/admin/clients/${client.clientId}/pii-approval`,
      { reason: "checked with the site's operator" },
      admin,
    );
    expect(approved.body).toEqual({ client_id: client.clientId, was_blocked: true });
    expect(read().email).toBe(PROFILE.email);
    // The other admins hear of every approval; the approving admin doesn't see it as an alert.
    const raised = t.s.alerts.list().filter((a) => a.kind === "pii_budget_approved");
    expect(raised).toHaveLength(1);
    expect(JSON.parse(raised[0]?.details ?? "{}")).toMatchObject({
      client_id: client.clientId,
      reason: "checked with the site's operator",
    });
    const shown = await get("/api/v1/admin/alerts");
    expect(shown.body.alerts.some((a: { kind: string }) => a.kind === "pii_budget_approved")).toBe(false);
    // Attack: an insider approving a site still within its budget, after every few reads, to
    // start its counts over. Refused, and the counts stay.
    const before = t.s.budgets.status({ kind: "client", id: client.clientId });
    const again = await post(
      t.app,
      `/api/v1/admin/clients/${client.clientId}/pii-approval`,
      { reason: "just because" },
      admin,
    );
    expect(again.status).toBe(409);
    expect(again.body.error).toBe("not_blocked");
    expect(t.s.budgets.status({ kind: "client", id: client.clientId })).toEqual(before);
    expect(before.readLastHour).toBeGreaterThan(0);
    expect(t.s.alerts.list().filter((a) => a.kind === "pii_budget_approved")).toHaveLength(1);
    // A site that isn't registered is no site to approve (not a silent "was not blocked").
    const unknown = await post(
      t.app,
      "/api/v1/admin/clients/c_noSuchSiteAAAAAA/pii-approval",
      { reason: "typo" },
      admin,
    );
    expect(unknown.status).toBe(404);
  });

  it("budgets count distinct members: rereads are free, but a walker is stopped by the hour and then by the day", () => {
    const budgets = new PiiBudgets({
      clock: t.clock,
      alerts: t.s.alerts,
      db: t.s.db,
      limits: { clientHour: 3, clientDay: 5 },
    });
    const site = { kind: "client" as const, id: "c_walker" };
    const read = (...ids: string[]) => budgets.charge(site, ids);
    // One member read over and over (a site refreshing its member's tokens) is one member.
    for (let i = 0; i < 20; i++) {
      read("m_1");
      t.clock.advance(60_000);
    }
    expect(budgets.status(site)).toMatchObject({ readLastHour: 1, readLastDay: 1, blocked: false });
    read("m_2", "m_3");
    expect(() => read("m_4")).toThrow(/pii_budget_exceeded/); // the fourth member this hour
    expect(t.s.alerts.list().find((a) => a.kind === "pii_budget_exceeded")?.details).toMatch(/"window":"1h"/);
    // An admin approves; two hours later the same three again count towards the hour, not the day…
    budgets.approve(site);
    read("m_1", "m_2", "m_3");
    t.clock.advance(2 * 3_600_000);
    read("m_1", "m_2", "m_3");
    expect(budgets.status(site)).toMatchObject({ readLastHour: 3, readLastDay: 3 });
    // …and two new members fill the day; the sixth distinct member of the day is refused.
    t.clock.advance(2 * 3_600_000);
    read("m_4", "m_5");
    expect(budgets.status(site)).toMatchObject({ readLastHour: 2, readLastDay: 5 });
    expect(() => read("m_6")).toThrow(/pii_budget_exceeded/);
  });

  it("an admin reading as fast as the budget allows, around midnight UTC, never gets past 30 an hour or 100 in any 24 hours", () => {
    const budgets = new PiiBudgets({ clock: t.clock, alerts: t.s.alerts, db: t.s.db, limits: {} });
    const reader = { kind: "admin" as const, id: "m_patient" };
    // Start at 20:00 UTC: the fixed-window estimate this replaced let 149 through in 24 hours.
    const start = Date.UTC(2026, 11, 5, 20, 0, 0);
    t.clock.set(new Date(start));
    const reads: number[] = [];
    for (let minute = 0; minute < 48 * 60; minute++) {
      const now = t.clock.now().getTime();
      const s = budgets.status(reader);
      // Read a new member whenever the budget still says there is room (never past it: no block).
      if (s.readLastHour < budgets.limits.adminHour && s.readLastDay < budgets.limits.adminDay) {
        budgets.charge(reader, [`m_${minute}`]);
        reads.push(now);
      }
      t.clock.advance(60_000);
    }
    const most = (window: number) =>
      Math.max(...reads.map((at) => reads.filter((r) => r >= at && r < at + window).length));
    expect(most(3_600_000)).toBe(30);
    expect(most(24 * 3_600_000)).toBe(100);
    expect(t.s.alerts.list().some((a) => a.kind === "pii_budget_exceeded")).toBe(false);
  });

  it("the budget's running counts agree with a count of every member's window, read after read", () => {
    const budgets = new PiiBudgets({
      clock: t.clock,
      alerts: t.s.alerts,
      db: t.s.db,
      limits: { clientHour: 1_000_000, clientDay: 1_000_000 },
    });
    const site = { kind: "client" as const, id: "c_many" };
    const HOUR_MS = 3_600_000;
    // The rule, written out plainly: a member's window stamp is renewed only once it has expired.
    const model = new Map<string, { hour: number; day: number }>();
    let seed = 7;
    const random = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let i = 0; i < 3000; i++) {
      t.clock.advance(random(6) * 60_000 + random(1000));
      const now = t.clock.now().getTime();
      const ids = Array.from({ length: 1 + random(3) }, () => `m_${random(400)}`);
      budgets.charge(site, ids);
      for (const id of ids) {
        const seen = model.get(id);
        model.set(id, {
          hour: seen && seen.hour > now - HOUR_MS ? seen.hour : now,
          day: seen && seen.day > now - 24 * HOUR_MS ? seen.day : now,
        });
      }
      const expected = { hour: 0, day: 0 };
      for (const seen of model.values()) {
        if (seen.hour > now - HOUR_MS) expected.hour++;
        if (seen.day > now - 24 * HOUR_MS) expected.day++;
      }
      const got = budgets.status(site);
      expect([got.readLastHour, got.readLastDay], `read ${i}`).toEqual([expected.hour, expected.day]);
    }
  });

  it("no fifth member in 24 hours under a day budget of four, even when re-reads keep members in the hour; a clock stepped back leaves no count behind", () => {
    const HOUR_MS = 3_600_000;
    const start = Date.UTC(2026, 11, 1);
    t.clock.set(new Date(start));
    const budgets = new PiiBudgets({
      clock: t.clock,
      alerts: t.s.alerts,
      db: t.s.db,
      limits: { adminHour: 3, adminDay: 4, clientHour: 5, clientDay: 5 },
    });
    const admin = { kind: "admin" as const, id: "m_evict" };
    const at = (h: number, ...ids: string[]) => {
      t.clock.set(new Date(start + h * HOUR_MS));
      budgets.charge(admin, ids);
    };
    at(0, "A", "B");
    at(2, "C");
    at(3, "D");
    at(23.5, "A", "B"); // re-read: a new hour stamp, the day's stays
    at(24.01, "E"); // A's and B's day stamps are gone: C, D and E are the last 24 hours' three
    expect(() => at(24.5, "F", "G")).toThrow(/pii_budget_exceeded/); // F and G would be the fifth and sixth
    // A clock stepped back (NTP, a restored VM) must not leave stamps the totals never give back.
    const site = { kind: "client" as const, id: "c_clock" };
    let base = start + 10 * 24 * HOUR_MS;
    for (let k = 0; k < 6; k++) {
      t.clock.set(new Date(base + 10_000));
      budgets.charge(site, [`x${k}`]);
      t.clock.set(new Date(base + 5_000)); // 5 s back
      budgets.charge(site, [`y${k}`]);
      t.clock.set(new Date(base + 5_000 + 24 * HOUR_MS + 1));
      budgets.charge(site, [`y${k}`]);
      base += 3 * 24 * HOUR_MS;
      t.clock.set(new Date(base));
      expect(budgets.status(site), `cycle ${k}`).toMatchObject({
        readLastHour: 0,
        readLastDay: 0,
        blocked: false,
      });
    }
  });

  it("reset-mfa removes every factor, ends every session and tells the member; it needs a reason", async () => {
    const id = (await register(t.app, { login_id: "taro.lostphone" })).body.member_id as string;
    const cookie = await signIn(t.app, "taro.lostphone");
    await post(t.app, "/api/v1/me/totp", {}, cookie);
    t.s.db.$client
      .prepare("UPDATE totp_factors SET secret = pending_secret, enabled_at = 1 WHERE member_id = ?")
      .run(id);
    expect(t.s.factors.of(id).enrolled).toBe(true);
    expect((await post(t.app, `/api/v1/admin/members/${id}/reset-mfa`, {}, admin)).status).toBe(400);
    const done = await post(
      t.app,
      `/api/v1/admin/members/${id}/reset-mfa`,
      { reason: "lost phone, ID checked" },
      admin,
    );
    expect(done.status).toBe(200);
    expect(done.body).toMatchObject({ factors_removed: 1, sessions_revoked: 1 });
    expect(t.s.factors.of(id).enrolled).toBe(false);
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).status).toBe(401);
    const fresh = await signIn(t.app, "taro.lostphone");
    const events = (await supertest(t.app).get("/api/v1/me/events").set("Cookie", fresh)).body.events;
    expect(events.map((e: { type: string }) => e.type)).toContain("mfa.reset_by_admin");
    // The member sees that support did it, not the admin's note or network.
    const reset = events.find((e: { type: string }) => e.type === "mfa.reset_by_admin");
    expect(reset).toMatchObject({ reason: null, ip: null });
    expect(JSON.stringify(events)).not.toContain("lost phone");
    const page = await supertest(t.app).get("/account").set("Cookie", fresh);
    expect(page.text).not.toContain("lost phone");
    expect(await t.s.mailer.runDue()).toBeGreaterThan(0);
  });

  it("require-password-reset: the password stops signing in, the member is mailed a link, and setting a new one clears it", async () => {
    const id = (await register(t.app, { login_id: "taro.forced" })).body.member_id as string;
    const cookie = await signIn(t.app, "taro.forced");
    const done = await post(
      t.app,
      `/api/v1/admin/members/${id}/require-password-reset`,
      { reason: "password seen in a paste" },
      admin,
    );
    expect(done.body).toMatchObject({ mailed: true, sessions_revoked: 1 });
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).status).toBe(401);
    const refused = await post(t.app, "/api/v1/login", {
      login_id: "taro.forced",
      password: STRONG_PASSWORD,
    });
    expect(refused.status).toBe(403);
    expect(refused.body.error).toBe("password_reset_required");
    // a wrong password still answers exactly like any wrong password
    const wrong = await post(t.app, "/api/v1/login", {
      login_id: "taro.forced",
      password: "not the password 1",
    });
    expect(wrong.status).toBe(401);
    // the mailed link sets a new password (the admin never saw or set one)
    const token = t.s.db.$client
      .prepare(
        "SELECT count(*) FROM member_tokens WHERE member_id = ? AND purpose = 'reset_password' AND consumed_at IS NULL",
      )
      .pluck()
      .get(id);
    expect(token).toBe(1);
    const row = t.s.memberTokens;
    const issued = row.issue("reset_password", id, { emailIndex: t.s.vault.currentEmailIndex(id) });
    const reset = await post(t.app, "/api/v1/recovery/password/reset", {
      token: issued.token,
      password: "a completely new passphrase 7",
    });
    expect(reset.status).toBe(200);
    expect(
      (
        await post(t.app, "/api/v1/login", {
          login_id: "taro.forced",
          password: "a completely new passphrase 7",
        })
      ).status,
    ).toBe(200);
  });

  it("an admin's reset of another admin is refused, and an admin can't use a recovery code", async () => {
    const other = await t.s.registrations.register(
      { loginId: "other.admin", password: STRONG_PASSWORD, profile: {} },
      { ip: null, requestId: null },
      { role: "admin" },
    );
    const reset = await post(
      t.app,
      `/api/v1/admin/members/${other.memberId}/reset-mfa`,
      { reason: "takeover" },
      admin,
    );
    expect(reset.status).toBe(403);
    const forced = await post(
      t.app,
      `/api/v1/admin/members/${other.memberId}/require-password-reset`,
      { reason: "takeover" },
      admin,
    );
    expect(forced.status).toBe(403);
    // ops.admin has a passkey and recovery codes: the password plus a code buys nothing.
    const codes = t.s.factors.recovery.replace(
      t.s.db.$client.prepare("SELECT id FROM members WHERE login_id = 'ops.admin'").pluck().get() as string,
    );
    const step = await post(t.app, "/api/v1/login", { login_id: "ops.admin", password: STRONG_PASSWORD });
    const viaCode = await post(t.app, "/api/v1/login/recovery-code", {
      mfa_token: step.body.mfa_token,
      code: codes[0],
    });
    expect(viaCode.status).toBe(403);
    expect(viaCode.headers["set-cookie"]).toBeUndefined();
  });

  it("a member lookup another site links to is not run: it can't spend the admin's PII budget", async () => {
    // Attack: a page sends the admin links to lookups (e-mail addresses shared by many decoy
    // registrations) to burn the admin's budget and set off a false alarm.
    await register(t.app, { login_id: "taro.linked" });
    const reads = () => [...t.s.audit.iterate()].filter((e) => e.action === "pii.read").length;
    const before = reads();
    const api = await get(`/api/v1/admin/members?email=${encodeURIComponent(PROFILE.email)}`).set(
      "Sec-Fetch-Site",
      "cross-site",
    );
    expect(api.status).toBe(403);
    expect(api.body.error).toBe("forbidden_origin");
    const page = await get(`/admin/members?q=${encodeURIComponent(PROFILE.email)}`).set(
      "Sec-Fetch-Site",
      "cross-site",
    );
    expect(page.status).toBe(200);
    expect(page.text).toContain("別のサイトから開かれた検索は、自動では実行しません。");
    expect(page.text).not.toContain("taro.linked");
    expect(reads()).toBe(before);
    // From the console itself (same origin) or a tool without Fetch Metadata, the lookup runs.
    const own = await get(`/admin/members?q=${encodeURIComponent(PROFILE.email)}`).set(
      "Sec-Fetch-Site",
      "same-origin",
    );
    expect(own.text).toContain("taro.linked");
    expect((await get(`/api/v1/admin/members?login_id=taro.linked`)).body.members).toHaveLength(1);
  });

  it("revoke-sessions ends a member's sessions; the audit API lists it and the chain verifies", async () => {
    const id = (await register(t.app, { login_id: "taro.revoke" })).body.member_id as string;
    const cookie = await signIn(t.app, "taro.revoke");
    const device = t.s.devices.issue(id, "browser"); // as a sign-in with a second factor leaves
    const done = await post(
      t.app,
      `/api/v1/admin/members/${id}/revoke-sessions`,
      { reason: "suspicious" },
      admin,
    );
    expect(done.body.sessions_revoked).toBe(1);
    // The device the member signed in on is no longer trusted (its cookie may have gone with the session).
    expect(done.body.devices_revoked).toBe(1);
    expect(t.s.devices.recognise(device.token, id)).toBeNull();
    expect((await supertest(t.app).get("/api/v1/me").set("Cookie", cookie)).status).toBe(401);
    const entries = await get(`/api/v1/admin/audit?member_id=${id}`);
    expect(entries.body.entries[0]).toMatchObject({
      action: "admin.member_sessions_revoked",
      reason: "suspicious",
    });
    const verify = await get("/api/v1/admin/audit/verify");
    expect(verify.body).toMatchObject({ ok: true });
    // Attack: edit an entry; the admin API names it.
    const seq = entries.body.entries[0].seq as number;
    t.s.db.$client.exec("DROP TRIGGER IF EXISTS audit_log_no_update");
    t.s.db.$client.prepare("UPDATE audit_log SET reason = 'routine' WHERE seq = ?").run(seq);
    const broken = await get("/api/v1/admin/audit/verify");
    expect(broken.body.ok).toBe(false);
    expect(broken.body.first_bad.seq).toBe(seq);
  });

  it("the console's audit page lists nothing under a filter it can't use, instead of the whole log", async () => {
    const all = await get("/admin/audit");
    expect(all.status).toBe(200);
    expect(all.text).toMatch(/<tr><td>\d+<\/td>/);
    const bad = await get("/admin/audit?member_id=zzz");
    expect(bad.status).toBe(400);
    expect(bad.text).toContain("入力内容を確認してください");
    expect(bad.text).toContain('value="zzz"');
    expect(bad.text).not.toMatch(/<tr><td>\d+<\/td>/);
    // A filter given twice is bad too (it once dropped the filter and listed the whole log), as
    // are numbers written otherwise than in digits, in the console and the API alike.
    const id = (await register(t.app, { login_id: "taro.twice" })).body.member_id as string;
    const twice = await get(`/admin/audit?member_id=${id}&member_id=${id}`);
    expect(twice.status).toBe(400);
    expect(twice.text).not.toMatch(/<tr><td>\d+<\/td>/);
    expect((await get(`/api/v1/admin/audit?member_id=${id}&member_id=${id}`)).status).toBe(400);
    for (const n of ["1e2", "0x10", " 5", "5.0", "-1"]) {
      expect((await get(`/admin/audit?before=${encodeURIComponent(n)}`)).status, n).toBe(400);
      expect((await get(`/api/v1/admin/audit?limit=${encodeURIComponent(n)}`)).status, n).toBe(400);
    }
    expect((await get("/api/v1/admin/audit?limit=")).status).toBe(400);
    expect((await get("/api/v1/admin/audit?limit=5")).body.entries).toHaveLength(5);
    // A filter it doesn't know (a typo, another spelling, an operator) is refused, not ignored:
    // ignored, it answered the whole log as if filtered.
    for (const q of [`member=${id}`, `memberId=${id}`, "actoin=login.password", "member_id[$ne]=x"]) {
      expect((await get(`/api/v1/admin/audit?${q}`)).status, q).toBe(400);
      const page = await get(`/admin/audit?${q}`);
      expect(page.status, q).toBe(400);
      expect(page.text).not.toMatch(/<tr><td>\d+<\/td>/);
    }
    // the console's language switch is no filter
    expect((await get("/admin/audit?lang=en")).status).toBe(200);
  });

  it("follows a principal through the audit log: what it did (actor_id), an action prefix, a time range, an IP", async () => {
    const adminId = (
      t.s.db.$client.prepare("SELECT id FROM members WHERE login_id = 'ops.admin'").get() as {
        id: string;
      }
    ).id;
    const id = (await register(t.app, { login_id: "taro.followed" })).body.member_id as string;
    const from = t.clock.now().toISOString();
    await get(`/api/v1/admin/members/${id}?reason=ticket%20123`);
    t.clock.advance(60_000);
    const until = t.clock.now().toISOString();
    t.clock.advance(60_000);
    await get(`/api/v1/admin/members/${id}?reason=ticket%20124`);
    // Entries *about* the admin are not what it did: actor_id lists the reads it made.
    const did = (await get(`/api/v1/admin/audit?actor_id=${adminId}&action=pii.read`)).body.entries;
    expect(did.length).toBe(2);
    expect(did.every((e: { actor_id: string }) => e.actor_id === adminId)).toBe(true);
    const about = (await get(`/api/v1/admin/audit?member_id=${adminId}&action=pii.read`)).body.entries;
    expect(about.filter((e: { actor_id: string | null }) => e.actor_id === adminId)).toHaveLength(0);
    // A prefix, a time range: only the first read falls in [from, until).
    const admins = (await get("/api/v1/admin/audit?action=admin.*&limit=500")).body.entries as Array<{
      action: string;
    }>;
    expect(admins.length).toBeGreaterThan(0);
    expect(admins.every((e) => e.action.startsWith("admin."))).toBe(true);
    const ranged = (
      await get(
        `/api/v1/admin/audit?actor_id=${adminId}&action=pii.read&since=${encodeURIComponent(from)}&until=${encodeURIComponent(until)}`,
      )
    ).body.entries;
    expect(ranged.map((e: { reason: string }) => e.reason)).toEqual(["ticket 123"]);
    // Minutes without seconds; an address however it is spelled (IPv4-mapped, upper case).
    const minutes = `${from.slice(0, 16)}Z`;
    expect((await get(`/api/v1/admin/audit?since=${minutes}&limit=1`)).status).toBe(200);
    // (each query adds an entry of its own: compare up to a fixed point with `before`)
    const head = (await get("/api/v1/admin/audit?limit=1")).body.entries[0].seq as number;
    const byIp = (await get(`/api/v1/admin/audit?ip=127.0.0.1&before=${head}&limit=500`)).body.entries;
    expect(byIp.length).toBeGreaterThan(0);
    const mapped = (
      await get(`/api/v1/admin/audit?ip=${encodeURIComponent("::FFFF:127.0.0.1")}&before=${head}&limit=500`)
    ).body.entries;
    expect(mapped).toEqual(byIp);
    // `_` is no wildcard in a prefix: log_n.* is not login.*.
    expect((await get("/api/v1/admin/audit?action=log_n.*")).body.entries).toHaveLength(0);
    // A bad value is named; a LIKE wildcard is no prefix.
    const bad = await get("/api/v1/admin/audit?since=yesterday");
    expect(bad.status).toBe(400);
    expect(bad.body.error_description).toContain("Check: since");
    // A day or time that doesn't exist is refused, not rolled over to another window.
    for (const when of [
      "2026-02-30T00:00Z",
      "2026-13-01T00:00Z",
      "2026-12-05T24:00Z",
      "2026-12-05T09:60Z",
      "2026-12-05T09:00+25:00",
    ]) {
      const wrong = await get(`/api/v1/admin/audit?since=${encodeURIComponent(when)}`);
      expect(wrong.status, when).toBe(400);
      expect(wrong.body.error_description).toContain("Check: since");
    }
    expect(
      (await get(`/api/v1/admin/audit?until=${encodeURIComponent("2028-02-29T23:59:59.999+09:00")}`)).status,
    ).toBe(200);
    expect((await get("/api/v1/admin/audit?action=%25")).status).toBe(400);
    expect((await get("/api/v1/admin/audit?action=login%25")).status).toBe(400);
    // The console's filters do the same.
    const page = await get(`/admin/audit?actor_id=${adminId}&action=pii.read`);
    expect(page.status).toBe(200);
    expect(page.text).toContain("ticket 124");
  });

  it("opening a member's page in the console is audited, though it shows no personal data", async () => {
    const id = (await register(t.app, { login_id: "taro.opened" })).body.member_id as string;
    const page = await get(`/admin/members/${id}`);
    expect(page.status).toBe(200);
    expect(page.text).toContain("taro.opened");
    const opened = [...t.s.audit.iterate()].filter((e) => e.action === "admin.member_opened");
    expect(opened).toHaveLength(1);
    expect(opened[0]).toMatchObject({ memberId: id, actorType: "admin" });
  });

  it("the console's policy form takes the grace period in digits only: blank, 1e2 or 0x10 change nothing", async () => {
    const save = (grace_days: string) =>
      supertest(t.app)
        .post("/admin/policy")
        .set("Origin", ORIGIN)
        .set("Cookie", admin)
        .type("form")
        .send({ mode: "required", grace_days, methods: "totp" });
    const before = t.s.policy.global();
    for (const bad of ["", "1e2", "0x10", " 7", "7.5", "-1", "366"]) {
      const res = await save(bad);
      expect(res.status, bad).toBe(400);
      expect(t.s.policy.global(), bad).toEqual(before);
    }
    expect((await save("21")).status).toBe(303);
    expect(t.s.policy.global()).toMatchObject({ mode: "required", graceDays: 21 });
  });

  it("members, and admins without a passkey sign-in, are refused by every new admin call", async () => {
    await register(t.app, { login_id: "plain.member" });
    const member = await signIn(t.app, "plain.member");
    const adminPassword = await post(t.app, "/api/v1/login", {
      login_id: "ops.admin",
      password: STRONG_PASSWORD,
    });
    expect(adminPassword.body.status).toBe("mfa_required"); // an admin's password alone is nothing
    for (const url of [
      "/api/v1/admin/members?login_id=x",
      "/api/v1/admin/audit",
      "/api/v1/admin/audit/verify",
    ]) {
      expect((await get(url, member)).status, url).toBe(403);
      expect((await get(url, "")).status, url).toBe(401);
    }
  });
});

describe("bulk-read detection: the slow exfiltration below every budget", () => {
  let t: TestApp;
  afterEach(() => t.close());

  it("a stolen admin session reading three members an hour for days raises bulk_read_suspected", async () => {
    t = makeApp();
    const { auth } = await adminWithPasskey(t);
    const ids: string[] = [];
    for (let i = 0; i < 170; i++) {
      ids.push(
        (
          await t.s.registrations.register(
            {
              loginId: `victim.${i}`,
              password: "a long enough password 123",
              profile: { email: `v${i}@example.jp` },
            },
            { ip: null, requestId: null },
          )
        ).memberId,
      );
    }
    let hour = 0;
    let alertedAtHour: number | null = null;
    while (ids.length > 0 && hour < 60) {
      // The thief keeps the session alive (signing in again as needed) and reads a few an hour:
      // never near the budgets (30 an hour, 100 a day).
      const cookie = await adminPasskeySession(t, auth);
      for (const id of ids.splice(0, 3)) {
        const res = await supertest(t.app)
          .get(`/api/v1/admin/members/${id}?reason=routine+check`)
          .set("Cookie", cookie);
        expect(res.status).toBe(200);
      }
      if (alertedAtHour === null && t.s.alerts.list().some((a) => a.kind === "bulk_read_suspected"))
        alertedAtHour = hour;
      t.clock.advance(3_600_000);
      hour++;
    }
    expect(t.s.alerts.list().some((a) => a.kind === "pii_budget_exceeded")).toBe(false);
    expect(alertedAtHour).not.toBeNull();
    expect(alertedAtHour).toBeLessThanOrEqual(51); // past 150 distinct members in the week
    const alert = t.s.alerts.list().find((a) => a.kind === "bulk_read_suspected");
    expect(alert?.severity).toBe("critical");
    const details = JSON.parse(alert?.details ?? "{}");
    expect(details.principal).toBe("admin");
    expect(details.distinct_members_7d).toBeGreaterThan(150);
    expect(details.distinct_members_7d).toBeLessThanOrEqual(153);
  });

  it("a member site reading far more distinct members than usual in a day raises it, below its budget", () => {
    t = makeApp();
    const read = (n: number, offset: number) =>
      t.s.budgets.charge(
        { kind: "client", id: "c_site" },
        Array.from({ length: n }, (_, i) => `m_${offset + i}`),
      );
    for (let day = 0; day < 8; day++) {
      for (let h = 0; h < 4; h++) read(50, day * 1000 + h * 50); // 200 distinct members a day, usual
      t.clock.advance(24 * 3_600_000);
    }
    expect(t.s.alerts.list().some((a) => a.kind === "bulk_read_suspected")).toBe(false);
    for (let h = 0; h < 8; h++) {
      read(90, 100_000 + h * 90); // 720 in a day: over 3× the usual, under the 2,000-an-hour budget
      t.clock.advance(3_600_000);
    }
    const alert = t.s.alerts.list().find((a) => a.kind === "bulk_read_suspected");
    expect(JSON.parse(alert?.details ?? "{}")).toMatchObject({
      principal: "client",
      principal_id: "c_site",
      usual_per_day: 200,
    });
  });
});

describe("admin console sign-in", () => {
  it("an admin's first password sign-in on /admin/login leads to adding a passkey, not to 'wrong password'", async () => {
    const t = makeApp();
    try {
      await t.s.registrations.register(
        { loginId: "new.admin", password: STRONG_PASSWORD, profile: {} },
        { ip: null, requestId: null },
        { role: "admin" },
      );
      const form = (login_id: string, password: string) =>
        supertest(t.app).post("/admin/login").set("Origin", ORIGIN).type("form").send({ login_id, password });
      const wrong = await form("new.admin", "not the password at all");
      expect(wrong.status).toBe(401);
      const right = await form("new.admin", STRONG_PASSWORD);
      expect(right.status, right.text).toBe(303);
      expect(right.headers.location).toBe("/account?lang=ja");
      const cookie = String(right.headers["set-cookie"]).match(/sekisho_session=[\w-]+/)?.[0] as string;
      expect(cookie).toBeTruthy();
      const page = await supertest(t.app).get("/account").set("Cookie", cookie);
      expect(page.status).toBe(200);
      expect(page.text).toContain("data-passkey-register");
    } finally {
      t.close();
    }
  });

  it("the console's passkey step switches language with the methods it offered (never recovery codes)", async () => {
    const t = makeApp();
    try {
      await adminWithPasskey(t);
      const step = await supertest(t.app)
        .post("/admin/login?lang=ja")
        .set("Origin", ORIGIN)
        .type("form")
        .send({ login_id: "ops.admin", password: STRONG_PASSWORD });
      expect(step.status).toBe(200);
      expect(step.text).toContain("data-passkey-mfa");
      const switchTo = langSwitchIn(step.text);
      expect(switchTo.action).toBe("/admin/mfa?lang=en");
      const english = await supertest(t.app)
        .post(switchTo.action)
        .set("Origin", ORIGIN)
        .type("form")
        .send(switchTo.fields);
      expect(english.status).toBe(200);
      expect(english.text).toContain('<html lang="en">');
      expect(english.text).toContain("data-passkey-mfa");
      expect(english.text).toContain(`data-mfa-token="${switchTo.fields.mfa_token}"`);
      expect(english.text).not.toContain('name="code"');
      // From another site the switch is refused like every other form post.
      const forged = await supertest(t.app)
        .post(switchTo.action)
        .set("Origin", "https://evil.example")
        .type("form")
        .send(switchTo.fields);
      expect(forged.status).toBe(403);
      expect(forged.text).not.toContain(switchTo.fields.mfa_token);
    } finally {
      t.close();
    }
  });
});
