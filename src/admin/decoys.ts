import { randomBytes, randomInt } from "node:crypto";
import type { Faker } from "@faker-js/faker";
import type { Honeytokens } from "../audit/honeytokens.js";
import type { AuditLog } from "../audit/log.js";
import type { Clock } from "../clock.js";
import { type Db, inTransaction } from "../db/connection.js";
import { members, profiles } from "../db/schema.js";
import { checkChosenLoginId } from "../members/login-id.js";
import { generateMemberNumber } from "../members/member-number.js";
import { newMemberSeal } from "../members/member-row.js";
import type { Profile, ProfileVault } from "../members/profile.js";
import { newSubject } from "../members/registration.js";
import type { PasswordHasher } from "../passwords/hasher.js";
import type { RowSeals } from "../vault/seals.js";

const FAMILY = [
  "sato",
  "suzuki",
  "takahashi",
  "tanaka",
  "watanabe",
  "ito",
  "yamamoto",
  "nakamura",
  "kobayashi",
  "kato",
  "yoshida",
  "yamada",
  "sasaki",
  "yamaguchi",
  "matsumoto",
  "inoue",
  "kimura",
  "hayashi",
  "shimizu",
  "yamazaki",
  "mori",
  "abe",
  "ikeda",
  "hashimoto",
  "ishikawa",
  "ogawa",
  "okada",
  "hasegawa",
  "fujita",
  "goto",
];
const GIVEN = [
  "hiroshi",
  "takashi",
  "kenji",
  "daisuke",
  "yuki",
  "akira",
  "shota",
  "ryo",
  "naoki",
  "kazuya",
  "yoko",
  "keiko",
  "yumi",
  "akiko",
  "naomi",
  "mai",
  "haruka",
  "aya",
  "misaki",
  "sakura",
  "emi",
  "tomoko",
  "kaori",
  "makoto",
  "satoshi",
  "tetsuya",
  "yusuke",
  "koji",
  "mika",
  "rie",
];
const pick = <T>(xs: readonly T[]): T => xs[randomInt(xs.length)] as T;

/**
 * `sekisho honeytokens add`: decoy members that look like everyone else — a Japanese name,
 * address, phone and birth date, an e-mail at a common provider, a chosen login ID or a member
 * number, an argon2id hash of a random password nobody knows, registered when they are made. Their
 * only cryptographic mark is their member id (see src/audit/honeytokens.ts); what a reader of the
 * database can still see is listed in docs/admin.md ("What decoys don't hide"): add them a few at
 * a time, at irregular moments.
 */
export class Decoys {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #seals: RowSeals;
  readonly #hasher: PasswordHasher;
  readonly #vault: ProfileVault;
  readonly #audit: AuditLog;
  readonly #honeytokens: Honeytokens;

  constructor(deps: {
    db: Db;
    clock: Clock;
    hasher: PasswordHasher;
    vault: ProfileVault;
    audit: AuditLog;
    honeytokens: Honeytokens;
    seals: RowSeals;
  }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#seals = deps.seals;
    this.#hasher = deps.hasher;
    this.#vault = deps.vault;
    this.#audit = deps.audit;
    this.#honeytokens = deps.honeytokens;
  }

  #profile(f: Faker): Profile {
    const sex = randomInt(2) === 0 ? "female" : "male";
    const family = f.person.lastName();
    const given = f.person.firstName(sex);
    const birth = f.date.birthdate({ mode: "age", min: 19, max: 78, refDate: this.#clock.now() });
    return {
      name: `${family} ${given}`,
      email: f.internet.email().toLowerCase(),
      phone: `0${randomInt(7, 10)}0-${randomInt(1000, 10000)}-${randomInt(1000, 10000)}`,
      postal_code: f.location.zipCode(),
      address: `${f.location.state()}${f.location.city()}${f.location.streetAddress()}`,
      birth_date: birth.toISOString().slice(0, 10),
      gender: sex,
    };
  }

  /**
   * Login IDs as Japanese members choose them: romanised names, initials, years. Only IDs that
   * registration itself would accept: one it refuses (e.g. eleven letters and digits, the shape of
   * a member number) would be answered `400 invalid_login_id` at sign-in, before the decoy is
   * ever looked up, telling an attacker it can't be anyone's and never raising the alarm.
   */
  #loginId(): { id: string; kind: "chosen" | "number" } {
    if (randomInt(3) === 0) return { id: generateMemberNumber(), kind: "number" };
    for (;;) {
      const family = pick(FAMILY);
      const given = pick(GIVEN);
      const year = String(randomInt(60, 100) % 100).padStart(2, "0");
      const shapes = [
        `${family}.${given}`,
        `${given}.${family}`,
        `${family}${given[0]}${year}`,
        `${given}_${family}`,
        `${given}${randomInt(1, 1000)}`,
        `${family}-${given[0]}`,
      ];
      const chosen = checkChosenLoginId(pick(shapes));
      if (chosen.ok) return { id: chosen.loginId, kind: "chosen" };
    }
  }

  /** Make `count` decoys; returns their login IDs (for the operator's sealed record, never logged). */
  async add(count: number, operator: { ip: string | null }): Promise<string[]> {
    // Loaded only here: faker's locale data is large, and nothing else needs it.
    const { fakerJA } = await import("@faker-js/faker");
    const made: string[] = [];
    for (let i = 0; i < count; i++) {
      const password = await this.#hasher.hash(randomBytes(24).toString("base64url"));
      // Registered now, like any member made now (a date in the past would contradict the row
      // order); each at its own moment (after its own hash), not one timestamp for the batch.
      const createdAt = this.#clock.now().getTime();
      for (let attempt = 0; ; attempt++) {
        const login = this.#loginId();
        const taken = this.#db.$client.prepare("SELECT 1 FROM members WHERE login_id = ?").get(login.id);
        if (taken) {
          if (attempt > 20) throw new Error("could not find a free login ID for a decoy");
          continue;
        }
        const id = this.#honeytokens.newId();
        const sub = newSubject();
        const emailVerified = randomInt(10) < 7;
        inTransaction(this.#db, () => {
          this.#db
            .insert(members)
            .values({
              id,
              sub,
              loginId: login.id,
              loginIdKind: login.kind,
              passwordHash: password.hash,
              pepperId: password.pepperId,
              role: "member",
              createdAt,
              updatedAt: createdAt,
              passwordChangedAt: createdAt,
              emailVerified,
              locale: randomInt(10) === 0 ? "en" : "ja",
              seal: newMemberSeal(this.#seals, {
                id,
                sub,
                passwordHash: password.hash,
                pepperId: password.pepperId,
                emailVerified,
              }),
            })
            .run();
          this.#db
            .insert(profiles)
            .values({ ...this.#vault.encryptRow(id, this.#profile(fakerJA)), updatedAt: createdAt })
            .run();
        });
        made.push(login.id);
        break;
      }
    }
    // One entry for the batch: how many, when, by whom — not which.
    this.#audit.append({
      action: "honeytokens.added",
      outcome: "success",
      actorType: "operator",
      ip: operator.ip,
      details: { count },
    });
    return made;
  }
}
