import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs/promises";
import net from "node:net";
import path from "node:path";

const ROOT = path.resolve(import.meta.dirname, "..");

/** Small pieces the benchmark scripts share. */

/** A free TCP port on loopback (for a server the script starts). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === "object" && addr ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

/** Rows as an aligned text table: the first column left-aligned, the others right-aligned. */
export function table(rows: ReadonlyArray<readonly string[]>): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length))) ?? [];
  return rows
    .map((r) =>
      r.map((cell, i) => (i === 0 ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0))).join("   "),
    )
    .join("\n");
}

/**
 * The Node flags the server runs with wherever it is started: `npm start`, the Dockerfile, the
 * systemd unit (test/operations.test.ts checks they agree). A young generation of up to 2×32 MB
 * instead of V8's 2×16: a busy server scavenges half as often, and fewer answers wait behind a
 * scavenge (docs/operations.md, "Node flags").
 */
export const SERVER_NODE_FLAGS = ["--max-semi-space-size=32"] as const;

/**
 * The real server (`src/main.ts`) in a child process on loopback, development mode, warn-level
 * logs; `env` adds to or overrides that. `profile` writes a CPU profile of it to bench/out/.
 */
export function spawnServer(opts: {
  dataDir: string;
  port: number;
  env?: Record<string, string>;
  profile?: boolean;
}): ChildProcess {
  const prof = opts.profile ? ["--cpu-prof", "--cpu-prof-dir", path.join(ROOT, "bench", "out")] : [];
  return spawn(process.execPath, [...prof, ...SERVER_NODE_FLAGS, "--import", "tsx", "src/main.ts"], {
    cwd: ROOT,
    env: {
      ...process.env,
      SEKISHO_DATA_DIR: opts.dataDir,
      PORT: String(opts.port),
      HOST: "127.0.0.1",
      LOG_LEVEL: "warn",
      NODE_ENV: "development",
      ...opts.env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
}

/** CPU seconds a thread or process has used so far (Linux /proc; null elsewhere), and when. */
export interface CpuSample {
  cpu: number | null;
  /** When, in ms (performance.now). */
  at: number;
}

/**
 * `/proc/<pid>/stat` (a whole process, all its threads) or `/proc/<pid>/task/<pid>/stat` (its
 * main thread: for Node, the event loop): utime + stime.
 */
export async function cpuOf(pid: number | undefined, what: "process" | "main thread"): Promise<CpuSample> {
  const at = performance.now();
  const file = what === "process" ? `/proc/${pid}/stat` : `/proc/${pid}/task/${pid}/stat`;
  const stat = pid ? await fs.readFile(file, "utf8").catch(() => null) : null;
  if (!stat) return { cpu: null, at };
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { cpu: (Number(fields[11]) + Number(fields[12])) / 100, at }; // 1/100 s ticks
}

/** How much of one CPU was used between two samples, as a percentage, or "?" without /proc. */
export function cpuPercent(a: CpuSample, b: CpuSample): string {
  if (a.cpu === null || b.cpu === null) return "?";
  return `${Math.round(((b.cpu - a.cpu) / ((b.at - a.at) / 1000)) * 100)}%`;
}
