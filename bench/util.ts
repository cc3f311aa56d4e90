import { type ChildProcess, spawn } from "node:child_process";
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
  return spawn(process.execPath, [...prof, "--import", "tsx", "src/main.ts"], {
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
