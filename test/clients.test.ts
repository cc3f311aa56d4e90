import Database from "better-sqlite3";
import { describe, expect, it, vi } from "vitest";
import { Clients, validateRedirectUri } from "../src/oidc/clients.js";
import { makeApp } from "./support/app.js";
import { runCli } from "./support/cli.js";

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
      const run = runCli(t, [
        "clients",
        "add",
        "--name",
        "会員サイト",
        "--redirect-uri",
        "https://shop.example.jp/cb",
        "--json",
      ]);
      expect(run.status, run.stderr).toBe(0);
      const out = JSON.parse(run.stdout) as { client_id: string; client_secret: string };
      expect(out.client_id).toMatch(/^c_[\w-]{16}$/);
      expect(out.client_secret).toMatch(/^[\w-]{43}$/); // 256 bits
      const row = t.s.db.$client.prepare("SELECT secret_hash FROM oidc_clients").get() as {
        secret_hash: string;
      };
      expect(row.secret_hash).not.toBe(out.client_secret);
      const pub = runCli(t, [
        "clients",
        "add",
        "--name",
        "App",
        "--redirect-uri",
        "http://localhost:5173/cb",
        "--public",
        "--json",
      ]);
      expect(Object.keys(JSON.parse(pub.stdout))).toEqual(["client_id"]);
      const bad = runCli(t, ["clients", "add", "--name", "X", "--redirect-uri", "http://shop.example.jp/cb"]);
      expect(bad.status).toBe(1);
      expect(bad.stderr).toMatch(/must be https/);
      expect(bad.stderr).not.toMatch(/\n\s+at /); // a message, not a stack trace
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
