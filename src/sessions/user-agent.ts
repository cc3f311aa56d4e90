import Bowser from "bowser";

const MOBILE_OS = new Set(["iOS", "Android"]);

/** Longest User-Agent looked at: what the stores keep (a header can be far longer; parsing is regex work). */
const MAX_UA = 256;

/**
 * A member-readable name for the browser and system a session or trusted device came from, from
 * its User-Agent header ("Chrome 156 / Linux", "Safari 17 / iOS (iPhone)"), parsed by bowser; ""
 * when nothing is recognised. For the member's account page, the admin console and the sign-in
 * notice mail: the raw header, a line of tokens like `Mozilla/5.0 (X11; …) AppleWebKit/537.36`,
 * tells a member nothing about which of their devices it was. The header is the client's own
 * claim, so this is a hint for the member, never evidence (the audit keeps the raw value).
 */
export function deviceLabel(ua: string | null | undefined): string {
  const text = ua?.slice(0, MAX_UA).trim();
  if (!text) return "";
  let parsed: Bowser.Parser.ParsedResult;
  try {
    parsed = Bowser.parse(text);
  } catch {
    return "";
  }
  const major = parsed.browser.version?.split(".")[0];
  const browser = parsed.browser.name ? [parsed.browser.name, major].filter(Boolean).join(" ") : "";
  // Versions only where the header still tells them: desktop browsers freeze theirs (every Mac
  // says 10.15, Windows 11 says NT 10.0), so "macOS Catalina" would be wrong more often than not.
  const osVersion = MOBILE_OS.has(parsed.os.name ?? "") ? parsed.os.version?.split(".")[0] : undefined;
  const os = parsed.os.name ? [parsed.os.name, osVersion].filter(Boolean).join(" ") : "";
  const model = parsed.platform.model ? ` (${parsed.platform.model})` : "";
  return [browser, os ? `${os}${model}` : ""].filter(Boolean).join(" / ");
}
