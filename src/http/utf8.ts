import { isUtf8 } from "node:buffer";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { NextFunction, Request, Response } from "express";
import { ApiError } from "../errors.js";

/**
 * Bytes that aren't UTF-8 are refused, not read as U+FFFD. The parsers (JSON, forms, query
 * strings) would replace each bad byte without a word, and what comes out passes validation: a
 * name stored as "Ta\uFFFDro", or "%FF%FF%FF" as the three-character reason of an audited PII read,
 * while the same text sent as a lone-surrogate escape is refused. So the raw bytes are checked
 * first, and a request with bad ones is `400 invalid_request`.
 */
export class NotUtf8 extends ApiError {
  constructor(where: string) {
    super(400, "invalid_request", `The request ${where} is not valid UTF-8.`);
  }
}

/** For express.json's and the sign-in lane's body: the bytes as they came. */
export function assertUtf8Body(buf: Buffer): void {
  if (!isUtf8(buf)) throw new NotUtf8("body");
}

/** Whether every percent-encoded sequence of a query string or form body decodes as UTF-8. */
export function percentUtf8(encoded: string): boolean {
  if (!encoded.includes("%")) return true;
  for (const part of encoded.split(/[&=]/)) {
    try {
      decodeURIComponent(part.replace(/\+/g, " "));
    } catch {
      return false;
    }
  }
  return true;
}

/** For express.urlencoded: a form body whose bytes, or whose percent-escapes, aren't UTF-8. */
export function assertUtf8Form(_req: IncomingMessage, _res: ServerResponse, buf: Buffer): void {
  if (!isUtf8(buf) || !percentUtf8(buf.toString("latin1"))) throw new NotUtf8("form");
}

/**
 * Middleware: a query string whose percent-encoding isn't UTF-8 (or isn't percent-encoding: a
 * bare `%` must be sent as `%25`) is refused.
 */
export function utf8Query(req: Request, _res: Response, next: NextFunction): void {
  const url = req.originalUrl;
  const q = url.indexOf("?");
  next(q >= 0 && !percentUtf8(url.slice(q + 1)) ? new NotUtf8("query string (percent-encoded)") : undefined);
}
