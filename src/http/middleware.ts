import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from "node:http";
import { isIP } from "node:net";
import type { NextFunction, Request, RequestHandler, Response } from "express";
import helmet, { type HelmetOptions } from "helmet";
import type { Logger } from "pino";
import proxyaddr from "proxy-addr";
import { ZodError } from "zod";
import { ApiError } from "../errors.js";
import { requestIds } from "../logger.js";
import type { Metrics } from "../ops/metrics.js";
import { type Session, type SessionService, sessionTokenFrom } from "../sessions/sessions.js";
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
  return clientIpOf(req.ip, req.socket.remoteAddress);
}

/** clientIp's rule, from the address proxy-addr computed and the socket's own. */
export function clientIpOf(computed: string | undefined, remote: string | undefined): string {
  let ip = computed ?? remote ?? "unknown";
  if (isIP(ip) === 0) ip = remote ?? "unknown";
  return ip.startsWith("::ffff:") && ip.includes(".") ? ip.slice(7) : ip;
}

/** A request header as express's `req.get` reads it (repeated ones joined), for the lanes. */
export function single(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(", ") : v;
}

/** The client's X-Request-Id when it is a sane one, else a fresh random id. */
export function requestIdFrom(incoming: string | undefined): string {
  return incoming && /^[A-Za-z0-9._-]{8,64}$/.test(incoming)
    ? incoming
    : randomBytesPooled(12).toString("base64url");
}

export function requestContext(): RequestHandler {
  return (req, res, next) => {
    const requestId = requestIdFrom(req.get("x-request-id"));
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
      logRequest(
        logger,
        { requestId: l.requestId, method: req.method, path: req.originalUrl, ip: l.ip },
        res,
        start,
      );
    });
    next();
  };
}

/** A request answered before express (src/http/*-lane.ts): what requestContext works out. */
export interface LaneRequest {
  requestId: string;
  ip: string;
  /** When it arrived: for the access log (hrtime) and the metric (performance.now). */
  start: bigint;
  began: number;
}

export function laneRequest(
  req: IncomingMessage,
  trustProxy: (address: string, hop: number) => boolean,
  arrived: { start: bigint; began: number },
): LaneRequest {
  const incoming = req.headers["x-request-id"];
  return {
    requestId: requestIdFrom(Array.isArray(incoming) ? incoming.join(", ") : incoming),
    ip: clientIpOf(proxyaddr(req, trustProxy), req.socket.remoteAddress),
    ...arrived,
  };
}

/**
 * What express's first middleware does for the answer to a request a lane takes, in its order
 * (src/http/app.ts): the request id, `Connection: close` while stopping, and once it is sent the
 * metric (under `route`) and the access-log line.
 */
export function laneAnswer(
  req: IncomingMessage,
  res: ServerResponse,
  r: LaneRequest,
  route: string,
  deps: { logger: Logger; metrics: Metrics; shuttingDown: () => boolean },
): void {
  res.once("finish", () => {
    deps.metrics.http(req.method ?? "GET", route, res.statusCode, (performance.now() - r.began) / 1000);
    logRequest(
      deps.logger,
      { requestId: r.requestId, method: req.method, path: req.url ?? route, ip: r.ip },
      res,
      r.start,
    );
  });
  res.setHeader("X-Request-Id", r.requestId);
  if (deps.shuttingDown()) res.setHeader("Connection", "close");
}

/** The access-log line of one answered request (the path without its query). */
export function logRequest(
  logger: Logger,
  r: { requestId: string; method: string | undefined; path: string; ip: string },
  res: ServerResponse,
  start: bigint,
): void {
  logger.info(
    {
      req_id: r.requestId,
      method: r.method,
      path: r.path.split("?")[0],
      status: res.statusCode,
      ms: Number((process.hrtime.bigint() - start) / 1000n) / 1000,
      ip: r.ip,
    },
    "request",
  );
}

/** Every API answer: never stored by a browser or a cache. */
export function noStoreHeaders(res: ServerResponse): void {
  res.setHeader("Cache-Control", "no-store");
  res.setHeader("Pragma", "no-cache");
}

export const noStore: RequestHandler = (_req, res, next) => {
  noStoreHeaders(res);
  next();
};

type HeaderStep = readonly [name: string, value: string | null];

/**
 * helmet's headers, worked out once: they depend on the configuration, not on the request (no
 * nonces, no per-request directives), so the middleware replays a list instead of running
 * helmet's dozen middlewares on every request, and the sign-in lane sends the same list.
 * helmet is run against a recorder; `null` stands for a header it removes.
 */
