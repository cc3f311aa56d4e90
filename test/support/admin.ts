import { expect } from "vitest";
import { ORIGIN, post, STRONG_PASSWORD, sessionCookie, signIn, type TestApp } from "./app.js";
import { SoftAuthenticator } from "./soft-authenticator.js";

/** An admin member `ops.admin` with a user-verifying passkey (as at first sign-in). */
export async function adminWithPasskey(t: TestApp, loginId = "ops.admin") {
  await t.s.registrations.register(
    { loginId, password: STRONG_PASSWORD, profile: {} },
    { ip: null, requestId: null },
    { role: "admin" },
  );
  const auth = new SoftAuthenticator();
  const first = await signIn(t.app, loginId);
  const options = await post(t.app, "/api/v1/me/passkeys/options", {}, first);
  // Admins' passkeys must verify the user.
  expect(options.body.authenticatorSelection.userVerification).toBe("required");
  const added = await post(
    t.app,
    "/api/v1/me/passkeys",
    { response: auth.register(options.body, { origin: ORIGIN }) },
    first,
  );
  expect(added.status).toBe(201);
  return { auth, passwordSession: first, recoveryCodes: (added.body.recovery_codes ?? []) as string[] };
}

/** Sign the admin in with password + passkey: a session at acr phishing-resistant. */
export async function adminPasskeySession(t: TestApp, auth: SoftAuthenticator, loginId = "ops.admin") {
  const step = await post(t.app, "/api/v1/login", { login_id: loginId, password: STRONG_PASSWORD });
  const options = await post(t.app, "/api/v1/login/webauthn/options", { mfa_token: step.body.mfa_token });
  const done = await post(t.app, "/api/v1/login/webauthn", {
    mfa_token: step.body.mfa_token,
    response: auth.assert(options.body, { origin: ORIGIN }),
  });
  expect(done.body.acr).toBe("urn:sekisho:acr:phishing-resistant");
  return sessionCookie(done);
}
