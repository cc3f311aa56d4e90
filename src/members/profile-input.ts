import { z } from "zod";
import { text } from "../validation.js";

/** What a member may put in a profile. Formats are loose enough for Japanese and other addresses. */
const isoDate = /^(\d{4})-(\d{2})-(\d{2})$/;

/** An e-mail address as members type it (full-width characters folded, spaces trimmed). */
export const emailInput = z
  .string()
  .max(254)
  .transform((s) => s.normalize("NFKC").trim())
  .pipe(z.email({ error: "must be an e-mail address" }));

export const profileInput = z
  .object({
    name: text(100, { min: 1 }).optional(),
    email: emailInput,
    phone: text(32)
      .transform((s) => s.normalize("NFKC").trim())
      .refine((s) => /^\+?[0-9][0-9 ()-]{4,30}$/.test(s), "must be a phone number")
      .optional(),
    postal_code: text(16)
      .transform((s) => s.normalize("NFKC").replace(/^〒/, "").trim())
      .refine((s) => /^[0-9A-Za-z][0-9A-Za-z -]{1,14}$/.test(s), "must be a postal code")
      .optional(),
    address: text(300, { min: 1, multiline: true }).optional(),
    birth_date: z
      .string()
      .regex(isoDate, "must be a date as YYYY-MM-DD")
      .refine((s) => {
        const d = new Date(`${s}T00:00:00Z`);
        return !Number.isNaN(d.getTime()) && d.toISOString().startsWith(s) && s >= "1900-01-01";
      }, "must be a real date from 1900 on")
      .optional(),
    gender: z.enum(["female", "male", "other", "prefer_not_to_say"]).optional(),
  })
  .strip();

export type ProfileInput = z.infer<typeof profileInput>;
