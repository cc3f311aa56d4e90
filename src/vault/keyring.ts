import { generateKeyPairSync, randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { z } from "zod";
import { StartupError } from "../errors.js";

/**
 * The keyring: every secret key Sekisho uses, kept in a file outside the database.
 * A copy of the database alone decrypts nothing, forges no audit entry and verifies no peppered
 * password. Keys are versioned by id; exactly one of each rotating kind is active, old ones are
 * kept so that what they protected still decrypts/verifies.
 */
const b64Key = z
  .string()
  .regex(/^[A-Za-z0-9+/]{43}=$/, "must be 32 bytes, base64")
  .transform((s) => Buffer.from(s, "base64"));

const versionedKey = z.object({
  id: z.string().regex(/^[a-z]{2}_[0-9a-f]{8,32}$/),
  key: b64Key,
  created_at: z.string(),
  active: z.boolean(),
});

const fileSchema = z.object({
  format: z.literal("sekisho-keyring/1"),
  /** AES-256-GCM keys for profile fields and other encrypted columns. */
  data_keys: z.array(versionedKey).min(1),
  /** HMAC-SHA256 key for blind indexes (e-mail lookup). Not rotated: see docs/operations.md. */
  blind_index_key: z.object({ id: z.string(), key: b64Key }),
  /** HMAC-SHA256 keys chaining the audit log. */
  audit_keys: z.array(versionedKey).min(1),
  /** argon2 secrets ("pepper"); optional: an empty list means no pepper. */
  peppers: z.array(versionedKey).default([]),
  /** ES256 private JWKs signing ID tokens; old ones stay (public part in JWKS) until retired. */
  signing_keys: z
    .array(
      z.object({
        kid: z.string().min(8),
        jwk: z.object({
          kty: z.literal("EC"),
          crv: z.literal("P-256"),
          x: z.string(),
          y: z.string(),
          d: z.string(),
        }),
        created_at: z.string(),
        active: z.boolean(),
      }),
    )
    .default([]),
});

export interface SigningKey {
  readonly kid: string;
  readonly jwk: { kty: "EC"; crv: "P-256"; x: string; y: string; d: string };
  readonly createdAt: string;
  readonly active: boolean;
}

function newSigningKey(now: Date): SigningKey {
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const jwk = privateKey.export({ format: "jwk" }) as { x: string; y: string; d: string };
  return {
    kid: `sk_${randomBytes(8).toString("hex")}`,
    jwk: { kty: "EC", crv: "P-256", x: jwk.x, y: jwk.y, d: jwk.d },
    createdAt: now.toISOString(),
    active: true,
  };
}

export interface VersionedKey {
  readonly id: string;
  readonly key: Buffer;
  readonly createdAt: string;
  readonly active: boolean;
}

export type KeyKind = "data" | "audit" | "pepper";

const prefix: Record<KeyKind, string> = { data: "dk", audit: "ak", pepper: "pp" };

export function newKeyId(kind: KeyKind): string {
  return `${prefix[kind]}_${randomBytes(6).toString("hex")}`;
}

function newKey(kind: KeyKind, now: Date): VersionedKey {
  return { id: newKeyId(kind), key: randomBytes(32), createdAt: now.toISOString(), active: true };
}

export class Keyring {
  readonly dataKeys: readonly VersionedKey[];
  readonly blindIndexKey: { readonly id: string; readonly key: Buffer };
  readonly auditKeys: readonly VersionedKey[];
  readonly peppers: readonly VersionedKey[];
  readonly signingKeys: readonly SigningKey[];

  constructor(parts: {
    dataKeys: readonly VersionedKey[];
    blindIndexKey: { id: string; key: Buffer };
    auditKeys: readonly VersionedKey[];
    peppers: readonly VersionedKey[];
    signingKeys?: readonly SigningKey[];
  }) {
    for (const [name, list] of [
      ["data_keys", parts.dataKeys],
      ["audit_keys", parts.auditKeys],
    ] as const) {
      if (list.filter((k) => k.active).length !== 1) {
        throw new StartupError(`keyring: ${name} must have exactly one active key`);
      }
    }
    if (parts.peppers.length > 0 && parts.peppers.filter((k) => k.active).length !== 1) {
      throw new StartupError("keyring: peppers must have exactly one active key when any exist");
    }
    const ids = [...parts.dataKeys, ...parts.auditKeys, ...parts.peppers].map((k) => k.id);
    if (new Set(ids).size !== ids.length) throw new StartupError("keyring: duplicate key id");
    this.dataKeys = parts.dataKeys;
    this.blindIndexKey = parts.blindIndexKey;
    this.auditKeys = parts.auditKeys;
    this.peppers = parts.peppers;
    this.signingKeys = parts.signingKeys ?? [];
  }

  static generate(now: Date, opts: { pepper?: boolean } = {}): Keyring {
    return new Keyring({
      dataKeys: [newKey("data", now)],
      blindIndexKey: { id: `bi_${randomBytes(6).toString("hex")}`, key: randomBytes(32) },
      auditKeys: [newKey("audit", now)],
      peppers: opts.pepper === false ? [] : [newKey("pepper", now)],
      signingKeys: [newSigningKey(now)],
    });
  }

  static parse(json: string, source: string): Keyring {
    let raw: unknown;
    try {
      raw = JSON.parse(json);
    } catch (err) {
      throw new StartupError(`keyring ${source} is not valid JSON`, { cause: err });
    }
    const parsed = fileSchema.safeParse(raw);
    if (!parsed.success) {
      const where = parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ");
      throw new StartupError(`keyring ${source} is malformed: ${where}`);
    }
    const toKey = (k: z.infer<typeof versionedKey>): VersionedKey => ({
      id: k.id,
      key: k.key,
      createdAt: k.created_at,
      active: k.active,
    });
    return new Keyring({
      dataKeys: parsed.data.data_keys.map(toKey),
      blindIndexKey: parsed.data.blind_index_key,
      auditKeys: parsed.data.audit_keys.map(toKey),
      peppers: parsed.data.peppers.map(toKey),
      signingKeys: parsed.data.signing_keys.map((k) => ({
        kid: k.kid,
        jwk: k.jwk,
        createdAt: k.created_at,
        active: k.active,
      })),
    });
  }

  serialize(): string {
    const out = (k: VersionedKey) => ({
      id: k.id,
      key: k.key.toString("base64"),
      created_at: k.createdAt,
      active: k.active,
    });
    return `${JSON.stringify(
      {
        format: "sekisho-keyring/1",
        data_keys: this.dataKeys.map(out),
        blind_index_key: {
          id: this.blindIndexKey.id,
          key: this.blindIndexKey.key.toString("base64"),
        },
        audit_keys: this.auditKeys.map(out),
        peppers: this.peppers.map(out),
        signing_keys: this.signingKeys.map((k) => ({
          kid: k.kid,
          jwk: k.jwk,
          created_at: k.createdAt,
          active: k.active,
        })),
      },
      null,
      2,
    )}\n`;
  }

  activeDataKey(): VersionedKey {
    return this.dataKeys.find((k) => k.active) as VersionedKey;
  }
  dataKey(id: string): VersionedKey | undefined {
    return this.dataKeys.find((k) => k.id === id);
  }
  activeAuditKey(): VersionedKey {
    return this.auditKeys.find((k) => k.active) as VersionedKey;
  }
  auditKey(id: string): VersionedKey | undefined {
    return this.auditKeys.find((k) => k.id === id);
  }
  activePepper(): VersionedKey | undefined {
    return this.peppers.find((k) => k.active);
  }
  pepper(id: string): VersionedKey | undefined {
    return this.peppers.find((k) => k.id === id);
  }

  /** Signing keys, the active one first (oidc-provider signs with the first matching key). */
  signingKeysActiveFirst(): SigningKey[] {
    return [...this.signingKeys].sort((a, b) => Number(b.active) - Number(a.active));
  }

  /**
   * The same keyring without the given signing keys (old ones only: the active key can't be
   * retired). A retired key leaves the JWKS, so nothing it signed verifies any more: for a key
   * that may have leaked, after `rotated`.
   */
  withoutSigningKeys(kids: readonly string[]): Keyring {
    for (const kid of kids) {
      const key = this.signingKeys.find((k) => k.kid === kid);
      if (!key) throw new StartupError(`keyring: no signing key ${kid}`);
      if (key.active) throw new StartupError(`keyring: ${kid} is the active signing key; rotate first`);
    }
    return new Keyring({
      dataKeys: this.dataKeys,
      blindIndexKey: this.blindIndexKey,
      auditKeys: this.auditKeys,
      peppers: this.peppers,
      signingKeys: this.signingKeys.filter((k) => !kids.includes(k.kid)),
    });
  }

  /** A new keyring with fresh active data, audit, pepper and signing keys; old keys stay for reading. */
  rotated(now: Date): Keyring {
    const demote = (list: readonly VersionedKey[]) => list.map((k) => ({ ...k, active: false }));
    return new Keyring({
      dataKeys: [...demote(this.dataKeys), newKey("data", now)],
      blindIndexKey: this.blindIndexKey,
      auditKeys: [...demote(this.auditKeys), newKey("audit", now)],
      peppers: this.peppers.length > 0 ? [...demote(this.peppers), newKey("pepper", now)] : [],
      signingKeys: [...this.signingKeys.map((k) => ({ ...k, active: false })), newSigningKey(now)],
    });
  }
}

/** Write a keyring file atomically (temp file + rename), readable by its owner only. */
export function writeKeyringFile(file: string, keyring: Keyring): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, keyring.serialize(), { mode: 0o600 });
  fs.renameSync(tmp, file);
}

