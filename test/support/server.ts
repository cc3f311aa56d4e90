import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

const ROOT = path.resolve(import.meta.dirname, "../..");

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

export interface RunningServer {
  url: string;
  dir: string;
  env: Record<string, string>;
  proc: ChildProcess;
  output: string[];
  /** Resolves with the exit code (or the signal) when the process ends. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** `npm start`'s command line (package.json), as words: `["tsx", "--max-semi-space-size=32", "src/main.ts"]`. */
export function startCommand(): string[] {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8")) as {
    scripts: { start: string };
  };
  return pkg.scripts.start.split(/\s+/);
}

/**
 * The real server (`tsx src/main.ts`, as `npm start` runs it) in a child process on a free port,
 * on its own data dir and keyring file; resolves once it logs that it is listening.
 */
export async function startServer(env: Record<string, string> = {}): Promise<RunningServer> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sekisho-server-"));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const fullEnv: Record<string, string> = {
    PATH: process.env.PATH ?? "",
    NODE_ENV: "test",
    HOST: "127.0.0.1",
    PORT: String(port),
    SEKISHO_ISSUER: url,
    SEKISHO_DATA_DIR: path.join(dir, "data"),
    SEKISHO_KEYRING_FILE: path.join(dir, "keyring.json"),
    SEKISHO_ARGON2_MEMORY_KIB: "4096",
    SEKISHO_ARGON2_TIME_COST: "1",
    LOG_LEVEL: "info",
    ...env,
  };
  const keygen = spawn(
    process.execPath,
    [path.join(ROOT, "bin/sekisho.mjs"), "keys", "generate", "--out", fullEnv.SEKISHO_KEYRING_FILE as string],
    {
      env: fullEnv,
      stdio: "ignore",
    },
  );
  await new Promise((r) => keygen.once("exit", r));
  // Exactly what `npm start` runs (package.json), flags and all.
  const [bin, ...args] = startCommand();
  const proc = spawn(path.join(ROOT, "node_modules/.bin", bin as string), args, {
    cwd: ROOT,
    env: fullEnv,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const output: string[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.once("exit", (code, signal) => resolve({ code, signal })),
  );
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${output.join("")}`)), 30_000);
    const onData = (chunk: Buffer) => {
      output.push(String(chunk));
      if (output.join("").includes("Sekisho is listening")) {
        clearTimeout(timer);
        resolve();
      }
    };
    proc.stdout?.on("data", onData);
    proc.stderr?.on("data", (c: Buffer) => output.push(String(c)));
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`server exited at start:\n${output.join("")}`));
    });
  });
  return { url, dir, env: fullEnv, proc, output, exited };
}
