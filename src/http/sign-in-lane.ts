import { isUtf8 } from "node:buffer";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Logger } from "pino";
import type { ApiError } from "../errors.js";
import { requestIds } from "../logger.js";
import type { Metrics } from "../ops/metrics.js";
import { deviceTokenFrom } from "../sessions/devices.js";
import type { PasswordSignIn } from "../sessions/sign-in.js";
import {
  answerError,
  applyHeaders,
  asApiError,
  fromOwnOrigin,
  type LaneRequest,
  laneAnswer,
  laneRequest,
  noStoreHeaders,
  type securityHeaders,
  single,
} from "./middleware.js";
import { loginBody } from "./routes/members.js";
import { hadTurn, type StrangerQueue, serverBusy } from "./stranger-queue.js";
import { NotUtf8 } from "./utf8.js";

/**
 * The sign-in lane: `POST /api/v1/login`, the request an attacker sends by the thousand, checked
 * by the throttle before express sees it.
 *
 * A refused attempt (429, a 403 challenge, a 400 for a body that isn't a sign-in) costs the
 * throttle's decision, microseconds; through express it cost several times that in routing,
 * middleware and body parsing, and at 1,000 refused attempts a second that was most of the main
 * thread — which a member's sign-in waits for (docs/throttling.md, "Benchmarks"). So the lane
 * reads the body itself, asks the sign-in for its refusal (`PasswordSignIn.refusal`: the same
 * decision, records and answer as `signIn`), and answers it with everything express would have
 * sent: the security headers, no-store, the request id, the access-log line, the metric. An
 * attempt the throttle would admit goes on to express with its body already parsed, and `signIn`
 * decides again (nothing was recorded or reserved). So an admitted attempt is looked up, its
 * device checked and its decision taken twice: tens of microseconds, not measurable beside the
 * ~1.5 ms of main-thread work of a sign-in here, for one decision that stays `signIn`'s alone.
 *
 * It takes only the plain case — the path exactly (any case, one trailing slash, a query), a
 * UTF-8 JSON content type, a Content-Length within the body limit or a chunked body (the limit
 * enforced as it arrives), no Content-Encoding, from our own origin — and leaves everything else
 * to express, which answers it as before. An attempt with a challenge solution goes on only when
 * the solution passes the checks that need no hashing (`ProofOfWork.plausible`); a junk one is
 * answered here as one without a solution, which is what `signIn` would make of it.
 * test/sign-in-lane.test.ts sends the same requests to an app with and without the lane and
 * compares the answers.
 *
 * Members on their own devices go first: an attempt without a live `sekisho_device` cookie of the
 * member it names waits its turn in the `StrangerQueue` (src/http/stranger-queue.ts), and past its
 * limit is answered `503 server_busy` at once.
 */
export interface SignInLane {
  /** Will the lane take this request? (Cheap: method, path and headers only.) */
  takes(req: IncomingMessage): boolean;
  /** Answer a refusal, or call `onward` with `req.body` set. Only for requests `takes` took. */
  run(req: IncomingMessage, res: ServerResponse, onward: () => void): void;
  /** Requests answered here, and those passed on to express. */
  readonly stats: { answered: number; passedOn: number };
}

