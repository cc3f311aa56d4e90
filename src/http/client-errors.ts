import { type Server, STATUS_CODES } from "node:http";
import type { Duplex } from "node:stream";

/**
 * Requests Node's HTTP parser refuses before express sees them (a URL or headers over the 16 KB
 * limit, a malformed request line) get the contract's JSON error body, not Node's bare status
 * line: a member site's developer sees `invalid_request` and why.
 */
export function answerClientErrors(server: Server): void {
  server.on("clientError", (err: Error & { code?: string }, socket: Duplex) => {
    if (err.code === "ECONNRESET" || !socket.writable) {
      socket.destroy();
      return;
    }
    const tooLarge = err.code === "HPE_HEADER_OVERFLOW";
    // Not all of the request came within the server's request timeout (a body trickled in, or
    // promised and never sent): a timeout, not a malformed request.
    const timedOut = err.code === "ERR_HTTP_REQUEST_TIMEOUT" || err.code === "ERR_HTTP_HEADERS_TIMEOUT";
    const status = tooLarge ? 431 : timedOut ? 408 : 400;
    const body = JSON.stringify({
      error: "invalid_request",
      error_description: tooLarge
        ? "The request's URL or headers are too large (at most 16 KB together)."
        : timedOut
          ? "The request did not arrive in time."
          : "The request is not well-formed HTTP.",
    });
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n${body}`,
    );
  });
}
