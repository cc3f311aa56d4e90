import Keygrip from "keygrip";
import { describe, expect, it } from "vitest";
import { cookieSigner } from "../src/oidc/provider.js";

/** The provider's cookie signatures (src/oidc/provider.ts, cookieSigner) against keygrip's own. */
describe("provider cookie signer", () => {
  const keys = ["first-key-0123456789", "older-key-abcdefghij"];
  const ours = cookieSigner(keys);
  const theirs = new Keygrip(keys);

  it("signs exactly as keygrip does, so cookies set before keep working", () => {
    for (const data of ["_interaction=abc", "_session=Zx-9_", "", "日本語=値"]) {
      expect(ours.sign(data)).toBe(theirs.sign(data));
      expect(ours.index(data, theirs.sign(data))).toBe(0);
    }
    // A cookie signed with an older key verifies as that key.
    expect(ours.index("x=1", new Keygrip([keys[1] as string]).sign("x=1"))).toBe(1);
  });

  it("refuses a tampered, truncated, lengthened or foreign signature", () => {
    const good = ours.sign("_interaction=uid123");
    const flipped = `${good.slice(0, -1)}${good.endsWith("A") ? "B" : "A"}`;
    for (const bad of [
      flipped,
      good.slice(0, -1),
      `${good}A`,
      "",
      new Keygrip(["other"]).sign("_interaction=uid123"),
    ]) {
      expect(ours.index("_interaction=uid123", bad)).toBe(-1);
      expect(ours.verify("_interaction=uid123", bad)).toBe(false);
    }
    // The right signature for other data.
    expect(ours.verify("_interaction=uid124", good)).toBe(false);
  });
});
