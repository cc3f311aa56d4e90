import { spawn } from "node:child_process";
import path from "node:path";
import { describe, expect, it } from "vitest";

const ROOT = path.resolve(import.meta.dirname, "..");

interface Ready {
  port: number;
  refreshTokens: string[];
  client: { id: string; secret: string };
}

/**
 * `npm run bench` isn't part of the suite (it measures, for minutes), so nothing else notices when
 * a change breaks the way a benchmark sets its server up: row seals once made the OIDC bench's
 * hand-written client row unusable, and the bench failed at its start. Here each OIDC bench
 * server starts as the bench starts it and answers one refresh grant as the bench asks for it.
 */
async function serve(kind: string): Promise<{ ready: Ready; stop: () => void }> {
  const child = spawn(
    process.execPath,
    ["--import", "tsx", path.join(ROOT, "bench", "oidc.ts"), "--serve", kind],
    {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let err = "";
  child.stderr.on("data", (c: Buffer) => {
    err += c.toString();
  });
  const ready = await new Promise<Ready>((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (c: Buffer) => {
      out += c.toString();
      const line = out.split("\n").find((l) => l.startsWith("READY "));
      if (line) resolve(JSON.parse(line.slice(6)) as Ready);
    });
    child.on("exit", (code) => reject(new Error(`${kind} bench server exited (${code}): ${err}`)));
  });
  return { ready, stop: () => child.kill("SIGTERM") };
}

async function refresh(ready: Ready, tokenPath: string, refreshToken: string) {
  const res = await fetch(`http://127.0.0.1:${ready.port}${tokenPath}`, {
    method: "POST",
    headers: {
      host: "localhost",
      authorization: `Basic ${Buffer.from(`${ready.client.id}:${ready.client.secret}`).toString("base64")}`,
      "content-type": "application/x-www-form-urlencoded",
    },
    body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: refreshToken }).toString(),
  });
  return { status: res.status, body: (await res.json()) as { refresh_token?: string } };
}

describe("the OIDC benchmark's servers", () => {
  for (const [kind, tokenPath] of [
    ["sekisho", "/oidc/token"],
    ["bare", "/token"],
  ] as const) {
    it(`${kind}: starts as bench:oidc starts it and rotates a seeded refresh token`, async () => {
      const { ready, stop } = await serve(kind);
      try {
        expect(ready.refreshTokens).toHaveLength(100);
        const first = await refresh(ready, tokenPath, ready.refreshTokens[0] as string);
        expect(first.status).toBe(200);
        expect(first.body.refresh_token).toBeTypeOf("string");
        expect(first.body.refresh_token).not.toBe(ready.refreshTokens[0]);
        // and the rotated one works, as the bench's loops use it
        expect((await refresh(ready, tokenPath, first.body.refresh_token as string)).status).toBe(200);
      } finally {
        stop();
      }
    }, 60_000);
  }
});
