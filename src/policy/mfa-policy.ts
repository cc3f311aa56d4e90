import { eq, sql } from "drizzle-orm";
import { z } from "zod";
import type { AuditLog } from "../audit/log.js";
import type { Clock } from "../clock.js";
import { type Db, lazyPrepared } from "../db/connection.js";
import { mfaPolicies } from "../db/schema.js";
import type { MemberFactors } from "../factors/methods.js";
import { ACR, type Acr, acrRank, satisfies } from "../sessions/levels.js";

/**
 * The MFA policy admins set: for all members, and per member site.
 *
 * - `mode`: `off` (no second factor asked for by policy; members can't add new ones, but factors
 *   they have keep being asked for — a policy never silently weakens an account), `optional`
 *   (members choose; the default), `required` (every member needs a factor: during `grace_days`,
 *   counted from when the policy became `required` or from the member's registration, whichever is
 *   later, a member without one signs in with the password alone; after it, sign-in answers
 *   `mfa_enrollment_required` with a session good only for adding a factor).
 * - `methods`: which factors satisfy it and may be added (`totp`, `webauthn`; recovery codes
 *   stand in for either).
 * - `phishing_resistant`: only passkeys satisfy it (acr `phishing-resistant`).
 *
 * A sign-in must satisfy the strictest of the global policy, the member site's and the site's
 * `acr_values`. Changes take effect at each member's next sign-in.
 */
export type PolicyMethod = "totp" | "webauthn";

export interface MfaPolicy {
  mode: "off" | "optional" | "required";
  graceDays: number;
  methods: PolicyMethod[];
  phishingResistant: boolean;
  requiredSince: number | null;
}

export const policyInput = z
  .object({
    mode: z.enum(["off", "optional", "required"]),
    grace_days: z.number().int().min(0).max(365),
    methods: z
      .array(z.enum(["totp", "webauthn"]))
      .min(1)
      .max(2)
      .refine((m) => new Set(m).size === m.length, "no duplicates"),
    phishing_resistant: z.boolean(),
  })
  .strict()
  .refine((p) => !p.phishing_resistant || p.methods.includes("webauthn"), {
    message: "phishing_resistant needs webauthn among the methods",
    path: ["methods"],
  });
export type PolicyInput = z.infer<typeof policyInput>;

export const DEFAULT_POLICY: MfaPolicy = {
  mode: "optional",
  graceDays: 14,
  methods: ["totp", "webauthn"],
  phishingResistant: false,
  requiredSince: null,
};

const DAY = 24 * 3_600_000;

/**
 * A member flagged `mfa_required` (imported with `--require-mfa-enrollment`): a factor from the
 * first sign-in, of any kind the other policies allow.
 */
const MEMBER_REQUIRED: MfaPolicy = {
  mode: "required",
  graceDays: 0,
  methods: ["totp", "webauthn"],
  phishingResistant: false,
  requiredSince: 0,
};

/** What one sign-in must reach, given a member, the policies in force and the site's acr_values. */
export interface Requirement {
  /** The level the session must reach (password: no second factor needed). */
  acr: Acr;
  /** Methods that count (recovery codes count for totp-level only). */
  methods: PolicyMethod[];
  /** The member has no factor that can reach `acr` and the grace period is over (or there is none). */
  enrol: boolean;
  /** Required, member without a factor, still in grace: when it ends. */
  graceEndsAt: number | null;
}

/**
 * Does a session's level meet a requirement? The level (acr) must, and the factor it was reached
 * with must be one the policies count: a passkey always counts (it is the strongest there is); a
 * one-time code (TOTP or a recovery code) only where `totp` is among the methods.
 */
export function meets(need: Requirement, acr: string, amr: readonly string[]): boolean {
  if (!satisfies(acr, need.acr)) return false;
  if (need.acr === ACR.password) return true;
  if (amr.includes("hwk") || amr.includes("swk")) return true;
  return need.methods.includes("totp");
}

export function toJson(p: MfaPolicy) {
  return {
    mode: p.mode,
    grace_days: p.graceDays,
    methods: p.methods,
    phishing_resistant: p.phishingResistant,
    required_since: p.requiredSince === null ? null : new Date(p.requiredSince).toISOString(),
  };
}

export class MfaPolicies {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #audit: AuditLog;

  readonly #adminPolicy: MfaPolicy;

