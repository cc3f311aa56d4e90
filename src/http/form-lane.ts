import type { IncomingMessage, ServerResponse } from "node:http";
import querystring from "node:querystring";
import express from "express";
import type { Logger } from "pino";
import type { ApiError } from "../errors.js";
import { requestIds } from "../logger.js";
import type { Metrics } from "../ops/metrics.js";
import { deviceTokenFrom } from "../sessions/devices.js";
import { sessionTokenFrom } from "../sessions/sessions.js";
import type { PasswordSignIn } from "../sessions/sign-in.js";
import { langCookie, sendPageError } from "./hosted.js";
import { loginForm, pageRefusal } from "./hosted-sign-in.js";
import {
  answerError,
  applyHeaders,
  asApiError,
  fromOwnOrigin,
  type LaneRequest,
  laneAnswer,
  laneRequest,
  type securityHeaders,
  single,
} from "./middleware.js";
import { type Lang, type LoginError, langOf } from "./pages.js";
import type { InteractionDetails } from "./routes/interactions.js";
import type { SignInLane } from "./sign-in-lane.js";
import { hadTurn, type StrangerQueue, serverBusy } from "./stranger-queue.js";
import { assertUtf8Form } from "./utf8.js";

/**
 * The form lane: `POST /interaction/:uid/login`, the hosted sign-in form, checked by the throttle
 * before express sees it — what the sign-in lane (src/http/sign-in-lane.ts) is for the JSON API.
 *
 * A bot sends its bad attempts to whichever door is cheaper to push through, and through express
 * a refused form post cost about 1 ms of main-thread time (routing, a dozen middleware, reading
 * the interaction twice): at 1,000 refused posts a second the event loop was full and a member's
 * sign-in p99 rose sixfold (`FLOOD_VIA=form npm run bench:flood`). So the lane reads the body with
 * express's own form parser, reads the interaction once, asks the sign-in for its refusal
 * (`PasswordSignIn.refusal`: the same decision, records and answer as `signIn`) and renders the
 * refusal page with the same code as the route (`loginPages`), after everything express's
 * middleware would have set: the request id, the security headers, the language cookie, the
 * access-log line, the metric.
 *
 * It answers only refusals of a well-formed attempt on a live login interaction. Everything else —
 * an admitted attempt, a body that isn't a sign-in, an interaction that is gone or past its login
 * prompt, an error — goes on to express with the body parsed (`req.body`, which express's parser
 * then leaves alone), and the route decides as before. It takes only the plain case: the path
 * exactly (`/interaction/<uid>/login`, a query allowed), a form content type with no charset or
 * UTF-8, a Content-Length within the form limit, no Content-Encoding, from our own origin.
 * test/form-lane.test.ts sends the same requests to apps with and without the lane and compares
 * the answers. Members on their own devices go first, strangers wait their turn, as on the
 * sign-in lane (src/http/stranger-queue.ts).
 */
/** Takes, answers or passes on as the sign-in lane does. */
export type FormLane = SignInLane;

/** The hosted forms' body limit (src/http/hosted.ts, `hostedForm`). */
export const FORM_LIMIT = 8 * 1024;
const PATH = /^\/interaction\/[A-Za-z0-9_-]{1,64}\/login$/;
/** The metric label express gives the route (src/http/metrics-routes.ts). */
const ROUTE = "/interaction/:uid/login";
const FORM = /^application\/x-www-form-urlencoded\s*(?:;\s*charset\s*=\s*"?utf-8"?\s*)?$/i;

