import { and, eq, isNull, ne } from "drizzle-orm";
import type { AuditLog } from "../audit/log.js";
import type { Clock } from "../clock.js";
import { type Db, inTransaction } from "../db/connection.js";
import { keyRotations, profiles, totpFactors } from "../db/schema.js";
import { reencryptTotpRow, TotpService } from "../factors/totp.js";
import { outboxContext } from "../mail/outbox.js";
import { legacyPasswordContext } from "../members/legacy-passwords.js";
import {
  fieldContext,
  PROFILE_COLUMN,
  PROFILE_FIELDS,
  type ProfileField,
  padded,
  unpadded,
} from "../members/profile.js";
import { payloadContext } from "../oidc/adapter.js";
import { newEmailContext } from "../recovery/email.js";
import { throttleStateContext } from "../throttle/carry-over.js";
import { decryptField, encryptField, type FieldContext } from "./fields.js";
import type { KeyringStore, VersionedKey } from "./keyring.js";

export interface RotationProgress {
  newKeyId: string;
  resumed: boolean;
  rowsDone: number;
  remaining: number;
}

/**
 * `sekisho keys rotate`: add a new active data (and audit, pepper) key to the keyring, then
 * re-encrypt every profile row still under an older key, in batches of one transaction each; then
 * TOTP secrets, imported members' legacy hashes, the OIDC provider's stored payloads, mail in the
 * outbox and pending e-mail changes (SEALED), so that an old keyring and a later copy of the
 * database together open nothing.
 *
 * Resumable: progress is the set of rows whose key_id is not yet the new key, so a rotation
 * killed between (or inside) batches loses nothing; running the command again finds the unfinished
 * rotation in `key_rotations` and continues it instead of adding yet another key. Old keys stay in
 * the keyring, so rows not yet re-encrypted keep decrypting meanwhile.
 *
 * Re-encryption decrypts every profile: it is audited per batch (which members, which fields,
 * why), never per value, and the plaintext never leaves this function.
 */