/**
 * The keyring as the running service sees it. The CLI (`keys rotate`) may rewrite the file while
 * the server runs, so the store re-reads it when its modification time changes (checked at most
 * once a second) and whenever a key id is unknown.
 */
export class KeyringStore {
  #keyring: Keyring;
  #mtimeMs: number;
  #checkedAt = 0;
  readonly file: string | undefined;
  /** Milliseconds now, for the once-a-second re-read (tests move it instead of sleeping). */
  readonly #now: () => number;

  constructor(keyring: Keyring, file?: string, now: () => number = Date.now) {
    this.#keyring = keyring;
    this.file = file;
    this.#now = now;
    this.#mtimeMs = file ? fs.statSync(file).mtimeMs : 0;
  }

  static fromFile(file: string, now: () => number = Date.now): KeyringStore {
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (err) {
      throw new StartupError(`cannot read keyring ${file}: ${(err as Error).message}`, { cause: err });
    }
    return new KeyringStore(Keyring.parse(text, file), file, now);
  }

  /**
   * Told when the periodic re-read in `get()` fails (a keyring file removed, truncated or edited
   * by hand): the store keeps serving the keyring it has, and tries again a second later.
   */
  onReloadError: ((err: unknown) => void) | undefined;

  /** The current keyring, re-read if the file changed (at most once a second). */
  get(): Keyring {
    if (this.file && this.#now() - this.#checkedAt > 1000) {
      try {
        this.reload();
      } catch (err) {
        // Keep what works; a broken file must not take every request down with it.
        if (!this.onReloadError) throw err;
        this.onReloadError(err);
      }
    }
    return this.#keyring;
  }

  /** Re-read the file now if it changed (used when a key id is not found). */
  reload(): Keyring {
    if (!this.file) return this.#keyring;
    this.#checkedAt = this.#now();
    const mtime = fs.statSync(this.file).mtimeMs;
    if (mtime !== this.#mtimeMs) {
      this.#keyring = Keyring.parse(fs.readFileSync(this.file, "utf8"), this.file);
      this.#mtimeMs = mtime;
    }
    return this.#keyring;
  }

  /** Replace the keyring (and its file, when there is one). */
  replace(next: Keyring): void {
    if (this.file) {
      writeKeyringFile(this.file, next);
      this.#mtimeMs = fs.statSync(this.file).mtimeMs;
    }
    this.#keyring = next;
  }
}
