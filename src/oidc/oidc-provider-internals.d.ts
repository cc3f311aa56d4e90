// oidc-provider has no public way to change a running provider's signing keys. Its own keystore
// initialiser, run again on the provider instance, replaces the keystore and the JWKS it serves
// (src/oidc/provider.ts, syncSigningKeys; covered by test/oidc-keys.test.ts).
declare module "oidc-provider/lib/helpers/initialize_keystore.js" {
  export default function initializeKeyStore(this: object, jwks: { keys: object[] }): void;
}

// The provider's own revocation of a grant (its tokens, the grant per revokeGrantPolicy, the
// `grant.revoked` event), as its refresh-token replay path runs it (src/oidc/provider.ts,
// revokeOnReplay; covered by test/oidc-flow.test.ts).
declare module "oidc-provider/lib/helpers/revoke.js" {
  export default function revoke(ctx: object, grantId: string): Promise<void>;
}
