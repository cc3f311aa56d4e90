import { randomFillSync } from "node:crypto";

/**
 * Random bytes from a pooled CSPRNG buffer: one `getrandom` system call per 8 KiB instead of one
 * per value. The bytes are the same kernel CSPRNG output, each handed out once; this only saves
 * system calls, which are expensive on small virtual machines (nonces and ids are on hot paths).
 */
const POOL_SIZE = 8192;
const pool = Buffer.allocUnsafe(POOL_SIZE);
let offset = POOL_SIZE;

export function randomBytesPooled(n: number): Buffer {
  if (n > POOL_SIZE / 4) return randomFillSync(Buffer.allocUnsafe(n));
  if (offset + n > POOL_SIZE) {
    randomFillSync(pool);
    offset = 0;
  }
  const out = Buffer.from(pool.subarray(offset, offset + n)); // a copy: the pool is overwritten later
  pool.fill(0, offset, offset + n); // and the handed-out bytes don't stay behind in it
  offset += n;
  return out;
}
