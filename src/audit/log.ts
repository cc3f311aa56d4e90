import { createHmac, timingSafeEqual } from "node:crypto";
import type { Clock } from "../clock.js";
import { type Db, lazyPrepared, onCommit } from "../db/connection.js";
import type { Keyring, KeyringStore } from "../vault/keyring.js";

/**
 * The tamper-evident audit log.
 *
 * Each entry's `mac` is HMAC-SHA256, under an audit key from the keyring, of the entry's content
 * together with the previous entry's mac. Someone holding only the database can neither edit,
 * delete nor reorder entries without `verify()` naming the first entry that no longer fits:
 * recomputing the chain needs the key. SQLite triggers also refuse UPDATE and DELETE, so even the
 * service itself cannot rewrite history by accident.
 *
 * What no chain can show by itself is a cut-off tail (the newest entries removed together). Four
 * things stand in its way: the running service remembers the last entry it appended and, before
 * its next one, checks that it is still there unchanged (`onTruncated`: a critical alert); the
 * server logs the head every five minutes (`head()`), so shipped logs hold anchors; `verify()`
 * compares the head with SQLite's own record of the highest seq ever used, and calls an empty log
 * in a database that has members broken; and `sekisho audit export` ships entries to an outside
 * store, where the tail is kept (docs/operations.md).
 */
export type ActorType = "anonymous" | "member" | "admin" | "client" | "system" | "operator";
export type Outcome = "success" | "failure" | "info";

export interface AuditInput {
  action: string;
  outcome: Outcome;
  actorType: ActorType;
  actorId?: string | null;
  /** The member the entry is about. */
  memberId?: string | null;
  reason?: string | null;
  ip?: string | null;
  requestId?: string | null;
  /** Never secrets or profile values: ids, field names, counts, reasons. */
  details?: Record<string, unknown>;
}

export interface AuditEntry {
  seq: number;
  at: number;
  action: string;
  outcome: Outcome;
  actorType: string;
  actorId: string | null;
  memberId: string | null;
  reason: string | null;
  ip: string | null;
  requestId: string | null;
  details: string;
  keyId: string;
  prevMac: string;
  mac: string;
}

export const GENESIS = "genesis";

type PartialEntry = Omit<AuditEntry, "mac" | "seq" | "prevMac">;

export interface VerifyResult {
  ok: boolean;
  entries: number;
  head: { seq: number; mac: string } | null;
  firstBad?: { seq: number; problem: string };
}

function macOf(key: Buffer, e: Omit<AuditEntry, "mac">): string {
  const canonical = JSON.stringify([
    e.seq,
    e.at,
    e.action,
    e.outcome,
    e.actorType,
    e.actorId,
    e.memberId,
    e.reason,
    e.ip,
    e.requestId,
    e.details,
    e.keyId,
    e.prevMac,
  ]);
  return createHmac("sha256", key).update(`sekisho-audit/v1\n${canonical}`, "utf8").digest("base64url");
}

export class AuditLog {
  /** Told of each entry once it is appended (metrics count events from here). */
  observer: ((entry: AuditInput) => void) | null = null;
  /**
   * Told when the entry this process appended last is gone or changed at its next append: the
   * log's tail was cut (or rewritten) since. Called after that append, outside its transaction.
   */
  onTruncated: ((found: { expected: { seq: number; mac: string }; head: number | null }) => void) | null =
    null;
  /** The newest entry this process knows it committed (see onTruncated). */
  #last: { seq: number; mac: string } | null = null;
  /**
   * The newest entry appended inside a caller's transaction, which may still roll back: known to
   * be committed only at the next append that runs a transaction of its own (then it is either
   * there, and becomes #last, or gone with its rollback — or cut, which can't be told apart).
   */
  #tentative: { seq: number; mac: string } | null = null;
  readonly #db: Db;
  readonly #keys: KeyringStore;
  readonly #clock: Clock;

  constructor(deps: { db: Db; keys: KeyringStore; clock: Clock }) {
    this.#db = deps.db;
    this.#keys = deps.keys;
    this.#clock = deps.clock;
    // An entry written inside a caller's transaction is known to be on disk once that commits:
    // checked then (not only at this process's next entry of its own), so a cut of it is seen
    // even when the next entries are all written inside other transactions (sign-ins).
    onCommit(this.#db, () => {
      if (!this.#tentative) return;
      // Never an error for the caller: its transaction has committed already.
      try {
        const head = this.head();
        const cut = this.#settleTail(head?.seq ?? null);
        if (!cut) return;
        // Said once: from here on the log as it now stands is what this process checks.
        this.#last = head;
        // Told once the caller's work is done (it raises an alert, itself a write).
        setImmediate(() => this.onTruncated?.(cut));
      } catch {
        // (a read that failed: this process's next entry of its own checks the tail again)
      }
    });
  }