  constructor(deps: { db: Db; clock: Clock; audit: AuditLog; adminAcr?: string }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#audit = deps.audit;
    // Admins have their own policy, always in force: a factor from the first sign-in (no grace),
    // a passkey where the admin API needs phishing resistance (the default).
    const phishing = (deps.adminAcr ?? ACR.phishingResistant) === ACR.phishingResistant;
    this.#adminPolicy = {
      mode: "required",
      graceDays: 0,
      methods: phishing ? ["webauthn"] : ["totp", "webauthn"],
      phishingResistant: phishing,
      requiredSince: 0,
    };
  }

  // Read on every sign-in: prepared once (building and preparing the query each time was the
  // largest single cost of a password sign-in after argon2).
  readonly #byScope = lazyPrepared(() =>
    this.#db
      .select()
      .from(mfaPolicies)
      .where(eq(mfaPolicies.scope, sql.placeholder("scope")))
      .prepare(),
  );

  #read(scope: string): MfaPolicy | null {
    const row = this.#byScope().get({ scope });
    if (!row) return null;
    return {
      mode: row.mode,
      graceDays: row.graceDays,
      methods: JSON.parse(row.methods) as PolicyMethod[],
      phishingResistant: row.phishingResistant,
      requiredSince: row.requiredSince,
    };
  }

  global(): MfaPolicy {
    return this.#read("global") ?? DEFAULT_POLICY;
  }

  client(clientId: string): MfaPolicy | null {
    return this.#read(`client:${clientId}`);
  }

  /** Set the global policy (`clientId` null) or a member site's; audited with the old and new values. */
  set(
    clientId: string | null,
    input: PolicyInput,
    by: { adminId: string; ip: string | null; requestId: string | null },
  ): MfaPolicy {
    const scope = clientId === null ? "global" : `client:${clientId}`;
    const before = this.#read(scope);
    const now = this.#clock.now().getTime();
    const policy: MfaPolicy = {
      mode: input.mode,
      graceDays: input.grace_days,
      methods: input.methods,
      phishingResistant: input.phishing_resistant,
      // The grace period starts when the policy becomes required, not at every edit.
      requiredSince:
        input.mode === "required" ? (before?.mode === "required" ? before.requiredSince : now) : null,
    };
    const row = {
      scope,
      mode: policy.mode,
      graceDays: policy.graceDays,
      methods: JSON.stringify(policy.methods),
      phishingResistant: policy.phishingResistant,
      requiredSince: policy.requiredSince,
      updatedAt: now,
      updatedBy: by.adminId,
    };
    this.#db
      .insert(mfaPolicies)
      .values(row)
      .onConflictDoUpdate({ target: mfaPolicies.scope, set: row })
      .run();
    this.#audit.append({
      action: "admin.mfa_policy_changed",
      outcome: "success",
      actorType: "admin",
      actorId: by.adminId,
      ip: by.ip,
      requestId: by.requestId,
      details: { scope, before: before ? toJson(before) : null, after: toJson(policy) },
    });
    return policy;
  }

  /** Remove a member site's override (it follows the global policy again). */
  clear(clientId: string, by: { adminId: string; ip: string | null; requestId: string | null }): boolean {
    const removed =
      this.#db
        .delete(mfaPolicies)
        .where(eq(mfaPolicies.scope, `client:${clientId}`))
        .run().changes > 0;
    if (removed) {
      this.#audit.append({
        action: "admin.mfa_policy_changed",
        outcome: "success",
        actorType: "admin",
        actorId: by.adminId,
        ip: by.ip,
        requestId: by.requestId,
        details: { scope: `client:${clientId}`, before: "override", after: null },
      });
    }
    return removed;
  }

  /**
   * May this member add a factor of this kind (the global policy, or the admins' one)? Where only
   * passkeys satisfy the policy, no new authenticator app.
   */
  enrolmentAllowed(
    method: PolicyMethod,
    role: "member" | "admin" = "member",
    opts: { required?: boolean } = {},
  ): boolean {
    const p = role === "admin" ? this.#adminPolicy : this.global();
    // `off` stops new factors, except where a factor is required (a site's policy demands one).
    if (role !== "admin" && p.mode === "off" && !opts.required) return false;
    if (method === "totp" && p.phishingResistant) return false;
    return p.methods.includes(method);
  }

  /**
   * What a sign-in of this member must reach: the strictest of the global policy, the member
   * site's (if the sign-in is for one) and the site's `acr_values`.
   */
  requirement(
    member: { createdAt: number; role?: "member" | "admin"; mfaRequired?: boolean },
    factors: MemberFactors,
    opts: { clientId?: string | null; acrValues?: string | null } = {},
  ): Requirement {
    const now = this.#clock.now().getTime();
    const policies = [
      this.global(),
      ...(opts.clientId ? [this.client(opts.clientId)] : []),
      ...(member.role === "admin" ? [this.#adminPolicy] : []),
      ...(member.mfaRequired ? [MEMBER_REQUIRED] : []),
    ].filter((p): p is MfaPolicy => p !== null);
    const required = policies.filter((p) => p.mode === "required");
    let methods = policies
      .map((p) => p.methods)
      .reduce((a, m) => a.filter((x) => m.includes(x)), ["totp", "webauthn"] as PolicyMethod[]);
    if (methods.length === 0) methods = ["webauthn"]; // policies that agree on nothing: the strongest
    const phishing = policies.some((p) => p.phishingResistant) || opts.acrValues === ACR.phishingResistant;
    if (phishing) methods = ["webauthn"];
    let acr: Acr = ACR.password;
    if (factors.enrolled || required.length > 0 || opts.acrValues === ACR.mfa) acr = ACR.mfa;
    if (phishing) acr = ACR.phishingResistant;
    if (opts.acrValues && acrRank(opts.acrValues) > acrRank(acr)) acr = opts.acrValues as Acr;
    // Can the member's factors reach it?
    const usable =
      (factors.totp && methods.includes("totp")) || (factors.passkeys > 0 && methods.includes("webauthn"));
    const canReach =
      acr === ACR.password ||
      (acr === ACR.phishingResistant ? factors.passkeys > 0 && methods.includes("webauthn") : usable);
    if (canReach) return { acr, methods, enrol: false, graceEndsAt: null };
    // Grace: only for a member with no factor at all, only what the policies (not the site's
    // acr_values, an explicit demand) require.
    if (
      !factors.enrolled &&
      opts.acrValues !== ACR.mfa &&
      opts.acrValues !== ACR.phishingResistant &&
      required.length > 0
    ) {
      const ends = Math.min(
        ...required.map((p) => Math.max(p.requiredSince ?? 0, member.createdAt) + p.graceDays * DAY),
      );
      if (now < ends) return { acr: ACR.password, methods, enrol: false, graceEndsAt: ends };
    }
    return { acr, methods, enrol: true, graceEndsAt: null };
  }
}
