import { deflateRawSync, inflateRawSync } from "node:zlib";
import { eq } from "drizzle-orm";
import type { Clock } from "../clock.js";
import type { Db } from "../db/connection.js";
import { throttleState } from "../db/schema.js";
import { decryptField, encryptField, type FieldContext } from "../vault/fields.js";
import type { KeyringStore } from "../vault/keyring.js";
import type { EngineState, LoginGuard } from "./engine.js";

/**
 * The login-anomaly engine's counters carried over a restart. They live in memory (fast, bounded),
 * so without this every deploy would give a slow attacker — a few tries a day from each of many
 * addresses, a password sprayed across accounts — a fresh day's allowance, and forget the
 * addresses members signed in from (which let them past an account protection).
 *
 * At a graceful stop the engine's state (at most MAX_PER_STORE keys a store, the most recently
 * used) is compressed, encrypted by the vault (it holds typed login IDs and addresses) and written
 * to the one `throttle_state` row; the next start takes it over and deletes the row. A crash
 * (SIGKILL, power) loses what was learnt since the last start, as before. A row that doesn't
 * decrypt (changed, or its key retired) is dropped with a warning: the engine starts empty, as it
 * did without this.
 */
export const MAX_PER_STORE = 50_000;

/** What the state is encrypted bound to (also key rotation's). */
export const throttleStateContext: FieldContext = { table: "throttle_state", column: "state", rowId: "1" };

interface Stored extends Omit<EngineState, "stores"> {
  v: 1;
  stores: Record<string, { windows: number[]; keys: string[]; values: string }>;
}

function encode(state: EngineState): string {
  const stored: Stored = {
    ...state,
    v: 1,
    stores: Object.fromEntries(
      Object.entries(state.stores).map(([name, d]) => [
        name,
        {
          windows: d.windows,
          keys: d.keys,
          values: Buffer.from(d.values.buffer, d.values.byteOffset, d.values.byteLength).toString("base64"),
        },
      ]),
    ),
  };
  return deflateRawSync(JSON.stringify(stored)).toString("base64");
}

function decode(text: string): EngineState {
  const stored = JSON.parse(inflateRawSync(Buffer.from(text, "base64")).toString("utf8")) as Stored;
  if (stored.v !== 1) throw new Error(`unknown throttle state version ${String(stored.v)}`);
  const { v: _, stores, ...rest } = stored;
  return {
    ...rest,
    stores: Object.fromEntries(
      Object.entries(stores).map(([name, d]) => {
        const bytes = Buffer.from(d.values, "base64");
        // Copied into an aligned buffer of its own (a Buffer's offset needn't be a multiple of 8).
        const values = new Float64Array(bytes.byteLength / 8);
        new Uint8Array(values.buffer).set(bytes);
        return [name, { windows: d.windows, keys: d.keys, values }];
      }),
    ),
  };
}

/** Write the engine's state (a graceful stop). Returns how many keys it holds. */
export function saveThrottleState(deps: {
  db: Db;
  keys: KeyringStore;
  clock: Clock;
  guard: LoginGuard;
}): number {
  const state = deps.guard.carryOver(MAX_PER_STORE);
  const stored = encryptField(deps.keys, throttleStateContext, encode(state));
  const row = { id: 1, savedAt: deps.clock.now().getTime(), state: stored };
  deps.db
    .insert(throttleState)
    .values(row)
    .onConflictDoUpdate({ target: throttleState.id, set: { savedAt: row.savedAt, state: row.state } })
    .run();
  return Object.values(state.stores).reduce((n, d) => n + d.keys.length, 0) + state.known.length;
}

/**
 * Take over the state the last graceful stop wrote, and delete it (it is taken once). Returns
 * how many keys were taken, or an error saying why nothing was (the engine then starts empty).
 */
export function restoreThrottleState(deps: {
  db: Db;
  keys: KeyringStore;
  guard: LoginGuard;
}): { taken: number; savedAt: number } | { error: string } | null {
  const row = deps.db.select().from(throttleState).where(eq(throttleState.id, 1)).get();
  if (!row) return null;
  deps.db.delete(throttleState).where(eq(throttleState.id, 1)).run();
  let state: EngineState;
  try {
    state = decode(decryptField(deps.keys, throttleStateContext, row.state));
  } catch (err) {
    return { error: err instanceof Error ? err.message : String(err) };
  }
  return { taken: deps.guard.takeOver(state), savedAt: row.savedAt };
}
