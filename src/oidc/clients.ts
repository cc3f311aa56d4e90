import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { eq, sql } from "drizzle-orm";
import type { ClientAuthMethod, ClientMetadata } from "oidc-provider";
import type { AuditLog } from "../audit/log.js";
import type { Clock } from "../clock.js";
import { type Db, inTransaction, lazyPrepared, othersCommits } from "../db/connection.js";
import { oidcClients } from "../db/schema.js";
import { InputError } from "../errors.js";

/**
 * Member sites. A confidential client gets a 256-bit random secret, shown once and stored as its
 * SHA-256 (a random 256-bit value needs no slow hash). Public clients have no secret and must
 * use PKCE (all clients must, in fact). Redirect URIs are matched exactly by oidc-provider.
 */
export const DEFAULT_CLIENT_SCOPE = "openid profile email phone address offline_access";

/**
 * What a client may ask for when it was registered without `--scope`: the default, and for a
 * client registered with the client-credentials grant also `members:read`, the service API's
 * scope (that grant is there for the service API; only its tokens are accepted there).
 */
export function defaultScopeFor(grants: readonly string[]): string {
  return grants.includes("client_credentials")
    ? `${DEFAULT_CLIENT_SCOPE} members:read`
    : DEFAULT_CLIENT_SCOPE;
}

export const hashSecret = (secret: string) => createHash("sha256").update(secret, "utf8").digest("base64url");

export function secretMatches(storedHash: string, presented: string): boolean {
  const a = Buffer.from(storedHash);
  const b = Buffer.from(hashSecret(presented));
  return a.length === b.length && timingSafeEqual(a, b);
}

export interface NewClient {
  name: string;
  redirectUris: string[];
  public?: boolean;
  grants?: Array<"client_credentials">;
  scope?: string;
  firstParty?: boolean;
  logoUri?: string;
  authMethod?: "client_secret_basic" | "client_secret_post";
  postLogoutRedirectUris?: string[];
}

/**
 * The checks every URL a site registers shares: absolute, no user name or password, https (http
 * only for localhost). `more` adds a kind's own checks, run before the scheme's.
 */
function checkSiteUrl(uri: string, more: (url: URL) => string | null = () => null): string | null {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    return "is not an absolute URL";
  }
  if (url.username || url.password) return "must not carry a user name or password";
  const problem = more(url);
  if (problem) return problem;
  const local = url.hostname === "localhost" || url.hostname === "127.0.0.1" || url.hostname === "[::1]";
  if (url.protocol !== "https:" && !(url.protocol === "http:" && local))
    return "must be https (http only for localhost)";
  return null;
}

export function validateRedirectUri(uri: string): string | null {
  return checkSiteUrl(uri, (url) => {
    if (uri.includes("#")) return "must not have a fragment";
    if (url.hostname.includes("*")) return "must name one host (no wildcards)";
    // Matched exactly, as written: a spelling the browser would normalise (upper-case scheme or
    // host, a default port, dot segments) could never match what the site sends.
    if (url.href !== uri) return `must be written as ${url.href}`;
    return null;
  });
}

/**
 * A logo shown on the hosted sign-in and consent pages: an absolute https URL (http for
 * localhost only), so a page served over https never loads a mixed-content image.
 */
export function validateLogoUri(uri: string): string | null {
  return checkSiteUrl(uri);
}

export class Clients {
  readonly #db: Db;
  readonly #clock: Clock;
  readonly #audit: AuditLog;

  constructor(deps: { db: Db; clock: Clock; audit: AuditLog }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#audit = deps.audit;
  }