  readonly #macAt = lazyPrepared(() =>
    this.#db.$client.prepare("SELECT mac FROM audit_log WHERE seq = ?").pluck(),
  );

  /**
   * Our last committed entry must still be there as we wrote it (other processes only add after
   * it); then the tentative one, if it is there, is committed and becomes the last. Checked in
   * that order: after a cut, an entry written inside a sign-in's transaction takes the cut seq,
   * and would hide it. Returns the cut, if any (`head`: the newest seq found).
   */
  #settleTail(head: number | null): { expected: { seq: number; mac: string }; head: number | null } | null {
    const mine = this.#last;
    const t = this.#tentative;
    this.#tentative = null;
    if (mine && this.#macAt().get(mine.seq) !== mine.mac) return { expected: mine, head };
    if (t && this.#macAt().get(t.seq) === t.mac) this.#last = t;
    return null;
  }

  /**
   * Append one entry and return its seq. Runs in an IMMEDIATE transaction (or a savepoint of the
   * caller's), so that two processes (server and CLI) never chain onto the same predecessor.
   */
  /**
   * Append one entry. Text is stored as SQLite gives it back: a string that isn't well-formed
   * UTF-16 (a lone surrogate, which a caller's validation should have refused) would be stored as
   * bytes that read back otherwise, and its entry, then the whole chain after it, would never
   * verify again; such code units are replaced by U+FFFD before the MAC is made.
   */
  append(input: AuditInput): number {
    const key = this.#keys.get().activeAuditKey();
    const row: PartialEntry = {
      at: this.#clock.now().getTime(),
      action: input.action,
      outcome: input.outcome,
      actorType: input.actorType,
      actorId: wellFormed(input.actorId),
      memberId: wellFormed(input.memberId),
      reason: wellFormed(input.reason),
      ip: wellFormed(input.ip),
      requestId: wellFormed(input.requestId),
      // JSON.stringify escapes lone surrogates itself (\udXXX), so the details text is well formed.
      details: JSON.stringify(input.details ?? {}),
      keyId: key.id,
    };
    const { seq, cut } = this.#append(row, key.key);
    this.observer?.(input);
    if (cut) this.onTruncated?.(cut);
    return seq;
  }

  #appendTx:
    | ((
        row: PartialEntry,
        key: Buffer,
      ) => { seq: number; cut: { expected: { seq: number; mac: string }; head: number | null } | null })
    | undefined;

  /**
   * The append transaction, prepared once (it is on every sign-in's path): read the head, chain
   * onto it, insert. IMMEDIATE, or a savepoint inside the caller's transaction.
   */
  #append(row: PartialEntry, key: Buffer) {
    if (!this.#appendTx) {
      const client = this.#db.$client;
      const head = client.prepare("SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1");
      const insert = client.prepare(
        `INSERT INTO audit_log (seq, at, action, outcome, actor_type, actor_id, member_id, reason, ip,
           request_id, details, key_id, prev_mac, mac)
         VALUES (@seq, @at, @action, @outcome, @actorType, @actorId, @memberId, @reason, @ip,
           @requestId, @details, @keyId, @prevMac, @mac)`,
      );
      const tx = client.transaction((partial: PartialEntry, k: Buffer, outermost: boolean) => {
        const last = head.get() as { seq: number; mac: string } | undefined;
        let cut: { expected: { seq: number; mac: string }; head: number | null } | null = null;
        if (outermost) cut = this.#settleTail(last?.seq ?? null);
        const entry: Omit<AuditEntry, "mac"> = {
          ...partial,
          seq: (last?.seq ?? 0) + 1,
          prevMac: last?.mac ?? GENESIS,
        };
        const mac = macOf(k, entry);
        // A trigger someone added (RAISE(IGNORE)) can make SQLite skip the insert without an error:
        // then nothing that needed this entry may go on (a PII read is not done unaudited).
        if (insert.run({ ...entry, mac }).changes !== 1)
          throw new Error(`audit entry #${entry.seq} was not stored (a trigger on audit_log skipped it?)`);
        return { seq: entry.seq, mac, cut };
      });
      this.#appendTx = (r, k) => {
        const outermost = !client.inTransaction;
        const { seq, mac, cut } = tx.immediate(r, k, outermost);
        if (outermost) this.#last = { seq, mac };
        else this.#tentative = { seq, mac };
        return { seq, cut };
      };
    }
    return this.#appendTx(row, key);
  }

  /**
   * Put back the triggers that make the log append-only, if someone dropped them or replaced
   * them with ones that do nothing (they are what stops an UPDATE or DELETE before the chain has
   * to show it), and drop any other trigger on the log. Returns the names put back or dropped.
   */
  ensureAppendOnly(): string[] {
    const client = this.#db.$client;
    const expected = new Map(
      (["UPDATE", "DELETE"] as const).map((op) => [
        `audit_log_no_${op.toLowerCase()}`,
        `CREATE TRIGGER audit_log_no_${op.toLowerCase()} BEFORE ${op} ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END`,
      ]),
    );
    // Compared as text (without quoting backticks, whitespace and case): a trigger of the right
    // name that does nothing is as good as none; one we don't know of on this table goes too.
    const norm = (sql: string) =>
      sql.replace(/`/g, "").replace(/\s+/g, " ").replace(/;\s*$/, "").trim().toLowerCase();
    const present = client
      // Table names are case-insensitive in SQLite; tbl_name keeps the case the trigger was written in.
      .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND lower(tbl_name) = 'audit_log'")
      .all() as Array<{ name: string; sql: string }>;
    const fixed: string[] = [];
    for (const t of present) {
      const want = expected.get(t.name);
      if (want && norm(t.sql) === norm(want)) {
        expected.delete(t.name);
        continue;
      }
      client.exec(`DROP TRIGGER main."${t.name.replace(/"/g, '""')}"`);
      if (!want) fixed.push(t.name);
    }
    for (const [name, sql] of expected) {
      client.exec(`${sql};`);
      fixed.push(name);
    }
    return fixed;
  }

  /** The newest entry (its seq and mac), or null for an empty log: an anchor to keep elsewhere. */
  head(): { seq: number; mac: string } | null {
    return (
      (this.#db.$client.prepare("SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1").get() as
        | { seq: number; mac: string }
        | undefined) ?? null
    );
  }

  /** Walk the whole chain in order; stop at the first entry that does not fit. */
  verify(): VerifyResult {
    const keyring = this.#keys.reload();
    // Read before the walk: entries the server appends while it walks (a live log grows) raise the
    // highest seq ever used past the head the walk ends on, which must not look like a cut. One
    // read before can only be at or below the walk's own end, unless entries were cut.
    const highest = this.#highestSeq();
    const hadMembers =
      (this.#db.$client.prepare("SELECT 1 FROM members LIMIT 1").get() as unknown) !== undefined;
    const walked = this.#walk(null, keyring);
    const { entries, head } = walked;
    if (walked.firstBad) return { ok: false, entries, head, firstBad: walked.firstBad };
    // A cut-off tail leaves a chain that verifies; SQLite's AUTOINCREMENT record of the highest
    // seq ever used does not shrink with it (unless edited too), and a log emptied outright leaves
    // members without a single entry about them (both read before the walk, above).
    if (highest !== undefined && highest > (head?.seq ?? 0)) {
      return {
        ok: false,
        entries,
        head,
        firstBad: {
          seq: (head?.seq ?? 0) + 1,
          problem: `entries ${(head?.seq ?? 0) + 1}..${highest} are missing (cut off the end)`,
        },
      };
    }
    if (entries === 0 && hadMembers) {
      return {
        ok: false,
        entries,
        head,
        firstBad: { seq: 1, problem: "the log is empty, but members exist" },
      };
    }
    return { ok: true, entries, head };
  }

  /**
   * Walk the chain from the entry after `from` (null: from the first) to the head, as long as each
   * entry is at the next seq, chains to the one before and holds under its MAC; at most `limit`
   * entries. Returns how many held, the last that did, and the first that didn't (or `limited`).
   */
  #walk(
    from: { seq: number; mac: string } | null,
    keyring: Keyring,
    limit = Number.POSITIVE_INFINITY,
  ): {
    entries: number;
    head: { seq: number; mac: string } | null;
    firstBad?: { seq: number; problem: string };
    limited?: true;
  } {
    let expectedSeq = (from?.seq ?? 0) + 1;
    let prev = from?.mac ?? GENESIS;
    let entries = 0;
    let head = from;
    for (const row of this.iterate(from?.seq ?? 0)) {
      if (entries >= limit) return { entries, head, limited: true };
      const bad = (problem: string) => ({ entries, head, firstBad: { seq: row.seq, problem } });
      if (row.seq !== expectedSeq) {
        return bad(
          row.seq > expectedSeq
            ? `entries ${expectedSeq}..${row.seq - 1} are missing`
            : `out of order (expected ${expectedSeq})`,
        );
      }
      if (row.prevMac !== prev) return bad("does not chain to the entry before it");
      if (!keyring.auditKey(row.keyId)) return bad(`unknown audit key ${row.keyId}`);
      if (!macHolds(keyring, row)) return bad("content does not match its MAC (edited)");
      entries++;
      prev = row.mac;
      expectedSeq++;
      head = { seq: row.seq, mac: row.mac };
    }
    return { entries, head };
  }

  /** SQLite's record of the highest seq ever used (AUTOINCREMENT): it doesn't shrink with a cut. */
  #highestSeq(): number | undefined {
    return this.#db.$client
      .prepare("SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'")
      .pluck()
      .get() as number | undefined;
  }

  /** Entries after `afterSeq`, oldest first, as they are stored (for `audit export`). */
  *iterate(afterSeq = 0): Generator<AuditEntry> {
    const rows = this.#db.$client
      .prepare("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq")
      .iterate(afterSeq) as Iterable<Record<string, unknown>>;
    for (const r of rows) yield entryOf(r);
  }

  /**
   * Whether a member may rightly have no second factor: the newest entry about their factors is
   * their registration or an operator's MFA reset (no factor added or removed since), and the
   * chain from it to the head is whole — every entry after it there, chained and under its MAC, the
   * head where SQLite's sequence and this process's own last entry say it is — within
   * FACTORLESS_WALK entries. Factor rows aren't sealed, so an admin found without factors otherwise
   * had them deleted in the database, by someone who then only needs the admin's password to enrol
   * a passkey of their own (see PasswordSignIn). Entries can't be made without the keyring; taking
   * the newer ones out, or moving them to another member, breaks the walk. (Cutting the tail and
   * editing SQLite's sequence too is what the database alone can't show: see threat-model.md.)
   */
  factorsMayBeAbsent(memberId: string): boolean {
    const client = this.#db.$client;
    const r = client
      .prepare(
        `SELECT * FROM audit_log WHERE member_id = ? AND action IN (${FACTOR_ACTIONS.map(() => "?").join(", ")})
          ORDER BY seq DESC LIMIT 1`,
      )
      .get(memberId, ...FACTOR_ACTIONS) as Record<string, unknown> | undefined;
    if (!r) return false;
    const found = entryOf(r);
    if (!FACTORS_CLEARED.has(found.action)) return false;
    const keyring = this.#keys.get();
    if (!macHolds(keyring, found)) return false;
    const walked = this.#walk(found, keyring, FACTORLESS_WALK);
    if (walked.firstBad || walked.limited) return false;
    const head = walked.head?.seq ?? found.seq;
    const highest = this.#highestSeq();
    if (highest !== undefined && highest > head) return false;
    const mine = this.#last;
    return !mine || (mine.seq <= head && this.#macAt().get(mine.seq) === mine.mac);
  }
}

