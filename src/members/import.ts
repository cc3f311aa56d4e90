import { createHash } from "node:crypto";
import fs from "node:fs";
import readline from "node:readline";
import type { Statement } from "better-sqlite3";
import { parse as parseCsv } from "csv-parse";
import { z } from "zod";
import type { AuditLog } from "../audit/log.js";
import type { Clock } from "../clock.js";
import { type Db, inTransaction } from "../db/connection.js";
import type { TotpService } from "../factors/totp.js";
import { legacyHashInput, toLegacyHash } from "../passwords/legacy.js";
import { randomBytesPooled } from "../vault/random.js";
import type { RowSeals } from "../vault/seals.js";
import type { LegacyPasswords } from "./legacy-passwords.js";
import { checkChosenLoginId, LOGIN_ID_PROBLEM_TEXT } from "./login-id.js";
import { generateMemberNumber } from "./member-number.js";
import { newMemberSeal } from "./member-row.js";
import { PROFILE_FIELDS, type Profile, type ProfileVault } from "./profile.js";
import { profileInput } from "./profile-input.js";
import { newSubject } from "./registration.js";

/**
 * `sekisho members import FILE`: legacy members, streamed (JSON Lines, or CSV with a header row),
 * validated row by row, written in batches of one transaction each — a crash leaves no half
 * member, and running the same file again imports nothing twice (the legacy id is the key), so an
 * interrupted import is resumed by running it again. Profiles are encrypted and blind-indexed as
 * for registered members; legacy password hashes are stored only under the vault and replaced by
 * argon2id at each member's first sign-in. A bad row goes to the reject file with its line number
 * and reason; the rest continue. The audit log records the import (file hash, counts), not rows.
 */
export interface ImportSummary {
  imported: number;
  rejected: number;
  skipped: number;
  reject_file: string | null;
  mapping_file: string | null;
}

const rowSchema = z
  .object({
    legacy_id: z
      .union([z.string(), z.number()], { error: "required: the legacy system's id (a string or a number)" })
      .transform(String)
      .pipe(z.string().min(1).max(128)),
    login_id: z.string().max(256).optional(),
    profile: profileInput.partial().default({}),
    totp_secret: z
      .string()
      .transform((v) => v.replace(/[\s=]/g, "").toUpperCase())
      .pipe(z.string().regex(/^[A-Z2-7]{16,128}$/, "must be base32 (16 characters or more)"))
      .optional(),
    created_at: z
      .string()
      .optional()
      .transform((v, ctx) => {
        if (v === undefined) return undefined;
        const ms = Date.parse(v);
        if (Number.isNaN(ms)) {
          ctx.addIssue({ code: "custom", message: "must be a date (ISO 8601)" });
          return z.NEVER;
        }
        return ms;
      }),
  })
  .and(legacyHashInput);

type Row = z.infer<typeof rowSchema>;
/**
 * Member ids for an import, in insertion order: the same shape as registration's (`m_` + 22
 * characters of the base64url alphabet), but encoded with that alphabet in ASCII order over 48
 * bits of time-and-sequence followed by 80 random bits, so that consecutive ids sort together.
 * Half a million rows then append to the member-keyed indexes (members, profiles, legacy hashes,
 * the legacy-id map) instead of landing on random pages of ever larger B-trees. The ids stay
 * unguessable (80 random bits) and opaque; they only reveal the order of the import.
 */
const SORTED_ALPHABET = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";
function sortableIds(startMs: number) {
  let seq = BigInt(startMs) * 64n; // < 2^48 until 2109
  return (): string => {
    seq += 1n;
    const bytes = Buffer.alloc(16);
    bytes.writeBigUInt64BE(seq << 16n, 0); // the top 48 bits: ms since the epoch × 64 + sequence
    randomBytesPooled(10).copy(bytes, 6);
    let bits = 0n;
    for (const b of bytes) bits = (bits << 8n) | BigInt(b);
    bits <<= 4n; // 128 bits → 22 six-bit digits (132 bits, the last 4 zero)
    let out = "";
    for (let i = 21; i >= 0; i--) out += SORTED_ALPHABET[Number((bits >> BigInt(i * 6)) & 63n)];
    return `m_${out}`;
  };
}