  // Prepared once: oidc-provider looks the client up on every token and authorization request.
  readonly #byId = lazyPrepared(() =>
    this.#db
      .select()
      .from(oidcClients)
      .where(eq(oidcClients.clientId, sql.placeholder("clientId")))
      .prepare(),
  );

  add(input: NewClient): { clientId: string; clientSecret: string | null } {
    if (input.redirectUris.length === 0) throw new InputError("at least one --redirect-uri is needed");
    for (const uri of [...input.redirectUris, ...(input.postLogoutRedirectUris ?? [])]) {
      const problem = validateRedirectUri(uri);
      if (problem) throw new InputError(`redirect URI ${uri} ${problem}`);
    }
    if (input.logoUri !== undefined) {
      const problem = validateLogoUri(input.logoUri);
      if (problem) throw new InputError(`logo URI ${input.logoUri} ${problem}`);
    }
    if (input.public && input.grants?.includes("client_credentials")) {
      throw new InputError("a public client cannot use client_credentials");
    }
    const clientId = `c_${randomBytes(12).toString("base64url")}`;
    const clientSecret = input.public ? null : randomBytes(32).toString("base64url");
    const grantTypes = ["authorization_code", "refresh_token", ...(input.grants ?? [])];
    inTransaction(this.#db, () => {
      this.#db
        .insert(oidcClients)
        .values({
          clientId,
          name: input.name,
          secretHash: clientSecret ? hashSecret(clientSecret) : null,
          tokenAuthMethod: clientSecret ? (input.authMethod ?? "client_secret_basic") : "none",
          redirectUris: JSON.stringify(input.redirectUris),
          postLogoutRedirectUris: JSON.stringify(input.postLogoutRedirectUris ?? []),
          grantTypes: JSON.stringify(grantTypes),
          scope: input.scope ?? defaultScopeFor(grantTypes),
          firstParty: input.firstParty ?? true,
          logoUri: input.logoUri ?? null,
          createdAt: this.#clock.now().getTime(),
        })
        .run();
      this.#audit.append({
        action: "client.registered",
        outcome: "success",
        actorType: "operator",
        details: { client_id: clientId, name: input.name, public: !!input.public, grant_types: grantTypes },
      });
    });
    this.#known.clear();
    return { clientId, clientSecret };
  }

  /**
   * Registered clients' metadata, kept once read: oidc-provider asks for it on every request to
   * the token endpoint. Only found clients are kept (a made-up id costs a lookup, not memory);
   * emptied when a client is added here or another process (the CLI) commits anything.
   */
  readonly #known = new Map<string, ClientMetadata>();
  #knownAt = -1;
  readonly #othersCommits = lazyPrepared(() => othersCommits(this.#db));

  /** Client metadata for oidc-provider; `client_secret` carries the hash (see compareClientSecret). */
  metadata(clientId: string): ClientMetadata | undefined {
    const version = this.#othersCommits()();
    if (version !== this.#knownAt) {
      this.#known.clear();
      this.#knownAt = version;
    }
    const known = this.#known.get(clientId);
    if (known) return known;
    const found = this.#read(clientId);
    if (found) this.#known.set(clientId, found);
    return found;
  }

  #read(clientId: string): ClientMetadata | undefined {
    const row = this.#byId().get({ clientId });
    if (!row) return undefined;
    const grantTypes = JSON.parse(row.grantTypes) as string[];
    return {
      client_id: row.clientId,
      client_name: row.name,
      ...(row.secretHash
        ? {
            client_secret: row.secretHash,
            token_endpoint_auth_method: row.tokenAuthMethod as ClientAuthMethod,
          }
        : { token_endpoint_auth_method: "none" }),
      redirect_uris: JSON.parse(row.redirectUris) as string[],
      post_logout_redirect_uris: JSON.parse(row.postLogoutRedirectUris) as string[],
      grant_types: row.secretHash ? grantTypes : grantTypes.filter((g) => g !== "client_credentials"),
      response_types: ["code"],
      scope: row.scope,
      id_token_signed_response_alg: "ES256",
      first_party: row.firstParty,
      ...(row.logoUri ? { logo_uri: row.logoUri } : {}),
    };
  }
}
