import Database from "better-sqlite3";
import * as oidc from "openid-client";
import supertest from "supertest";
import { describe, expect, it, vi } from "vitest";
import { type ClientChanges, Clients, validateLogoUri, validateRedirectUri } from "../src/oidc/clients.js";
import { makeApp, type TestApp } from "./support/app.js";
import { runCli } from "./support/cli.js";
import { listenWithMember, memberSiteWithRefreshToken } from "./support/oidc.js";

/** `sekisho clients add --name NAME --redirect-uri URI …extra` against the test app's data. */
const clientsAdd = (t: ReturnType<typeof makeApp>, name: string, redirectUri: string, ...extra: string[]) =>
  runCli(t, ["clients", "add", "--name", name, "--redirect-uri", redirectUri, ...extra]);

describe("client metadata kept in memory", () => {
  it("is read again once another process has changed the database", () => {
    const t = makeApp();
    vi.useFakeTimers({ toFake: ["performance"] });
    try {
      const clients = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals });
      const { clientId } = clients.add({ name: "site", redirectUris: ["https://shop.example.jp/cb"] });
      expect(clients.metadata(clientId)?.redirect_uris).toEqual(["https://shop.example.jp/cb"]);
      expect(clients.metadata("c_made_up")).toBeUndefined();
      // Another process (the operator's command) changes the client's redirect URIs.
      const run = runCli(t, [
        "clients",
        "update",
        clientId,
        "--add-redirect-uri",
        "https://new.example.jp/cb",
        "--remove-redirect-uri",
        "https://shop.example.jp/cb",
      ]);
      expect(run.status, run.stderr).toBe(0);
      vi.advanceTimersByTime(10);
      expect(clients.metadata(clientId)?.redirect_uris).toEqual(["https://new.example.jp/cb"]);
      // Changed behind the service's back without the keyring (src/vault/seals.ts): no client.
      const other = new Database(t.s.config.dbFile);
      other
        .prepare("UPDATE oidc_clients SET redirect_uris = ? WHERE client_id = ?")
        .run(JSON.stringify(["https://evil.example/cb"]), clientId);
      other.close();
      vi.advanceTimersByTime(10);
      expect(clients.metadata(clientId)).toBeUndefined();
    } finally {
      vi.useRealTimers();
      t.close();
    }
  });
});

describe("sekisho clients add", () => {
  it("prints a client_id and, once, a secret that is stored only as a hash; public clients get none", () => {
    const t = makeApp();
    try {
      const run = clientsAdd(t, "会員サイト", "https://shop.example.jp/cb", "--json");
      expect(run.status, run.stderr).toBe(0);
      const out = JSON.parse(run.stdout) as { client_id: string; client_secret: string };
      expect(out.client_id).toMatch(/^c_[\w-]{16}$/);
      expect(out.client_secret).toMatch(/^[\w-]{43}$/); // 256 bits
      const row = t.s.db.$client.prepare("SELECT secret_hash FROM oidc_clients").get() as {
        secret_hash: string;
      };
      expect(row.secret_hash).not.toBe(out.client_secret);
      const pub = clientsAdd(t, "App", "http://localhost:5173/cb", "--public", "--json");
      expect(Object.keys(JSON.parse(pub.stdout))).toEqual(["client_id"]);
      const bad = clientsAdd(t, "X", "http://shop.example.jp/cb");
      expect(bad.status).toBe(1);
      expect(bad.stderr).toMatch(/must be https/);
      expect(bad.stderr).not.toMatch(/\n\s+at /); // a message, not a stack trace
    } finally {
      t.close();
    }
  });
});

describe("a site registered for the service API", () => {
  it("may ask for members:read without --scope when registered with --grant client_credentials; others may not", async () => {
    const t = makeApp();
    try {
      const add = (extra: string[]) => {
        const run = clientsAdd(t, "backend", "https://site.example/cb", ...extra, "--json");
        expect(run.status, run.stderr).toBe(0);
        return JSON.parse(run.stdout) as { client_id: string; client_secret: string };
      };
      const token = (c: { client_id: string; client_secret: string }) =>
        supertest(t.app)
          .post("/oidc/token")
          .auth(c.client_id, c.client_secret)
          .type("form")
          .send({ grant_type: "client_credentials", scope: "members:read" });
      const backend = add(["--grant", "client_credentials"]);
      const granted = await token(backend);
      expect(granted.status, granted.text).toBe(200);
      expect(granted.body.scope).toBe("members:read");
      // a sign-in-only site has no client-credentials grant at all
      expect((await token(add([]))).status).toBe(400);
      // an explicit --scope is what the operator chose
      const narrow = await token(add(["--grant", "client_credentials", "--scope", "openid"]));
      expect(narrow.status).toBe(400);
      expect(narrow.body.error).toBe("invalid_scope");
    } finally {
      t.close();
    }
  });
});

