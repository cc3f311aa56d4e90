import type { IncomingMessage, ServerResponse } from "node:http";
import type { Logger } from "pino";
import { requestIds } from "../logger.js";
import type { Metrics } from "../ops/metrics.js";
import { laneAnswer, laneRequest } from "./middleware.js";

/**
 * The provider lane: the OpenID provider's JSON endpoints (token, userinfo, revocation,
 * introspection), which member sites' back ends call many times a second, handed to the provider
 * before express sees them.
 *
 * Through express these requests only passed through: they need none of its routing, body
 * parsing, sessions or page headers (the provider reads its own bodies and sets its own no-store
 * and CORS headers). Yet express's per-request work — its request and response prototypes, a
 * dozen router layers each matched against the path — cost about as much main-thread time as
 * the provider's whole refresh-token grant (docs/architecture.md, "Request flow"). So the lane
 * does here what express's middleware did for them, in the same order (src/http/app.ts), and
 * nothing else: the request id (header and log context), `Connection: close` while stopping, the
 * metric, the access-log line, `X-Content-Type-Options`, then the provider.
 *
 * It takes a request only when express would have sent it the same way: the path exactly (no
 * other spelling; anything else goes through express as before). test/provider-lane.test.ts sends
 * the same requests to apps with and without the lane and compares the answers.
 */
export interface ProviderLane {
  /** Will the lane take this request? (Cheap: the path only.) */
  takes(req: IncomingMessage): boolean;
  run(req: IncomingMessage, res: ServerResponse): void;
  /** Requests the lane handed to the provider. */
  readonly stats: { taken: number };
}

export function providerLane(deps: {
  /** The provider's JSON endpoints: each is also the request's metric label. */
  paths: readonly string[];
  provider: (req: IncomingMessage, res: ServerResponse) => unknown;
  logger: Logger;
  metrics: Metrics;
  /** express's compiled `trust proxy fn`, so the client address is the one express computes. */
  trustProxy: (address: string, hop: number) => boolean;
  shuttingDown: () => boolean;
}): ProviderLane {
  const paths = new Set(deps.paths);
  const stats = { taken: 0 };

  function pathOf(req: IncomingMessage): string {
    const url = req.url ?? "";
    const q = url.indexOf("?");
    return q < 0 ? url : url.slice(0, q);
  }

  function takes(req: IncomingMessage): boolean {
    return paths.has(pathOf(req));
  }

  function run(req: IncomingMessage, res: ServerResponse): void {
    stats.taken++;
    const r = laneRequest(req, deps.trustProxy, { start: process.hrtime.bigint(), began: performance.now() });
    laneAnswer(req, res, r, pathOf(req), deps);
    res.setHeader("X-Content-Type-Options", "nosniff");
    requestIds.run(r.requestId, () => void deps.provider(req, res));
  }

  return { takes, run, stats };
}
