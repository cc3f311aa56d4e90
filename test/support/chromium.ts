import fs from "node:fs";
import path from "node:path";
import { type Browser, chromium } from "playwright-core";

/**
 * Debian's Chromium driven by playwright-core (no browser download works here), with the flags
 * this machine needs. Browser tests skip without it outside CI; in CI `.ci/run` installs it.
 */
export const CHROMIUM = "/usr/bin/chromium";
export const chromiumAvailable = fs.existsSync(CHROMIUM);
export const ARTIFACTS = path.resolve(import.meta.dirname, "../browser/artifacts");

export async function launchChromium(): Promise<Browser> {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
}

/**
 * A page with Chrome's virtual authenticator (CDP `WebAuthn.addVirtualAuthenticator`): a platform
 * authenticator with resident keys that verifies the user and answers at once.
 */
export async function pageWithAuthenticator(browser: Browser, locale = "ja-JP") {
  const context = await browser.newContext({ locale });
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  return { context, page, cdp, authenticatorId };
}
