import Database from "better-sqlite3";
import supertest from "supertest";
import { describe, expect, it, vi } from "vitest";
import { Clients, validateLogoUri, validateRedirectUri } from "../src/oidc/clients.js";
import { makeApp } from "./support/app.js";
import { runCli } from "./support/cli.js";

/** `sekisho clients add --name NAME --redirect-uri URI …extra` against the test app's data. */
const clientsAdd = (t: ReturnType<typeof makeApp>, name: string, redirectUri: string, ...extra: string[]) =>
  runCli(t, ["clients", "add", "--name", name, "--redirect-uri", redirectUri, ...extra]);

describe("client metadata kept in memory", () => {
  it("is read again once another process has changed the database", () => {
    const t = makeApp();
    vi.useFakeTimers({ toFake: ["performance"] });
    try {
      const clients = new Clients({ db: t.s.db, clock: t.clock, audit: t.s.audit });
      const { clientId } = clients.add({ name: "site", redirectUris: ["https://shop.example.jp/cb"] });
      expect(clients.metadata(clientId)?.redirect_uris).toEqual(["https://shop.example.jp/cb"]);
      expect(clients.metadata("c_made_up")).toBeUndefined();
      // Another process (an operator's tool) changes the client's redirect URIs.
      const other = new Database(t.s.config.dbFile);
      other
        .prepare("UPDATE oidc_clients SET redirect_uris = ? WHERE client_id = ?")
        .run(JSON.stringify(["https://new.example.jp/cb"]), clientId);
      other.close();
      vi.advanceTimersByTime(10);
      expect(clients.metadata(clientId)?.redirect_uris).toEqual(["https://new.example.jp/cb"]);
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
