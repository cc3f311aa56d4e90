/**
 * Preloaded into the server process that `npm run soak` (bench/soak.ts) spawns
 * (`node --expose-gc --import tsx --import bench/soak-probe.ts src/main.ts`): answers the soak's
 * memory questions over the IPC channel with process.memoryUsage(), after full garbage
 * collections when asked (two: the second lets V8 give back the pages the first emptied), so that
 * the samples compare what the server really holds, not garbage waiting to be collected (what
 * GET /metrics reports can't do). The server code is not touched. The channel is unref'd, so it
 * never keeps the server alive.
 */

interface MemoryQuestion {
  type: "memory";
  id: number;
  gc: boolean;
}

function isQuestion(msg: unknown): msg is MemoryQuestion {
  return typeof msg === "object" && msg !== null && (msg as { type?: unknown }).type === "memory";
}

if (process.send && process.channel) {
  process.on("message", (msg: unknown) => {
    if (!isQuestion(msg)) return;
    const gc = (globalThis as { gc?: () => void }).gc;
    if (msg.gc && gc) {
      gc();
      gc();
    }
    process.send?.({ type: "memory", id: msg.id, usage: process.memoryUsage(), gc: Boolean(msg.gc && gc) });
  });
  // Adding a 'message' listener refs the channel; the server's lifetime must not depend on it.
  process.channel.unref();
}