export async function rotateKeys(deps: {
  db: Db;
  keys: KeyringStore;
  audit: AuditLog;
  clock: Clock;
  batchSize?: number;
  onProgress?: (p: RotationProgress) => void;
  /** Test hook: called after each committed batch (throw to simulate a crash). */
  afterBatch?: (batch: number) => void;
  /**
   * How long to wait after writing the new keyring before re-encrypting: running servers re-read
   * the keyring file within a second, so after this every new row is written under the new key and
   * the batches below catch all that was written under the old one.
   */
  settleMs?: number;
}): Promise<RotationProgress> {
  const { db, keys, audit, clock } = deps;
  const batchSize = deps.batchSize ?? 500;
  const settleMs = deps.settleMs ?? 1500;
  const unfinished = db.select().from(keyRotations).where(isNull(keyRotations.finishedAt)).get();

  let rotationId: number;
  let newKeyId: string;
  const resumed = !!unfinished;
  if (unfinished) {
    rotationId = unfinished.id;
    newKeyId = keys.reload().activeDataKey().id;
    if (newKeyId !== unfinished.newKeyId) {
      db.update(keyRotations).set({ newKeyId }).where(eq(keyRotations.id, rotationId)).run();
    }
  } else {
    const next = keys.reload().rotated(clock.now());
    keys.replace(next);
    newKeyId = next.activeDataKey().id;
    rotationId = inTransaction(db, () => {
      const row = db
        .insert(keyRotations)
        .values({ newKeyId, startedAt: clock.now().getTime() })
        .returning({ id: keyRotations.id })
        .get();
      audit.append({
        action: "keys.rotation_started",
        outcome: "info",
        actorType: "operator",
        details: {
          data_key: newKeyId,
          audit_key: next.activeAuditKey().id,
          pepper: next.activePepper()?.id ?? null,
        },
      });
      return row.id;
    });
  }
  if (settleMs > 0) await new Promise((resolve) => setTimeout(resolve, settleMs));
  const newKey = keys.get().dataKey(newKeyId);
  if (!newKey) throw new Error(`data key ${newKeyId} is not in the keyring`);

  const remaining = () =>
    db.$client.prepare("SELECT count(*) AS n FROM profiles WHERE key_id <> ?").get(newKeyId) as { n: number };
  let rowsDone = unfinished?.rowsDone ?? 0;
  let batch = 0;
  for (;;) {
    const rows = db.select().from(profiles).where(ne(profiles.keyId, newKeyId)).limit(batchSize).all();
    if (rows.length === 0) break;
    try {
      inTransaction(db, () => {
        for (const row of rows) reencryptRow(db, keys, row, newKey);
        rowsDone += rows.length;
        db.update(keyRotations).set({ rowsDone }).where(eq(keyRotations.id, rotationId)).run();
        audit.append({
          action: "pii.reencrypted",
          outcome: "success",
          actorType: "operator",
          reason: "key_rotation",
          details: {
            members: rows.length,
            first_member: rows[0]?.memberId,
            last_member: rows.at(-1)?.memberId,
            fields: [...PROFILE_FIELDS],
            to_key: newKeyId,
          },
        });
      });
    } catch (err) {
      if (!(err instanceof RowDecryptionFailed)) throw err;
      // Never skip or blank a value: the batch rolled back; record what failed (outside the
      // rolled-back transaction) and stop so the operator can look. Running again resumes.
      audit.append({
        action: "pii.decrypt_failed",
        outcome: "failure",
        actorType: "operator",
        memberId: err.memberId,
        reason: "key_rotation",
        details: { field: err.field, error: err.message },
      });
      throw new Error(`key rotation stopped: ${err.message}`, { cause: err });
    }
    batch++;
    deps.onProgress?.({ newKeyId, resumed, rowsDone, remaining: remaining().n });
    deps.afterBatch?.(batch);
    // Let the event loop breathe between batches when run beside other work.
    await new Promise((resolve) => setImmediate(resolve));
  }

  rowsDone += reencryptTotpSecrets(db, keys, newKeyId, batchSize);
  // The other vault ciphertexts: imported members' legacy hashes, the OIDC provider's payloads,
  // mail waiting in the outbox, pending e-mail changes. A row that no longer decrypts is left as it
  // is (it can't be used either) and counted in the audit entry.
  let undecryptable = 0;
  let left = 0;
  for (const spec of SEALED) {
    const r = reencryptSealed(db, keys, newKeyId, spec, batchSize);
    rowsDone += r.done;
    undecryptable += r.undecryptable;
    left += Math.max(0, r.left);
  }

  inTransaction(db, () => {
    db.update(keyRotations)
      .set({ finishedAt: clock.now().getTime(), rowsDone })
      .where(eq(keyRotations.id, rotationId))
      .run();
    audit.append({
      action: "keys.rotated",
      outcome: "success",
      actorType: "operator",
      details: {
        data_key: newKeyId,
        rows_reencrypted: rowsDone,
        resumed,
        ...(undecryptable ? { undecryptable } : {}),
        // Still under an older key after three passes (rewritten meanwhile): a later rotation
        // or the next rewrite moves them.
        ...(left ? { left_under_old_keys: left } : {}),
      },
    });
  });
  return { newKeyId, resumed, rowsDone, remaining: 0 };
}

/** A column of vault ciphertexts, and the context each value is bound to (see vault/fields.ts). */
interface Sealed {
  table: string;
  column: string;
  /** The columns the context is made from, and how. */
  keys: readonly string[];
  context: (row: Record<string, string>) => FieldContext;
}

// Each value's context is its owner module's own (one definition: a change there moves here too).
const SEALED: readonly Sealed[] = [
  {
    table: "legacy_passwords",
    column: "secret",
    keys: ["member_id"],
    context: (r) => legacyPasswordContext(r.member_id as string),
  },
  {
    table: "oidc_payloads",
    column: "payload",
    keys: ["model", "id_hash"],
    context: (r) => payloadContext(r.model as string, r.id_hash as string),
  },
  { table: "outbox", column: "message", keys: ["id"], context: (r) => outboxContext(r.id as string) },
  // Written at a graceful stop, taken at the next start: a rotation while the server is stopped
  // keeps it readable.
  { table: "throttle_state", column: "state", keys: ["id"], context: () => throttleStateContext },
  {
    table: "member_tokens",
    column: "new_email",
    keys: ["token_hash"],
    context: (r) => newEmailContext(r.token_hash as string),
  },
];

/**
 * Re-encrypt one sealed column's values not yet under the new key, in rowid order, batch by batch;
 * each value only if nobody rewrote it meanwhile (compared with what was read).
 */
