import { LRUCache } from "lru-cache";

/**
 * Failure counters over several windows at once (10 minutes, an hour, a day by default), so a
 * few tries an hour from one address still add up. Each window is a sliding-window estimate from
 * two fixed buckets (this one and the previous one, weighted by how much of it still overlaps):
 * constant memory per key, no per-event timestamps.
 *
 * The store is one interface so that a shared store (Redis) can stand in for several instances;
 * the embedded one keeps keys in an LRU of bounded size: a flood of a million distinct addresses
 * evicts the least recently touched keys instead of exhausting memory.
 */
export interface CounterStore {
  /** Add `n` to `key`'s windows and return the estimated counts, one per window. */
  add(key: string, n: number, now: number): number[];
  /** The estimated counts without adding. */
  peek(key: string, now: number): number[];
  /** Milliseconds until window `i`'s estimate falls below `limit`, if nothing more is added. */
  until(key: string, i: number, limit: number, now: number): number;
  delete(key: string): void;
  readonly size: number;
}

/**
 * Per key one Float64Array: for window i, [start, count, previous count] at 3i. One small object
 * per key (its numbers live outside the garbage-collected heap), so a hundred thousand tracked
 * keys add little to each garbage collection's work.
 */
type Buckets = Float64Array;

export class MemoryCounterStore implements CounterStore {
  readonly #windows: readonly number[];
  readonly #lru: LRUCache<string, Buckets>;

  constructor(windowsMs: readonly number[], maxKeys: number) {
    this.#windows = windowsMs;
    this.#lru = new LRUCache<string, Buckets>({ max: maxKeys });
  }

  get size(): number {
    return this.#lru.size;
  }

  #roll(b: Buckets, now: number): void {
    for (let i = 0; i < this.#windows.length; i++) {
      const w = this.#windows[i] as number;
      const start = now - (now % w);
      const current = b[3 * i] as number;
      if (start === current) continue;
      // One window later: the current bucket becomes the previous one; more: both are stale.
      b[3 * i + 2] = start - current === w ? (b[3 * i + 1] as number) : 0;
      b[3 * i + 1] = 0;
      b[3 * i] = start;
    }
  }

  #estimate(b: Buckets, now: number): number[] {
    return this.#windows.map((w, i) => {
      const overlap = 1 - (now - (b[3 * i] as number)) / w;
      return (b[3 * i + 1] as number) + (b[3 * i + 2] as number) * overlap;
    });
  }

  add(key: string, n: number, now: number): number[] {
    let b = this.#lru.get(key);
    if (!b) {
      b = new Float64Array(3 * this.#windows.length);
      for (let i = 0; i < this.#windows.length; i++) {
        const w = this.#windows[i] as number;
        b[3 * i] = now - (now % w);
      }
      this.#lru.set(key, b);
    }
    this.#roll(b, now);
    for (let i = 0; i < this.#windows.length; i++) b[3 * i + 1] = (b[3 * i + 1] as number) + n;
    return this.#estimate(b, now);
  }

  peek(key: string, now: number): number[] {
    const b = this.#lru.get(key);
    if (!b) return this.#windows.map(() => 0);
    this.#roll(b, now);
    return this.#estimate(b, now);
  }

  until(key: string, i: number, limit: number, now: number): number {
    const b = this.#lru.get(key);
    if (!b) return 0;
    this.#roll(b, now);
    const w = this.#windows[i] as number;
    const start = b[3 * i] as number;
    const count = b[3 * i + 1] as number;
    const prev = b[3 * i + 2] as number;
    if (count >= limit) {
      // Only the next bucket can bring it down: there `count` becomes the weighted previous one.
      return start + w - now + w * (1 - limit / count);
    }
    if (prev <= 0) return 0;
    // count + prev × (1 − (t − start)/w) < limit
    return Math.max(0, start + w * (1 - (limit - count) / prev) - now);
  }

  delete(key: string): void {
    this.#lru.delete(key);
  }
}
