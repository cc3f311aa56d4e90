import { eq } from "drizzle-orm";
import { type Response, Router } from "express";
import { z } from "zod";
import { inTransaction } from "../../db/connection.js";
import { members } from "../../db/schema.js";
import { ApiError } from "../../errors.js";
import { cleanPasskeyName, registrationResponse } from "../../factors/passkeys.js";
import type { Services } from "../../services.js";
import type { Session } from "../../sessions/sessions.js";
import { locals, requireSession } from "../middleware.js";

const codeBody = z.object({ code: z.string().min(1).max(64) });
const passkeyBody = z.object({ response: registrationResponse, name: z.string().max(256).optional() });
const renameBody = z.object({ name: z.string().max(256) });
const passkeyIdParam = z.string().regex(/^pk_[A-Za-z0-9_-]{16}$/);

/** Enrolling and removing factors from the account (`/me/totp`, `/me/passkeys`, `/me/recovery-codes`). */
export function factorRoutes(s: Services): Router {
  const r = Router();
  const { factors } = s;

  const member = (session: Session) => {
    const m = s.db
      .select({ id: members.id, loginId: members.loginId, role: members.role })
      .from(members)
      .where(eq(members.id, session.memberId))
      .get();
    if (!m) throw new ApiError(401, "unauthenticated", "Sign in first.");
    return m;
  };

  /** Removing a factor needs a recent sign-in: a stolen, old session can't strip a member's MFA. */
  const requireRecent = (session: Session) => {
    if (!s.secondFactor.recent(session, s.config.reauthMs)) {
      throw new ApiError(401, "reauthentication_required", "Sign in again to make this change.", {
        extra: { max_age: Math.floor(s.config.reauthMs / 1000) },
      });
    }
  };

  const audit = (res: Response, session: Session, action: string, details: Record<string, unknown>) => {
    const l = locals(res);
    s.audit.append({
      action,
      outcome: "success",
      actorType: "member",
      actorId: session.memberId,
      memberId: session.memberId,
      ip: l.ip,
      requestId: l.requestId,
      details: { session_id: session.id, ...details },
    });
  };

  r.post("/me/totp", (_req, res) => {
    const session = requireSession(res);
    const m = member(session);
    const { secret, otpauthUri } = factors.totp.begin(m.id, m.loginId);
    res.status(200).json({ secret, otpauth_uri: otpauthUri });
  });

  r.post("/me/totp/verify", (req, res) => {
    const session = requireSession(res);
    const { code } = codeBody.parse(req.body);
    const replaced = factors.totp.enabled(session.memberId);
    const codes = inTransaction(s.db, () => {
      if (!factors.totp.activate(session.memberId, code.replace(/\s/g, ""))) return null;
      const fresh = factors.recovery.replace(session.memberId);
      audit(res, session, "factor.totp_added", { replaced });
      audit(res, session, "factor.recovery_codes_generated", { count: fresh.length });
      return fresh;
    });
    if (!codes)
      throw new ApiError(
        400,
        "invalid_code",
        "The code does not match; check the app's clock and try again.",
      );
    res.status(200).json({ recovery_codes: codes });
  });

  r.delete("/me/totp", (_req, res) => {
    const session = requireSession(res);
    requireRecent(session);
    const removed = inTransaction(s.db, () => {
      if (!factors.totp.remove(session.memberId)) return false;
      const dropped = factors.dropRecoveryCodesIfNoFactorLeft(session.memberId);
      audit(res, session, "factor.totp_removed", { recovery_codes_removed: dropped });
      return true;
    });
    if (!removed) throw new ApiError(404, "not_found", "No authenticator app is set up.");
    res.status(204).end();
  });

  r.post("/me/recovery-codes", (_req, res) => {
    const session = requireSession(res);
    requireRecent(session);
    const f = factors.of(session.memberId);
    if (!f.totp && f.passkeys === 0) {
      throw new ApiError(409, "no_second_factor", "Set up an authenticator app or a passkey first.");
    }
    const codes = inTransaction(s.db, () => {
      const fresh = factors.recovery.replace(session.memberId);
      audit(res, session, "factor.recovery_codes_generated", { count: fresh.length });
      return fresh;
    });
    res.status(200).json({ recovery_codes: codes });
  });

  r.post("/me/passkeys/options", async (_req, res) => {
    const session = requireSession(res);
    const m = member(session);
    // Admins' passkeys must verify the user (PIN or biometrics); members' should.
    res.json(
      await factors.passkeys.registrationOptions(m, session.id, {
        requireUserVerification: m.role === "admin",
      }),
    );
  });

  r.post("/me/passkeys", async (req, res) => {
    const session = requireSession(res);
    const body = passkeyBody.parse(req.body);
    const name = body.name === undefined ? "Passkey" : cleanPasskeyName(body.name);
    if (name === null)
      throw new ApiError(400, "invalid_request", "name: 1–64 characters, no control characters.");
    const result = await factors.passkeys.register(
      session.memberId,
      session.id,
      body.response as never,
      name,
    );
    if (!result.ok) {
      if (result.reason === "credential_exists")
        throw new ApiError(409, "passkey_exists", "This passkey is already registered.");
      throw new ApiError(400, "invalid_passkey", "The passkey could not be verified; start again.", {
        detail: result.reason,
      });
    }
    audit(res, session, "factor.passkey_added", { passkey_id: result.passkeyId });
    res.status(201).json({ id: result.passkeyId });
  });

  r.patch("/me/passkeys/:id", (req, res) => {
    const session = requireSession(res);
    const id = passkeyIdParam.safeParse(req.params.id);
    const name = cleanPasskeyName(renameBody.parse(req.body).name);
    if (name === null)
      throw new ApiError(400, "invalid_request", "name: 1–64 characters, no control characters.");
    if (!id.success || !factors.passkeys.rename(session.memberId, id.data, name)) {
      throw new ApiError(404, "not_found", "No such passkey.");
    }
    audit(res, session, "factor.passkey_renamed", { passkey_id: id.data });
    res.status(200).json({ id: id.data, name });
  });

  r.delete("/me/passkeys/:id", (req, res) => {
    const session = requireSession(res);
    const id = passkeyIdParam.safeParse(req.params.id);
    if (!id.success) throw new ApiError(404, "not_found", "No such passkey.");
    requireRecent(session);
    const removed = inTransaction(s.db, () => {
      if (!factors.passkeys.remove(session.memberId, id.data)) return false;
      const dropped = factors.dropRecoveryCodesIfNoFactorLeft(session.memberId);
      audit(res, session, "factor.passkey_removed", { passkey_id: id.data, recovery_codes_removed: dropped });
      return true;
    });
    if (!removed) throw new ApiError(404, "not_found", "No such passkey.");
    res.status(204).end();
  });

  return r;
}
