/** Authentication levels (acr) in increasing strength, and RFC 8176 method references (amr). */
export const ACR = {
  password: "urn:sekisho:acr:password",
  mfa: "urn:sekisho:acr:mfa",
  phishingResistant: "urn:sekisho:acr:phishing-resistant",
} as const;
export type Acr = (typeof ACR)[keyof typeof ACR];

const ORDER: readonly Acr[] = [ACR.password, ACR.mfa, ACR.phishingResistant];

export function acrRank(acr: string): number {
  return ORDER.indexOf(acr as Acr);
}

export function satisfies(achieved: string, required: string): boolean {
  const a = acrRank(achieved);
  const r = acrRank(required);
  return a >= 0 && r >= 0 && a >= r;
}

export type Amr = "pwd" | "otp" | "hwk" | "swk" | "user" | "mfa";

/**
 * The level an authorization asks for with `acr_values`: the first value listed that is one of
 * Sekisho's levels (the site's most preferred; values we don't know are passed over). It is
 * required, not one choice among several: a site listing `…:mfa …:password` gets the second step.
 */
export function requestedLevel(acrValues: unknown): Acr | null {
  const known = Object.values(ACR) as string[];
  return (
    (String(acrValues ?? "")
      .split(" ")
      .find((v) => known.includes(v)) as Acr | undefined) ?? null
  );
}
