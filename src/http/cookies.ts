import { serialize } from "cookie";
import type { Response } from "express";
import { DEVICE_COOKIE, DEVICE_TTL_MS } from "../sessions/devices.js";
import { SESSION_COOKIE } from "../sessions/sessions.js";

/**
 * The session cookie: HttpOnly (no script reads it), SameSite=Lax (not sent on cross-site
 * sub-requests or form posts), Secure whenever the issuer is https, host-only, whole-site path.
 * It is a browser-session cookie; the server enforces idle and absolute timeouts.
 */
export function setSessionCookie(res: Response, token: string, secure: boolean): void {
  res.append(
    "Set-Cookie",
    serialize(SESSION_COOKIE, token, { httpOnly: true, sameSite: "lax", secure, path: "/" }),
  );
}

export function clearSessionCookie(res: Response, secure: boolean): void {
  res.append(
    "Set-Cookie",
    serialize(SESSION_COOKIE, "", {
      httpOnly: true,
      sameSite: "lax",
      secure,
      path: "/",
      maxAge: 0,
      expires: new Date(0),
    }),
  );
}

/**
 * The device cookie: long-lived (browsers cap at 400 days; ours is a year), HttpOnly, SameSite=Lax,
 * kept across logout. Only its SHA-256 is stored; revoking the device row makes it worthless.
 */
export function setDeviceCookie(res: Response, token: string, secure: boolean): void {
  res.append(
    "Set-Cookie",
    serialize(DEVICE_COOKIE, token, {
      httpOnly: true,
      sameSite: "lax",
      secure,
      path: "/",
      maxAge: Math.floor(DEVICE_TTL_MS / 1000),
    }),
  );
}
