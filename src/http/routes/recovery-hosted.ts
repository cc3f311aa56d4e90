import { type Request, type Response, Router } from "express";
import { z } from "zod";
import { ApiError } from "../../errors.js";
import { emailInput } from "../../members/profile-input.js";
import type { PasswordProblem } from "../../passwords/rules.js";
import type { Services } from "../../services.js";
import { deviceTokenFrom } from "../../sessions/devices.js";
import { hostedForm, pageHeaders, reqLang } from "../hosted.js";
import { locals } from "../middleware.js";
import type { Lang } from "../pages.js";
import {
  emailVerifiedPage,
  forgotLoginIdPage,
  forgotPasswordPage,
  linkInvalidPage,
  mailSentPage,
  newPasswordPage,
  type RecoveryError,
  resetDonePage,
  resetMfaPage,
  verifyEmailPage,
} from "../recovery-pages.js";

const solution = z.string().min(1).max(4096).optional();
const passwordForm = z.object({
  identifier: z.string().trim().min(1).max(256),
  challenge_solution: solution,
});
const loginIdForm = z.object({ email: emailInput, challenge_solution: solution });
const tokenForm = z.object({ token: z.string().min(1).max(128) });
const mfaForm = tokenForm.extend({
  method: z.enum(["totp", "recovery_code"]),
  code: z.string().min(1).max(64),
});
const proof = z.string().min(1).max(128).optional();
const resetForm = tokenForm.extend({
  password: z.string().min(1).max(1024),
  password_confirm: z.string().max(1024),
  reset_proof: proof,
});
const continueForm = tokenForm.extend({ reset_proof: z.string().min(1).max(128) });

/**
 * The hosted recovery pages (forgotten password and login ID, the reset link with its second
 * step, the e-mail verification link), Japanese first. Forms work without JavaScript; only the
 * passkey button needs the passkey script. They call the same services as the JSON API.
 */