describe("a site's logo URI", () => {
  it("must be an absolute https URL (http for localhost only): a logo on the sign-in page never loads over plain http", () => {
    expect(validateLogoUri("https://shop.example.jp/logo.png")).toBeNull();
    expect(validateLogoUri("http://localhost:5173/logo.png")).toBeNull();
    expect(validateLogoUri("http://shop.example.jp/logo.png")).toMatch(/https/);
    expect(validateLogoUri("javascript:alert(1)")).toMatch(/https/);
    expect(validateLogoUri("/logo.png")).toMatch(/absolute/);
    expect(validateLogoUri("https://user:pw@shop.example.jp/logo.png")).toMatch(/user name/);
    const t = makeApp();
    try {
      const run = clientsAdd(
        t,
        "X",
        "https://shop.example.jp/cb",
        "--logo-uri",
        "http://shop.example.jp/logo.png",
      );
      expect(run.status).toBe(1);
      expect(run.stderr).toMatch(/logo URI .* must be https/);
      expect(t.s.db.$client.prepare("SELECT count(*) AS n FROM oidc_clients").get()).toEqual({ n: 0 });
    } finally {
      t.close();
    }
  });
});

describe("redirect URIs a site registers", () => {
  it("refuses what could never match or would widen the match: fragments, credentials, wildcards, unnormalised spellings", () => {
    for (const uri of [
      "https://shop.example.jp/cb#",
      "https://shop.example.jp/cb#x",
      "https://user:pass@shop.example.jp/cb",
      "https://evil.example@shop.example.jp/cb",
      "https://*.example.jp/cb",
      "HTTPS://SHOP.EXAMPLE.JP/cb",
      "https://shop.example.jp:443/cb",
      "https://shop.example.jp/a/../cb",
      "https://shop.example.jp",
      "http://shop.example.jp/cb",
      "/cb",
    ]) {
      expect(validateRedirectUri(uri), uri).not.toBeNull();
    }
    for (const uri of [
      "https://shop.example.jp/cb",
      "https://shop.example.jp/cb?site=1",
      "https://shop.example.jp:8443/auth/callback",
      "http://localhost:5173/cb",
      "http://127.0.0.1:4000/cb",
    ]) {
      expect(validateRedirectUri(uri), uri).toBeNull();
    }
  });
});

