import fs from "node:fs";
import type { ServerResponse } from "node:http";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import express, { type Request, type Response, Router } from "express";
import type { ApiError } from "../errors.js";
import { declaredBodyLimit, fromOwnOrigin } from "./middleware.js";
import { errorPage, LANG_COOKIE, type Lang, langOf } from "./pages.js";
import { assertUtf8Form } from "./utf8.js";

/** The language of a page request (see langOf). */
export function reqLang(req: Request): Lang {
  return langOf(req.get("accept-language"), req.get("cookie"), req.query.lang);
}

/** `?lang=ja|en` on a page: remembered for the reader's next pages (a plain preference cookie). */
export function rememberLang(secure: boolean) {
  return (req: Request, res: Response, next: () => void) => {
    const cookie = langCookie(req.query.lang, secure);
    if (cookie) res.append("Set-Cookie", cookie);
    next();
  };
}

/** The preference cookie for a `?lang=` value, or null when it names no language of ours. */
export function langCookie(chosen: unknown, secure: boolean): string | null {
  if (chosen !== "ja" && chosen !== "en") return null;
  return `${LANG_COOKIE}=${chosen}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax${secure ? "; Secure" : ""}`;
}

/**
 * A refused page request (4xx, a 503) as a page in the reader's language (app.ts's page error
 * handler, the form lane), with the error's own headers (`Retry-After`).
 */
export function sendPageError(res: ServerResponse, lang: Lang, api: ApiError): void {
  pageHeaders(res);
  for (const [name, value] of Object.entries(api.headers ?? {})) res.setHeader(name, value);
  sendHtml(res, api.status, errorPage(lang, api.code, api.description, { page: true }));
}

/** An HTML page as express's `res.status(n).type("html").send(html)` sends it (for the lanes too). */
export function sendHtml(res: ServerResponse, status: number, html: string): void {
  res.statusCode = status;
  res.setHeader("Content-Type", "text/html; charset=utf-8");
  res.setHeader("Content-Length", Buffer.byteLength(html));
  res.end(html);
}

/**
 * What every hosted page shares: its headers (strict CSP: scripts only from our own files,
 * fetch only to our own origin, framed by nobody, cached by nobody) and the guard on its form posts.
 */
export function pageHeaders(
  res: { setHeader(name: string, value: string): unknown },
  redirects: string[] = [],
): void {
  res.setHeader("Cache-Control", "no-store");
  // Same-origin referrers let the browser send our Origin on the form post (no-referrer makes it "null").
  res.setHeader("Referrer-Policy", "same-origin");
  const origins = [...new Set(redirects.map((u) => new URL(u).origin))].join(" ");
  res.setHeader(
    "Content-Security-Policy",
    `default-src 'none'; script-src 'self'; worker-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; img-src https: data:; form-action 'self'${origins ? ` ${origins}` : ""}; frame-ancestors 'none'; base-uri 'none'`,
  );
}

/** A hosted page's form post: from our own origin only (login CSRF), small, urlencoded. */
export function hostedForm(issuerOrigin: string) {
  return [
    (req: Request, res: Response, next: () => void) => {
      if (fromOwnOrigin(req, issuerOrigin)) return next();
      pageHeaders(res);
      res
        .status(403)
        .type("html")
        .send(errorPage(reqLang(req), "forbidden_origin", "Cross-origin requests are not allowed."));
    },
    declaredBodyLimit(8 * 1024),
    express.urlencoded({ extended: false, limit: "8kb", verify: assertUtf8Form }),
  ];
}

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

/**
 * The two script files of the hosted pages: SimpleWebAuthn's browser bundle (from the installed
 * package, so it always matches the server library) and our passkey glue. Read once at start.
 */
export function assetRoutes(): Router {
  const altcha = path.join(path.dirname(require.resolve("altcha")), "..");
  const files: Record<string, Buffer> = {
    // ALTCHA's widget without inline workers or styles (its CSP-friendly build), the SHA-256
    // worker as a same-origin file, its stylesheet, and our set-up (worker, Japanese strings).
    "/assets/altcha.js": fs.readFileSync(path.join(altcha, "external/altcha.umd.min.cjs")),
    "/assets/altcha-sha-worker.js": fs.readFileSync(path.join(altcha, "workers/sha.js")),
    "/assets/altcha.css": fs.readFileSync(path.join(altcha, "external/altcha.css")),
    "/assets/altcha-setup.js": fs.readFileSync(path.join(here, "assets/altcha-setup.js")),
    "/assets/simplewebauthn-browser.js": fs.readFileSync(
      // require.resolve gives <pkg>/script/index.js; the bundle sits beside it in dist/bundle.
      path.join(path.dirname(require.resolve("@simplewebauthn/browser")), "../dist/bundle/index.umd.min.js"),
    ),
    "/assets/passkeys.js": fs.readFileSync(path.join(here, "assets/passkeys.js")),
  };
  const r = Router();
  for (const [route, body] of Object.entries(files)) {
    r.get(route, (_req, res) => {
      res.setHeader(
        "Content-Type",
        route.endsWith(".css") ? "text/css; charset=utf-8" : "text/javascript; charset=utf-8",
      );
      res.setHeader("Cache-Control", "no-cache");
      res.setHeader("X-Content-Type-Options", "nosniff");
      res.send(body);
    });
  }
  return r;
}
