import { createHash, generateKeyPairSync, type KeyObject, randomBytes, sign } from "node:crypto";
import { isoCBOR } from "@simplewebauthn/server/helpers";

/**
 * A software WebAuthn authenticator for API-level tests: real ES256 keys, real CBOR, real
 * signatures (no mocked crypto), with knobs an attacker has — another origin, another RP ID, an old
 * challenge, a lower counter. The browser tests use Chrome's virtual authenticator instead.
 */
const b64 = (b: Uint8Array | Buffer) => Buffer.from(b).toString("base64url");
const sha256 = (data: Buffer | string) => createHash("sha256").update(data).digest();

export class SoftAuthenticator {
  readonly credentialId = randomBytes(32);
  readonly #privateKey: KeyObject;
  readonly #cosePublicKey: Uint8Array;
  counter = 0;
  userHandle: string | null = null;

  constructor(readonly opts: { backupEligible?: boolean } = {}) {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    this.#privateKey = privateKey;
    const jwk = publicKey.export({ format: "jwk" });
    this.#cosePublicKey = isoCBOR.encode(
      new Map<number, number | Uint8Array>([
        [1, 2], // kty: EC2
        [3, -7], // alg: ES256
        [-1, 1], // crv: P-256
        [-2, Buffer.from(jwk.x as string, "base64url")],
        [-3, Buffer.from(jwk.y as string, "base64url")],
      ]),
    );
  }

  get id(): string {
    return b64(this.credentialId);
  }

  #flags(uv: boolean, attested: boolean): number {
    const be = this.opts.backupEligible ? 0x08 | 0x10 : 0;
    return 0x01 | (uv ? 0x04 : 0) | be | (attested ? 0x40 : 0);
  }

  #authData(rpId: string, uv: boolean, attested: boolean): Buffer {
    const count = Buffer.alloc(4);
    count.writeUInt32BE(this.counter);
    const head = Buffer.concat([sha256(rpId), Buffer.from([this.#flags(uv, attested)]), count]);
    if (!attested) return head;
    const len = Buffer.alloc(2);
    len.writeUInt16BE(this.credentialId.length);
    return Buffer.concat([head, Buffer.alloc(16), len, this.credentialId, Buffer.from(this.#cosePublicKey)]);
  }

  /** Answer creation options (as navigator.credentials.create would). */
  register(
    options: { challenge: string; rp: { id?: string }; user: { id: string } },
    where: { origin: string; rpId?: string; uv?: boolean },
  ) {
    this.userHandle = options.user.id;
    const clientDataJSON = Buffer.from(
      JSON.stringify({
        type: "webauthn.create",
        challenge: options.challenge,
        origin: where.origin,
        crossOrigin: false,
      }),
    );
    const attestationObject = isoCBOR.encode(
      new Map<string, unknown>([
        ["fmt", "none"],
        ["attStmt", new Map()],
        ["authData", this.#authData(where.rpId ?? options.rp.id ?? "localhost", where.uv ?? true, true)],
      ]) as never,
    );
    return {
      id: this.id,
      rawId: this.id,
      type: "public-key",
      response: {
        clientDataJSON: b64(clientDataJSON),
        attestationObject: b64(attestationObject),
        transports: ["internal"],
      },
      clientExtensionResults: {},
    };
  }

  /** Answer request options (as navigator.credentials.get would); the counter goes up by one. */
  assert(
    options: { challenge: string; rpId?: string },
    where: { origin: string; rpId?: string; uv?: boolean },
  ) {
    this.counter++;
    const authenticatorData = this.#authData(
      where.rpId ?? options.rpId ?? "localhost",
      where.uv ?? true,
      false,
    );
    const clientDataJSON = Buffer.from(
      JSON.stringify({
        type: "webauthn.get",
        challenge: options.challenge,
        origin: where.origin,
        crossOrigin: false,
      }),
    );
    const signature = sign(
      "sha256",
      Buffer.concat([authenticatorData, sha256(clientDataJSON)]),
      this.#privateKey,
    );
    return {
      id: this.id,
      rawId: this.id,
      type: "public-key",
      response: {
        clientDataJSON: b64(clientDataJSON),
        authenticatorData: b64(authenticatorData),
        signature: b64(signature),
        ...(this.userHandle ? { userHandle: this.userHandle } : {}),
      },
      clientExtensionResults: {},
    };
  }
}
