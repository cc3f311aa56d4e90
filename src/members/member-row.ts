import { and, eq, type SQL } from "drizzle-orm";
import type { Db } from "../db/connection.js";
import { members } from "../db/schema.js";
import { ApiError } from "../errors.js";
import { memberSealValues, type RowSeals } from "../vault/seals.js";

/** The member columns a seal covers, and the seal (see src/vault/seals.ts). */
export const sealedMemberColumns = {
  id: members.id,
  sub: members.sub,
  role: members.role,
  status: members.status,
  passwordHash: members.passwordHash,
  pepperId: members.pepperId,
  mfaRequired: members.mfaRequired,
  passwordResetRequired: members.passwordResetRequired,
  emailVerified: members.emailVerified,
  seal: members.seal,
};

type SealedSet = Partial<
  Pick<
    typeof members.$inferInsert,
    | "role"
    | "status"
    | "passwordHash"
    | "pepperId"
    | "mfaRequired"
    | "passwordResetRequired"
    | "emailVerified"
  >
>;
type MemberSet = SealedSet & Partial<Omit<typeof members.$inferInsert, "id" | "sub" | "seal">>;

/** What a member's update answers when the row's seal doesn't hold (someone changed it in the database). */
export const brokenMemberRow = () =>
  new ApiError(
    409,
    "conflict",
    "This account's record failed its integrity check and can't be changed; an administrator has been alerted.",
  );

/**
 * Update a member's row, sealed columns included: the row's seal is checked first (a row changed
 * in the database by someone without the keyring is not re-sealed by the next legitimate update:
 * that update fails with `brokenMemberRow`, and the alert is raised), then written anew with the
 * changes, as a compare-and-swap on the old seal. `where` narrows the update further (e.g. a
 * password change's compare-and-swap on the hash it verified). Returns how many rows changed
 * (0: no such member, or `where` didn't match). Call it inside the caller's transaction.
 */
export function updateMember(db: Db, seals: RowSeals, memberId: string, set: MemberSet, where?: SQL): number {
  const current = db.select(sealedMemberColumns).from(members).where(eq(members.id, memberId)).get();
  if (!current) return 0;
  if (!seals.holds("members", memberSealValues(current), current.seal, memberId)) throw brokenMemberRow();
  const seal = seals.seal("members", memberSealValues({ ...current, ...set }));
  return db
    .update(members)
    .set({ ...set, seal })
    .where(and(eq(members.id, memberId), eq(members.seal, current.seal as string), where))
    .run().changes;
}

/** The seal of a new member row. */
export function newMemberSeal(
  seals: RowSeals,
  row: {
    id: string;
    sub: string;
    role?: "member" | "admin";
    status?: "active" | "disabled";
    passwordHash?: string | null;
    pepperId?: string | null;
    mfaRequired?: boolean;
    passwordResetRequired?: boolean;
    emailVerified?: boolean;
  },
): string {
  return seals.seal(
    "members",
    memberSealValues({
      id: row.id,
      sub: row.sub,
      role: row.role ?? "member",
      status: row.status ?? "active",
      passwordHash: row.passwordHash ?? null,
      pepperId: row.pepperId ?? null,
      mfaRequired: row.mfaRequired ?? false,
      passwordResetRequired: row.passwordResetRequired ?? false,
      emailVerified: row.emailVerified ?? false,
    }),
  );
}
