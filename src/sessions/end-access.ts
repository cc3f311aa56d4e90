import type { OidcStore } from "../oidc/adapter.js";
import type { DeviceRegistry } from "./devices.js";
import type { SessionService } from "./sessions.js";

/** What endAccess ended, as audit details and API answers name it. */
export type AccessEnded = {
  sessions_revoked: number;
  oidc_rows_revoked: number;
  devices_revoked: number;
};

export const NOTHING_ENDED: AccessEnded = { sessions_revoked: 0, oidc_rows_revoked: 0, devices_revoked: 0 };

/**
 * End everything that lets a member in without signing in again: every session, every member-site
 * grant and token, every trusted device (whoever held a session may hold its device cookie). For
 * an admin's revoke, an MFA reset, a disable, an operator's new password, a suspected passkey copy.
 */
export function endAccess(
  d: { sessions: SessionService; oidc: OidcStore; devices: DeviceRegistry },
  member: { id: string; sub: string | undefined },
  reason: string,
): AccessEnded {
  return {
    sessions_revoked: d.sessions.revokeAll(member.id, reason),
    oidc_rows_revoked: member.sub ? d.oidc.revokeAccount(member.sub) : 0,
    devices_revoked: d.devices.revokeAllExcept(member.id, null),
  };
}