/** Whether an entry holds under its MAC (with the audit key it names, if the keyring has it). */
function macHolds(keyring: Keyring, e: AuditEntry): boolean {
  const key = keyring.auditKey(e.keyId);
  if (!key) return false;
  const { mac, ...rest } = e;
  const expected = Buffer.from(macOf(key.key, rest));
  const actual = Buffer.from(mac);
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}

/**
 * At most this many entries between an admin's creation (or MFA reset) and their first factor:
 * past it the walk above is not done (it runs synchronously) and the admin is reset again.
 */
const FACTORLESS_WALK = 200_000;

/** Entries that leave a member without second factors, rightly. */
const FACTORS_CLEARED = new Set(["member.registered", "mfa.reset_by_admin"]);
/** Entries about a member's second factors (see AuditLog.factorsMayBeAbsent). */
const FACTOR_ACTIONS = [
  ...FACTORS_CLEARED,
  "factor.totp_added",
  "factor.totp_removed",
  "factor.passkey_added",
  "factor.passkey_removed",
];

function entryOf(r: Record<string, unknown>): AuditEntry {
  return {
    seq: r.seq as number,
    at: r.at as number,
    action: r.action as string,
    outcome: r.outcome as Outcome,
    actorType: r.actor_type as string,
    actorId: (r.actor_id as string | null) ?? null,
    memberId: (r.member_id as string | null) ?? null,
    reason: (r.reason as string | null) ?? null,
    ip: (r.ip as string | null) ?? null,
    requestId: (r.request_id as string | null) ?? null,
    details: r.details as string,
    keyId: r.key_id as string,
    prevMac: r.prev_mac as string,
    mac: r.mac as string,
  };
}

/** `s` with lone surrogates replaced by U+FFFD (what it reads back as is then what was chained). */
function wellFormed(s: string | null | undefined): string | null {
  if (s === null || s === undefined) return null;
  return s.isWellFormed() ? s : s.toWellFormed();
}