export function securityHeaders(options: HelmetOptions): readonly HeaderStep[] {
  const steps: HeaderStep[] = [];
  const recorder = {
    setHeader: (name: string, value: string) => steps.push([name, String(value)]),
    removeHeader: (name: string) => steps.push([name, null]),
  };
  let done = false;
  helmet(options)({} as never, recorder as never, () => {
    done = true;
  });
  if (!done) throw new Error("helmet did not finish synchronously: its headers can't be replayed");
  return steps;
}

export function applyHeaders(res: ServerResponse, steps: readonly HeaderStep[]): void {
  for (const [name, value] of steps) {
    if (value === null) res.removeHeader(name);
    else res.setHeader(name, value);
  }
}

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
export function fromOwnOrigin(req: { headers: IncomingHttpHeaders }, issuerOrigin: string): boolean {
  const site = req.headers["sec-fetch-site"];
  const sent = req.headers.origin;
  const origin = sent === "null" && site === "same-origin" ? undefined : sent;
  if (origin !== undefined) return origin === issuerOrigin;
  return !site || site === "same-origin" || site === "none";
}

/**
 * A request another site started (a link or a redirect from elsewhere, by Fetch Metadata): GETs
 * that decrypt and count against an admin's PII budget don't run for those, or any page could
 * spend an admin's budget (and raise a false alarm) by sending them a link. Requests without the
 * header (curl, older browsers) are not refused.
 */
export function fromAnotherSite(req: { headers: IncomingHttpHeaders }): boolean {
  const site = req.headers["sec-fetch-site"];
  return site === "cross-site" || site === "same-site";
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
    // Read as the session loader reads it (the cookie parser), not as text: a header the parser
    // accepts (`sekisho_session =…`) must not slip past.
    const hasCookie = sessionTokenFrom(req.get("cookie")) !== null;
    if ((hasBody || hasCookie) && !JSON_TYPE.test(req.get("content-type") ?? "")) {
      return next(new ApiError(415, "unsupported_media_type", "Send the request as application/json."));
    }
    // JSON bodies are UTF-8 (RFC 8259); the parser would also decode UTF-16 and UTF-32.
    const charset = CHARSET.exec(req.get("content-type") ?? "")?.[1]?.toLowerCase();
    if ((hasBody || hasCookie) && charset !== undefined && charset !== "utf-8" && charset !== "utf8") {
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
    answerError(logger, res, err, locals(res).requestId);
  };
}

/** The error handler's work on a plain response (the sign-in lane answers without express). */
export function answerError(logger: Logger, res: ServerResponse, err: unknown, requestId: string): void {
  const api = asApiError(err);
  if (!api) {
    logger.error({ err, req_id: requestId }, "unhandled error");
    if (res.headersSent) return;
    sendApiError(res, new ApiError(500, "server_error", "Something went wrong on our side."), requestId);
    return;
  }
  logRefusal(logger, api, requestId);
  if (res.headersSent) return;
  sendApiError(res, api, requestId);
}

/** A refusal worth a log line: one with an internal note, or a 5xx. */
function logRefusal(logger: Logger, api: ApiError, requestId: string): void {
  if (api.detail || api.status >= 500) {
    logger.warn(
      // `error`, not `code`: the logger censors every top-level `code` (a TOTP code could be one).
      { error: api.code, status: api.status, detail: api.detail, req_id: requestId },
      "request refused",
    );
  }
}

/** A contract error as the API sends it (the error handler's and the sign-in lane's answer). */
function sendApiError(res: ServerResponse, api: ApiError, requestId: string): void {
  for (const [k, v] of Object.entries(api.headers ?? {})) res.setHeader(k, v);
  const body = api.toJSON();
  if (api.status >= 500) body.request_id = requestId;
  const json = JSON.stringify(body);
  res.statusCode = api.status;
  res.setHeader("Content-Type", "application/json; charset=utf-8");
  res.setHeader("Content-Length", Buffer.byteLength(json));
  res.end(json);
}

/**
 * A body declared larger than `limit` is refused at once (413 payload_too_large, the connection
 * closed after the answer), before anything reads it: the body parsers would read and discard all
 * of it first, so a request declaring gigabytes held its connection until the server's request
 * timeout and then got a misleading 400.
 */
export function declaredBodyLimit(limit: number) {
  return (req: Request, res: Response, next: NextFunction): void => {
    const declared = Number(req.headers["content-length"]);
    if (!(declared > limit)) {
      next();
      return;
    }
    res.setHeader("Connection", "close");
    next(Object.assign(new Error("request entity too large"), { type: "entity.too.large", status: 413 }));
  };
}
