import type { AuditLog } from "../audit/log.js";
import type { Clock } from "../clock.js";
import { wrapLegacy } from "../passwords/legacy.js";
import type { PasswordHasher } from "../passwords/hasher.js";
import type { LegacyPasswords } from "./legacy-passwords.js";

/**
 * `sekisho members wrap-weak`: every imported fast or unsalted legacy hash (salted SHA-1/SHA-256,
 * MD5, SHA-1) becomes argon2id(legacy hash) with the service's argon2 parameters, after which the
 * inner fast hash is gone — a stolen copy of database and keyring together is then as costly to
 * attack as Sekisho's own hashes. Resumable (each row is marked when wrapped; a second run does
 * the rest), paced (`ratePerSecond`) so it can run beside the live service without taking the
 * argon2 capacity sign-ins need, and safe against a member signing in meanwhile (compare-and-swap).
 */
export async function wrapWeak(deps: {
  legacy: LegacyPasswords;
  hasher: PasswordHasher;
  audit: AuditLog;
  clock: Clock;
  ratePerSecond: number;
  onProgress?: (done: number, total: number) => void;
  sleep?: (ms: number) => Promise<void>;
}): Promise<{ wrapped: number; seconds: number }> {
  const sleep = deps.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const total = deps.legacy.countUnwrappedWeak();
  const started = Date.now();
  let wrapped = 0;
  let after = "";
  for (;;) {
    const ids = deps.legacy.unwrappedWeak(after, 100);
    if (ids.length === 0) break;
    for (const id of ids) {
      after = id;
      const tick = Date.now();
      const h = deps.legacy.find(id);
      if (!h || h.wrapped) continue;
      const w = await deps.hasher.queue.run(() => wrapLegacy(h, deps.hasher.params));
      if (deps.legacy.replaceWithWrapped(id, w)) wrapped++;
      deps.onProgress?.(wrapped, total);
      const wait = 1000 / deps.ratePerSecond - (Date.now() - tick);
      if (wait > 0) await sleep(wait);
    }
  }
  deps.audit.append({
    action: "members.weak_hashes_wrapped",
    outcome: "success",
    actorType: "operator",
    details: { wrapped, argon2: deps.hasher.params },
  });
  return { wrapped, seconds: (Date.now() - started) / 1000 };
}