const CSV_PROFILE: readonly string[] = PROFILE_FIELDS;

/** A CSV record (flat, empty = absent) as the JSON shape. */
function fromCsv(record: Record<string, string>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const profile: Record<string, string> = {};
  for (const [k, v] of Object.entries(record)) {
    if (v === "") continue;
    if (CSV_PROFILE.includes(k)) profile[k] = v;
    else out[k] = v;
  }
  out.profile = profile;
  return out;
}

function reasonOf(err: z.ZodError): string {
  return err.issues.map((i) => `${i.path.join(".") || "row"}: ${i.message}`).join("; ");
}

export class LegacyImport {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #seals: RowSeals;
  readonly #vault: ProfileVault;
  readonly #legacy: LegacyPasswords;
  readonly #audit: AuditLog;

  readonly #totp: TotpService | undefined;

  constructor(deps: {
    db: Db;
    clock: Clock;
    vault: ProfileVault;
    legacy: LegacyPasswords;
    audit: AuditLog;
    totp?: TotpService;
    seals: RowSeals;
  }) {
    this.#totp = deps.totp;
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#seals = deps.seals;
    this.#vault = deps.vault;
    this.#legacy = deps.legacy;
    this.#audit = deps.audit;
  }

  #nextId: () => string = () => {
    this.#nextId = sortableIds(this.#clock.now().getTime());
    return this.#nextId();
  };

  // Statements prepared once: half a million rows must not each build their SQL.
  #statements: { member: Statement; profile: Statement; legacy: Statement } | undefined;
  #prepared() {
    this.#statements ??= {
      member: this.#db.$client.prepare(
        `INSERT INTO members (id, sub, login_id, login_id_kind, password_hash, role, status, email_verified, created_at, updated_at, password_changed_at, locale, mfa_required, seal)
         VALUES (?, ?, ?, ?, NULL, 'member', 'active', 0, ?, ?, ?, 'ja', ?, ?)`,
      ),
      profile: this.#db.$client.prepare(
        `INSERT INTO profiles (member_id, name, email, phone, postal_code, address, birth_date, gender, email_bidx, key_id, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      legacy: this.#db.$client.prepare(
        "INSERT INTO legacy_members (legacy_id, member_id, imported_at) VALUES (?, ?, ?)",
      ),
    };
    return this.#statements;
  }

  /** The rows of a file, one at a time, with their line numbers (never the whole file in memory). */
  async *#rows(
    file: string,
    format: "jsonl" | "csv",
    hash: ReturnType<typeof createHash>,
    progress: { bytes: number },
  ) {
    const input = fs.createReadStream(file);
    input.on("data", (chunk) => {
      hash.update(chunk);
      progress.bytes += chunk.length;
    });
    if (format === "csv") {
      const parser = input.pipe(
        parseCsv({ columns: true, bom: true, skip_empty_lines: true, relax_column_count: true, info: true }),
      );
      for await (const { record, info } of parser as AsyncIterable<{
        record: Record<string, string>;
        info: { lines: number };
      }>) {
        yield { line: info.lines, value: fromCsv(record) as unknown, error: null as string | null };
      }
      return;
    }
    let line = 0;
    for await (const text of readline.createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY })) {
      line++;
      if (text.trim() === "") continue;
      try {
        yield { line, value: JSON.parse(text) as unknown, error: null };
      } catch {
        yield { line, value: null, error: "not valid JSON" };
      }
    }
  }

  async importFile(
    file: string,
    opts: {
      format?: "jsonl" | "csv";
      batchSize?: number;
      rejectFile?: string;
      mappingFile?: string;
      /**
       * From this time (ms) a member still on their legacy hash can't sign in with it: they are
       * mailed a reset link instead (the old system's hashes may be out there).
       */
      requirePasswordChangeAfter?: number | null;
      /** Members imported now need a second factor from their first sign-in. */
      requireMfaEnrollment?: boolean;
      onProgress?: (done: {
        read: number;
        imported: number;
        rejected: number;
        skipped: number;
        bytes: number;
        totalBytes: number;
      }) => void;
    } = {},
  ): Promise<ImportSummary> {
    const format = opts.format ?? (file.toLowerCase().endsWith(".csv") ? "csv" : "jsonl");
    const batchSize = opts.batchSize ?? 500;
    const rejectPath = opts.rejectFile ?? `${file}.rejects.jsonl`;
    const mappingPath = opts.mappingFile ?? `${file}.mapping.jsonl`;
    const hash = createHash("sha256");
    const counts = {
      read: 0,
      imported: 0,
      rejected: 0,
      skipped: 0,
      bytes: 0,
      totalBytes: fs.statSync(file).size,
    };
    let rejects: fs.WriteStream | null = null;
    let mapping: fs.WriteStream | null = null;
    // Rejects are written in line order: those found while reading and those found when their
    // batch is written (a login ID taken, say) are held until the batch is, then sorted.
    let pending: Array<{ line: number; legacyId: unknown; reason: string }> = [];
    const reject = (line: number, legacyId: unknown, reason: string) => {
      pending.push({ line, legacyId, reason });
      counts.rejected++;
    };
    const writeRejects = () => {
      if (pending.length === 0) return;
      rejects ??= fs.createWriteStream(rejectPath, { flags: "w", mode: 0o600 });
      for (const r of pending.sort((a, b) => a.line - b.line))
        rejects.write(
          `${JSON.stringify({ line: r.line, ...(typeof r.legacyId === "string" ? { legacy_id: r.legacyId } : {}), reason: r.reason })}\n`,
        );
      pending = [];
    };
    // A larger page cache while importing: half a million rows go into indexes on random keys
    // (ids, login IDs, blind indexes), and each insert otherwise re-reads pages from the OS.
    const client = this.#db.$client;
    const cacheBefore = client.pragma("cache_size", { simple: true }) as number;
    const checkpointBefore = client.pragma("wal_autocheckpoint", { simple: true }) as number;
    client.pragma("cache_size = -32768");
    // Checkpoint every 64 MB of WAL rather than every 4 MB: a page of a randomly-keyed index
    // changed by several batches is then copied back into the database once, not each time.
    client.pragma("wal_autocheckpoint = 16384");
    const policies = {
      changeAfter: opts.requirePasswordChangeAfter ?? null,
      mfaRequired: opts.requireMfaEnrollment === true,
    };
    let batch: Array<{ line: number; row: Row }> = [];
    const flush = () => {
      if (batch.length === 0) return writeRejects();
      const generated = this.#writeBatch(batch, reject, counts, policies);
      writeRejects();
      for (const g of generated) {
        mapping ??= fs.createWriteStream(mappingPath, { flags: "a", mode: 0o600 });
        mapping.write(`${JSON.stringify(g)}\n`);
      }
      batch = [];
      opts.onProgress?.(counts);
    };
    // A row refused while reading: written at once when no batch is open (nothing earlier can
    // still be refused), else with its batch, which is written early once enough of them wait (a
    // file bad throughout must not pile its rejects up in memory).
    const readReject = (line: number, legacyId: unknown, reason: string) => {
      reject(line, legacyId, reason);
      if (batch.length === 0) writeRejects();
      else if (pending.length >= 10 * batchSize) flush();
    };
    try {
      for await (const { line, value, error } of this.#rows(file, format, hash, counts)) {
        counts.read++;
        // The reject file's buffer is full (a file bad throughout): wait for the disk, not memory.
        const out = rejects as fs.WriteStream | null;
        if (out?.writableNeedDrain) await new Promise<void>((r) => out.once("drain", () => r()));
        if (error) {
          readReject(line, undefined, error);
          continue;
        }
        const parsed = rowSchema.safeParse(value);
        if (!parsed.success) {
          readReject(line, (value as { legacy_id?: unknown } | null)?.legacy_id, reasonOf(parsed.error));
          continue;
        }
        batch.push({ line, row: parsed.data });
        if (batch.length >= batchSize) flush();
      }
      flush();
    } finally {
      client.pragma(`cache_size = ${Number(cacheBefore)}`);
      client.pragma(`wal_autocheckpoint = ${Number(checkpointBefore)}`);
    }
    const close = (w: fs.WriteStream | null) => (w ? new Promise<void>((r) => w.end(r)) : Promise.resolve());
    await close(rejects);
    await close(mapping);
    this.#audit.append({
      action: "members.imported",
      outcome: "success",
      actorType: "operator",
      details: {
        file_sha256: hash.digest("hex"),
        format,
        imported: counts.imported,
        rejected: counts.rejected,
        skipped: counts.skipped,
        require_password_change_after:
          policies.changeAfter === null ? null : new Date(policies.changeAfter).toISOString(),
        require_mfa_enrollment: policies.mfaRequired,
      },
    });
    return {
      imported: counts.imported,
      rejected: counts.rejected,
      skipped: counts.skipped,
      reject_file: counts.rejected > 0 ? rejectPath : null,
      mapping_file: mapping ? mappingPath : null,
    };
  }

  /**
   * One transaction for the batch. A row already imported (same legacy id) is skipped; a row whose
   * chosen login ID is invalid or taken is rejected; the others land whole (member, encrypted
   * profile, encrypted legacy hash, the legacy id). Returns the generated member numbers.
   */
  #writeBatch(
    batch: Array<{ line: number; row: Row }>,
    reject: (line: number, legacyId: unknown, reason: string) => void,
    counts: { imported: number; skipped: number },
    policies: { changeAfter: number | null; mfaRequired: boolean },
  ): Array<{ legacy_id: string; login_id: string }> {
    const generated: Array<{ legacy_id: string; login_id: string }> = [];
    const rejected: Array<{ line: number; legacyId: string; reason: string }> = [];
    let imported = 0;
    let skipped = 0;
    const exists = this.#db.$client.prepare("SELECT 1 FROM legacy_members WHERE legacy_id = ?");
    const taken = this.#db.$client.prepare("SELECT 1 FROM members WHERE login_id = ?");
    const now = this.#clock.now().getTime();
    inTransaction(this.#db, () => {
      for (const { line, row } of batch) {
        if (exists.get(row.legacy_id)) {
          skipped++;
          continue;
        }
        let loginId: string;
        let kind: "chosen" | "number";
        if (row.login_id !== undefined) {
          const checked = checkChosenLoginId(row.login_id);
          if (!checked.ok) {
            rejected.push({
              line,
              legacyId: row.legacy_id,
              reason: `login_id: ${checked.problem} (${LOGIN_ID_PROBLEM_TEXT[checked.problem]})`,
            });
            continue;
          }
          if (taken.get(checked.loginId)) {
            rejected.push({ line, legacyId: row.legacy_id, reason: "login_id: taken" });
            continue;
          }
          loginId = checked.loginId;
          kind = "chosen";
        } else {
          do loginId = generateMemberNumber();
          while (taken.get(loginId));
          kind = "number";
          generated.push({ legacy_id: row.legacy_id, login_id: loginId });
        }
        const memberId = this.#nextId();
        const created = row.created_at ?? now;
        const p = this.#prepared();
        const sub = newSubject();
        p.member.run(
          memberId,
          sub,
          loginId,
          kind,
          created,
          now,
          created,
          policies.mfaRequired ? 1 : 0,
          newMemberSeal(this.#seals, { id: memberId, sub, mfaRequired: policies.mfaRequired }),
        );
        const enc = this.#vault.encryptRow(memberId, row.profile as Profile);
        p.profile.run(
          enc.memberId,
          enc.name ?? null,
          enc.email ?? null,
          enc.phone ?? null,
          enc.postalCode ?? null,
          enc.address ?? null,
          enc.birthDate ?? null,
          enc.gender ?? null,
          enc.emailIndex ?? null,
          enc.keyId,
          enc.updatedAt,
        );
        this.#legacy.put(memberId, toLegacyHash(row), policies.changeAfter);
        if (row.totp_secret) this.#totp?.importActive(memberId, row.totp_secret);
        p.legacy.run(row.legacy_id, memberId, now);
        imported++;
      }
    });
    // Counted once the batch committed (a crash mid-batch imported none of it).
    counts.imported += imported;
    counts.skipped += skipped;
    for (const r of rejected) reject(r.line, r.legacyId, r.reason);
    return generated;
  }
}
