#!/usr/bin/env node
// The `sekisho` command: runs src/cli.ts through tsx (no build step).
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { register } from "tsx/esm/api";

// `members import` streams half a million rows: with a bounded old generation the garbage is
// collected as it goes (about 240 MB at the peak instead of letting the heap grow to 360 MB, at
// no cost in speed), so it fits beside the running service. Re-run ourselves with that limit.
const [, , group, command] = process.argv;
if (group === "members" && command === "import" && !process.execArgv.some((a) => a.startsWith("--max-old-space-size"))) {
  const run = spawnSync(process.execPath, ["--max-old-space-size=128", fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: "inherit",
  });
  process.exit(run.status ?? 1);
}

register();
// `sekisho audit export | head` closes the pipe early: that is not an error.
process.stdout.on("error", (err) => {
  if (err.code === "EPIPE") process.exit(0);
  throw err;
});
const { runCli } = await import("../src/cli.ts");
await runCli(process.argv);