export function formLane(deps: {
  signIn: PasswordSignIn;
  interactionDetails: (req: IncomingMessage, res: ServerResponse) => Promise<InteractionDetails>;
  renderLogin: (
    res: ServerResponse,
    details: InteractionDetails,
    lang: Lang,
    status: number,
    page: { error?: LoginError; loginId?: string; challenge?: object },
  ) => Promise<void>;
  logger: Logger;
  metrics: Metrics;
  issuerOrigin: string;
  secureCookies: boolean;
  /** express's compiled `trust proxy fn`, so the client address is the one express computes. */
  trustProxy: (address: string, hop: number) => boolean;
  headers: ReturnType<typeof securityHeaders>;
  shuttingDown: () => boolean;
  /**
   * Does the request go first: from a live device of the member its login ID names, or from an
   * address that member signed in from lately (`ip`: the client address, as express computes it)?
   */
  goesFirst: (req: IncomingMessage, loginInput: unknown, ip: string) => boolean;
  /** Where strangers' attempts wait their turn (shared with the sign-in lane). */
  strangers: StrangerQueue;
}): FormLane {
  const stats = { answered: 0, passedOn: 0 };
  // express's own form parser (the one `hostedForm` puts before the route), run on the request here.
  const parseForm = express.urlencoded({ extended: false, limit: FORM_LIMIT, verify: assertUtf8Form });

  function takes(req: IncomingMessage): boolean {
    if (req.method !== "POST") return false;
    const url = req.url ?? "";
    const q = url.indexOf("?");
    if (!PATH.test(q < 0 ? url : url.slice(0, q))) return false;
    const h = req.headers;
    const length = Number(h["content-length"]);
    return (
      h["transfer-encoding"] === undefined &&
      Number.isInteger(length) &&
      length > 0 &&
      length <= FORM_LIMIT &&
      (h["content-encoding"] === undefined || h["content-encoding"] === "identity") &&
      FORM.test(h["content-type"] ?? "") &&
      fromOwnOrigin(req, deps.issuerOrigin)
    );
  }

  function run(req: IncomingMessage, res: ServerResponse, onward: () => void): void {
    const r = laneRequest(req, deps.trustProxy, { start: process.hrtime.bigint(), began: performance.now() });
    const url = req.url ?? "";
    const q = url.indexOf("?");
    // express's "simple" query parser is node's querystring.
    const query = q < 0 ? {} : querystring.parse(url.slice(q + 1));
    const lang = langOf(single(req.headers["accept-language"]), single(req.headers.cookie), query.lang);
    const pass = () => {
      stats.passedOn++;
      onward();
    };
    const answered = () => {
      stats.answered++;
      // What express's middleware sets before the route, in its order (src/http/app.ts).
      laneAnswer(req, res, r, ROUTE, deps);
      applyHeaders(res, deps.headers);
      const cookie = langCookie(query.lang, deps.secureCookies);
      if (cookie) res.setHeader("Set-Cookie", cookie);
    };
    const body = req as IncomingMessage & { body?: unknown };
    parseForm(body as never, res as never, (err?: unknown) => {
      if (err) {
        // A form express's parser refuses (too many fields): the page error express answers.
        const api = asApiError(err);
        if (!api) return pass();
        answered();
        sendPageError(res, lang, api);
        return;
      }
      const now = () => {
        hadTurn.add(req);
        return requestIds.run(r.requestId, () =>
          // Nothing may escape as an unhandled rejection (it would stop the process): the error
          // handler's answer instead (a 500 with the request id, the error logged).
          decide(req, res, r, body.body, lang, answered, pass).catch((err: unknown) =>
            answerError(deps.logger, res, err, r.requestId),
          ),
        );
      };
      // A member on a live device of theirs (the login ID's member) goes first; anyone else waits
      // their turn, or is told the service is busy (src/http/stranger-queue.ts).
      let trusted: boolean;
      try {
        trusted = deps.goesFirst(req, (body.body as { login_id?: unknown } | undefined)?.login_id, r.ip);
      } catch {
        return pass(); // the route meets the same error and answers it
      }
      if (trusted) void now();
      else if (!deps.strangers.offer(req, now)) {
        answered();
        sendPageError(res, lang, serverBusy());
      }
    });
  }

  async function decide(
    req: IncomingMessage,
    res: ServerResponse,
    r: LaneRequest,
    body: unknown,
    lang: Lang,
    answered: () => void,
    pass: () => void,
  ): Promise<void> {
    let details: InteractionDetails;
    try {
      details = await deps.interactionDetails(req, res);
    } catch {
      return pass(); // no live interaction: the route answers that
    }
    const form = loginForm.safeParse(body);
    if (details.prompt.name !== "login" || !form.success) return pass();
    const cookie = single(req.headers.cookie);
    let refusal: ApiError | null;
    try {
      refusal = deps.signIn.refusal(
        {
          loginId: form.data.login_id,
          password: form.data.password,
          challengeSolution: form.data.challenge_solution,
        },
        {
          ip: r.ip,
          requestId: r.requestId,
          userAgent: single(req.headers["user-agent"]) ?? null,
          deviceToken: deviceTokenFrom(cookie),
          previousToken: sessionTokenFrom(cookie),
        },
      );
    } catch {
      return pass(); // the route meets the same error and answers it
    }
    if (refusal === null) return pass();
    answered();
    const page = pageRefusal(refusal, res);
    await deps.renderLogin(res, details, lang, page.status, {
      error: page.error,
      loginId: form.data.login_id,
      challenge: page.challenge,
    });
  }

  return { takes, run, stats };
}
