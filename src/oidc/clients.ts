import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { asc, eq, sql } from "drizzle-orm";
import type { ClientAuthMethod, ClientMetadata } from "oidc-provider";
import type { AuditLog } from "../audit/log.js";
import type { Clock } from "../clock.js";
import { type Db, inTransaction, lazyPrepared, othersCommits } from "../db/connection.js";
import { oidcClients } from "../db/schema.js";
import { InputError } from "../errors.js";
import { clientSealValues, type RowSeals } from "../vault/seals.js";

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

/** What `clients update` may change. Lists are edited (added to, taken from), not replaced. */
export interface ClientChanges {
  name?: string;
  addRedirectUris?: string[];
  removeRedirectUris?: string[];
  addPostLogoutRedirectUris?: string[];
  removePostLogoutRedirectUris?: string[];
  /** A new logo URI, or null to show none. */
  logoUri?: string | null;
  addScopes?: string[];
  firstParty?: boolean;
}

/** A registered client as `clients list` shows it (no secret, no hash). */
export interface ClientSummary {
  client_id: string;
  name: string;
  type: "confidential" | "public";
  auth_method: string;
  redirect_uris: string[];
  post_logout_redirect_uris: string[];
  grant_types: string[];
  scope: string;
  first_party: boolean;
  logo_uri: string | null;
  created_at: string;
  /** Until when the secret replaced by the last rotation is still accepted (ISO 8601), if it is. */
  previous_secret_until: string | null;
}

/** The scopes a client can be given: the provider's (see provider.ts `scopes`). */
export const KNOWN_SCOPES = new Set([...DEFAULT_CLIENT_SCOPE.split(" "), "members:read"]);

function checkScopes(scopes: readonly string[]): void {
  for (const scope of scopes)
    if (!KNOWN_SCOPES.has(scope))
      throw new InputError(`unknown scope ${scope} (one of ${[...KNOWN_SCOPES].join(", ")})`);
}

