import http from "node:http";
import type { Request, RequestHandler } from "express";
import proxyaddr from "proxy-addr";
import type { Metrics } from "../ops/metrics.js";
import { OIDC_ROUTES } from "../oidc/provider.js";

const OIDC_PATHS = Object.values(OIDC_ROUTES).sort((a, b) => b.length - a.length);
const FORWARDING_HEADERS = ["x-forwarded-for", "forwarded", "x-real-ip"];

/**
 * The route pattern of a request, for a metric label: the express route that answered
 * (`/api/v1/admin/members/:member_id`), an OIDC endpoint (`/oidc/auth`, `/oidc/auth/*`), or
 * `unmatched` / `other` — never the path itself, which can carry ids.
 */
function routeOf(req: Request, status: number, matched: string | undefined): string {
  if (matched) return matched;
  const path = req.originalUrl.split("?")[0] ?? "";
  if (path === "/.well-known/openid-configuration") return path;
  for (const p of OIDC_PATHS) {
    if (path === p) return p;
    if (path.startsWith(`${p}/`)) return `${p}/*`;
  }
  if (path.startsWith("/assets/")) return "/assets/*";
  return status === 404 ? "unmatched" : "other";
}

const ROUTE = Symbol("route");
const MATCHED = Symbol("matched route");
type Tracked = { [ROUTE]?: unknown; [MATCHED]?: string; baseUrl: string };

/**
 * The router sets `req.route` when a route matches, while `req.baseUrl` still holds every mount
 * path above it (by the time the answer is sent, an error handler may have run outside the
 * routers): an accessor on the app's request prototype keeps the full pattern then. One
 * definition per app, nothing per request. The mount paths are lower-cased: routing ignores case,
 * and a label per spelling (`/API/v1`, `/Api/v1`, …) would let anyone grow the metrics without bound.
 */
function captureRoutes(requestPrototype: object): void {
  Object.defineProperty(requestPrototype, "route", {
    configurable: true,
    get(this: Tracked) {
      return this[ROUTE];
    },
    set(this: Tracked, value: { path?: unknown } | undefined) {
      this[ROUTE] = value;
      if (value && typeof value.path === "string")
        this[MATCHED] = `${this.baseUrl.toLowerCase()}${value.path}`;
    },
  });
}

/** Latency of every request, by method, route pattern and status class. */
export function httpMetrics(metrics: Metrics, requestPrototype: object): RequestHandler {
  captureRoutes(requestPrototype);
  return (req, res, next) => {
    const start = performance.now();
    res.once("finish", () => {
      const matched = (req as unknown as Tracked)[MATCHED];
      metrics.http(
        req.method,
        routeOf(req, res.statusCode, matched),
        res.statusCode,
        (performance.now() - start) / 1000,
      );
    });
    next();
  };
}

/**
 * Who may read the metrics: a client address in the allow-list. On the main port the address is
 * the one the rest of Sekisho sees (SEKISHO_TRUST_PROXY honoured); a request that carries
 * forwarding headers Sekisho was not told to trust is refused — it came through a proxy, and
 * the proxy's own loopback address says nothing about the client behind it.
 */
export function metricsAccess(allow: readonly string[], trustsProxy: boolean) {
  const allowed = proxyaddr.compile([...allow]);
  return (req: { ip?: string | undefined; headers: http.IncomingHttpHeaders }): boolean => {
    if (!trustsProxy && FORWARDING_HEADERS.some((h) => req.headers[h] !== undefined)) return false;
    return req.ip !== undefined && allowed(req.ip, 0);
  };
}

/** `GET /metrics` on the main app (when no separate metrics port is configured). */
export function metricsRoute(
  metrics: Metrics,
  allow: readonly string[],
  trustsProxy: boolean,
): RequestHandler {
  const may = metricsAccess(allow, trustsProxy);
  return (req, res, next) => {
    if (req.path !== "/metrics" || (req.method !== "GET" && req.method !== "HEAD")) return next();
    if (!may(req)) {
      res
        .status(403)
        .json({ error: "forbidden", error_description: "Metrics are not served to this address." });
      return;
    }
    metrics.render().then(
      ({ contentType, body }) => {
        res.setHeader("Content-Type", contentType);
        res.setHeader("Cache-Control", "no-store");
        res.send(body);
      },
      (err: unknown) => next(err),
    );
  };
}

/**
 * A separate listener for `/metrics` only (SEKISHO_METRICS_PORT), e.g. on an address only the
 * monitoring network reaches. The allow-list applies to the connecting address.
 */
export function startMetricsServer(
  metrics: Metrics,
  opts: { host: string; port: number; allow: readonly string[] },
): Promise<http.Server> {
  const may = metricsAccess(opts.allow, false);
  const server = http.createServer((req, res) => {
    const json = (status: number, error: string, description: string) => {
      res.writeHead(status, { "Content-Type": "application/json; charset=utf-8" });
      res.end(JSON.stringify({ error, error_description: description }));
    };
    const path = (req.url ?? "").split("?")[0];
    if (path !== "/metrics" || (req.method !== "GET" && req.method !== "HEAD"))
      return json(404, "not_found", "No such endpoint.");
    const ip = req.socket.remoteAddress;
    if (!may({ ip: ip?.startsWith("::ffff:") ? ip.slice(7) : ip, headers: {} }))
      return json(403, "forbidden", "Metrics are not served to this address.");
    metrics.render().then(
      ({ contentType, body }) => {
        res.writeHead(200, { "Content-Type": contentType, "Cache-Control": "no-store" });
        res.end(req.method === "HEAD" ? undefined : body);
      },
      () => json(500, "server_error", "Metrics could not be collected."),
    );
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host, () => resolve(server));
  });
}
