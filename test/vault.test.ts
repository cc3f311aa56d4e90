import { describe, expect, it } from "vitest";
import { DecryptionError } from "../src/errors.js";
import { decryptField, encryptField, keyIdOf } from "../src/vault/fields.js";
import { Keyring, KeyringStore } from "../src/vault/keyring.js";

const now = new Date("2026-06-01T00:00:00Z");
const ctx = { table: "profiles", column: "email", rowId: "m_1" };

describe("field encryption", () => {
  const store = new KeyringStore(Keyring.generate(now));

  it("round-trips and names its key", () => {
    const ct = encryptField(store, ctx, "hanako@example.jp");
    expect(ct).toMatch(/^v1\.dk_[0-9a-f]+\.[\w-]{16}\.[\w-]+$/);
    expect(keyIdOf(ct)).toBe(store.get().activeDataKey().id);
    expect(decryptField(store, ctx, ct)).toBe("hanako@example.jp");
  });

  it("uses a fresh nonce for every value", () => {
    const a = encryptField(store, ctx, "same");
    const b = encryptField(store, ctx, "same");
    expect(a).not.toBe(b);
    expect(a.split(".")[2]).not.toBe(b.split(".")[2]);
  });

  it("refuses a ciphertext bound to another row or column", () => {
    const ct = encryptField(store, ctx, "hanako@example.jp");
    expect(() => decryptField(store, { ...ctx, rowId: "m_2" }, ct)).toThrow(DecryptionError);
    expect(() => decryptField(store, { ...ctx, column: "name" }, ct)).toThrow(DecryptionError);
  });

  it("refuses a tampered ciphertext and a relabelled key id", () => {
    const ct = encryptField(store, ctx, "hanako@example.jp");
    const parts = ct.split(".");
    const body = Buffer.from(parts[3] as string, "base64url");
    body[0] = (body[0] as number) ^ 1;
    expect(() =>
      decryptField(store, ctx, [parts[0], parts[1], parts[2], body.toString("base64url")].join(".")),
    ).toThrow(/authentication failed/);
    expect(() => decryptField(store, ctx, ct.replace(/dk_[0-9a-f]+/, "dk_000000000000"))).toThrow(
      /unknown data key/,
    );
    expect(() => decryptField(store, ctx, "plaintext")).toThrow(/not a v1 ciphertext/);
  });

  it("keeps decrypting with a retired key after rotation, and encrypts with the new one", () => {
    const local = new KeyringStore(Keyring.generate(now));
    const old = encryptField(local, ctx, "before");
    local.replace(local.get().rotated(now));
    const fresh = encryptField(local, ctx, "after");
    expect(keyIdOf(fresh)).not.toBe(keyIdOf(old));
    expect(decryptField(local, ctx, old)).toBe("before");
    expect(decryptField(local, ctx, fresh)).toBe("after");
  });

  it("a keyring survives serialise/parse and refuses malformed files", () => {
    const k = Keyring.generate(now);
    const again = Keyring.parse(k.serialize(), "test");
    expect(again.activeDataKey().key.equals(k.activeDataKey().key)).toBe(true);
    expect(() => Keyring.parse("{", "x")).toThrow(/not valid JSON/);
    expect(() => Keyring.parse(JSON.stringify({ format: "sekisho-keyring/1" }), "x")).toThrow(/malformed/);
  });
});
