/**
 * A minimal user agent for OIDC tests without a browser: a cookie jar and manual redirects,
 * following every redirect on the issuer's origin and stopping at the first one that leaves it
 * (the relying party's redirect_uri), as the contract's "no browser needed" flow describes.
 */
export class Jar {
  readonly cookies = new Map<string, string>();

  header(): string {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join("; ");
  }

  store(res: Response): void {
    for (const line of res.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(";");
      const eq = (pair ?? "").indexOf("=");
      const name = (pair ?? "").slice(0, eq).trim();
      const value = (pair ?? "").slice(eq + 1).trim();
      const expired = attrs.some((a) => /max-age=0|expires=thu, 01 jan 1970/i.test(a.trim()));
      if (expired || value === "") this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }

  async fetch(url: string, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers);
    if (this.cookies.size) headers.set("cookie", this.header());
    const res = await fetch(url, { ...init, headers, redirect: "manual" });
    this.store(res);
    return res;
  }

  /** GET `url` and follow redirects while they stay on `origin`; returns the last response and URL. */
  async follow(url: string, origin: string): Promise<{ res: Response; url: string }> {
    let current = url;
    for (let hops = 0; hops < 20; hops++) {
      const res = await this.fetch(current);
      const location = res.headers.get("location");
      if (res.status < 300 || res.status >= 400 || !location) return { res, url: current };
      const next = new URL(location, current).toString();
      if (new URL(next).origin !== origin) return { res, url: next };
      await res.arrayBuffer();
      current = next;
    }
    throw new Error("too many redirects");
  }
}
