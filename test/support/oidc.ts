import http from "node:http";
import type { AddressInfo } from "node:net";
import supertest from "supertest";
import { makeApp, PROFILE, STRONG_PASSWORD, type TestApp } from "./app.js";

/** A Sekisho app listening on an ephemeral loopback port, issuer set to it, with one member. */
export interface ListeningApp {
  t: TestApp;
  issuer: string;
  close(): Promise<void>;
}

export async function listenWithMember(
  loginId: string,
  env: Record<string, string> = {},
): Promise<ListeningApp> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const issuer = `http://localhost:${(server.address() as AddressInfo).port}`;
  // The real clock's time: oidc-provider stamps tokens with the system clock.
  const t = makeApp({ SEKISHO_ISSUER: issuer, ...env }, { clockStart: new Date() });
  server.on("request", t.app);
  const reg = await supertest(t.app)
    .post("/api/v1/registrations")
    .set("Origin", issuer)
    .set("Content-Type", "application/json")
    .send(JSON.stringify({ login_id: loginId, password: STRONG_PASSWORD, profile: PROFILE }));
  if (reg.status !== 201) throw new Error(`registration failed: ${reg.status} ${reg.text}`);
  return {
    t,
    issuer,
    async close() {
      await new Promise((resolve) => server.close(resolve));
      t.close();
    },
  };
}
