import { isIP } from "node:net";
import type { NextFunction, Request, RequestHandler, Response } from "express";
import type { Logger } from "pino";
import { ZodError } from "zod";
import { ApiError } from "../errors.js";
import { requestIds } from "../logger.js";
import { SESSION_COOKIE, type Session, type SessionService, sessionTokenFrom } from "../sessions/sessions.js";
import { randomBytesPooled } from "../vault/random.js";

/** Per-request values middleware leaves for the routes. */
export interface RequestLocals {
  requestId: string;
  ip: string;
  session: Session | null;
  sessionToken: string | null;
}

export function locals(res: Response): RequestLocals {
  return res.locals as RequestLocals;
}

/**
 * The client IP as express computed it (honouring SEKISHO_TRUST_PROXY), IPv4-mapped IPv6
 * unwrapped. A forwarded value that is not an IP address (a proxy passing on whatever the client
 * wrote) is not believed: the request counts as the proxy's own address, so made-up values can't
 * pose as a thousand fresh clients, and nothing but an address reaches the audit log.
 */
export function clientIp(req: Request): string {
  let ip = req.ip ?? req.socket.remoteAddress ?? "unknown";
  if (isIP(ip) === 0) ip = req.socket.remoteAddress ?? "unknown";
  return ip.startsWith("::ffff:") && ip.includes(".") ? ip.slice(7) : ip;
}

export function requestContext(): RequestHandler {
  return (req, res, next) => {
    const incoming = req.get("x-request-id");
    const requestId =
      incoming && /^[A-Za-z0-9._-]{8,64}$/.test(incoming)
        ? incoming
        : randomBytesPooled(12).toString("base64url");
    res.setHeader("X-Request-Id", requestId);
    Object.assign(res.locals, { requestId, ip: clientIp(req), session: null, sessionToken: null });
    // Everything logged while handling the request carries its id (src/logger.ts).
    requestIds.run(requestId, next);
  };
}

/** One access-log line per request: path without query string (queries may carry codes). */
export function accessLog(logger: Logger): RequestHandler {
  return (req, res, next) => {
    const start = process.hrtime.bigint();
    res.on("finish", () => {
      const l = locals(res);
      logger.info(
        {
          req_id: l.requestId,
          method: req.method,
          path: req.originalUrl.split("?")[0],
          status: res.statusCode,
          ms: Number((process.hrtime.bigint() - start) / 1000n) / 1000,
          ip: l.ip,
        },
        "request",
      );
    });
    next();
  };
}

export const noStore: RequestHandler = (_req, res, next) => {
  res.setHeader("Cache-Control", "no-store");
  res.setHeader("Pragma", "no-cache");
  next();
};

const JSON_TYPE = /^\s*application\/(?:[\w.-]+\+)?json\s*(?:;|$)/i;
const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);
const CHARSET = /;\s*charset\s*=\s*"?([^";\s]+)/i;

/**
 * CSRF defence for the JSON API: a state-changing call must come from our own origin (Origin or,
 * without it, Sec-Fetch-Site), and must be JSON when it carries a cookie or a body — a cross-site
 * form can't send application/json, and fetch can't without a CORS preflight we never grant.
 */
/**
 * Did this request come from our own origin? `Origin` decides when present; without it (or when
 * it is `null`, as under a strict referrer policy) Fetch Metadata's `Sec-Fetch-Site` does; a
 * request with neither (curl, a server) is not a browser's cross-site request.
 */
export function fromOwnOrigin(req: Request, issuerOrigin: string): boolean {
  const site = req.get("sec-fetch-site");
  const origin = req.get("origin") === "null" && site === "same-origin" ? undefined : req.get("origin");
  if (origin !== undefined) return origin === issuerOrigin;
  return !site || site === "same-origin" || site === "none";
}

