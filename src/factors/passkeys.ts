import { createHash } from "node:crypto";
import {
  type AuthenticationResponseJSON,
  generateAuthenticationOptions,
  generateRegistrationOptions,
  type PublicKeyCredentialCreationOptionsJSON,
  type PublicKeyCredentialRequestOptionsJSON,
  type RegistrationResponseJSON,
  verifyAuthenticationResponse,
  verifyRegistrationResponse,
} from "@simplewebauthn/server";
import { and, asc, eq, gt, isNull, lt } from "drizzle-orm";
import { z } from "zod";
import type { Clock } from "../clock.js";
import { type Db, inTransaction } from "../db/connection.js";
import { members, webauthnChallenges, webauthnCredentials } from "../db/schema.js";
import { text } from "../validation.js";
import { randomBytesPooled } from "../vault/random.js";
import { passkeySealValues, type RowSeals } from "../vault/seals.js";

/**
 * Passkeys (WebAuthn), on @simplewebauthn/server. What we add around it:
 * - challenges are random (256 bits), stored server-side as SHA-256, single-use (consumed by
 *   compare-and-swap before anything else is checked), short-lived, and bound to their ceremony:
 *   the member and session that asked (registration, step-up), the mfa_token (second factor), or
 *   nobody (passwordless). A challenge issued for one ceremony is refused in any other;
 * - a credential ID is unique across all members, and a second-factor or step-up assertion must
 *   come from a credential of the member whose ceremony it is;
 * - the signature counter: when either side is non-zero and it did not increase, the credential
 *   may have been cloned: the sign-in is refused, the credential suspended, and the caller raises
 *   a security event. We check it ourselves (the library is given counter 0) so that the flag is
 *   only ever set by a response whose signature verified, never by a forged one.
 */
export const CHALLENGE_TTL_MS = 5 * 60_000;
const TIMEOUT_MS = 120_000;
export const PASSKEY_NAME_MAX = 64;

const b64url = z
  .string()
  .min(1)
  .max(16_384)
  .regex(/^[A-Za-z0-9_-]+$/);

export const registrationResponse = z.object({
  id: b64url.max(1024),
  rawId: b64url.max(1024),
  type: z.literal("public-key"),
  response: z.looseObject({
    clientDataJSON: b64url,
    attestationObject: b64url,
    transports: z.array(z.string().max(32)).max(10).optional(),
  }),
  clientExtensionResults: z.looseObject({}).default({}),
  authenticatorAttachment: z.enum(["platform", "cross-platform"]).optional(),
});

export const authenticationResponse = z.object({
  id: b64url.max(1024),
  rawId: b64url.max(1024),
  type: z.literal("public-key"),
  response: z.looseObject({
    clientDataJSON: b64url,
    authenticatorData: b64url,
    signature: b64url,
    userHandle: b64url.max(256).optional().nullable(),
  }),
  clientExtensionResults: z.looseObject({}).default({}),
  authenticatorAttachment: z.enum(["platform", "cross-platform"]).optional(),
});

export type CeremonyBinding =
  | { kind: "second_factor"; memberId: string; mfaTokenHash: string }
  | { kind: "step_up"; memberId: string; sessionId: string }
  | { kind: "passwordless" };

export type AssertionFailure =
  | "unknown_challenge"
  | "wrong_ceremony"
  | "unknown_credential"
  | "wrong_member"
  | "suspended_credential"
  | "verification_failed"
  | "user_not_verified"
  | "possible_clone"
  | "counter_race";

export type AssertionResult =
  | {
      ok: true;
      /** Which of the accepted ceremonies the challenge was issued for. */
      binding: CeremonyBinding;
      memberId: string;
      passkeyId: string;
      userVerified: boolean;
      /** Synced (multi-device) passkeys are software keys; device-bound ones hardware keys (RFC 8176). */
      amr: "swk" | "hwk";
    }
  | { ok: false; reason: AssertionFailure; memberId?: string; passkeyId?: string };

export type RegistrationResult =
  | {
      ok: true;
      passkeyId: string;
      name: string;
      /** What the registration proved, as a sign-in with it would (a limited session's upgrade). */
      amr: "swk" | "hwk";
      userVerified: boolean;
    }
  | {
      ok: false;
      reason: "unknown_challenge" | "wrong_ceremony" | "verification_failed" | "credential_exists";
    };

export interface Passkey {
  id: string;
  name: string;
  createdAt: number;
  lastUsedAt: number | null;
  backupEligible: boolean;
  backedUp: boolean;
  suspectedCloneAt: number | null;
}

const hashChallenge = (challenge: string) =>
  createHash("sha256").update(challenge, "utf8").digest("base64url");

