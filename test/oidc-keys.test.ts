import fs from "node:fs";
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from "jose";
import * as oidc from "openid-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SIGNING_KEY_LEAD_MS, signingPlan } from "../src/oidc/provider.js";
import { Keyring } from "../src/vault/keyring.js";
import { runCli } from "./support/cli.js";
import { type ListeningApp, listenWithMember, memberSiteWithRefreshToken } from "./support/oidc.js";

describe("ID-token signing keys rotated while the server runs", () => {
  let listening: ListeningApp;
  let sub: string;
  beforeAll(async () => {
    listening = await listenWithMember("keys.member");
    sub = listening.t.s.db.$client
      .prepare("SELECT sub FROM members WHERE login_id = 'keys.member'")
      .pluck()
      .get() as string;
  });
  afterAll(() => listening.close());

  /** A member site holding a refresh token for the member, as a code exchange leaves it. */
  async function memberSite() {
    const { config, refreshToken: first } = await memberSiteWithRefreshToken(listening, sub, "openid");
    let refreshToken = first;
    return {
      config,
      /** Refresh, and return the new ID token. */
      async idToken(): Promise<string> {
        const tokens = await oidc.refreshTokenGrant(config, refreshToken);
        refreshToken = tokens.refresh_token as string;
        return tokens.id_token as string;
      },
    };
  }

  /**
   * The CLI, run synchronously: the server's event loop stands still meanwhile, and its keep-alive
   * timers fire only afterwards. One turn of the loop lets both ends drop those connections
   * before the next request (else it may meet a reset).
   */
  const cli = async (args: string[]) => {
    const run = runCli(listening.t, args);
    await new Promise((resolve) => setTimeout(resolve, 50));
    return run;
  };

  const kids = async () => {
    const res = await fetch(`${listening.issuer}/oidc/jwks`);
    return ((await res.json()) as { keys: Array<{ kid: string }> }).keys.map((k) => k.kid);
  };

  it("retire-signing --all-old takes leaked old keys out of the JWKS at once: what they signed stops verifying", async () => {
    const { t, issuer } = listening;
    const site = await memberSite();
    expect((await cli(["keys", "rotate", "--json"])).status).toBe(0);
    t.clock.advance(2_000);
    const signedByOld = await site.idToken(); // within the new key's lead time: an old key signs
    const active = Keyring.parse(fs.readFileSync(t.s.config.keyringFile, "utf8"), "file").signingKeys.find(
      (k) => k.active,
    )?.kid as string;
    expect(decodeProtectedHeader(signedByOld).kid).not.toBe(active);
    // The active key can't be retired.
    const refused = await cli(["keys", "retire-signing", "--kid", active]);
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toMatch(/active signing key/);
    const run = await cli(["keys", "retire-signing", "--all-old", "--json"]);
    expect(run.status, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout).published).toEqual([active]);
    t.clock.advance(2_000);
    expect(await kids()).toEqual([active]);
    // The one key left signs at once, and a token from a retired key no longer verifies.
    const fresh = await site.idToken();
    expect(decodeProtectedHeader(fresh).kid).toBe(active);
    const jwks = createRemoteJWKSet(new URL(`${issuer}/oidc/jwks`));
    await expect(jwtVerify(fresh, jwks, { issuer })).resolves.toBeTruthy();
    await expect(jwtVerify(signedByOld, jwks, { issuer })).rejects.toThrow();
    expect([...t.s.audit.iterate()].some((e) => e.action === "keys.signing_retired")).toBe(true);
  });

  it("publishes a key added by `keys rotate` at once and signs with it after the lead time, no restart; old ID tokens still verify", async () => {
    const { t, issuer } = listening;
    const site = await memberSite();
    const before = await site.idToken();
    const oldKid = decodeProtectedHeader(before).kid;
    expect(await kids()).toEqual([oldKid]);

    const run = await cli(["keys", "rotate", "--json"]);
    expect(run.status, run.stderr).toBe(0);
    const newKey = Keyring.parse(fs.readFileSync(t.s.config.keyringFile, "utf8"), "file").signingKeys.find(
      (k) => k.active,
    );
    const newKid = newKey?.kid;
    // The server's store looks at the file at most once a second (its clock: the test's).
    t.clock.advance(2_000);
    expect(newKid).toBeDefined();
    expect(newKid).not.toBe(oldKid);

    // The running server (no restart) publishes the new key at once, and keeps signing with the
    // old one until the new one has been published for a while (member sites' JWKS caches).
    const during = await site.idToken();
    expect(decodeProtectedHeader(during).kid).toBe(oldKid);
    expect((await kids()).sort()).toEqual([newKid, oldKid].sort());
    // (The key was made by the CLI at the real time; the server's clock is the test's.)
    const signsFrom = Date.parse(newKey?.createdAt as string) + SIGNING_KEY_LEAD_MS;
    t.clock.advance(signsFrom - t.clock.now().getTime() - 1_000);
    expect(decodeProtectedHeader(await site.idToken()).kid).toBe(oldKid);
    t.clock.advance(1_000);
    const after = await site.idToken();
    expect(decodeProtectedHeader(after).kid).toBe(newKid);
    expect(await kids()).toEqual([newKid, oldKid]);
    // A member site verifying against the JWKS accepts the ID token from before the rotation and
    // the one after it.
    const jwks = createRemoteJWKSet(new URL(`${issuer}/oidc/jwks`));
    for (const token of [before, during, after]) {
      const { payload, protectedHeader } = await jwtVerify(token, jwks, { issuer, algorithms: ["ES256"] });
      expect(payload.sub).toBe(sub);
      expect(protectedHeader.alg).toBe("ES256");
    }
    // The public parts only.
    expect(JSON.stringify(await (await fetch(`${issuer}/oidc/jwks`)).json())).not.toMatch(/"d":/);
  });

  it("a keyring file broken on disk changes nothing: the keys in use keep signing, and an alert is raised", async () => {
    const { t } = listening;
    const site = await memberSite();
    const kid = decodeProtectedHeader(await site.idToken()).kid;
    const jwksBefore = await kids();
    const good = fs.readFileSync(t.s.config.keyringFile, "utf8");
    try {
      fs.writeFileSync(t.s.config.keyringFile, good.slice(0, good.length / 2)); // cut short
      t.clock.advance(2_000); // past the store's once-a-second look at the file
      expect(decodeProtectedHeader(await site.idToken()).kid).toBe(kid);
      expect(await kids()).toEqual(jwksBefore);
      // Member data keeps decrypting with the keys in memory.
      expect((await fetch(`${listening.issuer}/healthz`)).status).toBe(200);
      const alert = t.s.alerts.list().find((a) => a.kind === "keyring_unreadable");
      expect(alert?.severity).toBe("critical");
      expect(t.logs.join("")).toMatch(/keyring file unreadable/);
    } finally {
      fs.writeFileSync(t.s.config.keyringFile, good);
    }
    t.clock.advance(2_000);
    expect(decodeProtectedHeader(await site.idToken()).kid).toBe(kid);
  });

  it("signing plan: a first key signs at once; after two quick rotations the newest key past its lead time signs", () => {
    const t0 = Date.parse("2026-06-01T09:00:00Z");
    const order = (k: Keyring, at: number) => signingPlan(k, at).jwks.keys.map((j) => j.kid);
    const a = Keyring.generate(new Date(t0));
    expect(signingPlan(a, t0)).toMatchObject({ switchAt: null });
    const [kidA] = order(a, t0);
    const tb = t0 + 3_600_000;
    const b = a.rotated(new Date(tb));
    const kidB = b.signingKeys.find((k) => k.active)?.kid;
    const c = b.rotated(new Date(tb + 60_000));
    const kidC = c.signingKeys.find((k) => k.active)?.kid;
    // Two minutes after B: A (in every cache) still signs; B and C are published.
    expect(order(c, tb + 120_000)).toEqual([kidA, kidC, kidB]);
    expect(signingPlan(c, tb + 120_000).switchAt).toBe(tb + SIGNING_KEY_LEAD_MS);
    // B's lead time is over, C's not yet; then C's too.
    expect(order(c, tb + SIGNING_KEY_LEAD_MS)).toEqual([kidB, kidC, kidA]);
    expect(order(c, tb + 60_000 + SIGNING_KEY_LEAD_MS)).toEqual([kidC, kidB, kidA]);
    expect(signingPlan(c, tb + 60_000 + SIGNING_KEY_LEAD_MS).switchAt).toBeNull();
  });
});