export function originGuard(issuerOrigin: string): RequestHandler {
  return (req, _res, next) => {
    if (!UNSAFE.has(req.method)) return next();
    if (!fromOwnOrigin(req, issuerOrigin)) {
      return next(
        new ApiError(403, "forbidden_origin", "Cross-origin requests are not allowed.", {
          detail: `origin ${req.get("origin") ?? "-"} site ${req.get("sec-fetch-site") ?? "-"}`,
        }),
      );
    }
    const hasBody = Number(req.get("content-length") ?? 0) > 0 || req.get("transfer-encoding") !== undefined;
    const hasCookie = (req.get("cookie") ?? "").includes(`${SESSION_COOKIE}=`);
    if ((hasBody || hasCookie) && !JSON_TYPE.test(req.get("content-type") ?? "")) {
      return next(new ApiError(415, "unsupported_media_type", "Send the request as application/json."));
    }
    // JSON bodies are UTF-8 (RFC 8259); the parser would also decode UTF-16 and UTF-32.
    const charset = CHARSET.exec(req.get("content-type") ?? "")?.[1]?.toLowerCase();
    if (hasBody && charset !== undefined && charset !== "utf-8" && charset !== "utf8") {
      return next(new ApiError(415, "unsupported_media_type", "Send the request as UTF-8 JSON."));
    }
    next();
  };
}

/** Read the session cookie; routes decide whether they need one. */
export function sessionLoader(sessions: SessionService): RequestHandler {
  return (req, res, next) => {
    const token = sessionTokenFrom(req.get("cookie"));
    if (token) {
      const l = locals(res);
      l.sessionToken = token;
      l.session = sessions.authenticate(token);
    }
    next();
  };
}

/**
 * The signed-in member's full session, or 401. With `limited`, also a limited one (a sign-in that
 * must add a factor first: only reading /me and adding a factor accept it).
 */
export function requireSession(res: Response, opts: { limited?: boolean } = {}): Session {
  const session = locals(res).session;
  if (!session || (session.kind !== "full" && !(opts.limited && session.kind === "limited"))) {
    throw new ApiError(401, "unauthenticated", "Sign in first.");
  }
  return session;
}

interface BodyParserError {
  type?: string;
  status?: number;
}

export function notFound(): RequestHandler {
  return (_req, _res, next) => next(new ApiError(404, "not_found", "No such endpoint."));
}

/**
 * The contract error an error stands for: an ApiError as it is, a zod error or a client's bad
 * body or path as the 4xx it is; null for anything unexpected (a 500).
 */
export function asApiError(err: unknown): ApiError | null {
  if (err instanceof ApiError) return err;
  if (err instanceof ZodError) {
    const where = err.issues
      .slice(0, 5)
      .map((i) => `${i.path.join(".") || "body"}: ${i.message}`)
      .join("; ");
    return new ApiError(400, "invalid_request", where);
  }
  const e = err as BodyParserError;
  if (typeof e?.status === "number" && e.type === undefined && e.status >= 400 && e.status < 500) {
    // A client's error without a body-parser type: a body whose Content-Encoding doesn't
    // decode (zlib's error), a path parameter that isn't valid percent-encoding (URIError).
    return err instanceof URIError
      ? new ApiError(400, "invalid_request", "The request path is not valid percent-encoding.")
      : new ApiError(400, "invalid_request", "The request body could not be decoded.");
  }
  if (typeof e?.type === "string" && (e.status ?? 500) < 500) {
    return e.type === "entity.too.large"
      ? new ApiError(413, "payload_too_large", "The request body is too large.")
      : e.type === "entity.parse.failed"
        ? new ApiError(400, "invalid_request", "The request body is not valid JSON.")
        : e.type === "encoding.unsupported" || e.type === "charset.unsupported"
          ? new ApiError(415, "unsupported_media_type", "Send the request as UTF-8 JSON.")
          : new ApiError(400, "invalid_request", "The request could not be read.");
  }
  return null;
}

/** Every error becomes a contract error body; unexpected ones a bare 500 with the request id. */
export function errorHandler(logger: Logger) {
  return (err: unknown, _req: Request, res: Response, _next: NextFunction): void => {
    const l = locals(res);
    const api = asApiError(err);
    if (!api) {
      logger.error({ err, req_id: l.requestId }, "unhandled error");
      if (res.headersSent) return;
      res.status(500).json({
        error: "server_error",
        error_description: "Something went wrong on our side.",
        request_id: l.requestId,
      });
      return;
    }
    if (api.detail || api.status >= 500) {
      logger.warn(
        { code: api.code, status: api.status, detail: api.detail, req_id: l.requestId },
        "request refused",
      );
    }
    if (res.headersSent) return;
    for (const [k, v] of Object.entries(api.headers ?? {})) res.setHeader(k, v);
    const body = api.toJSON();
    if (api.status >= 500) body.request_id = l.requestId;
    res.status(api.status).json(body);
  };
}
