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
