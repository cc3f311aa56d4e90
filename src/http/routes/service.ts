import { eq } from "drizzle-orm";
import { Router } from "express";
import { z } from "zod";
import { members } from "../../db/schema.js";
import { ApiError } from "../../errors.js";
import { PROFILE_FIELDS } from "../../members/profile.js";
import { type Oidc, SCOPE_FIELDS } from "../../oidc/provider.js";
import type { Services } from "../../services.js";
import { memberSealValues } from "../../vault/seals.js";
import { locals } from "../middleware.js";

const subParam = z.string().regex(/^[A-Za-z0-9_-]{22}$/);

const unauthorized = (description: string) =>
  new ApiError(401, "invalid_token", description, {
    headers: { "WWW-Authenticate": 'Bearer error="invalid_token"' },
  });

/**
 * The service API for member-site backends: `GET /api/v1/members/:sub` with a client-credentials
 * access token holding `members:read`. It answers, for a member who signed in to that site, the
 * profile fields both the site's registered scopes and the member's grant to it allow (profile,
 * email, phone, address), decrypted for the site: audited, counted against the site's PII budget
 * (`429 pii_budget_exceeded` past it), and watched for bulk reads. Other members: 404.
 */
export function serviceRoutes(s: Services, oidc: Oidc): Router {
  const r = Router();

  r.get("/members/:sub", async (req, res) => {
    const header = req.get("authorization") ?? "";
    const match = /^Bearer ([A-Za-z0-9_-]{20,128})$/.exec(header);
    if (!match) throw unauthorized("Send a client-credentials access token: Authorization: Bearer …");
    const token = await oidc.provider.ClientCredentials.find(match[1] as string);
    if (!token || token.isExpired) throw unauthorized("The access token is unknown or expired.");
    const scopes = new Set(String(token.scope ?? "").split(" "));
    if (!scopes.has("members:read")) {
      throw new ApiError(403, "insufficient_scope", "The token needs the members:read scope.", {
        headers: { "WWW-Authenticate": 'Bearer error="insufficient_scope", scope="members:read"' },
      });
    }
    const clientId = token.clientId as string;
    const client = oidc.clients.metadata(clientId);
    if (!client) throw unauthorized("The token's client no longer exists.");
    const registered = new Set(String(client.scope ?? "").split(" "));
    const sub = subParam.safeParse(req.params.sub);
    const member = sub.success
      ? s.db.select().from(members).where(eq(members.sub, sub.data)).get()
      : undefined;
    if (
      member?.status !== "active" ||
      !s.seals.holds("members", memberSealValues(member), member.seal, member.id)
    )
      throw new ApiError(404, "not_found", "No such member.");
    const l = locals(res);
    // A decoy never signs in to a site, so no site holds a grant of theirs: a site asking for one
    // by its sub (from a stolen list, a guess) raises the alarm here, answered as any stranger.
    // Whether it is one is decided here (it writes nothing); the alert is raised after the answer,
    // whose 404 its writes would otherwise make slower than a stranger's.
    s.honeytokens.checkAfterAnswer(member.id, "service_api", {
      actorType: "client",
      actorId: clientId,
      ip: l.ip,
      requestId: l.requestId,
    });
    // Only members who signed in to this site, and only what they granted it (and it registered).
    const granted = s.oidcStore.grantedScopes(member.sub, clientId);
    if (!granted) throw new ApiError(404, "not_found", "No such member.");
    const allowed = new Set([...registered].filter((sc) => granted.has(sc)));
    const fields = PROFILE_FIELDS.filter((f) => [...allowed].some((sc) => SCOPE_FIELDS[sc]?.includes(f)));
    const profile = s.vault.read(member.id, fields, {
      actorType: "client",
      actorId: clientId,
      reason: `service_api:${clientId}`,
      ip: l.ip,
      requestId: l.requestId,
    });
    res.json({
      sub: member.sub,
      ...(allowed.has("profile") ? { preferred_username: member.loginId } : {}),
      ...(allowed.has("email") ? { email_verified: member.emailVerified } : {}),
      profile,
    });
  });

  return r;
}