export function recoveryPageRoutes(s: Services): Router {
  const r = Router();
  /** The new-password form, with the account's login ID for password managers (when the link lives). */
  const newPassword = (l: Lang, opts: Parameters<typeof newPasswordPage>[1]) => {
    let loginId: string | undefined;
    try {
      loginId = s.recovery.check(opts.token).loginId;
    } catch {
      // a dead link: the form without it (its post answers that the link is invalid)
    }
    return newPasswordPage(l, { ...opts, loginId });
  };
  const form = hostedForm(s.config.issuerOrigin);
  const minLength = s.config.passwordMinLength;
  const lang = reqLang;
  const html = (res: Response, status: number, body: string) => {
    pageHeaders(res);
    res.status(status).type("html").send(body);
  };
  const ctx = (req: Request, res: Response) => ({
    ip: locals(res).ip,
    requestId: locals(res).requestId,
    deviceToken: deviceTokenFrom(req.get("cookie")),
  });

  /** A refused request as the page shows it (429 keeps its Retry-After). */
  const refused = (
    err: unknown,
    res: Response,
  ): { status: number; error: RecoveryError; challenge?: object } => {
    if (!(err instanceof ApiError)) throw err;
    if (err.status === 429) {
      for (const [k, v] of Object.entries(err.headers ?? {})) res.setHeader(k, v);
      return { status: 429, error: "throttled" };
    }
    if (err.code === "challenge_required")
      return { status: 403, error: "challenge", challenge: err.extra?.challenge as object };
    if (err.status === 400) return { status: 400, error: "invalid" };
    throw err;
  };

  r.get("/recovery/password", (req, res) => html(res, 200, forgotPasswordPage(lang(req))));
  r.get("/recovery/login-id", (req, res) => html(res, 200, forgotLoginIdPage(lang(req))));

  r.post("/recovery/password", ...form, async (req, res) => {
    const l = lang(req);
    const body = passwordForm.safeParse(req.body);
    if (!body.success) return html(res, 400, forgotPasswordPage(l, { error: "invalid" }));
    const { identifier, challenge_solution } = body.data;
    // An '@' means an e-mail address: login IDs never contain one.
    const email = identifier.includes("@") ? emailInput.safeParse(identifier) : null;
    if (email && !email.success)
      return html(res, 400, forgotPasswordPage(l, { error: "invalid", value: identifier }));
    try {
      await s.recovery.request(
        "password",
        email ? { email: email.data as string } : { loginId: identifier },
        {
          ...ctx(req, res),
          challengeSolution: challenge_solution,
        },
      );
    } catch (err) {
      const refusal = refused(err, res);
      return html(res, refusal.status, forgotPasswordPage(l, { ...refusal, value: identifier }));
    }
    html(res, 202, mailSentPage(l));
  });

  r.post("/recovery/login-id", ...form, async (req, res) => {
    const l = lang(req);
    const body = loginIdForm.safeParse(req.body);
    if (!body.success) return html(res, 400, forgotLoginIdPage(l, { error: "invalid" }));
    try {
      await s.recovery.request(
        "login_id",
        { email: body.data.email },
        { ...ctx(req, res), challengeSolution: body.data.challenge_solution },
      );
    } catch (err) {
      const refusal = refused(err, res);
      return html(res, refusal.status, forgotLoginIdPage(l, { ...refusal, value: body.data.email }));
    }
    html(res, 202, mailSentPage(l));
  });

  /** The reset link: the second step if one is due, else the new-password form. Spends nothing. */
  const showReset = (
    req: Request,
    res: Response,
    token: unknown,
    attemptsLeft?: number,
    failed?: "totp" | "recovery_code",
  ) => {
    const l = lang(req);
    let state: ReturnType<typeof s.recovery.check>;
    try {
      state = s.recovery.check(token);
    } catch (err) {
      if (err instanceof ApiError && err.code === "invalid_token")
        return html(res, 400, linkInvalidPage(l, "reset"));
      throw err;
    }
    if (state.status === "mfa_required") {
      return html(
        res,
        attemptsLeft === undefined ? 200 : 401,
        resetMfaPage(l, { token: token as string, methods: state.methods, attemptsLeft, failed }),
      );
    }
    html(res, 200, newPassword(l, { token: token as string, minLength }));
  };

  r.get("/recovery/reset", (req, res) => showReset(req, res, req.query.token));

  r.post("/recovery/reset/mfa", ...form, async (req, res) => {
    const l = lang(req);
    const body = mfaForm.safeParse(req.body);
    if (!body.success) return html(res, 400, linkInvalidPage(l, "reset"));
    const { token, method } = body.data;
    const code = method === "totp" ? body.data.code.replace(/\s/g, "") : body.data.code;
    let resetProof: string | null;
    try {
      const result = await s.recovery.passFactor(token, { method, code }, ctx(req, res));
      if (result.status === "failed") return showReset(req, res, token, result.attemptsLeft, method);
      resetProof = result.resetProof;
    } catch (err) {
      if (err instanceof ApiError && err.code === "invalid_token")
        return html(res, 400, linkInvalidPage(l, "reset"));
      if (err instanceof ApiError && err.status === 429) {
        for (const [k, v] of Object.entries(err.headers ?? {})) res.setHeader(k, v);
        return html(res, 429, forgotPasswordPage(l, { error: "throttled" }));
      }
      throw err;
    }
    // The proof rides in the form (never in a URL or the history): only this page can use it.
    html(res, 200, newPassword(l, { token, proof: resetProof, minLength }));
  });

  /** After a passkey passed (the script posts the proof it got): the new-password form. */
  r.post("/recovery/reset/continue", ...form, (req, res) => {
    const l = lang(req);
    const body = continueForm.safeParse(req.body);
    if (!body.success) return html(res, 400, linkInvalidPage(l, "reset"));
    try {
      if (!s.recovery.proofHolds(body.data.token, body.data.reset_proof))
        return showReset(req, res, body.data.token);
    } catch (err) {
      if (err instanceof ApiError && err.code === "invalid_token")
        return html(res, 400, linkInvalidPage(l, "reset"));
      throw err;
    }
    html(res, 200, newPassword(l, { token: body.data.token, proof: body.data.reset_proof, minLength }));
  });

  r.post("/recovery/reset", ...form, async (req, res) => {
    const l = lang(req);
    const body = resetForm.safeParse(req.body);
    if (!body.success) return html(res, 400, linkInvalidPage(l, "reset"));
    const { token, password, password_confirm, reset_proof } = body.data;
    if (password !== password_confirm)
      return html(res, 400, newPassword(l, { token, proof: reset_proof, minLength, mismatch: true }));
    try {
      const { loginId } = await s.recovery.reset(token, password, {
        ...ctx(req, res),
        resetProof: reset_proof,
      });
      return html(res, 200, resetDonePage(l, loginId));
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      if (err.code === "weak_password") {
        return html(
          res,
          400,
          newPassword(l, {
            token,
            proof: reset_proof,
            minLength,
            problems: err.extra?.reasons as PasswordProblem[],
          }),
        );
      }
      if (err.code === "mfa_required") return showReset(req, res, token);
      return html(res, 400, linkInvalidPage(l, "reset"));
    }
  });

  r.get("/email/verify", (req, res) => {
    const token = req.query.token;
    const l = lang(req);
    // Shown with a button, not acted on: a mail scanner fetching the link confirms nothing.
    if (!s.memberTokens.find(token, "verify_email") && !s.memberTokens.find(token, "change_email")) {
      return html(res, 400, linkInvalidPage(l, "verify"));
    }
    html(res, 200, verifyEmailPage(l, token as string));
  });

  r.post("/email/verify", ...form, (req, res) => {
    const l = lang(req);
    const body = tokenForm.safeParse(req.body);
    if (!body.success) return html(res, 400, linkInvalidPage(l, "verify"));
    try {
      const { changed } = s.emails.verify(body.data.token, {
        ip: locals(res).ip,
        requestId: locals(res).requestId,
      });
      html(res, 200, emailVerifiedPage(l, changed));
    } catch (err) {
      if (err instanceof ApiError && err.code === "invalid_token")
        return html(res, 400, linkInvalidPage(l, "verify"));
      throw err;
    }
  });

  return r;
}
