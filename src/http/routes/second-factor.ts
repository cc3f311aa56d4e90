import { type Request, type Response, Router } from "express";
import { z } from "zod";
import { authenticationResponse } from "../../factors/passkeys.js";
import type { Services } from "../../services.js";
import { deviceTokenFrom } from "../../sessions/devices.js";
import type { FactorProof, Subject } from "../../sessions/second-factor.js";
import { setDeviceCookie, setSessionCookie } from "../cookies.js";
import { locals } from "../middleware.js";

const mfaToken = z.string().min(1).max(128);
const codeBody = z.object({ mfa_token: mfaToken.optional(), code: z.string().min(1).max(64) });
const optionsBody = z.object({ mfa_token: mfaToken.optional(), passwordless: z.boolean().optional() });
const webauthnBody = z.object({ mfa_token: mfaToken.optional(), response: authenticationResponse });

const INVALID_CODE = { error: "invalid_code", error_description: "The code is not valid." } as const;

/**
 * The second step of a sign-in (`mfa_token`), step-up of a live session (its cookie instead of a
 * token) and passwordless passkeys (neither). See src/sessions/second-factor.ts.
 */
export function secondFactorRoutes(s: Services): Router {
  const r = Router();

  const subjectOf = (res: Response, token: string | undefined): Subject => {
    if (token !== undefined) return { mfaToken: token };
    const session = locals(res).session;
    if (session?.kind === "full") return { session };
    return { passwordless: true };
  };

  const finish = async (req: Request, res: Response, subject: Subject, proof: FactorProof) => {
    const l = locals(res);
    const result = await s.secondFactor.complete(subject, proof, {
      ip: l.ip,
      requestId: l.requestId,
      userAgent: req.get("user-agent") ?? null,
      deviceToken: deviceTokenFrom(req.get("cookie")),
      previousToken: locals(res).sessionToken,
    });
    if (result.status !== "authenticated") {
      res
        .status(401)
        .json(
          proof.method === "webauthn"
            ? { error: "invalid_code", error_description: "The passkey could not be verified." }
            : INVALID_CODE,
        );
      return;
    }
    setSessionCookie(res, result.token, s.config.secureCookies);
    if (result.deviceToken) setDeviceCookie(res, result.deviceToken, s.config.secureCookies);
    if (result.enrolmentRequired) {
      res.status(200).json({ status: "mfa_enrollment_required", methods: result.enrolmentRequired });
      return;
    }
    res.status(200).json({ status: "authenticated", acr: result.session.acr, amr: result.session.amr });
  };

  r.post("/login/totp", async (req, res) => {
    const body = codeBody.parse(req.body);
    const subject = subjectOf(res, body.mfa_token);
    await finish(req, res, subject, { method: "totp", code: body.code.replace(/\s/g, "") });
  });

  r.post("/login/recovery-code", async (req, res) => {
    const body = codeBody.parse(req.body);
    await finish(req, res, subjectOf(res, body.mfa_token), { method: "recovery_code", code: body.code });
  });

  r.post("/login/webauthn/options", async (req, res) => {
    const body = optionsBody.parse(req.body ?? {});
    const subject: Subject =
      body.passwordless && body.mfa_token === undefined
        ? { passwordless: true }
        : subjectOf(res, body.mfa_token);
    res.json(await s.secondFactor.passkeyOptions(subject, locals(res).ip));
  });

  r.post("/login/webauthn", async (req, res) => {
    const body = webauthnBody.parse(req.body);
    await finish(req, res, subjectOf(res, body.mfa_token), {
      method: "webauthn",
      response: body.response as never,
    });
  });

  return r;
}
