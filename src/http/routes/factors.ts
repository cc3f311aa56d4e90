import { type Response, Router } from "express";
import { z } from "zod";
import { ApiError } from "../../errors.js";
import { cleanPasskeyName, registrationResponse } from "../../factors/passkeys.js";
import type { Services } from "../../services.js";
import { setSessionCookie } from "../cookies.js";
import { locals, requireSession } from "../middleware.js";

const codeBody = z.object({ code: z.string().min(1).max(64) });
const passkeyBody = z.object({ response: registrationResponse, name: z.string().max(256).optional() });
const renameBody = z.object({ name: z.string().max(256) });
export const passkeyIdParam = z.string().regex(/^pk_[A-Za-z0-9_-]{16}$/);

const badName = () => new ApiError(400, "invalid_request", "name: 1–64 characters, no control characters.");

/** Enrolling and removing factors from the account (`/me/totp`, `/me/passkeys`, `/me/recovery-codes`). */
export function factorRoutes(s: Services): Router {
  const r = Router();
  const e = s.enrolment;
  const ctx = (res: Response) => ({ ip: locals(res).ip, requestId: locals(res).requestId });

  r.post("/me/totp", (_req, res) => {
    const { secret, otpauthUri } = e.beginTotp(requireSession(res, { limited: true }));
    res.status(200).json({ secret, otpauth_uri: otpauthUri });
  });

  r.post("/me/totp/verify", (req, res) => {
    const session = requireSession(res, { limited: true });
    const { code } = codeBody.parse(req.body);
    const codes = e.activateTotp(session, code, ctx(res));
    if (!codes)
      throw new ApiError(
        400,
        "invalid_code",
        "The code does not match; check the app's clock and try again.",
      );
    const upgraded = e.upgradeLimited(session, "totp");
    if (upgraded) setSessionCookie(res, upgraded.token, s.config.secureCookies);
    res.status(200).json({ recovery_codes: codes, ...(upgraded ? { status: "authenticated" } : {}) });
  });

  r.delete("/me/totp", (_req, res) => {
    if (!e.removeTotp(requireSession(res), ctx(res))) {
      throw new ApiError(404, "not_found", "No authenticator app is set up.");
    }
    res.status(204).end();
  });

  r.post("/me/recovery-codes", (_req, res) => {
    res.status(200).json({ recovery_codes: e.regenerateRecoveryCodes(requireSession(res), ctx(res)) });
  });

  r.post("/me/passkeys/options", async (_req, res) => {
    res.json(await e.passkeyOptions(requireSession(res, { limited: true })));
  });

  r.post("/me/passkeys", async (req, res) => {
    const session = requireSession(res, { limited: true });
    const body = passkeyBody.parse(req.body);
    const name = body.name === undefined ? "Passkey" : cleanPasskeyName(body.name);
    if (name === null) throw badName();
    const added = await e.addPasskey(session, body.response as never, name, ctx(res));
    const upgraded = e.upgradeLimited(session, added.proved);
    if (upgraded) setSessionCookie(res, upgraded.token, s.config.secureCookies);
    res.status(201).json({
      id: added.id,
      ...(added.recoveryCodes ? { recovery_codes: added.recoveryCodes } : {}),
      ...(upgraded ? { status: "authenticated" } : {}),
    });
  });

  r.patch("/me/passkeys/:id", (req, res) => {
    const session = requireSession(res);
    const id = passkeyIdParam.safeParse(req.params.id);
    const name = cleanPasskeyName(renameBody.parse(req.body).name);
    if (name === null) throw badName();
    if (!id.success || !e.renamePasskey(session, id.data, name, ctx(res))) {
      throw new ApiError(404, "not_found", "No such passkey.");
    }
    res.status(200).json({ id: id.data, name });
  });

  r.delete("/me/passkeys/:id", (req, res) => {
    const session = requireSession(res);
    const id = passkeyIdParam.safeParse(req.params.id);
    if (!id.success || !e.removePasskey(session, id.data, ctx(res))) {
      throw new ApiError(404, "not_found", "No such passkey.");
    }
    res.status(204).end();
  });

  return r;
}
