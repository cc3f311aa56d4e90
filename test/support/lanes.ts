/** Headers that differ between any two answers (the clock, the connection). */
const VARYING = new Set(["date", "connection", "keep-alive"]);

/**
 * An answer's headers as the lane tests compare them (a lane's answer against express's): all but
 * those that vary between any two answers, and `skip` (e.g. the length of a page with a fresh
 * challenge in it).
 */
export function headersOf(res: { headers: Record<string, unknown> }, skip: string[] = []) {
  return Object.fromEntries(
    Object.entries(res.headers).filter(([k]) => !VARYING.has(k) && !skip.includes(k)),
  );
}
