import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { PROFILE, STRONG_PASSWORD } from "./support/app.js";
import { Jar } from "./support/browser-jar.js";
import { freePort, startServer } from "./support/server.js";

const ROOT = path.resolve(import.meta.dirname, "..");

/**
 * docs/integration.md's "Try it": the real server as `npm start` runs it, a site registered with
 * the CLI as the guide says, and examples/relying-party.mjs (openid-client) as the member site,
 * driven like a browser: sign in, the site's callback (code exchange, ID token validation,
 * UserInfo), refresh, sign out.
 */
describe("the example relying party against the real server", () => {
  it("signs a member in, shows their claims, refreshes and starts the logout, as integration.md says", async () => {
    const server = await startServer();
    const issuer = server.url;
    let rp: ChildProcess | undefined;
    try {
      const jar = new Jar();
      const api = (url: string, body: unknown) =>
        jar.fetch(`${issuer}${url}`, {
          method: "POST",
          headers: { "content-type": "application/json", origin: issuer },
          body: JSON.stringify(body),
        });
      expect(
        (
          await api("/api/v1/registrations", {
            login_id: "example.member",
            password: STRONG_PASSWORD,
            profile: PROFILE,
          })
        ).status,
      ).toBe(201);

      // The operator registers the site (integration.md, "Registering your site").
      const rpPort = await freePort();
      const base = `http://localhost:${rpPort}`;
      const added = spawnSync(
        process.execPath,
        [
          path.join(ROOT, "bin/sekisho.mjs"),
          "clients",
          "add",
          "--name",
          "Example member site",
          "--redirect-uri",
          `${base}/callback`,
          "--json",
        ],
        { env: server.env, encoding: "utf8" },
      );
      expect(added.status, added.stderr).toBe(0);
      const site = JSON.parse(added.stdout) as { client_id: string; client_secret: string };

      // The site's developer starts the example with what they were given. (PORT is the server's
      // and set here on purpose: the example must not take it.)
      rp = spawn(process.execPath, [path.join(ROOT, "examples/relying-party.mjs")], {
        env: {
          PATH: process.env.PATH ?? "",
          PORT: server.env.PORT as string,
          SEKISHO_ISSUER: issuer,
          CLIENT_ID: site.client_id,
          CLIENT_SECRET: site.client_secret,
          RP_PORT: String(rpPort),
        },
        stdio: ["ignore", "pipe", "pipe"],
      });
      const rpOutput: string[] = [];
      rp.stderr?.on("data", (c: Buffer) => rpOutput.push(String(c)));
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`example did not start: ${rpOutput.join("")}`)),
          20_000,
        );
        rp?.stdout?.on("data", (c: Buffer) => {
          if (String(c).includes("example member site on")) {
            clearTimeout(timer);
            resolve();
          }
        });
      });

      // The member is signed in at Sekisho; the site's "Sign in" goes there and comes back.
      expect(
        (await api("/api/v1/login", { login_id: "example.member", password: STRONG_PASSWORD })).status,
      ).toBe(200);
      const start = await jar.fetch(`${base}/login`);
      expect(start.status).toBe(302);
      const authorize = start.headers.get("location") as string;
      expect(authorize.startsWith(`${issuer}/oidc/auth?`)).toBe(true);
      const { url: callback } = await jar.follow(authorize, issuer);
      expect(callback.startsWith(`${base}/callback?`)).toBe(true);
      const back = await jar.fetch(callback);
      expect(back.status, await back.clone().text()).toBe(302);
      const home = await (await jar.fetch(`${base}/`)).text();
      expect(home).toContain("<h1>Signed in</h1>");
      expect(home).toContain("&quot;preferred_username&quot;: &quot;example.member&quot;");
      expect(home).toContain(`&quot;email&quot;: &quot;${PROFILE.email}&quot;`);
      expect(home).toContain(`&quot;iss&quot;: &quot;${issuer}&quot;`);

      // Refresh (rotating), then sign out: the site sends the browser to Sekisho's end-session page.
      const refreshed = await jar.fetch(`${base}/refresh`, { method: "POST", headers: { origin: base } });
      expect(refreshed.status).toBe(302);
      expect(await (await jar.fetch(`${base}/`)).text()).toContain("<h1>Signed in</h1>");
      const out = await jar.fetch(`${base}/logout`, { method: "POST", headers: { origin: base } });
      const endSession = out.headers.get("location") as string;
      expect(endSession.startsWith(`${issuer}/oidc/session/end?`)).toBe(true);
      const confirm = await jar.fetch(endSession);
      expect(confirm.status).toBe(200);
      expect(await confirm.text()).toContain('name="logout"');
      expect(await (await jar.fetch(`${base}/`)).text()).toContain("Sign in with Sekisho");
    } finally {
      rp?.kill("SIGTERM");
      server.proc.kill("SIGTERM");
      await server.exited;
      fs.rmSync(server.dir, { recursive: true, force: true });
    }
  }, 90_000);
});
