#!/usr/bin/env node
// The `sekisho` command: runs src/cli.ts through tsx (no build step).
import { register } from "tsx/esm/api";

register();
// `sekisho audit export | head` closes the pipe early: that is not an error.
process.stdout.on("error", (err) => {
  if (err.code === "EPIPE") process.exit(0);
  throw err;
});
const { runCli } = await import("../src/cli.ts");
await runCli(process.argv);
