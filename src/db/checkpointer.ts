import { createRequire } from "node:module";
import { Worker } from "node:worker_threads";
import type { Logger } from "pino";
import type { Db } from "./connection.js";

/**
 * WAL checkpoints off the event loop.
 *
 * In WAL mode a commit appends pages to the -wal file; a checkpoint copies them back into the
 * database file and, with synchronous=NORMAL, waits for the disk (fsync). SQLite runs one itself
 * inside the commit that takes the WAL past 1,000 pages, so every few hundred writes one request
 * waited for the disk on the main thread, and with it every request queued behind it: about
 * 0.1 ms per write on average here (docs/operations.md, "Storage").
 *
 * So the server turns the connection's own checkpoints off, but for a far limit kept as a safety
 * net, and a worker thread with a connection of its own runs a PASSIVE checkpoint every
 * `intervalMs` (PASSIVE: it copies what no reader still needs and never blocks a reader or a
 * writer). Nothing changes for durability: a commit is as durable as before (in the WAL), and a
 * checkpoint is only the copy. If the worker stops, the connection's checkpoints come back.
 */
export interface Checkpointer {
  /** Checkpoint now and tell what it did: the WAL's size in pages and how many were copied. */
  checkpoint(): Promise<{ busy: boolean; walPages: number; copied: number }>;
  stop(): Promise<void>;
}

/** The connection's own checkpoint limit while the worker runs: ~80 MB of WAL, a safety net. */
export const SAFETY_NET_PAGES = 20_000;
const SQLITE_DEFAULT_PAGES = 1_000;

const WORKER = `
const { parentPort, workerData } = require("node:worker_threads");
const Database = require(workerData.module);
const db = new Database(workerData.file, { fileMustExist: true });
db.pragma("busy_timeout = 0");
const run = () => {
  const [r] = db.pragma("wal_checkpoint(PASSIVE)");
  return { busy: r.busy !== 0, walPages: r.log, copied: r.checkpointed };
};
const timer = setInterval(() => {
  try { run(); } catch (err) { parentPort.postMessage({ error: String(err && err.message || err) }); }
}, workerData.intervalMs);
parentPort.on("message", (m) => {
  if (m === "stop") { clearInterval(timer); db.close(); parentPort.close(); return; }
  try { parentPort.postMessage({ id: m, result: run() }); }
  catch (err) { parentPort.postMessage({ id: m, error: String(err && err.message || err) }); }
});
`;

export function startCheckpointer(db: Db, logger: Logger, intervalMs = 500): Checkpointer {
  const file = db.$client.name;
  db.$client.pragma(`wal_autocheckpoint = ${SAFETY_NET_PAGES}`);
  const worker = new Worker(WORKER, {
    eval: true,
    workerData: { module: createRequire(import.meta.url).resolve("better-sqlite3"), file, intervalMs },
  });
  worker.unref();
  let next = 0;
  const waiting = new Map<number, { resolve: (r: never) => void; reject: (e: Error) => void }>();
  let stopped = false;
  let reported = false;
  worker.on("message", (m: { id?: number; result?: never; error?: string }) => {
    if (m.id === undefined) {
      // A failed periodic checkpoint: said once; the connection's safety net still holds.
      if (!reported) logger.warn({ err: m.error }, "background WAL checkpoint failed");
      reported = true;
      return;
    }
    const w = waiting.get(m.id);
    waiting.delete(m.id);
    if (m.error !== undefined) w?.reject(new Error(m.error));
    else w?.resolve(m.result as never);
  });
  const fallBack = (why: unknown) => {
    if (stopped) return;
    stopped = true;
    logger.error({ err: why }, "WAL checkpoint worker stopped: the database checkpoints itself again");
    if (db.$client.open) db.$client.pragma(`wal_autocheckpoint = ${SQLITE_DEFAULT_PAGES}`);
    for (const w of waiting.values()) w.reject(new Error("checkpoint worker stopped"));
    waiting.clear();
  };
  worker.on("error", fallBack);
  worker.on("exit", (code) => fallBack(`exit ${code}`));
  return {
    checkpoint() {
      if (stopped) return Promise.reject(new Error("checkpoint worker stopped"));
      const id = next++;
      return new Promise((resolve, reject) => {
        waiting.set(id, { resolve, reject });
        worker.postMessage(id);
      });
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      const exited = new Promise<void>((r) => worker.once("exit", () => r()));
      worker.ref(); // keeps the process up until the worker has closed its connection
      worker.postMessage("stop");
      await exited;
      for (const w of waiting.values()) w.reject(new Error("checkpoint worker stopped"));
      waiting.clear();
      if (db.$client.open) db.$client.pragma(`wal_autocheckpoint = ${SQLITE_DEFAULT_PAGES}`);
    },
  };
}
