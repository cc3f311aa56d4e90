import fs from "node:fs";
import supertest from "supertest";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { members, outbox } from "../src/db/schema.js";
import { checkChosenLoginId, resolveLoginInput } from "../src/members/login-id.js";
import { Clients } from "../src/oidc/clients.js";
import { adminPasskeySession, adminWithPasskey } from "./support/admin.js";
import { makeApp, ORIGIN, PROFILE, post, register, STRONG_PASSWORD, type TestApp } from "./support/app.js";
import { runCli } from "./support/cli.js";

describe("honeytokens: decoy members that raise the alarm when touched", () => {
  let t: TestApp;
  let decoys: string[];
  let real: string;

  beforeEach(async () => {
    t = makeApp({ SEKISHO_TRUST_PROXY: "loopback" });
    real = (await register(t.app, { login_id: "taro.real" })).body.member_id;
    const made = runCli(t, ["honeytokens", "add", "--count", "3", "--json"]);
    expect(made.status, made.stderr).toBe(0);
    decoys = (JSON.parse(made.stdout) as { login_ids: string[] }).login_ids;
    expect(decoys).toHaveLength(3);
  });
  afterEach(() => t.close());

  const decoyRow = (loginId: string) =>
    t.s.db
      .select()
      .from(members)
      .all()
      .find((m) => m.loginId === loginId) as typeof members.$inferSelect;
  const touches = () =>
    t.s.alerts
      .list()
      .filter((a) => a.kind === "honeytoken_touched")
      .map((a): Record<string, unknown> => ({ severity: a.severity, ...(JSON.parse(a.details) as object) }));

  it("are stored like every other member: nothing in the database tells them apart", () => {
    const rows = t.s.db.select().from(members).all();
    expect(rows).toHaveLength(4);
    for (const m of rows) {
      expect(m.id).toMatch(/^m_[A-Za-z0-9_-]{22}$/);
      expect(m.passwordHash).toMatch(/^\$argon2id\$/);
      expect(m.role).toBe("member");
    }
    const decoyIds = decoys.map((d) => decoyRow(d).id);
    expect(decoyIds.every((id) => t.s.honeytokens.isDecoy(id))).toBe(true);
    expect(t.s.honeytokens.isDecoy(real)).toBe(false);
    // login IDs as members choose them (or member numbers), valid by the same rules
    for (const d of decoys) expect(d).toMatch(/^[a-z0-9][a-z0-9._-]{3,31}$/);
    // no table or column names them; their profiles are ciphertexts like the real one's
    t.s.db.$client.pragma("wal_checkpoint(TRUNCATE)");
    const file = fs.readFileSync(t.s.config.dbFile, "latin1");
    expect(file).not.toMatch(/decoy/i);
    const tables = t.s.db.$client.prepare("SELECT name FROM sqlite_master").pluck().all() as string[];
    expect(tables.join(" ")).not.toMatch(/honey|decoy/i);
  });

  it("every decoy's login ID is one a member could have: sign-in looks it up (never a 400 that says nobody has it)", async () => {
    const ids = await t.s.decoys.add(80, { ip: null });
    for (const id of ids) {
      expect(resolveLoginInput(id), id).toBe(id);
      if (!/^[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{3}$/.test(id)) expect(checkChosenLoginId(id).ok, id).toBe(true);
    }
  }, 30_000);

  it("a sign-in attempt with a decoy's login ID fails like any wrong password and raises a critical alert with the address", async () => {
    const res = await post(t.app, "/api/v1/login", {
      login_id: decoys[0],
      password: "some guessed password",
    }).set("X-Forwarded-For", "203.0.113.66");
    const unknown = await post(t.app, "/api/v1/login", { login_id: "nobody.here", password: "x" });
    expect(res.status).toBe(401);
    expect(res.text).toBe(unknown.text);
    expect(touches()).toEqual([
      expect.objectContaining({
        severity: "critical",
        trigger: "sign_in",
        ip: "203.0.113.66",
        principal: "anonymous",
      }),
    ]);
  });

  it("an admin viewing or looking up a decoy raises an alert naming the admin", async () => {
    const { auth } = await adminWithPasskey(t);
    const admin = await adminPasskeySession(t, auth);
    const adminId = t.s.db
      .select()
      .from(members)
      .all()
      .find((m) => m.loginId === "ops.admin")?.id;
    const lookup = await supertest(t.app)
      .get(`/api/v1/admin/members?login_id=${decoys[1]}`)
      .set("Cookie", admin);
    expect(lookup.status).toBe(200);
    expect(lookup.body.members).toHaveLength(1); // shown like anyone else
    const decoyId = lookup.body.members[0].member_id as string;
    expect(touches()).toEqual([
      expect.objectContaining({
        trigger: "pii_read",
        principal: "admin",
        principal_id: adminId,
        reason: "admin_lookup_masked",
      }),
    ]);
    // The admin who touched it is not told (its console and API list no alert about itself);
    // another admin sees it, and marks it handled.
    const own = await supertest(t.app).get("/api/v1/admin/alerts").set("Cookie", admin);
    expect(own.body.alerts.filter((a: { kind: string }) => a.kind === "honeytoken_touched")).toHaveLength(0);
    const ownPage = await supertest(t.app).get("/admin/alerts").set("Cookie", admin);
    expect(ownPage.text).not.toContain("honeytoken_touched");
    for (const q of ["action=alert.raised", "action=alert.*", "limit=500"]) {
      const audit = await supertest(t.app).get(`/api/v1/admin/audit?${q}`).set("Cookie", admin);
      expect(JSON.stringify(audit.body), q).not.toContain("honeytoken_touched");
    }
    const other = await adminWithPasskey(t, "ops.second");
    const second = await adminPasskeySession(t, other.auth, "ops.second");
    const seen = (await supertest(t.app).get("/api/v1/admin/alerts").set("Cookie", second)).body.alerts.find(
      (a: { kind: string }) => a.kind === "honeytoken_touched",
    );
    expect(seen).toMatchObject({ acknowledged_at: null });
    const ack = (cookie: string, id: number) =>
      supertest(t.app)
        .post(`/api/v1/admin/alerts/${id}/acknowledge`)
        .set("Origin", ORIGIN)
        .set("Content-Type", "application/json")
        .set("Cookie", cookie)
        .send(JSON.stringify({ reason: "the admin's own ticket 77" }));
    expect((await ack(admin, seen.id)).status).toBe(404); // not its own alert
    const done = await ack(second, seen.id);
    expect(done.status).toBe(200);
    expect(done.body.acknowledged_at).toBeTruthy();
    const after = (await supertest(t.app).get("/api/v1/admin/alerts").set("Cookie", second)).body.alerts;
    expect(after.find((a: { id: number }) => a.id === seen.id).acknowledged_at).toBe(
      done.body.acknowledged_at,
    );
    expect([...t.s.audit.iterate()].some((e) => e.action === "admin.alert_acknowledged")).toBe(true);
    // …and the first admin doesn't learn of it from the acknowledgement's audit entry either.
    for (const q of ["action=admin.alert_acknowledged", "action=admin.*", "limit=500"]) {
      const audit = await supertest(t.app).get(`/api/v1/admin/audit?${q}`).set("Cookie", admin);
      expect(JSON.stringify(audit.body), q).not.toContain("ticket 77");
      expect(JSON.stringify(audit.body), q).not.toContain(`"alert_id":${seen.id},`);
    }
    // The other admin's audit view has the alert's entry; neither view names the decoy (anyone
    // can make such an alert: an admin would learn which members are decoys).
    const others = await supertest(t.app)
      .get("/api/v1/admin/audit?action=alert.raised")
      .set("Cookie", second);
    expect(JSON.stringify(others.body)).toContain("honeytoken_touched");
    expect(seen.details.decoy_member_id).toBe("[hidden]");
    // Nor the request or address that touched it, which the audit view would answer with the
    // entry naming the decoy.
    expect(seen.details).toMatchObject({ request_id: "[hidden]", ip: "[hidden]" });
    expect(JSON.stringify(others.body)).not.toContain(decoyId);
    // The entry's own request id and address columns too.
    const raised = others.body.entries.find(
      (e: { reason: string }) => e.reason === "honeytoken_touched",
    );
    expect(raised).toMatchObject({ request_id: "[hidden]", ip: "[hidden]" });
    expect((await supertest(t.app).get("/admin/alerts").set("Cookie", second)).text).not.toContain(decoyId);
    expect((await ack(second, 999_999)).status).toBe(404);
    // A support action whose mail reads a decoy's address (a required new password, an MFA reset)
    // is the admin's touch too: named as such, and so hidden from that admin as well.
    for (const action of ["require-password-reset", "reset-mfa"]) {
      t.clock.advance(11 * 60_000); // past the alert's repeat window
      const res = await post(
        t.app,
        `/api/v1/admin/members/${decoyId}/${action}`,
        { reason: "ticket 4712" },
        admin,
      );
      expect(res.status, action).toBe(200);
    }
    expect(touches().filter((d) => String(d.reason).startsWith("mail:"))).toEqual([
      expect.objectContaining({ principal: "admin", principal_id: adminId, reason: "mail:mfa_reset" }),
      expect.objectContaining({ principal: "admin", principal_id: adminId, reason: "mail:password_reset" }),
    ]);
    const mine = await supertest(t.app).get("/api/v1/admin/alerts").set("Cookie", admin);
    expect(mine.body.alerts.filter((a: { kind: string }) => a.kind === "honeytoken_touched")).toHaveLength(0);
  });

  it("a member site reading a decoy's claims, or anyone asking recovery for a decoy's address, raises an alert; no mail goes to a decoy", async () => {
    const client = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals }).add({
      name: "site",
      redirectUris: ["https://site.example/cb"],
    });
    const decoy = decoyRow(decoys[2] as string);
    const email = t.s.vault.read(decoy.id, ["email"], {
      actorType: "client",
      actorId: client.clientId,
      reason: "oidc_claims",
    }).email as string;
    expect(touches()[0]).toMatchObject({
      trigger: "pii_read",
      principal: "client",
      principal_id: client.clientId,
    });

    const asked = await post(t.app, "/api/v1/recovery/password", { email }).set(
      "X-Forwarded-For",
      "198.51.100.23",
    );
    expect(asked.status).toBe(202);
    await t.s.recovery.settled();
    expect(touches().map((x) => x.trigger)).toContain("email_lookup");
    expect(touches().find((x) => x.trigger === "email_lookup")?.ip).toBe("198.51.100.23");
    // Nothing is sent to a decoy (its address may be a real person's), yet its outbox row looks
    // like any sent message's.
    const rows = t.s.db
      .select()
      .from(outbox)
      .all()
      .filter((r) => r.memberId === decoy.id);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ status: "sent", message: null });
  });

  it("registering with a decoy's login ID is answered as for anyone's and raises the alarm with the address", async () => {
    // A decoy with a chosen-style login ID (member numbers can't be registered at all).
    let chosen = decoys.find((id) => checkChosenLoginId(id).ok);
    for (let i = 0; !chosen && i < 20; i++) {
      const more = JSON.parse(runCli(t, ["honeytokens", "add", "--count", "5", "--json"]).stdout) as {
        login_ids: string[];
      };
      chosen = more.login_ids.find((id) => checkChosenLoginId(id).ok);
    }
    const res = await post(t.app, "/api/v1/registrations", {
      login_id: chosen,
      password: STRONG_PASSWORD,
      profile: PROFILE,
    }).set("X-Forwarded-For", "198.51.100.44");
    expect(res.status, JSON.stringify(res.body)).toBe(409);
    expect(res.body.error).toBe("login_id_taken");
    await new Promise((r) => setImmediate(r)); // raised after the answer
    expect(touches()).toEqual([
      expect.objectContaining({ trigger: "registration", principal: "anonymous", ip: "198.51.100.44" }),
    ]);
    // A real member's taken ID raises nothing.
    const real409 = await register(t.app, { login_id: "taro.real" });
    expect(real409.status).toBe(409);
    expect(touches()).toHaveLength(1);
  });

  it("touching real members raises nothing", async () => {
    await post(t.app, "/api/v1/login", { login_id: "taro.real", password: "wrong password here" });
    t.s.vault.read(real, ["email"], { actorType: "client", actorId: "c_x", reason: "test" });
    expect(touches()).toEqual([]);
  });
});
