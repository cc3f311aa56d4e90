import type { IncomingMessage } from "node:http";
import { describe, expect, it } from "vitest";
import { StrangerQueue } from "../src/http/stranger-queue.js";

/** A request as the queue sees it: only whether its client is still there. */
const request = (gone = false) => ({ socket: { destroyed: gone } }) as unknown as IncomingMessage;

describe("the stranger queue", () => {
  it("decides waiting attempts in arrival order, after the turn that queued them", async () => {
    const q = new StrangerQueue();
    const order: number[] = [];
    for (let i = 0; i < 5; i++) expect(q.offer(request(), () => order.push(i))).toBe(true);
    // Not in the same synchronous run: after the turn's I/O.
    expect(order).toEqual([]);
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    expect(order).toEqual([0, 1, 2, 3, 4]);
    expect(q.stats).toEqual({ waited: 5, busy: 0 });
  });

  it("refuses past its limit without queueing, and drops an attempt whose client has gone", async () => {
    const q = new StrangerQueue({ maxWaiting: 2 });
    const decided: string[] = [];
    expect(q.offer(request(true), () => decided.push("gone"))).toBe(true);
    expect(q.offer(request(), () => decided.push("here"))).toBe(true);
    expect(q.offer(request(), () => decided.push("too many"))).toBe(false);
    expect(q.stats).toEqual({ waited: 2, busy: 1 });
    await new Promise((r) => setTimeout(r, 10));
    expect(decided).toEqual(["here"]);
    expect(q.waiting).toBe(0);
  });

  it("works through a long line a slice per turn, letting other I/O in between", async () => {
    const q = new StrangerQueue({ budgetMs: 0 });
    const seen: string[] = [];
    for (let i = 0; i < 3; i++) q.offer(request(), () => seen.push(`attempt ${i}`));
    // Something else the loop has to do (a member's request, argon2's answer) comes in between.
    setImmediate(() => setImmediate(() => seen.push("other I/O")));
    await new Promise((r) => setTimeout(r, 20));
    expect(seen.indexOf("other I/O")).toBeGreaterThan(0);
    expect(seen.indexOf("other I/O")).toBeLessThan(3);
    expect(seen.filter((s) => s.startsWith("attempt"))).toEqual(["attempt 0", "attempt 1", "attempt 2"]);
  });

  it("is not stalled by a decision that never settles, nor stopped by one that throws", async () => {
    const q = new StrangerQueue();
    q.offer(request(), () => new Promise(() => {})); // waits forever
    q.offer(request(), () => {
      throw new Error("a bug in one decision");
    });
    q.offer(request(), () => Promise.reject(new Error("an async bug")));
    const last = new Promise<string>((resolve) => q.offer(request(), () => resolve("decided")));
    expect(await last).toBe("decided");
    expect(q.waiting).toBe(0);
  });
});
