import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

/**
 * A tiny C program linked against the reference libargon2 (Debian's libargon2-dev, installed by
 * .ci/run): `argon2id_verify(encoded, password)`. Built once per test process; null when no C
 * compiler or header is available (a bare machine without .ci/run's packages).
 */
const SOURCE = `#include <argon2.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
  if (argc != 3) return 2;
  int rc = argon2id_verify(argv[1], argv[2], strlen(argv[2]));
  printf("%s\\n", argon2_error_message(rc));
  return rc == ARGON2_OK ? 0 : 1;
}
`;

let built: string | null | undefined;

export function referenceVerifier(): string | null {
  if (built !== undefined) return built;
  built = null;
  if (!fs.existsSync("/usr/include/argon2.h")) return built;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "libargon2-"));
  fs.writeFileSync(path.join(dir, "verify.c"), SOURCE);
  const out = path.join(dir, "verify");
  const cc = spawnSync("cc", ["-O1", "-o", out, path.join(dir, "verify.c"), "-largon2"], {
    encoding: "utf8",
  });
  if (cc.status === 0) built = out;
  return built;
}

/** libargon2's own verdict on an encoded hash: "OK", "Decoding failed", "The password does not match…". */
export function referenceVerify(encoded: string, password: string): { ok: boolean; message: string } {
  const bin = referenceVerifier();
  if (!bin) throw new Error("libargon2 verifier not available");
  const run = spawnSync(bin, [encoded, password], { encoding: "utf8" });
  return { ok: run.status === 0, message: run.stdout.trim() };
}
