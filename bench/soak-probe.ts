/**
 * Preloaded into the server process that `npm run soak` (bench/soak.ts) spawns
 * (`node --expose-gc --import tsx --import bench/soak-probe.ts src/main.ts`): answers the soak's
 * memory questions over the IPC channel with process.memoryUsage(), after a full garbage
 * collection when asked (so heap figures compare live objects, not garbage waiting to be
 * collected). Sekisho has no metrics endpoint yet; the server code is not touched. The channel is
 * unref'd, so it never keeps the server alive.
 */
import v8 from "node:v8";

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
    if (msg.gc && gc) gc();
    const heap = v8.getHeapStatistics();
    process.send?.({
      type: "memory",
      id: msg.id,
      usage: process.memoryUsage(),
      gc: Boolean(msg.gc && gc),
      heapSizeLimit: heap.heap_size_limit,
    });
  });
  // Adding a 'message' listener refs the channel; the server's lifetime must not depend on it.
  process.channel.unref();
}