const PATH = "/api/v1/login";
/** The metric label express gives the route (src/http/metrics-routes.ts); `other` before it. */
const ROUTE = "/api/v1/login";
/** JSON, with no charset or UTF-8 exactly as body-parser reads it (`utf8` is its 415). */
const JSON_UTF8 = /^application\/json\s*(?:;\s*charset\s*=\s*"?utf-8"?\s*)?$/i;
/** body-parser's strict mode: a JSON body must start (after blanks) with `{` or `[`. */
const STRICT_START = /^[ \t\n\r]*[{[]/;

export function signInLane(deps: {
  signIn: PasswordSignIn;
  logger: Logger;
  metrics: Metrics;
  issuerOrigin: string;
  /** express's compiled `trust proxy fn`, so the client address is the one express computes. */
  trustProxy: (address: string, hop: number) => boolean;
  headers: ReturnType<typeof securityHeaders>;
  bodyLimit: number;
  shuttingDown: () => boolean;
  /**
   * Does the request go first: from a live device of the member its login ID names, or from an
   * address that member signed in from lately (`ip`: the client address, as express computes it)?
   */
  goesFirst: (req: IncomingMessage, loginInput: unknown, ip: string) => boolean;
  /** Where strangers' attempts wait their turn (shared with the form lane). */
  strangers: StrangerQueue;
}): SignInLane {
  const stats = { answered: 0, passedOn: 0 };

  function takes(req: IncomingMessage): boolean {
    if (req.method !== "POST") return false;
    const url = req.url ?? "";
    const q = url.indexOf("?");
    let path = q < 0 ? url : url.slice(0, q);
    if (path.length > PATH.length + 1) return false;
    if (path.endsWith("/")) path = path.slice(0, -1);
    if (path.toLowerCase() !== PATH) return false;
    const h = req.headers;
    // A length within the limit, or chunked (the limit is then enforced as it arrives).
    const length = Number(h["content-length"]);
    const te = h["transfer-encoding"];
    const sized =
      te === undefined
        ? Number.isInteger(length) && length > 0 && length <= deps.bodyLimit
        : h["content-length"] === undefined && te.toLowerCase() === "chunked";
    return (
      sized &&
      (h["content-encoding"] === undefined || h["content-encoding"] === "identity") &&
      JSON_UTF8.test(h["content-type"] ?? "") &&
      fromOwnOrigin(req, deps.issuerOrigin)
    );
  }

  function run(req: IncomingMessage, res: ServerResponse, onward: () => void): void {
    const arrived = { start: process.hrtime.bigint(), began: performance.now() };
    const chunks: Buffer[] = [];
    let size = 0;
    const context = () => laneRequest(req, deps.trustProxy, arrived);
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= deps.bodyLimit) {
        chunks.push(chunk);
        return;
      }
      // Too large (a chunked body): answered as the body parser would, before the route.
      req.off("data", onData);
      req.off("end", onEnd);
      answer(req, res, context(), asApiError({ type: "entity.too.large", status: 413 }), "other");
    };
    const onEnd = () => {
      const bytes = Buffer.concat(chunks);
      // As express's JSON parser checks it (src/http/utf8.ts).
      if (!isUtf8(bytes)) {
        answer(req, res, context(), new NotUtf8("body"), "other");
        return;
      }
      // As body-parser reads it: a byte-order mark dropped, an empty body an empty object.
      const text = bytes.toString("utf8").replace(/^\uFEFF/, "");
      chunks.length = 0; // not kept while the attempt waits its turn
      const r = context();
      let body: unknown;
      try {
        body = text === "" ? {} : STRICT_START.test(text) ? JSON.parse(text) : undefined;
      } catch {
        body = undefined;
      }
      // Not JSON: express answers it before its router matches a route (metric label `other`).
      if (body === undefined) {
        answer(req, res, r, asApiError({ type: "entity.parse.failed", status: 400 }), "other");
        return;
      }
      // Not a sign-in: answered at once (no throttle state is involved), so that what waits its
      // turn is small.
      const parsed = loginBody.safeParse(body);
      if (!parsed.success) {
        answer(req, res, r, asApiError(parsed.error), ROUTE);
        return;
      }
      const deviceToken = deviceTokenFrom(single(req.headers.cookie));
      const decide = () => {
        hadTurn.add(req);
        let refusal: ApiError | null;
        try {
          const input = {
            loginId: parsed.data.login_id,
            password: parsed.data.password,
            challengeSolution: parsed.data.challenge_solution,
          };
          const ctx = {
            ip: r.ip,
            requestId: r.requestId,
            userAgent: single(req.headers["user-agent"]) ?? null,
            previousToken: null,
            deviceToken,
          };
          refusal = requestIds.run(r.requestId, () => deps.signIn.refusal(input, ctx));
        } catch (err) {
          answer(req, res, r, err, ROUTE);
          return;
        }
        if (refusal === null) {
          stats.passedOn++;
          (req as IncomingMessage & { body?: unknown }).body = body;
          onward();
          return;
        }
        answer(req, res, r, refusal, ROUTE);
      };
      // A member on a live device of theirs (the login ID's member) goes first; anyone else waits
      // their turn, or is told the service is busy.
      let trusted: boolean;
      try {
        trusted = deps.goesFirst(req, parsed.data.login_id, r.ip);
      } catch (err) {
        answer(req, res, r, err, ROUTE);
        return;
      }
      if (trusted) decide();
      else if (!deps.strangers.offer(req, decide)) answer(req, res, r, serverBusy(), ROUTE);
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", () => {}); // the client went away: there is no one to answer
  }

  function answer(
    req: IncomingMessage,
    res: ServerResponse,
    r: LaneRequest,
    err: unknown,
    route: string,
  ): void {
    stats.answered++;
    // What express's middleware sets before the route, in its order (src/http/app.ts).
    laneAnswer(req, res, r, route, deps);
    applyHeaders(res, deps.headers);
    noStoreHeaders(res);
    answerError(deps.logger, res, err, r.requestId);
  }

  return { takes, run, stats };
}
