import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type Checkpointer, SAFETY_NET_PAGES, startCheckpointer } from "../src/db/checkpointer.js";
import { type Db, openDatabase } from "../src/db/connection.js";
import { createLogger } from "../src/logger.js";

describe("WAL checkpoints on a worker thread", () => {
  let dir: string;
  let db: Db;
  let cp: Checkpointer;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "sekisho-ckpt-"));
    db = openDatabase(path.join(dir, "s.db"));
    db.$client.exec("CREATE TABLE t (v TEXT)");
    // An interval longer than the test: only the checkpoints the test asks for run.
    cp = startCheckpointer(db, createLogger("silent"), 3_600_000);
  });
  afterEach(async () => {
    await cp.stop();
    db.$client.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const write = (pages: number) => {
    const insert = db.$client.prepare("INSERT INTO t VALUES (?)");
    // One row a page, one commit each, as requests write.
    for (let i = 0; i < pages; i++) insert.run("x".repeat(3000));
  };

  it("keeps checkpoints out of the connection's commits, and the worker copies the whole WAL back", async () => {
    expect(db.$client.pragma("wal_autocheckpoint", { simple: true })).toBe(SAFETY_NET_PAGES);
    write(1_500); // past SQLite's own limit of 1,000 pages, where a commit would checkpoint
    const first = await cp.checkpoint();
    expect(first.busy).toBe(false);
    expect(first.walPages).toBeGreaterThanOrEqual(1_500); // nothing was checkpointed in a commit
    expect(first.copied).toBe(first.walPages);
    // The next commit starts the WAL over: the file does not grow without end.
    write(10);
    const second = await cp.checkpoint();
    expect(second.walPages).toBeLessThan(100);
    expect(second.copied).toBe(second.walPages);
  });

  it("gives checkpoints back to the connection when it stops", async () => {
    await cp.stop();
    expect(db.$client.pragma("wal_autocheckpoint", { simple: true })).toBe(1_000);
    await expect(cp.checkpoint()).rejects.toThrow(/stopped/);
  });
});