describe("a member site's lifecycle: list, update, rotate-secret, remove", () => {
  /** POST to the introspection endpoint as the client: 200 with a working secret, 401 otherwise. */
  const introspect = (t: TestApp, clientId: string, secret: string, token: string) =>
    supertest(t.app).post("/oidc/token/introspection").auth(clientId, secret).type("form").send({ token });
  const json = (run: { status: number | null; stdout: string; stderr: string }) => {
    expect(run.status, run.stderr).toBe(0);
    return JSON.parse(run.stdout);
  };
  /** A code request for the site with this redirect URI: 400 (error page) or a redirect to sign-in. */
  const authorizeWith = (t: TestApp, clientId: string, redirectUri: string) =>
    supertest(t.app).get("/oidc/auth").query({
      client_id: clientId,
      redirect_uri: redirectUri,
      response_type: "code",
      scope: "openid",
      code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
      code_challenge_method: "S256",
    });

  it("rotate-secret refuses the old secret at once, or only after --keep-old-for (clock moved, not slept)", async () => {
    const listening = await listenWithMember("rotate.member");
    const { t } = listening;
    try {
      const sub = (t.s.db.$client.prepare("SELECT sub FROM members").get() as { sub: string }).sub;
      const { site, refreshToken } = await memberSiteWithRefreshToken(listening, sub, "openid");
      const old = site.clientSecret as string;
      expect((await introspect(t, site.clientId, old, refreshToken)).status).toBe(200);
      // A leaked secret: replaced, and the old one is refused from now on.
      const leaked = json(runCli(t, ["clients", "rotate-secret", site.clientId, "--json"]));
      expect(leaked.old_secret_until).toBeNull();
      expect((await introspect(t, site.clientId, old, refreshToken)).status).toBe(401);
      expect((await introspect(t, site.clientId, leaked.client_secret, refreshToken)).status).toBe(200);
      // A planned change: the replaced secret works 30 more minutes, then no longer.
      const planned = json(
        runCli(t, ["clients", "rotate-secret", site.clientId, "--keep-old-for", "30", "--json"]),
      );
      expect((await introspect(t, site.clientId, leaked.client_secret, refreshToken)).status).toBe(200);
      expect((await introspect(t, site.clientId, planned.client_secret, refreshToken)).status).toBe(200);
      expect((await introspect(t, site.clientId, old, refreshToken)).status).toBe(401);
      t.clock.advance(31 * 60_000);
      expect((await introspect(t, site.clientId, leaked.client_secret, refreshToken)).status).toBe(401);
      expect((await introspect(t, site.clientId, planned.client_secret, refreshToken)).status).toBe(200);
      // Only hashes are stored; the rotations are on record, without secrets.
      const row = t.s.db.$client.prepare("SELECT * FROM oidc_clients").get() as Record<string, unknown>;
      expect(JSON.stringify(row)).not.toContain(planned.client_secret);
      expect(JSON.stringify(row)).not.toContain(leaked.client_secret);
      const rotations = [...t.s.audit.iterate()].filter((e) => e.action === "client.secret_rotated");
      expect(rotations).toHaveLength(2);
      expect(JSON.stringify(rotations)).not.toContain(planned.client_secret);
      // A public client has no secret to rotate; a week is the longest overlap.
      const pub = json(clientsAdd(t, "App", "http://localhost:5173/cb", "--public", "--json"));
      expect(runCli(t, ["clients", "rotate-secret", pub.client_id]).stderr).toMatch(/public client/);
      const tooLong = runCli(t, ["clients", "rotate-secret", site.clientId, "--keep-old-for", "20000"]);
      expect(tooLong.status).toBe(1);
      expect((await introspect(t, site.clientId, planned.client_secret, refreshToken)).status).toBe(200);
    } finally {
      await listening.close();
    }
  });

  it("rotate-secret ends the client-credentials tokens minted with the old secret (unless the old one is kept)", async () => {
    const t = makeApp();
    try {
      const backend = json(
        clientsAdd(t, "backend", "https://site.example/cb", "--grant", "client_credentials", "--json"),
      );
      const mint = async (secret: string) =>
        (
          await supertest(t.app)
            .post("/oidc/token")
            .auth(backend.client_id, secret)
            .type("form")
            .send({ grant_type: "client_credentials", scope: "members:read" })
        ).body.access_token as string;
      const serviceApi = (token: string) =>
        supertest(t.app).get("/api/v1/members/some-sub").set("Authorization", `Bearer ${token}`);
      const minted = await mint(backend.client_secret);
      expect((await serviceApi(minted)).status).toBe(404); // a valid token; no such member
      const planned = json(
        runCli(t, ["clients", "rotate-secret", backend.client_id, "--keep-old-for", "10", "--json"]),
      );
      expect(planned.client_credentials_tokens_revoked).toBe(0); // the old secret is still in use
      expect((await serviceApi(minted)).status).toBe(404);
      const leaked = json(runCli(t, ["clients", "rotate-secret", backend.client_id, "--json"]));
      expect(leaked.client_credentials_tokens_revoked).toBe(1);
      expect((await serviceApi(minted)).status).toBe(401);
      expect((await serviceApi(await mint(leaked.client_secret))).status).toBe(404);
    } finally {
      t.close();
    }
  });

  it("update edits redirect URIs (a removed one gets the error page), logo and scopes, and refuses what add refuses", async () => {
    const t = makeApp();
    try {
      const site = json(clientsAdd(t, "Shop", "https://shop.example.jp/cb", "--json"));
      const update = (...args: string[]) => runCli(t, ["clients", "update", site.client_id, ...args]);
      expect((await authorizeWith(t, site.client_id, "https://shop.example.jp/new-cb")).status).toBe(400);
      const updated = json(
        update(
          "--add-redirect-uri",
          "https://shop.example.jp/new-cb",
          "--remove-redirect-uri",
          "https://shop.example.jp/cb",
          "--name",
          "Shop (new)",
          "--logo-uri",
          "https://shop.example.jp/logo.png",
          "--add-scope",
          "members:read",
          "--json",
        ),
      );
      expect(updated.redirect_uris).toEqual(["https://shop.example.jp/new-cb"]);
      expect(updated.scope.split(" ")).toContain("members:read");
      expect(updated.logo_uri).toBe("https://shop.example.jp/logo.png");
      const now = await authorizeWith(t, site.client_id, "https://shop.example.jp/new-cb");
      expect(now.status).toBe(303);
      // The removed address is refused with the error page, never redirected to.
      const removed = await authorizeWith(t, site.client_id, "https://shop.example.jp/cb");
      expect(removed.status).toBe(400);
      expect(removed.headers.location).toBeUndefined();
      // Refused, and nothing changed: a plain-http address, the last address, one not registered,
      // an unknown scope or client, a logo over http (the CLI says why, without a stack trace).
      const run = update("--add-redirect-uri", "http://shop.example.jp/cb");
      expect(run.status).toBe(1);
      expect(run.stderr).toMatch(/^sekisho: redirect URI http:\/\/shop.example.jp\/cb must be https/m);
      const clients = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit, seals: t.s.seals });
      for (const [changes, message] of [
        [{ removeRedirectUris: ["https://shop.example.jp/new-cb"] }, /at least one redirect URI/],
        [{ removeRedirectUris: ["https://shop.example.jp/other"] }, /is not registered/],
        [{ addScopes: ["admin"] }, /unknown scope admin/],
        [{ logoUri: "http://shop.example.jp/logo.png" }, /must be https/],
        [{ name: "  " }, /name is empty/],
      ] as Array<[ClientChanges, RegExp]>) {
        expect(() => clients.update(site.client_id, changes), message.source).toThrow(message);
      }
      expect(() => clients.update("c_madeUpAAAAAAAAAAAA", { name: "x" })).toThrow(/no client/);
      // add holds scopes to the same list (an unknown one would break the client at every request).
      expect(() =>
        clients.add({ name: "x", redirectUris: ["https://x.example/cb"], scope: "openid foo" }),
      ).toThrow(/unknown scope foo/);
      const [listed] = json(runCli(t, ["clients", "list", "--json"]));
      expect(listed).toMatchObject({ name: "Shop (new)", redirect_uris: ["https://shop.example.jp/new-cb"] });
      expect(JSON.stringify(listed)).not.toMatch(/secret_hash|client_secret"/);
      // --no-logo-uri takes the logo away; the changes are on record.
      expect(json(update("--no-logo-uri", "--json")).logo_uri).toBeNull();
      const changes = [...t.s.audit.iterate()].filter((e) => e.action === "client.updated");
      expect(changes).toHaveLength(2);
      expect(JSON.parse(changes[0]?.details ?? "{}")).toMatchObject({
        client_id: site.client_id,
        name: "Shop (new)",
      });
    } finally {
      t.close();
    }
  });

  it("remove ends everything issued to the site: its refresh and access tokens stop working and their rows are gone", async () => {
    const listening = await listenWithMember("remove.member");
    const { t } = listening;
    try {
      const sub = (t.s.db.$client.prepare("SELECT sub FROM members").get() as { sub: string }).sub;
      const { site, config, refreshToken } = await memberSiteWithRefreshToken(
        listening,
        sub,
        "openid profile",
      );
      const other = await memberSiteWithRefreshToken(listening, sub, "openid");
      const tokens = await oidc.refreshTokenGrant(config, refreshToken);
      expect((await oidc.fetchUserInfo(config, tokens.access_token, sub)).sub).toBe(sub);
      const removed = json(runCli(t, ["clients", "remove", site.clientId, "--json"]));
      expect(removed.revoked_rows).toBeGreaterThanOrEqual(3); // the grant, its refresh and access tokens
      await expect(oidc.fetchUserInfo(config, tokens.access_token, sub)).rejects.toThrow();
      await expect(oidc.refreshTokenGrant(config, tokens.refresh_token as string)).rejects.toThrow();
      expect((await introspect(t, site.clientId, site.clientSecret as string, refreshToken)).status).toBe(
        401,
      );
      // The other site's sign-in is untouched.
      expect((await oidc.refreshTokenGrant(other.config, other.refreshToken)).access_token).toBeTruthy();
      expect(
        json(runCli(t, ["clients", "list", "--json"])).map((c: { client_id: string }) => c.client_id),
      ).toEqual([other.site.clientId]);
      const entry = [...t.s.audit.iterate()].find((e) => e.action === "client.removed");
      expect(JSON.parse(entry?.details ?? "{}")).toMatchObject({ client_id: site.clientId });
      expect(runCli(t, ["clients", "remove", site.clientId]).stderr).toMatch(/no client/);
    } finally {
      await listening.close();
    }
  });
});
