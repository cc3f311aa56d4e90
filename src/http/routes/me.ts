import { eq } from "drizzle-orm";
import { Router } from "express";
import { members } from "../../db/schema.js";
import { ApiError } from "../../errors.js";
import { PROFILE_FIELDS } from "../../members/profile.js";
import type { Services } from "../../services.js";
import { deviceTokenFrom } from "../../sessions/devices.js";
import { endOwnSession, forgetOwnDevice, memberEventRows } from "../../sessions/member-actions.js";
import { blindIndex } from "../../vault/blind-index.js";
import { locals, requireSession } from "../middleware.js";

/** What of an audit entry's details a member sees: the method and ids, never fingerprints. */
const SHOWN_DETAILS = [
  "method",
  "acr",
  "amr",
  "session_id",
  "passkey_id",
  "device_id",
  "remaining",
  "next",
  "until",
];
function eventDetails(stored: string): Record<string, unknown> {
  try {
    const d = JSON.parse(stored) as Record<string, unknown>;
    return Object.fromEntries(Object.entries(d).filter(([k]) => SHOWN_DETAILS.includes(k)));
  } catch {
    return {};
  }
}

/** The member's factors as GET /me shows them (no secrets: names, dates, counts). */
export function mfaView(s: Services, memberId: string) {
  const f = s.factors.of(memberId);
  return {
    totp: f.totp,
    passkeys: s.factors.passkeys.list(memberId).map((p) => ({
      id: p.id,
      name: p.name,
      created_at: iso(p.createdAt),
      last_used_at: iso(p.lastUsedAt),
      synced: p.backupEligible,
      suspected_clone: p.suspectedCloneAt !== null,
    })),
    recovery_codes_remaining: f.recoveryCodes,
  };
}
const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

export function meRoutes(s: Services): Router {
  const r = Router();

  r.get("/me", (_req, res) => {
    const session = requireSession(res, { limited: true });
    const l = locals(res);
    const member = s.db.select().from(members).where(eq(members.id, session.memberId)).get();
    if (!member) throw new ApiError(401, "unauthenticated", "Sign in first.");
    if (session.kind === "limited") {
      // A limited session (the password alone, where the policy wants a factor first) sees what it
      // needs to add one, not the member's personal data.
      res.json({
        member_id: member.id,
        login_id: member.loginId,
        mfa: mfaView(s, member.id),
        session: { kind: "limited", acr: session.acr, amr: session.amr, auth_time: iso(session.authTime) },
      });
      return;
    }
    const profile = s.vault.read(member.id, PROFILE_FIELDS, {
      actorType: "member",
      actorId: member.id,
      reason: "self_view",
      ip: l.ip,
      requestId: l.requestId,
    });
    res.json({
      member_id: member.id,
      login_id: member.loginId,
      profile,
      email_verified: member.emailVerified,
      mfa: mfaView(s, member.id),
      session: { acr: session.acr, amr: session.amr, auth_time: iso(session.authTime) },
    });
  });

  r.get("/me/sessions", (_req, res) => {
    const session = requireSession(res);
    res.json({
      sessions: s.sessions.listActive(session.memberId).map((x) => ({
        id: x.id,
        current: x.id === session.id,
        created_at: iso(x.createdAt),
        last_seen_at: iso(x.lastSeenAt),
        expires_at: iso(x.expiresAt),
        auth_time: iso(x.authTime),
        acr: x.acr,
        amr: x.amr,
        ip: x.ip,
        user_agent: x.userAgent,
      })),
    });
  });

  r.delete("/me/sessions/:id", (req, res) => {
    const session = requireSession(res);
    const l = locals(res);
    if (!endOwnSession(s, session, String(req.params.id), { ip: l.ip, requestId: l.requestId })) {
      throw new ApiError(404, "not_found", "No such session.");
    }
    res.status(204).end();
  });

  r.get("/me/devices", (req, res) => {
    const session = requireSession(res);
    const current = s.devices.recognise(deviceTokenFrom(req.get("cookie")), session.memberId);
    res.json({
      devices: s.devices.list(session.memberId).map((d) => ({
        id: d.id,
        current: d.id === current?.id,
        created_at: iso(d.createdAt),
        last_seen_at: iso(d.lastSeenAt),
        user_agent: d.userAgent,
      })),
    });
  });

  r.delete("/me/devices/:id", (req, res) => {
    const session = requireSession(res);
    const l = locals(res);
    if (!forgetOwnDevice(s, session, String(req.params.id), { ip: l.ip, requestId: l.requestId })) {
      throw new ApiError(404, "not_found", "No such device.");
    }
    res.status(204).end();
  });

  r.get("/me/events", (_req, res) => {
    const session = requireSession(res);
    const rows = memberEventRows(s, session.memberId, 100);
    res.json({
      events: rows.map((e) => ({
        // Not the audit sequence number: its gaps would count everyone else's entries in between
        // (a recovery request for a real member writes more of them than one for nobody).
        id: `ev_${blindIndex(s.keys, "member_event", String(e.seq)).slice(0, 22)}`,
        at: iso(e.at),
        type: e.action,
        outcome: e.outcome,
        reason: e.reason,
        ip: e.ip,
        details: eventDetails(e.details),
      })),
    });
  });

  return r;
}
