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
 * like another one on an admin's screen, or be blank while passing a length check. Kept only where
 * they do something (see keptHere): ZWJ and ZWNJ inside an emoji sequence or between letters of a
 * script that joins (Arabic, the Indic scripts, …); variation selectors after an emoji, a symbol or
 * an ideograph (the ideographic variation sequences of Japanese names: 葛 and its variant are one
 * character plus a selector); the tag characters of a subdivision flag (🏴 + tags + cancel tag);
 * Mongolian's free variation selectors within Mongolian. So `ta\u200dro` or `ta\ufe00ro` is
 * stored as `taro`. Bidi controls and marks are refused above, not taken out.
 */
const IGNORABLE = /\p{Default_Ignorable_Code_Point}/u;
const PICTOGRAPH = /\p{Extended_Pictographic}/u;
/** Scripts whose letters take ZWJ / ZWNJ to choose a joined or unjoined form. */
const JOINING =
  /[\p{Script=Arabic}\p{Script=Syriac}\p{Script=Nko}\p{Script=Mongolian}\p{Script=Devanagari}\p{Script=Bengali}\p{Script=Gurmukhi}\p{Script=Gujarati}\p{Script=Oriya}\p{Script=Tamil}\p{Script=Telugu}\p{Script=Kannada}\p{Script=Malayalam}\p{Script=Sinhala}\p{Script=Myanmar}\p{Script=Khmer}\p{Script=Tibetan}]/u;
/** What a standardized variation selector (VS1–VS16) may follow: emoji, symbols (not ASCII), ideographs. */
const VARIABLE = /[\p{Extended_Pictographic}\p{Emoji_Presentation}\p{S}\p{Script=Han}\p{Script=Myanmar}]/u;
/** A subdivision flag: black flag, tag letters and digits, cancel tag. */
const TAG_FLAG = /^\u{1F3F4}[\u{E0030}-\u{E0039}\u{E0061}-\u{E007A}]{2,6}\u{E007F}/u;

/** Whether the default-ignorable `cp` between `before` and `after` (code points) stays. */
function keptHere(cp: number, before: string, after: string): boolean {
  if (cp === 0x200c || cp === 0x200d) {
    const emoji =
      (PICTOGRAPH.test(before) || /[\u{1F3FB}-\u{1F3FF}\uFE0F]/u.test(before)) && PICTOGRAPH.test(after);
    return emoji || (JOINING.test(before) && JOINING.test(after));
  }
  // Bidi controls and marks are refused by the control-character rule, so they stay to be seen.
  if (
    (cp >= 0x200e && cp <= 0x200f) ||
    (cp >= 0x202a && cp <= 0x202e) ||
    (cp >= 0x2066 && cp <= 0x2069) ||
    cp === 0x061c
  )
    return true;
  // A keycap: a digit, # or * with VS16 and the combining enclosing keycap.
  if (cp === 0xfe0f && /[0-9#*]/.test(before) && after === "\u20e3") return true;
  if (cp >= 0xfe00 && cp <= 0xfe0f) return VARIABLE.test(before) && before > "\u007f";
  if (cp >= 0xe0100 && cp <= 0xe01ef) return /\p{Script=Han}/u.test(before);
  if ((cp >= 0x180b && cp <= 0x180f) || cp === 0x180e) return /\p{Script=Mongolian}/u.test(before);
  return false;
}

/** `s` without the default-ignorable code points that do nothing where they are (see above). */
function withoutInvisible(s: string): string {
  const cps = [...s];
  let out = "";
  let before = ""; // the last code point kept
  for (let i = 0; i < cps.length; i++) {
    const c = cps[i] as string;
    if (c === "\u{1F3F4}") {
      // A subdivision flag is kept whole (its tags are ignorable).
      const flag = TAG_FLAG.exec(cps.slice(i, i + 8).join(""));
      if (flag) {
        out += flag[0];
        i += [...flag[0]].length - 1;
        before = "\u{E007F}";
        continue;
      }
    }
    if (IGNORABLE.test(c) && !keptHere(c.codePointAt(0) ?? 0, before, cps[i + 1] ?? "")) continue;
    out += c;
    before = c;
  }
  return out;
}

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
