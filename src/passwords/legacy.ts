import { createHash, pbkdf2, timingSafeEqual } from "node:crypto";
import { promisify } from "node:util";
import argon2 from "argon2";
import bcrypt from "bcryptjs";
import { z } from "zod";

const pbkdf2Async = promisify(pbkdf2);

/**
 * Password hashes brought in from a legacy system (`sekisho members import`), verified at the
 * member's first sign-in and then replaced by argon2id. The schemes are the ones real member sites
 * used, weak ones included: bcrypt and argon2 through their libraries (bcryptjs, argon2), PBKDF2
 * and the plain digests through node:crypto, every comparison in constant time.
 *
 * A weak hash (a fast, possibly unsalted digest) can be wrapped — argon2id over the legacy hash —
 * by `sekisho members wrap-weak`; a wrapped hash verifies by computing the legacy hash of the
 * typed password first.
 */
export const HASH_SCHEMES = [
  "bcrypt",
  "argon2",
  "pbkdf2-sha256",
  "pbkdf2-sha512",
  "sha256-salted",
  "sha1-salted",
  "md5",
  "sha1",
] as const;
export type HashScheme = (typeof HASH_SCHEMES)[number];

/** Fast or unsalted: a stolen copy is cheap to attack, so these are wrapped in argon2id. */
export const WEAK_SCHEMES: ReadonlySet<HashScheme> = new Set(["sha256-salted", "sha1-salted", "md5", "sha1"]);

export interface LegacyHash {
  scheme: HashScheme;
  /** As the legacy system stored it (bcrypt/argon2 strings; hex for the others). */
  hash: string;
  /** PBKDF2: hex; salted digests: text. */
  salt?: string | undefined;
  saltPosition?: "prefix" | "suffix" | undefined;
  iterations?: number | undefined;
  /** argon2id PHC string over the legacy hash (after `wrap-weak`); then `hash` is empty. */
  wrapped?: string | undefined;
}

const hex = (len?: number) =>
  z
    .string()
    .regex(/^[0-9a-fA-F]+$/, "must be hex")
    .refine((s) => len === undefined || s.length === len, `must be ${len} hex digits`)
    .transform((s) => s.toLowerCase());

/** Validate a legacy hash as the import file gives it (each scheme's own shape). */
export const legacyHashInput = z.discriminatedUnion("hash_scheme", [
  z.object({
    hash_scheme: z.literal("bcrypt"),
    password_hash: z
      .string()
      .regex(/^\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$/, "must be a $2a$/$2b$/$2y$ bcrypt string"),
  }),
  z.object({
    hash_scheme: z.literal("argon2"),
    password_hash: z
      .string()
      .regex(/^\$argon2(id|i|d)\$/, "must be an argon2 PHC string")
      .max(512),
  }),
  z.object({
    hash_scheme: z.enum(["pbkdf2-sha256", "pbkdf2-sha512"]),
    password_hash: hex(),
    salt: hex(),
    iterations: z.coerce.number().int().min(1).max(10_000_000),
  }),
  z.object({
    hash_scheme: z.enum(["sha256-salted", "sha1-salted"]),
    password_hash: hex(),
    salt: z.string().min(1).max(256),
    salt_position: z.enum(["prefix", "suffix"]).default("prefix"),
  }),
  z.object({ hash_scheme: z.literal("md5"), password_hash: hex(32) }),
  z.object({ hash_scheme: z.literal("sha1"), password_hash: hex(40) }),
]);

export function toLegacyHash(input: z.infer<typeof legacyHashInput>): LegacyHash {
  switch (input.hash_scheme) {
    case "bcrypt":
    case "argon2":
    case "md5":
    case "sha1":
      return { scheme: input.hash_scheme, hash: input.password_hash };
    case "pbkdf2-sha256":
    case "pbkdf2-sha512":
      return {
        scheme: input.hash_scheme,
        hash: input.password_hash,
        salt: input.salt,
        iterations: input.iterations,
      };
    default:
      return {
        scheme: input.hash_scheme,
        hash: input.password_hash,
        salt: input.salt,
        saltPosition: input.salt_position,
      };
  }
}

const equalHex = (a: string, b: string) => {
  const x = Buffer.from(a, "hex");
  const y = Buffer.from(b, "hex");
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
};

/**
 * What the legacy system would have stored for this password (hex), for the schemes that are a
 * computation over it (PBKDF2 and the digests). Legacy systems hashed the password as typed: no
 * NFKC here (the new argon2id hash normalises as usual).
 */
async function legacyDigest(h: LegacyHash, password: string): Promise<string | null> {
  switch (h.scheme) {
    case "pbkdf2-sha256":
    case "pbkdf2-sha512": {
      const digest = h.scheme === "pbkdf2-sha256" ? "sha256" : "sha512";
      const len = h.hash.length / 2 || (digest === "sha256" ? 32 : 64);
      const out = await pbkdf2Async(
        password,
        Buffer.from(h.salt ?? "", "hex"),
        h.iterations ?? 1,
        len,
        digest,
      );
      return out.toString("hex");
    }
    case "sha256-salted":
    case "sha1-salted": {
      const algo = h.scheme === "sha256-salted" ? "sha256" : "sha1";
      const input = h.saltPosition === "suffix" ? `${password}${h.salt ?? ""}` : `${h.salt ?? ""}${password}`;
      return createHash(algo).update(input, "utf8").digest("hex");
    }
    case "md5":
    case "sha1":
      return createHash(h.scheme).update(password, "utf8").digest("hex");
    default:
      return null;
  }
}

/** Does the password match the legacy hash (or its argon2id wrapping)? */
export async function verifyLegacy(h: LegacyHash, password: string): Promise<boolean> {
  if (h.wrapped) {
    const inner = await legacyDigest(h, password);
    return inner !== null && argon2.verify(h.wrapped, inner).catch(() => false);
  }
  switch (h.scheme) {
    case "bcrypt":
      // bcrypt reads 72 bytes at most; $2y$ is $2b$ by another name.
      return bcrypt.compare(password, h.hash.replace(/^\$2y\$/, "$2b$")).catch(() => false);
    case "argon2":
      return argon2.verify(h.hash, password).catch(() => false);
    default: {
      const digest = await legacyDigest(h, password);
      return digest !== null && equalHex(digest, h.hash);
    }
  }
}

/** Wrap a weak legacy hash: argon2id over it (the inner hash can then be forgotten). */
export async function wrapLegacy(
  h: LegacyHash,
  params: { memoryCost: number; timeCost: number; parallelism: number },
): Promise<LegacyHash> {
  if (!WEAK_SCHEMES.has(h.scheme) || h.wrapped) return h;
  const wrapped = await argon2.hash(h.hash, { type: argon2.argon2id, ...params });
  return { ...h, hash: "", wrapped };
}
