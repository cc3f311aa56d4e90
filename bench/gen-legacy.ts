/**
 * `npm run gen:legacy -- --count N [--out FILE] [--format jsonl|csv] [--broken 0.001]`: a
 * synthetic legacy member file for tests and benchmarks — Japanese names and addresses (faker),
 * the default mix of hash schemes (60% bcrypt, 25% salted SHA-256, 10% unsalted MD5, 5% PBKDF2),
 * a few deliberately broken rows. No real personal data. Member i's password is `pw-<i>` (bcrypt
 * rows reuse 100 precomputed hashes, `pw-bcrypt-<i mod 100>`: hashing half a million bcrypt
 * passwords would take hours and measures nothing the import does).
 */
import { createHash, pbkdf2Sync } from "node:crypto";
import fs from "node:fs";
import { fakerJA } from "@faker-js/faker";
import bcrypt from "bcryptjs";
import { Command } from "commander";
import { PROFILE_FIELDS } from "../src/members/profile.js";

export const BCRYPT_POOL = 100;
export const passwordOf = (i: number, scheme: string) =>
  scheme === "bcrypt" ? `pw-bcrypt-${i % BCRYPT_POOL}` : `pw-${i}`;

export function schemeOf(i: number): "bcrypt" | "sha256-salted" | "md5" | "pbkdf2-sha256" {
  const r = (i * 7919) % 100; // a fixed, well-spread mix
  return r < 60 ? "bcrypt" : r < 85 ? "sha256-salted" : r < 95 ? "md5" : "pbkdf2-sha256";
}

export async function generateLegacyFile(opts: {
  count: number;
  out: string;
  format?: "jsonl" | "csv";
  broken?: number;
  onProgress?: (done: number) => void;
}): Promise<void> {
  const format = opts.format ?? "jsonl";
  const broken = opts.broken ?? 0.001;
  const pool = Array.from({ length: BCRYPT_POOL }, (_, k) => bcrypt.hashSync(`pw-bcrypt-${k}`, 4));
  const out = fs.createWriteStream(opts.out);
  const write = (s: string) =>
    out.write(s) ? Promise.resolve() : new Promise<void>((r) => out.once("drain", () => r()));
  const columns = [
    "legacy_id",
    "login_id",
    "hash_scheme",
    "password_hash",
    "salt",
    "salt_position",
    "iterations",
    ...PROFILE_FIELDS,
    "totp_secret",
    "created_at",
  ];
  if (format === "csv") await write(`${columns.join(",")}\n`);
  const f = fakerJA;
  f.seed(20170401);
  const brokenEvery = broken > 0 ? Math.round(1 / broken) : 0;
  for (let i = 0; i < opts.count; i++) {
    const scheme = schemeOf(i);
    const pw = passwordOf(i, scheme);
    let hash: Record<string, unknown>;
    if (scheme === "bcrypt") hash = { hash_scheme: scheme, password_hash: pool[i % BCRYPT_POOL] };
    else if (scheme === "md5")
      hash = { hash_scheme: scheme, password_hash: createHash("md5").update(pw).digest("hex") };
    else if (scheme === "sha256-salted") {
      const salt = `s${(i * 2654435761) % 1_000_000}`;
      hash = {
        hash_scheme: scheme,
        salt,
        password_hash: createHash("sha256").update(`${salt}${pw}`).digest("hex"),
      };
    } else {
      const salt = createHash("sha1").update(`salt-${i}`).digest("hex").slice(0, 16);
      hash = {
        hash_scheme: scheme,
        salt,
        iterations: 1000,
        password_hash: pbkdf2Sync(pw, Buffer.from(salt, "hex"), 1000, 32, "sha256").toString("hex"),
      };
    }
    const sex = i % 2 === 0 ? "female" : "male";
    const profile = {
      name: `${f.person.lastName()} ${f.person.firstName(sex)}`,
      email: `member${i}@${f.helpers.arrayElement(["example.jp", "example.co.jp", "example.ne.jp"])}`,
      phone: `0${f.helpers.arrayElement(["70", "80", "90"])}-${f.string.numeric(4)}-${f.string.numeric(4)}`,
      postal_code: f.location.zipCode(),
      address: `${f.location.state()}${f.location.city()}${f.location.streetAddress()}`,
      birth_date: f.date
        .birthdate({ mode: "age", min: 18, max: 80, refDate: new Date("2017-01-01") })
        .toISOString()
        .slice(0, 10),
      gender: sex,
    };
    let row: Record<string, unknown> = {
      legacy_id: `legacy-${i}`,
      ...(i % 3 === 0 ? {} : { login_id: `member.${i}` }),
      ...hash,
      profile,
      created_at: new Date(Date.UTC(2008, 0, 1) + (i % 3000) * 86_400_000).toISOString(),
    };
    // A few broken rows, as real exports have: a bad hash, a bad date, a missing scheme.
    if (brokenEvery && i % brokenEvery === brokenEvery - 1) {
      const kind = (i / brokenEvery) % 3;
      if (kind < 1) row = { ...row, password_hash: "not-a-hash" };
      else if (kind < 2) row = { ...row, created_at: "2015-13-45" };
      else {
        const { hash_scheme: _drop, ...rest } = row;
        row = rest;
      }
    }
    if (format === "jsonl") await write(`${JSON.stringify(row)}\n`);
    else {
      const flat: Record<string, unknown> = { ...row, ...(row.profile as object) };
      await write(
        `${columns
          .map((c) => {
            const v = flat[c];
            if (v === undefined || v === null) return "";
            const s = String(v);
            return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
          })
          .join(",")}\n`,
      );
    }
    if (i % 10_000 === 0) opts.onProgress?.(i);
  }
  await new Promise<void>((r) => out.end(() => r()));
}

if (process.argv[1]?.endsWith("gen-legacy.ts")) {
  const program = new Command()
    .option("--count <n>", "members", (v) => Number.parseInt(v, 10), 528_563)
    .option("--out <file>", "where", "legacy-members.jsonl")
    .option("--format <f>", "jsonl or csv", "jsonl")
    .option("--broken <fraction>", "share of broken rows", (v) => Number.parseFloat(v), 0.001)
    .parse();
  const o = program.opts<{ count: number; out: string; format: "jsonl" | "csv"; broken: number }>();
  const started = Date.now();
  await generateLegacyFile({ count: o.count, out: o.out, format: o.format, broken: o.broken });
  process.stdout.write(
    `${`${o.count} members written to ${o.out} in ${((Date.now() - started) / 1000).toFixed(1)} s`}\n`,
  );
}
