import fs from "node:fs";
import path from "node:path";

/**
 * `<data dir>/sekisho.pid` while the server runs: `sekisho restore` refuses to replace a database
 * a live server has open (its WAL would be mixed into the restored file).
 */
const FILE = "sekisho.pid";

export function writePidFile(dataDir: string): void {
  fs.writeFileSync(path.join(dataDir, FILE), `${process.pid}\n`, { mode: 0o600 });
}

export function removePidFile(dataDir: string): void {
  try {
    const file = path.join(dataDir, FILE);
    if (fs.readFileSync(file, "utf8").trim() === String(process.pid)) fs.unlinkSync(file);
  } catch {
    // already gone
  }
}

/** The pid of a live server using this data dir, if any (a stale file names a dead process). */
export function runningServer(dataDir: string): number | null {
  let pid: number;
  try {
    pid = Number.parseInt(fs.readFileSync(path.join(dataDir, FILE), "utf8"), 10);
  } catch {
    return null;
  }
  if (!Number.isInteger(pid) || pid <= 0) return null;
  try {
    process.kill(pid, 0);
    return pid;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM" ? pid : null;
  }
}
