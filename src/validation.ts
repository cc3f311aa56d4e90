import { z } from "zod";

/**
 * Shared zod building blocks. Every string the API accepts is well-formed Unicode (no lone
 * surrogates, which would turn into U+FFFD on the way to UTF-8 and change the value silently) and
 * free of control characters; lengths are bounded before anything else looks at it.
 */
const CONTROL =
  // biome-ignore lint/suspicious/noControlCharactersInRegex: matching them is the point
  /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;
const CONTROL_OR_NEWLINE =
  // biome-ignore lint/suspicious/noControlCharactersInRegex: matching them is the point
  /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;
/**
 * Characters that show nothing (Unicode's default-ignorable code points: zero-width space, word
 * joiner, soft hyphen, BOM, Hangul fillers, tag characters, …) are taken out, so a name can't look
 * like another one on an admin's screen, or be blank while passing a length check. Kept: ZWJ and
 * ZWNJ (emoji and some scripts need them) and variation selectors (emoji, and the ideographic
 * variation sequences of Japanese names: 葛 and its variant are one character plus a selector);
 * bidi controls and marks are refused above, not taken out.
 */
const IGNORABLE = /\p{Default_Ignorable_Code_Point}/gu;
/** Kept (see above): ZWNJ, ZWJ, the bidi controls and marks, and variation selectors. */
const kept = (c: string) => {
  const cp = c.codePointAt(0) ?? 0;
  return (
    (cp >= 0x200c && cp <= 0x200f) ||
    (cp >= 0x202a && cp <= 0x202e) ||
    (cp >= 0x2066 && cp <= 0x2069) ||
    cp === 0x061c ||
    (cp >= 0xfe00 && cp <= 0xfe0f) ||
    (cp >= 0xe0100 && cp <= 0xe01ef)
  );
};
const withoutInvisible = (s: string) => s.replace(IGNORABLE, (c) => (kept(c) ? c : ""));

export const text = (max: number, opts: { min?: number; multiline?: boolean } = {}) =>
  z
    .string()
    .max(max * 4) // cheap bound before any work on huge input
    .refine((s) => s.isWellFormed(), "must be well-formed Unicode")
    // A multi-line field's CRLF line ends are LF (as a browser's form sends them, CRLF is no trick).
    .transform((s) => withoutInvisible(opts.multiline ? s.replace(/\r\n/g, "\n") : s).normalize("NFC"))
    .refine(
      (s) => !(opts.multiline ? CONTROL : CONTROL_OR_NEWLINE).test(s),
      "must not contain control characters",
    )
    .refine((s) => [...s].length <= max, `must be at most ${max} characters`)
    .refine((s) => visibleLength(s) >= (opts.min ?? 0), `must be at least ${opts.min ?? 0} characters`);

/**
 * How many characters of `s` show something: not white space, combining marks (variation
 * selectors among them), joiners, the blank Braille pattern or the object replacement character.
 * A minimum length counts none of these, so a name of joiners or marks alone is blank.
 */
function visibleLength(s: string): number {
  return [...s.replace(/\s|\p{M}|\u200c|\u200d|\u2800|\ufffc/gu, "")].length;
}

/** A bounded string taken as typed (passwords: rules and normalisation are theirs). */
export const rawString = (max: number) => z.string().min(1).max(max);

/**
 * A whole number written as plain decimal digits (a query parameter, a form field): not
 * `z.coerce.number()`, which takes "" as 0 and "1e2", "0x10" or " 7 " as numbers.
 */
export const digits = (min: number, max: number) =>
  z
    .string()
    .regex(/^[0-9]{1,16}$/, "a whole number in digits")
    .transform(Number)
    .pipe(z.number().int().min(min).max(max));
