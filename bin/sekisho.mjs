#!/usr/bin/env node
// The `sekisho` command: runs src/cli.ts through tsx (no build step).
import { spawn } from "node:child_process";
import { constants } from "node:os";
import { fileURLToPath } from "node:url";
import { register } from "tsx/esm/api";

// `members import` streams half a million rows: with a bounded old generation the garbage is
// collected as it goes (about 250 MB at the peak instead of letting the heap grow to 360 MB, at
// no cost in speed), so it fits beside the running service. Re-run ourselves with that limit.
// The two processes live and die together: signals are passed on, and the re-run process stops
// (between two batches, so no half member) when its parent goes away, even by SIGKILL — it then
// sees its IPC channel close.
const [, , group, command] = process.argv;
if (group === "members" && command === "import" && !process.execArgv.some((a) => a.startsWith("--max-old-space-size"))) {
  const child = spawn(process.execPath, ["--max-old-space-size=128", fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: ["inherit", "inherit", "inherit", "ipc"],
    env: { ...process.env, SEKISHO_REEXEC: "1" },
  });
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => child.kill(signal));
  child.on("exit", (code, signal) => process.exit(code ?? 128 + (constants.signals[signal] ?? 0)));
} else {
  if (process.env.SEKISHO_REEXEC === "1" && process.channel) {
    process.channel.unref();
    process.on("disconnect", () => process.exit(137));
  }
  await main();
}

async function main() {
  register();
  // `sekisho audit export | head` closes the pipe early: that is not an error.
  process.stdout.on("error", (err) => {
    if (err.code === "EPIPE") process.exit(0);
    throw err;
  });
  const { runCli } = await import("../src/cli.ts");
  await runCli(process.argv);
}
