import type { Request, Response } from "express";
import { z } from "zod";
import { ApiError } from "../errors.js";
import type { FactorMethod } from "../factors/methods.js";
import type { Services } from "../services.js";
import { deviceTokenFrom } from "../sessions/devices.js";
import type { FactorResult, Subject } from "../sessions/second-factor.js";
import { type Session, sessionTokenFrom } from "../sessions/sessions.js";
import type { SignInResult } from "../sessions/sign-in.js";
import { locals } from "./middleware.js";
import type { Lang, LangSwitch, LoginError } from "./pages.js";

/**
 * The sign-in steps as the hosted pages (OIDC interaction, account) run them: the same services
 * as the JSON API, with the throttle's answers turned into what a page shows. The routes only
 * decide which page to render next.
 */
export const loginForm = z.object({
  login_id: z.string().min(1).max(256),
  password: z.string().min(1).max(1024),
  challenge_solution: z.string().min(1).max(4096).optional(),
});

export const mfaForm = z.object({
  mfa_token: z.string().min(1).max(128).optional(),
  method: z.enum(["totp", "recovery_code"]),
  code: z.string().min(1).max(64),
});

/**
 * The second-step page in the other language: its pending token rides in the page's forms, so the
 * language switch posts it back (`switch=lang`) to the page's own form address, which shows the
 * page again instead of checking a code. The methods the page offered ride along (they depend on
 * the site's policy, which the pending token doesn't keep); a changed list only changes what is
 * shown: the second step still refuses a method that doesn't count.
 */
export const langSwitchForm = z
  .object({
    mfa_token: z.string().min(1).max(128),
    switch: z.literal("lang"),
    methods: z.string().max(64),
  })
  .transform((f) => ({
    mfaToken: f.mfa_token,
    methods: [...new Set(f.methods.split(" "))].filter((m): m is FactorMethod =>
      (["webauthn", "totp", "recovery_code"] as const).includes(m as FactorMethod),
    ),
  }));

/**
 * A second-step page's language switch posted back: null when the body is not one (a code to
 * check), "expired" when its pending sign-in is gone (unknown, used up or out of tries), else the
 * page to show again: its token, the methods it offered, and whose sign-in it is.
 */
export function postedLangSwitch(
  s: Services,
  body: unknown,
): null | "expired" | { mfaToken: string; methods: FactorMethod[]; memberId: string } {
  const again = langSwitchForm.safeParse(body);
  if (!again.success) return null;
  const pending = s.mfaTokens.find(again.data.mfaToken);
  return pending ? { ...again.data, memberId: pending.memberId } : "expired";
}

/** The switch to the other language for a second-step page posting to `path` (no query). */
export function mfaLangSwitch(
  path: string,
  lang: Lang,
  mfaToken: string,
  methods: readonly FactorMethod[],
  query = "",
): LangSwitch {
  return {
    action: `${path}?lang=${lang === "ja" ? "en" : "ja"}${query}`,
    hidden: { mfa_token: mfaToken, switch: "lang", methods: methods.join(" ") },
  };
}

/** Whose second step a hosted form completes: the pending sign-in's token, else the session (step-up). */
export function subjectFor(
  mfaToken: string | undefined,
  session: Session | null,
): { mfaToken: string } | { session: Session } | null {
  if (mfaToken) return { mfaToken };
  return session ? { session } : null;
}

export type Refusal = { ok: false; status: number; error: LoginError; challenge?: object };
export type Outcome<T> = { ok: true; value: T } | Refusal;

function context(req: Request, res: Response) {
  const l = locals(res);
  const cookie = req.get("cookie");
  return {
    ip: l.ip,
    requestId: l.requestId,
    userAgent: req.get("user-agent") ?? null,
    deviceToken: deviceTokenFrom(cookie),
    previousToken: sessionTokenFrom(cookie),
  };
}

/** Throttle and protocol answers as a page shows them (Retry-After kept on the response). */
export function pageRefusal(
  err: unknown,
  res: { setHeader(name: string, value: string | number): unknown },
): Refusal {
  if (!(err instanceof ApiError)) throw err;
  if (err.status === 429) {
    for (const [k, v] of Object.entries(err.headers ?? {})) res.setHeader(k, v);
    return { ok: false, status: 429, error: "throttled" };
  }
  if (err.code === "challenge_required") {
    return { ok: false, status: 403, error: "challenge", challenge: err.extra?.challenge as object };
  }
  if (err.status === 400) return { ok: false, status: 400, error: "invalid" };
  if (err.status === 401) return { ok: false, status: 401, error: "expired" };
  throw err;
}

export async function passwordStep(
  s: Services,
  req: Request,
  res: Response,
  form: z.infer<typeof loginForm>,
  site: { clientId?: string | null; acrValues?: string | null } = {},
): Promise<Outcome<SignInResult>> {
  try {
    const value = await s.signIn.signIn(
      { loginId: form.login_id, password: form.password, challengeSolution: form.challenge_solution },
      { ...context(req, res), ...site },
    );
    return { ok: true, value };
  } catch (err) {
    return pageRefusal(err, res);
  }
}

export async function secondStep(
  s: Services,
  req: Request,
  res: Response,
  subject: Subject,
  form: z.infer<typeof mfaForm>,
): Promise<Outcome<FactorResult>> {
  try {
    const code = form.method === "totp" ? form.code.replace(/\s/g, "") : form.code;
    const value = await s.secondFactor.complete(subject, { method: form.method, code }, context(req, res));
    return { ok: true, value };
  } catch (err) {
    return pageRefusal(err, res);
  }
}