/** The challenge a response answers, read from its clientDataJSON (verified against the stored one later). */
function challengeOf(clientDataJSON: string): string | null {
  try {
    const data = JSON.parse(Buffer.from(clientDataJSON, "base64url").toString("utf8")) as {
      challenge?: unknown;
    };
    return typeof data.challenge === "string" && /^[A-Za-z0-9_-]{16,128}$/.test(data.challenge)
      ? data.challenge
      : null;
  } catch {
    return null;
  }
}

/**
 * Member-given labels, by the rules of every other text field (src/validation.ts: well-formed,
 * no control or bidi characters, invisible ones taken out, NFC, something visible), trimmed, at
 * most 64 characters; null when it breaks them.
 */
const passkeyName = text(PASSKEY_NAME_MAX, { min: 1 });

export function cleanPasskeyName(name: string): string | null {
  const r = passkeyName.safeParse(name);
  return r.success ? r.data.trim() : null;
}

export class Passkeys {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #rp: { rpId: string; rpName: string; origins: readonly string[] };
  readonly #seals: RowSeals;

  constructor(deps: {
    db: Db;
    clock: Clock;
    rp: { rpId: string; rpName: string; origins: readonly string[] };
    seals: RowSeals;
  }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#rp = deps.rp;
    this.#seals = deps.seals;
  }

  list(memberId: string): Passkey[] {
    return this.#db
      .select()
      .from(webauthnCredentials)
      .where(eq(webauthnCredentials.memberId, memberId))
      .orderBy(asc(webauthnCredentials.createdAt))
      .all()
      .map((r) => ({
        id: r.id,
        name: r.name,
        createdAt: r.createdAt,
        lastUsedAt: r.lastUsedAt,
        backupEligible: r.backupEligible,
        backedUp: r.backedUp,
        suspectedCloneAt: r.suspectedCloneAt,
      }));
  }