function reencryptSealed(
  db: Db,
  keys: KeyringStore,
  newKeyId: string,
  spec: Sealed,
  batchSize: number,
): { done: number; undecryptable: number; left: number } {
  const key = keys.get().dataKey(newKeyId);
  if (!key) throw new Error(`data key ${newKeyId} is not in the keyring`);
  const prefix = `v1.${newKeyId}.`;
  const select = db.$client.prepare(
    `SELECT rowid AS rid, ${spec.keys.join(", ")}, ${spec.column} AS value FROM ${spec.table}
      WHERE ${spec.column} IS NOT NULL AND substr(${spec.column}, 1, ?) <> ? AND rowid > ? ORDER BY rowid LIMIT ?`,
  );
  const stale = db.$client
    .prepare(
      `SELECT count(*) FROM ${spec.table} WHERE ${spec.column} IS NOT NULL AND substr(${spec.column}, 1, ?) <> ?`,
    )
    .pluck();
  const update = db.$client.prepare(
    `UPDATE ${spec.table} SET ${spec.column} = ? WHERE rowid = ? AND ${spec.column} = ?`,
  );
  let after = 0;
  let done = 0;
  let undecryptable = 0;
  // Values the server rewrote under the old key behind the pass (it takes up to a second to see
  // the new keyring; a rewritten row keeps its place) are caught by another pass, a few at most.
  let passes = 1;
  let failedThisPass = 0;
  for (;;) {
    const rows = select.all(prefix.length, prefix, after, batchSize) as Array<
      Record<string, string> & { rid: number; value: string }
    >;
    if (rows.length === 0) {
      const left = stale.get(prefix.length, prefix) as number;
      // Only undecryptable ones left (each pass meets them again), or enough passes: done.
      if (left <= failedThisPass || passes >= 3) return { done, undecryptable, left: left - failedThisPass };
      passes++;
      after = 0;
      undecryptable -= failedThisPass; // met again in this pass
      failedThisPass = 0;
      continue;
    }
    inTransaction(db, () => {
      for (const row of rows) {
        const ctx = spec.context(row);
        let plain: string;
        try {
          plain = decryptField(keys, ctx, row.value);
        } catch {
          undecryptable++;
          failedThisPass++;
          continue;
        }
        done += update.run(encryptField(keys, ctx, plain, key), row.rid, row.value).changes;
      }
    });
    after = (rows.at(-1) as { rid: number }).rid;
  }
}

/**
 * TOTP secrets are vault ciphertexts too: re-encrypt those not under the new key, batch by batch,
 * each row only if nobody rewrote it meanwhile (an enrolment or activation in between wins).
 */
function reencryptTotpSecrets(db: Db, keys: KeyringStore, newKeyId: string, batchSize: number): number {
  const totp = new TotpService({ db, keys, clock: { now: () => new Date() }, issuer: "" });
  let done = 0;
  for (;;) {
    const rows = totp.staleRows(newKeyId, batchSize);
    if (rows.length === 0) return done;
    inTransaction(db, () => {
      for (const row of rows) {
        const next = reencryptTotpRow(keys, row);
        db.update(totpFactors)
          .set(next)
          .where(
            and(
              eq(totpFactors.memberId, row.memberId),
              row.secret === null ? isNull(totpFactors.secret) : eq(totpFactors.secret, row.secret),
              row.pendingSecret === null
                ? isNull(totpFactors.pendingSecret)
                : eq(totpFactors.pendingSecret, row.pendingSecret),
            ),
          )
          .run();
      }
    });
    done += rows.length;
  }
}

class RowDecryptionFailed extends Error {
  constructor(
    readonly memberId: string,
    readonly field: ProfileField,
    cause: unknown,
  ) {
    super((cause as Error).message, { cause });
  }
}

/** Re-encrypt one profile row under `key`; the update only applies if nobody rewrote the row meanwhile. */
function reencryptRow(
  db: Db,
  keys: KeyringStore,
  row: typeof profiles.$inferSelect,
  key: VersionedKey,
): void {
  const update: Partial<typeof profiles.$inferInsert> = { keyId: key.id };
  for (const field of PROFILE_FIELDS) {
    const stored = row[PROFILE_COLUMN[field]];
    if (typeof stored !== "string") continue;
    const ctx = fieldContext(row.memberId, field);
    let plaintext: string;
    try {
      plaintext = decryptField(keys, ctx, stored);
    } catch (err) {
      throw new RowDecryptionFailed(row.memberId, field, err);
    }
    // Padded as it goes (values written before padding existed get it here).
    update[PROFILE_COLUMN[field]] = encryptField(keys, ctx, padded(unpadded(plaintext)), key);
  }
  db.update(profiles)
    .set(update)
    .where(and(eq(profiles.memberId, row.memberId), eq(profiles.keyId, row.keyId)))
    .run();
}