/** Longest a replaced secret may stay valid after a rotation: a week. */
export const MAX_KEEP_OLD_MINUTES = 7 * 24 * 60;

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
  readonly #seals: RowSeals;

  constructor(deps: { db: Db; clock: Clock; audit: AuditLog; seals: RowSeals }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
    this.#audit = deps.audit;
    this.#seals = deps.seals;
  }

  /**
   * Write a client's row (new, or changed) with its seal: a site's redirect addresses, secret
   * hashes or grants written into the database without the keyring make no client
   * (src/vault/seals.ts). A change checks the row's current seal first, so a tampered row is not
   * sealed by the next legitimate change.
   */
  #sealed<T extends Parameters<typeof clientSealValues>[0]>(row: T): T & { seal: string } {
    return { ...row, seal: this.#seals.seal("oidc_clients", clientSealValues(row)) };
  }

  #holds(row: typeof oidcClients.$inferSelect): boolean {
    return this.#seals.holds("oidc_clients", clientSealValues(row), row.seal, row.clientId);
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
    checkScopes((input.scope ?? "").split(" ").filter(Boolean));
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
          ...this.#sealed({
            clientId,
            name: input.name,
            secretHash: clientSecret ? hashSecret(clientSecret) : null,
            previousSecretHash: null,
            previousSecretUntil: null,
            tokenAuthMethod: clientSecret ? (input.authMethod ?? "client_secret_basic") : "none",
            redirectUris: JSON.stringify(input.redirectUris),
            postLogoutRedirectUris: JSON.stringify(input.postLogoutRedirectUris ?? []),
            grantTypes: JSON.stringify(grantTypes),
            scope: input.scope ?? defaultScopeFor(grantTypes),
            firstParty: input.firstParty ?? true,
            logoUri: input.logoUri ?? null,
          }),
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
    this.#previous.clear();
    return { clientId, clientSecret };
  }

  /** Every registered client, oldest first. */
  list(): ClientSummary[] {
    const rows = this.#db.select().from(oidcClients).orderBy(asc(oidcClients.createdAt)).all();
    const now = this.#clock.now().getTime();
    return rows.map((row) => ({
      client_id: row.clientId,
      name: row.name,
      type: row.secretHash ? "confidential" : "public",
      auth_method: row.tokenAuthMethod,
      redirect_uris: JSON.parse(row.redirectUris) as string[],
      post_logout_redirect_uris: JSON.parse(row.postLogoutRedirectUris) as string[],
      grant_types: JSON.parse(row.grantTypes) as string[],
      scope: row.scope,
      first_party: row.firstParty,
      logo_uri: row.logoUri,
      created_at: new Date(row.createdAt).toISOString(),
      previous_secret_until:
        row.previousSecretHash && row.previousSecretUntil !== null && row.previousSecretUntil > now
          ? new Date(row.previousSecretUntil).toISOString()
          : null,
    }));
  }

  #row(clientId: string, opts: { sealed: boolean } = { sealed: true }) {
    const row = this.#byId().get({ clientId });
    if (!row) throw new InputError(`no client ${clientId}`);
    if (opts.sealed && !this.#holds(row))
      throw new InputError(
        `${clientId}'s row was changed in the database without the keyring (its seal doesn't hold): remove it and register the site again`,
      );
    return row;
  }

  /**
   * Change a client's name, redirect and logout addresses, logo, scopes or first-party flag.
   * Scopes can only be added: tokens already issued keep the scopes they carry, so narrowing a
   * client means registering a new one and removing this one. Returns the client as it now is.
   */
  update(clientId: string, changes: ClientChanges): ClientSummary {
    const edit = (current: string[], add: string[] = [], remove: string[] = [], what: string): string[] => {
      for (const uri of add) {
        const problem = validateRedirectUri(uri);
        if (problem) throw new InputError(`${what} ${uri} ${problem}`);
      }
      for (const uri of remove)
        if (!current.includes(uri)) throw new InputError(`${what} ${uri} is not registered`);
      return [...new Set([...current.filter((u) => !remove.includes(u)), ...add])];
    };
    if (changes.name !== undefined && changes.name.trim() === "") throw new InputError("the name is empty");
    if (changes.logoUri) {
      const problem = validateLogoUri(changes.logoUri);
      if (problem) throw new InputError(`logo URI ${changes.logoUri} ${problem}`);
    }
    checkScopes(changes.addScopes ?? []);
    inTransaction(this.#db, () => {
      const row = this.#row(clientId);
      const redirectUris = edit(
        JSON.parse(row.redirectUris) as string[],
        changes.addRedirectUris,
        changes.removeRedirectUris,
        "redirect URI",
      );
      if (redirectUris.length === 0) throw new InputError("a client keeps at least one redirect URI");
      const postLogout = edit(
        JSON.parse(row.postLogoutRedirectUris) as string[],
        changes.addPostLogoutRedirectUris,
        changes.removePostLogoutRedirectUris,
        "post-logout redirect URI",
      );
      const scopes = row.scope.split(" ").filter(Boolean);
      for (const scope of changes.addScopes ?? []) if (!scopes.includes(scope)) scopes.push(scope);
      const next = {
        name: changes.name ?? row.name,
        redirectUris: JSON.stringify(redirectUris),
        postLogoutRedirectUris: JSON.stringify(postLogout),
        logoUri: changes.logoUri === undefined ? row.logoUri : changes.logoUri,
        scope: scopes.join(" "),
        firstParty: changes.firstParty ?? row.firstParty,
      };
      const changed = (Object.keys(next) as Array<keyof typeof next>).filter((k) => next[k] !== row[k]);
      if (changed.length === 0) return;
      const { seal } = this.#sealed({ ...row, ...next });
      this.#db
        .update(oidcClients)
        .set({ ...next, seal })
        .where(eq(oidcClients.clientId, clientId))
        .run();
      this.#audit.append({
        action: "client.updated",
        outcome: "success",
        actorType: "operator",
        details: {
          client_id: clientId,
          changed: changed.map((k) => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)),
          ...Object.fromEntries(
            changed.map((k) => [k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`), next[k]]),
          ),
        },
      });
    });
    this.#known.clear();
    this.#previous.clear();
    return this.list().find((c) => c.client_id === clientId) as ClientSummary;
  }

  /**
   * A new secret for a confidential client, shown once. The old one stops working at once (a
   * leaked secret), or stays accepted for `keepOldMinutes` more (a planned change: the site
   * switches to the new secret meanwhile without one failed request).
   */
  rotateSecret(
    clientId: string,
    keepOldMinutes = 0,
    revokeTokens: (clientId: string) => number = () => 0,
  ): { clientSecret: string; oldSecretUntil: Date | null; tokensRevoked: number } {
    if (!Number.isInteger(keepOldMinutes) || keepOldMinutes < 0 || keepOldMinutes > MAX_KEEP_OLD_MINUTES)
      throw new InputError(`--keep-old-for is a whole number of minutes from 0 to ${MAX_KEEP_OLD_MINUTES}`);
    const clientSecret = randomBytes(32).toString("base64url");
    const until = keepOldMinutes > 0 ? this.#clock.now().getTime() + keepOldMinutes * 60_000 : null;
    let tokensRevoked = 0;
    inTransaction(this.#db, () => {
      const row = this.#row(clientId);
      if (!row.secretHash) throw new InputError(`${clientId} is a public client: it has no secret`);
      const next = {
        secretHash: hashSecret(clientSecret),
        previousSecretHash: until === null ? null : row.secretHash,
        previousSecretUntil: until,
      };
      this.#db
        .update(oidcClients)
        .set(this.#sealed({ ...row, ...next }))
        .where(eq(oidcClients.clientId, clientId))
        .run();
      // A leak's tokens go with it (the site mints new ones with the new secret); kept while the
      // old secret is still accepted, since the site may still be using it.
      if (until === null) tokensRevoked = revokeTokens(clientId);
      this.#audit.append({
        action: "client.secret_rotated",
        outcome: "success",
        actorType: "operator",
        details: {
          client_id: clientId,
          old_secret_until: until === null ? null : new Date(until).toISOString(),
          client_credentials_tokens_revoked: tokensRevoked,
        },
      });
    });
    this.#known.clear();
    this.#previous.clear();
    return { clientSecret, oldSecretUntil: until === null ? null : new Date(until), tokensRevoked };
  }

  /**
   * Delete a client. `revokeGrants` runs in the same transaction and deletes the grants and
   * tokens issued to it (see OidcStore.revokeClient); returns how many rows it deleted.
   */
  remove(clientId: string, revokeGrants: (clientId: string) => number): { revoked: number } {
    let revoked = 0;
    inTransaction(this.#db, () => {
      // (Whether its seal holds or not: removing is what a tampered row calls for.)
      const row = this.#row(clientId, { sealed: false });
      revoked = revokeGrants(clientId);
      this.#db.delete(oidcClients).where(eq(oidcClients.clientId, clientId)).run();
      this.#audit.append({
        action: "client.removed",
        outcome: "success",
        actorType: "operator",
        details: { client_id: clientId, name: row.name, revoked_rows: revoked },
      });
    });
    this.#known.clear();
    this.#previous.clear();
    return { revoked };
  }

  /**
   * Whether `presented` is the client's secret, or the secret its last rotation replaced while
   * that is still accepted. (oidc-provider's compareClientSecret; constant time per hash.)
   */
  secretMatches(clientId: string, currentHash: string, presented: string): boolean {
    if (secretMatches(currentHash, presented)) return true;
    const previous = this.#previous.get(clientId);
    return (
      previous !== undefined &&
      previous.until > this.#clock.now().getTime() &&
      secretMatches(previous.hash, presented)
    );
  }

  /**
   * Registered clients' metadata, kept once read: oidc-provider asks for it on every request to
   * the token endpoint. Only found clients are kept (a made-up id costs a lookup, not memory);
   * emptied when a client is added here or another process (the CLI) commits anything.
   */
  readonly #known = new Map<string, ClientMetadata>();
  /** The replaced secrets still accepted, of the clients in #known (kept and emptied with it). */
  readonly #previous = new Map<string, { hash: string; until: number }>();
  #knownAt = -1;
  readonly #othersCommits = lazyPrepared(() => othersCommits(this.#db));

  /** Client metadata for oidc-provider; `client_secret` carries the hash (see compareClientSecret). */
  metadata(clientId: string): ClientMetadata | undefined {
    const version = this.#othersCommits()();
    if (version !== this.#knownAt) {
      this.#known.clear();
      this.#previous.clear();
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
    if (!row || !this.#holds(row)) return undefined;
    if (row.previousSecretHash && row.previousSecretUntil !== null)
      this.#previous.set(clientId, { hash: row.previousSecretHash, until: row.previousSecretUntil });
    else this.#previous.delete(clientId);
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
