import { type Response, Router } from "express";
import { z } from "zod";
import { authenticationResponse } from "../../factors/passkeys.js";
import { emailInput } from "../../members/profile-input.js";
import type { RecoveryContext } from "../../recovery/password-reset.js";
import type { Services } from "../../services.js";
import { deviceTokenFrom } from "../../sessions/devices.js";
import type { FactorProof } from "../../sessions/second-factor.js";
import { locals, requireSession } from "../middleware.js";

const token = z.string().min(1).max(128);
const solution = z.string().min(1).max(4096).optional();

const passwordRequest = z
  .object({
    login_id: z.string().min(1).max(256).optional(),
    email: emailInput.optional(),
    challenge_solution: solution,
  })
  .refine(
    (b) => (b.login_id === undefined) !== (b.email === undefined),
    "send exactly one of login_id and email",
  );
const loginIdRequest = z.object({ email: emailInput, challenge_solution: solution });
const tokenBody = z.object({ token });
const codeBody = z.object({ token, code: z.string().min(1).max(64) });
const webauthnBody = z.object({ token, response: authenticationResponse });
const resetBody = z.object({ token, password: z.string().min(1).max(1024), reset_proof: token.optional() });
const emailBody = z.object({ email: emailInput });
const passwordChangeBody = z.object({
  current_password: z.string().min(1).max(1024),
  new_password: z.string().min(1).max(1024),
});

/** The one answer to every recovery request, whoever (if anyone) it named. */
export const RECOVERY_ACCEPTED = {
  status: "accepted",
  message: "If an account matches, we have sent it an e-mail.",
} as const;

/**
 * Forgotten password and login ID, following a reset link, e-mail verification and change, and
 * password change (JSON; the hosted pages call the same services). See src/recovery/.
 */
export function recoveryRoutes(s: Services): Router {
  const r = Router();
  const ctx = (res: Response, cookie: string | undefined): RecoveryContext => ({
    ip: locals(res).ip,
    requestId: locals(res).requestId,
    deviceToken: deviceTokenFrom(cookie),
  });

  r.post("/recovery/password", async (req, res) => {
    const body = passwordRequest.parse(req.body);
    await s.recovery.request(
      "password",
      body.login_id !== undefined ? { loginId: body.login_id } : { email: body.email as string },
      { ...ctx(res, undefined), challengeSolution: body.challenge_solution },
    );
    res.status(202).json(RECOVERY_ACCEPTED);
  });

  r.post("/recovery/login-id", async (req, res) => {
    const body = loginIdRequest.parse(req.body);
    await s.recovery.request(
      "login_id",
      { email: body.email },
      { ...ctx(res, undefined), challengeSolution: body.challenge_solution },
    );
    res.status(202).json(RECOVERY_ACCEPTED);
  });

  r.post("/recovery/password/check", (req, res) => {
    const { status, methods } = s.recovery.check(tokenBody.parse(req.body).token);
    res.json({ status, methods });
  });

  const factor = async (
    res: Response,
    tokenValue: string,
    proof: FactorProof,
    cookie: string | undefined,
  ) => {
    const result = await s.recovery.passFactor(tokenValue, proof, ctx(res, cookie));
    if (result.status === "ready") {
      res.json({ status: "ready", ...(result.resetProof ? { reset_proof: result.resetProof } : {}) });
      return;
    }
    res.status(401).json({
      error: "invalid_code",
      error_description:
        proof.method === "webauthn" ? "The passkey could not be verified." : "The code is not valid.",
      attempts_left: result.attemptsLeft,
    });
  };

  r.post("/recovery/password/totp", async (req, res) => {
    const body = codeBody.parse(req.body);
    await factor(res, body.token, { method: "totp", code: body.code.replace(/\s/g, "") }, req.get("cookie"));
  });

  r.post("/recovery/password/recovery-code", async (req, res) => {
    const body = codeBody.parse(req.body);
    await factor(res, body.token, { method: "recovery_code", code: body.code }, req.get("cookie"));
  });

  r.post("/recovery/password/webauthn/options", async (req, res) => {
    res.json(await s.recovery.passkeyOptions(tokenBody.parse(req.body).token));
  });

  r.post("/recovery/password/webauthn", async (req, res) => {
    const body = webauthnBody.parse(req.body);
    await factor(
      res,
      body.token,
      { method: "webauthn", response: body.response as never },
      req.get("cookie"),
    );
  });

  r.post("/recovery/password/reset", async (req, res) => {
    const body = resetBody.parse(req.body);
    const { loginId } = await s.recovery.reset(body.token, body.password, {
      ...ctx(res, req.get("cookie")),
      resetProof: body.reset_proof,
    });
    res.json({ status: "password_reset", login_id: loginId });
  });

  r.post("/email/verify", (req, res) => {
    const l = locals(res);
    const { changed } = s.emails.verify(tokenBody.parse(req.body).token, {
      ip: l.ip,
      requestId: l.requestId,
    });
    res.json({ status: changed ? "email_changed" : "verified" });
  });

  r.post("/me/email/verification", (_req, res) => {
    const session = requireSession(res);
    const l = locals(res);
    s.emails.resend(session, { ip: l.ip, requestId: l.requestId });
    res.status(202).json({ status: "sent" });
  });

  r.post("/me/email", (req, res) => {
    const session = requireSession(res);
    const body = emailBody.parse(req.body);
    const l = locals(res);
    s.emails.requestChange(session, body.email, { ip: l.ip, requestId: l.requestId });
    res.status(202).json({ status: "verification_sent" });
  });

  r.post("/me/password", async (req, res) => {
    const session = requireSession(res);
    const body = passwordChangeBody.parse(req.body);
    const l = locals(res);
    await s.passwordChange.change(session, body.current_password, body.new_password, {
      ip: l.ip,
      requestId: l.requestId,
      deviceToken: deviceTokenFrom(req.get("cookie")),
    });
    res.status(204).end();
  });

  return r;
}
