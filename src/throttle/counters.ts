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
 * Every key's numbers live in one Float64Array per store, allocated for the store's whole
 * capacity (the operating system backs its pages only once they are used): for the key in slot
 * k and window i, [start, count, previous count] at k·stride + 3i. The LRU maps each key to its
 * slot, a small integer, so a tracked key costs its LRU entry and 24 bytes a window — no object
 * of its own for the garbage collector. Measured (test/throttle.test.ts, three windows): about
 * 100 bytes of heap and external memory per kept key, against about 780 with one small typed
 * array per key; the whole engine at its 1,000,000-key capacity went from +780 MB to +260 MB
 * resident.
 */
export class MemoryCounterStore implements CounterStore {
  readonly #windows: readonly number[];
  readonly #stride: number;
  readonly #max: number;
  readonly #data: Float64Array;
  readonly #lru: LRUCache<string, number>;
  /** Slots given back by deleted keys; `#next` is the first never used. */
  readonly #free: number[] = [];
  #next = 0;

  constructor(windowsMs: readonly number[], maxKeys: number) {
    this.#windows = windowsMs;
    this.#stride = 3 * windowsMs.length;
    this.#max = maxKeys;
    this.#data = new Float64Array(maxKeys * this.#stride);
    this.#lru = new LRUCache<string, number>({ max: maxKeys });
  }

  get size(): number {
    return this.#lru.size;
  }

  /** A slot for a new key: a free one, a fresh one, or the least recently used key's. */
  #slot(): number {
    if (this.#lru.size >= this.#max) {
      const oldest = this.#lru.rkeys().next().value as string;
      const slot = this.#lru.peek(oldest) as number;
      this.#lru.delete(oldest);
      return slot;
    }
    return this.#free.pop() ?? this.#next++;
  }

  #roll(o: number, now: number): void {
    const b = this.#data;
    for (let i = 0; i < this.#windows.length; i++) {
      const w = this.#windows[i] as number;
      const start = now - (now % w);
      const current = b[o + 3 * i] as number;
      if (start === current) continue;
      // One window later: the current bucket becomes the previous one; more: both are stale.
      b[o + 3 * i + 2] = start - current === w ? (b[o + 3 * i + 1] as number) : 0;
      b[o + 3 * i + 1] = 0;
      b[o + 3 * i] = start;
    }
  }

  #estimate(o: number, now: number): number[] {
    const b = this.#data;
    return this.#windows.map((w, i) => {
      const overlap = 1 - (now - (b[o + 3 * i] as number)) / w;
      return (b[o + 3 * i + 1] as number) + (b[o + 3 * i + 2] as number) * overlap;
    });
  }

  add(key: string, n: number, now: number): number[] {
    const b = this.#data;
    let slot = this.#lru.get(key);
    if (slot === undefined) {
      slot = this.#slot();
      const o = slot * this.#stride;
      for (let i = 0; i < this.#windows.length; i++) {
        const w = this.#windows[i] as number;
        b[o + 3 * i] = now - (now % w);
        b[o + 3 * i + 1] = 0;
        b[o + 3 * i + 2] = 0;
      }
      this.#lru.set(key, slot);
    }
    const o = slot * this.#stride;
    this.#roll(o, now);
    for (let i = 0; i < this.#windows.length; i++) b[o + 3 * i + 1] = (b[o + 3 * i + 1] as number) + n;
    return this.#estimate(o, now);
  }

  peek(key: string, now: number): number[] {
    const slot = this.#lru.get(key);
    if (slot === undefined) return this.#windows.map(() => 0);
    const o = slot * this.#stride;
    this.#roll(o, now);
    return this.#estimate(o, now);
  }

  until(key: string, i: number, limit: number, now: number): number {
    const slot = this.#lru.get(key);
    if (slot === undefined) return 0;
    const o = slot * this.#stride;
    this.#roll(o, now);
    const b = this.#data;
    const w = this.#windows[i] as number;
    const start = b[o + 3 * i] as number;
    const count = b[o + 3 * i + 1] as number;
    const prev = b[o + 3 * i + 2] as number;
    if (count >= limit) {
      // Only the next bucket can bring it down: there `count` becomes the weighted previous one.
      return start + w - now + w * (1 - limit / count);
    }
    if (prev <= 0) return 0;
    // count + prev × (1 − (t − start)/w) < limit
    return Math.max(0, start + w * (1 - (limit - count) / prev) - now);
  }

  delete(key: string): void {
    const slot = this.#lru.peek(key);
    if (slot === undefined) return;
    this.#lru.delete(key);
    this.#free.push(slot);
  }

  /**
   * What the store holds, to carry over a restart (src/throttle/carry-over.ts): at most `max`
   * keys, the most recently used ones, least recent first (the order `load` keeps), each with its
   * numbers; keys whose windows have all emptied are left out.
   */
  dump(max: number, now: number): CounterDump {
    const keys: string[] = [];
    const rows: Float64Array[] = [];
    for (const [key, slot] of this.#lru.entries()) {
      if (keys.length >= max) break;
      const o = slot * this.#stride;
      this.#roll(o, now);
      if (this.#estimate(o, now).every((n) => n <= 0)) continue;
      keys.push(key);
      rows.push(this.#data.slice(o, o + this.#stride));
    }
    keys.reverse();
    rows.reverse();
    const values = new Float64Array(keys.length * this.#stride);
    for (let i = 0; i < rows.length; i++) values.set(rows[i] as Float64Array, i * this.#stride);
    return { windows: [...this.#windows], keys, values };
  }

  /**
   * Take over what `dump` gave (before this store has seen anything: a key it already holds is
   * overwritten). Nothing is taken when the windows differ (the policy changed). Returns how many
   * keys were taken.
   */
  load(dump: CounterDump): number {
    if (dump.windows.length !== this.#windows.length || dump.windows.some((w, i) => w !== this.#windows[i]))
      return 0;
    if (dump.values.length !== dump.keys.length * this.#stride) return 0;
    dump.keys.forEach((key, i) => {
      const slot = this.#lru.get(key) ?? this.#slot();
      this.#data.set(dump.values.subarray(i * this.#stride, (i + 1) * this.#stride), slot * this.#stride);
      this.#lru.set(key, slot);
    });
    return dump.keys.length;
  }
}

/** A counter store's keys and numbers (see MemoryCounterStore.dump). */
export interface CounterDump {
  windows: number[];
  keys: string[];
  /** [start, count, previous count] per window, per key, in the keys' order. */
  values: Float64Array;
}