  #store(
    challenge: string,
    ceremony: "registration" | "authentication",
    binding: { memberId?: string; mfaTokenHash?: string; sessionId?: string },
    userVerification: "required" | "preferred",
  ): void {
    const now = this.#clock.now().getTime();
    // Expired challenges are worthless; drop them as we go (the table stays small).
    this.#db.delete(webauthnChallenges).where(lt(webauthnChallenges.expiresAt, now)).run();
    this.#db
      .insert(webauthnChallenges)
      .values({
        challengeHash: hashChallenge(challenge),
        ceremony,
        memberId: binding.memberId ?? null,
        mfaTokenHash: binding.mfaTokenHash ?? null,
        sessionId: binding.sessionId ?? null,
        userVerification,
        createdAt: now,
        expiresAt: now + CHALLENGE_TTL_MS,
      })
      .run();
  }

  /** Consume (CAS) the stored challenge a response answers: the row once, or null. */
  #consume(
    clientDataJSON: string,
    ceremony: "registration" | "authentication",
  ):
    | { error: "unknown_challenge" | "wrong_ceremony" }
    | { error?: undefined; row: typeof webauthnChallenges.$inferSelect; challenge: string } {
    const challenge = challengeOf(clientDataJSON);
    if (!challenge) return { error: "unknown_challenge" };
    const now = this.#clock.now().getTime();
    const row = this.#db
      .update(webauthnChallenges)
      .set({ consumedAt: now })
      .where(
        and(
          eq(webauthnChallenges.challengeHash, hashChallenge(challenge)),
          isNull(webauthnChallenges.consumedAt),
          gt(webauthnChallenges.expiresAt, now),
        ),
      )
      .returning()
      .get();
    if (!row) return { error: "unknown_challenge" };
    if (row.ceremony !== ceremony) return { error: "wrong_ceremony" };
    return { row, challenge };
  }

  #userHandle(memberId: string): string {
    const existing = this.#db
      .select({ h: members.webauthnUserId })
      .from(members)
      .where(eq(members.id, memberId))
      .get()?.h;
    if (existing) return existing;
    const handle = randomBytesPooled(32).toString("base64url");
    this.#db
      .update(members)
      .set({ webauthnUserId: handle })
      .where(and(eq(members.id, memberId), isNull(members.webauthnUserId)))
      .run();
    return this.#db.select({ h: members.webauthnUserId }).from(members).where(eq(members.id, memberId)).get()
      ?.h as string;
  }

  async registrationOptions(
    member: { id: string; loginId: string },
    sessionId: string,
    opts: { requireUserVerification?: boolean } = {},
  ): Promise<PublicKeyCredentialCreationOptionsJSON> {
    const uv = opts.requireUserVerification ? "required" : "preferred";
    const options = await generateRegistrationOptions({
      rpName: this.#rp.rpName,
      rpID: this.#rp.rpId,
      userName: member.loginId,
      userDisplayName: member.loginId,
      userID: Buffer.from(this.#userHandle(member.id), "base64url"),
      challenge: new Uint8Array(randomBytesPooled(32)),
      timeout: TIMEOUT_MS,
      attestationType: "none",
      excludeCredentials: this.#credentialsOf(member.id).map((c) => ({
        id: c.credentialId,
        transports: JSON.parse(c.transports) as string[],
      })),
      authenticatorSelection: { residentKey: "preferred", userVerification: uv },
    });
    this.#store(options.challenge, "registration", { memberId: member.id, sessionId }, uv);
    return options;
  }

  async register(
    memberId: string,
    sessionId: string,
    response: RegistrationResponseJSON,
    name: string,
  ): Promise<RegistrationResult> {
    const consumed = this.#consume(response.response.clientDataJSON, "registration");
    if (consumed.error) return { ok: false, reason: consumed.error };
    const { row, challenge } = consumed;
    if (row.memberId !== memberId || row.sessionId !== sessionId)
      return { ok: false, reason: "wrong_ceremony" };
    let info: Awaited<ReturnType<typeof verifyRegistrationResponse>>["registrationInfo"];
    try {
      const result = await verifyRegistrationResponse({
        response,
        expectedChallenge: challenge,
        expectedOrigin: [...this.#rp.origins],
        expectedRPID: this.#rp.rpId,
        requireUserVerification: row.userVerification === "required",
      });
      if (!result.verified) return { ok: false, reason: "verification_failed" };
      info = result.registrationInfo;
    } catch {
      return { ok: false, reason: "verification_failed" };
    }
    const id = `pk_${randomBytesPooled(12).toString("base64url")}`;
    const publicKey = Buffer.from(info.credential.publicKey).toString("base64url");
    try {
      this.#db
        .insert(webauthnCredentials)
        .values({
          id,
          memberId,
          credentialId: info.credential.id,
          publicKey,
          seal: this.#seals.seal(
            "webauthn_credentials",
            passkeySealValues({ id, memberId, credentialId: info.credential.id, publicKey }),
          ),
          counter: info.credential.counter,
          transports: JSON.stringify(response.response.transports ?? []),
          aaguid: info.aaguid,
          backupEligible: info.credentialDeviceType === "multiDevice",
          backedUp: info.credentialBackedUp,
          name,
          createdAt: this.#clock.now().getTime(),
        })
        .run();
    } catch (err) {
      if ((err as { code?: string }).code === "SQLITE_CONSTRAINT_UNIQUE")
        return { ok: false, reason: "credential_exists" };
      throw err;
    }
    return {
      ok: true,
      passkeyId: id,
      name,
      amr: info.credentialDeviceType === "multiDevice" ? "swk" : "hwk",
      userVerified: info.userVerified,
    };
  }

  #credentialsOf(memberId: string) {
    return this.#db
      .select()
      .from(webauthnCredentials)
      .where(eq(webauthnCredentials.memberId, memberId))
      .all();
  }

  /**
   * Request options for a sign-in ceremony. Passwordless ones require user verification, and so
   * do an admin's (their passkeys were registered with it; an assertion without it must not
   * open the admin API: a touch alone is not a PIN or a fingerprint).
   */
  async authenticationOptions(binding: CeremonyBinding): Promise<PublicKeyCredentialRequestOptionsJSON> {
    const admin =
      binding.kind !== "passwordless" &&
      this.#db.select({ role: members.role }).from(members).where(eq(members.id, binding.memberId)).get()
        ?.role === "admin";
    const uv = binding.kind === "passwordless" || admin ? "required" : "preferred";
    const allow =
      binding.kind === "passwordless"
        ? undefined
        : this.#credentialsOf(binding.memberId)
            .filter((c) => c.suspectedCloneAt === null)
            .map((c) => ({ id: c.credentialId, transports: JSON.parse(c.transports) as string[] }));
    const options = await generateAuthenticationOptions({
      rpID: this.#rp.rpId,
      challenge: new Uint8Array(randomBytesPooled(32)),
      timeout: TIMEOUT_MS,
      userVerification: uv,
      ...(allow ? { allowCredentials: allow } : {}),
    });
    this.#store(
      options.challenge,
      "authentication",
      binding.kind === "second_factor"
        ? { memberId: binding.memberId, mfaTokenHash: binding.mfaTokenHash }
        : binding.kind === "step_up"
          ? { memberId: binding.memberId, sessionId: binding.sessionId }
          : {},
      uv,
    );
    return options;
  }

  /**
   * Verify an assertion. `accept` lists the ceremonies the request may be completing (a request
   * with neither mfa_token nor session accepts only passwordless; one with a session cookie accepts
   * a step-up of that session or a passwordless sign-in); the stored challenge decides which.
   */
  async authenticate(
    response: AuthenticationResponseJSON,
    accept: CeremonyBinding[],
  ): Promise<AssertionResult> {
    const consumed = this.#consume(response.response.clientDataJSON, "authentication");
    if (consumed.error) return { ok: false, reason: consumed.error };
    const { row, challenge } = consumed;
    // The challenge must have been issued for exactly one of these ceremonies.
    const binding = accept.find((b) =>
      b.kind === "second_factor"
        ? row.mfaTokenHash === b.mfaTokenHash && row.memberId === b.memberId
        : b.kind === "step_up"
          ? row.sessionId === b.sessionId && row.memberId === b.memberId && row.mfaTokenHash === null
          : row.memberId === null && row.mfaTokenHash === null && row.sessionId === null,
    );
    if (!binding) return { ok: false, reason: "wrong_ceremony" };

    const cred = this.#db
      .select()
      .from(webauthnCredentials)
      .where(eq(webauthnCredentials.credentialId, response.rawId))
      .get();
    if (!cred || cred.credentialId !== response.id) return { ok: false, reason: "unknown_credential" };
    // A passkey written into the database by someone without the keyring (theirs, on someone
    // else's account) is no passkey (src/vault/seals.ts).
    if (!this.#seals.holds("webauthn_credentials", passkeySealValues(cred), cred.seal, cred.id))
      return { ok: false, reason: "unknown_credential" };
    const who = { memberId: cred.memberId, passkeyId: cred.id };
    if (binding.kind !== "passwordless" && cred.memberId !== binding.memberId) {
      return { ok: false, reason: "wrong_member", ...who };
    }
    if (binding.kind === "passwordless") {
      // A discoverable credential names its user; it must be the credential's owner.
      const handle = response.response.userHandle;
      if (handle && handle !== this.#userHandle(cred.memberId))
        return { ok: false, reason: "wrong_member", ...who };
    }
    if (cred.suspectedCloneAt !== null) return { ok: false, reason: "suspended_credential", ...who };

    let info: Awaited<ReturnType<typeof verifyAuthenticationResponse>>["authenticationInfo"];
    try {
      const result = await verifyAuthenticationResponse({
        response,
        expectedChallenge: challenge,
        expectedOrigin: [...this.#rp.origins],
        expectedRPID: this.#rp.rpId,
        credential: {
          id: cred.credentialId,
          publicKey: Buffer.from(cred.publicKey, "base64url"),
          counter: 0, // checked below, after the signature
          transports: JSON.parse(cred.transports) as string[],
        },
        requireUserVerification: row.userVerification === "required",
      });
      if (!result.verified) return { ok: false, reason: "verification_failed", ...who };
      info = result.authenticationInfo;
    } catch (err) {
      const uv = /user could not be verified/i.test((err as Error).message);
      return { ok: false, reason: uv ? "user_not_verified" : "verification_failed", ...who };
    }

    const now = this.#clock.now().getTime();
    if ((info.newCounter > 0 || cred.counter > 0) && info.newCounter <= cred.counter) {
      this.#db
        .update(webauthnCredentials)
        .set({ suspectedCloneAt: now })
        .where(eq(webauthnCredentials.id, cred.id))
        .run();
      return { ok: false, reason: "possible_clone", ...who };
    }
    const moved = inTransaction(
      this.#db,
      () =>
        this.#db
          .update(webauthnCredentials)
          .set({ counter: info.newCounter, lastUsedAt: now, backedUp: info.credentialBackedUp })
          .where(and(eq(webauthnCredentials.id, cred.id), eq(webauthnCredentials.counter, cred.counter)))
          .run().changes === 1,
    );
    if (!moved) return { ok: false, reason: "counter_race", ...who };
    return {
      ok: true,
      binding,
      ...who,
      userVerified: info.userVerified,
      amr: cred.backupEligible ? "swk" : "hwk",
    };
  }

  rename(memberId: string, passkeyId: string, name: string): boolean {
    return (
      this.#db
        .update(webauthnCredentials)
        .set({ name })
        .where(and(eq(webauthnCredentials.id, passkeyId), eq(webauthnCredentials.memberId, memberId)))
        .run().changes === 1
    );
  }

  remove(memberId: string, passkeyId: string): boolean {
    return (
      this.#db
        .delete(webauthnCredentials)
        .where(and(eq(webauthnCredentials.id, passkeyId), eq(webauthnCredentials.memberId, memberId)))
        .run().changes === 1
    );
  }
}
