import { Router } from "express";
import { z } from "zod";
import { profileInput } from "../../members/profile-input.js";
import type { Services } from "../../services.js";
import { deviceTokenFrom } from "../../sessions/devices.js";
import { logOut } from "../../sessions/member-actions.js";
import { tooManyAttempts } from "../../sessions/sign-in.js";
import { addressOf, subnetOf } from "../../throttle/network.js";
import { clearSessionCookie, setSessionCookie } from "../cookies.js";
import { locals } from "../middleware.js";
import { pickLang } from "../pages.js";

const registrationBody = z.object({
  login_id: z.string().max(256).optional(),
  password: z.string().min(1).max(1024),
  profile: profileInput,
  /** The member's language for mail; default: the request's Accept-Language (Japanese first). */
  locale: z.enum(["ja", "en"]).optional(),
});

export const loginBody = z.object({
  login_id: z.string().min(1).max(256),
  password: z.string().min(1).max(1024),
  /** The solved proof-of-work (ALTCHA payload, base64) after a 403 challenge_required. */
  challenge_solution: z.string().min(1).max(4096).optional(),
});

/** The same bytes for an unknown login ID and a wrong password: nothing tells them apart. */
const INVALID_CREDENTIALS = {
  error: "invalid_credentials",
  error_description: "The login ID or password is incorrect.",
} as const;

/** Registrations one address, and one network (/24, /56), may make in 10 minutes. */
const REGISTRATIONS_PER_IP = 20;
const REGISTRATIONS_PER_NET = 100;

export function registrationAndLoginRoutes(s: Services): Router {
  const r = Router();

  r.post("/registrations", async (req, res) => {
    const body = registrationBody.parse(req.body);
    const l = locals(res);
    // Registrations per address and network in 10 minutes: `409 login_id_taken` (which the
    // contract asks for) answers without a hash, so unlimited it would check login IDs for free.
    for (const [key, limit] of [
      [`registration|ip|${addressOf(l.ip)}`, REGISTRATIONS_PER_IP],
      [`registration|net|${subnetOf(l.ip)}`, REGISTRATIONS_PER_NET],
    ] as const) {
      const rate = s.guard.overRate(key, limit);
      if (rate.over) throw tooManyAttempts(rate.retryAfterSeconds);
    }
    const { memberId, loginId } = await s.registrations.register(
      {
        loginId: body.login_id,
        password: body.password,
        profile: body.profile,
        locale: body.locale ?? pickLang(req.get("accept-language")),
      },
      { ip: l.ip, requestId: l.requestId },
    );
    res.status(201).json({ member_id: memberId, login_id: loginId });
  });

  r.post("/login", async (req, res) => {
    const body = loginBody.parse(req.body);
    const l = locals(res);
    const result = await s.signIn.signIn(
      { loginId: body.login_id, password: body.password, challengeSolution: body.challenge_solution },
      {
        ip: l.ip,
        requestId: l.requestId,
        userAgent: req.get("user-agent") ?? null,
        previousToken: l.sessionToken,
        deviceToken: deviceTokenFrom(req.get("cookie")),
      },
    );
    if (result.status === "failed") {
      res.status(401).json(INVALID_CREDENTIALS);
      return;
    }
    if (result.status === "password_reset_required") {
      res.status(403).json({
        error: "password_reset_required",
        error_description:
          "A new password is required: use the link we mailed you, or “forgot your password”.",
      });
      return;
    }
    if (result.status === "mfa_required") {
      res.status(200).json({ status: "mfa_required", mfa_token: result.mfaToken, methods: result.methods });
      return;
    }
    setSessionCookie(res, result.token, s.config.secureCookies);
    if (result.status === "mfa_enrollment_required") {
      // The cookie is a limited session: it can add a factor (POST /me/totp, /me/passkeys…) and
      // read /me; adding one turns it into a full session.
      res.status(200).json({ status: "mfa_enrollment_required", methods: result.methods });
      return;
    }
    res.status(200).json({
      status: "authenticated",
      ...(result.graceEndsAt !== null
        ? { mfa_enrollment_due: new Date(result.graceEndsAt).toISOString() }
        : {}),
    });
  });

  r.post("/logout", (_req, res) => {
    const l = locals(res);
    if (l.session) logOut(s, l.session, { ip: l.ip, requestId: l.requestId });
    clearSessionCookie(res, s.config.secureCookies);
    res.status(204).end();
  });

  return r;
}
