// Noise XX (revision 34) with X25519, SHA-256 and AES-256-GCM or ChaCha20-Poly1305: the
// handshake and transport ciphers of a peer link (docs/PROTOCOL.md). The primitives come from
// the audited @noble libraries; this file is only the protocol's state machine, checked against
// the published test vectors (test/noise.test.ts).
import { gcm } from "@noble/ciphers/aes";
import { chacha20poly1305 } from "@noble/ciphers/chacha";
import { x25519 } from "@noble/curves/ed25519";
import { hmac } from "@noble/hashes/hmac";
import { sha256 } from "@noble/hashes/sha2";

import { concat, utf8 } from "./bytes.js";

export type Suite = "AESGCM" | "ChaChaPoly";

export const kKeySize = 32;
export const kHashSize = 32;
export const kTagSize = 16;
const kMaxNonce = 0xffffffffffffffffn; // reserved by the spec (§5.1)

export class NoiseError extends Error {
  constructor(
    message: string,
    readonly reason: "handshake_failed" | "bad_key" | "decrypt_failed" | "nonce_exhausted",
  ) {
    super(message);
    this.name = "NoiseError";
  }
}

export function protocolName(suite: Suite): string {
  return `Noise_XX_25519_${suite}_SHA256`;
}

// The AEAD of a suite under one key: ciphertext is the encryption followed by the 16-byte tag.
type Aead = (key: Uint8Array, nonce: Uint8Array, ad: Uint8Array) => {
  encrypt(plaintext: Uint8Array): Uint8Array;
  decrypt(ciphertext: Uint8Array): Uint8Array;
};

// The suite's 96-bit nonce: 32 zero bits, then the counter, big-endian for AES-GCM and
// little-endian for ChaChaPoly (spec §12).
function encodeNonce(suite: Suite, n: bigint): Uint8Array {
  const nonce = new Uint8Array(12);
  new DataView(nonce.buffer).setBigUint64(4, n, suite === "ChaChaPoly");
  return nonce;
}

export class CipherState {
  private key: Uint8Array | undefined;
  private n = 0n;
  private readonly aead: Aead;

  constructor(readonly suite: Suite) {
    this.aead = suite === "AESGCM" ? gcm : chacha20poly1305;
  }

  hasKey(): boolean {
    return this.key !== undefined;
  }

  initializeKey(key: Uint8Array): void {
    this.key = key.slice(0, kKeySize);
    this.n = 0n;
  }

  // Messages sent (or received) under the current key.
  get nonce(): bigint {
    return this.n;
  }

  encryptWithAd(ad: Uint8Array, plaintext: Uint8Array): Uint8Array {
    if (!this.key) return plaintext.slice();
    if (this.n === kMaxNonce) throw new NoiseError("nonce exhausted", "nonce_exhausted");
    const out = this.aead(this.key, encodeNonce(this.suite, this.n), ad).encrypt(plaintext);
    this.n++;
    return out;
  }

  decryptWithAd(ad: Uint8Array, ciphertext: Uint8Array): Uint8Array {
    if (!this.key) return ciphertext.slice();
    if (this.n === kMaxNonce) throw new NoiseError("nonce exhausted", "nonce_exhausted");
    let out: Uint8Array;
    try {
      out = this.aead(this.key, encodeNonce(this.suite, this.n), ad).decrypt(ciphertext);
    } catch {
      throw new NoiseError("message fails authentication", "decrypt_failed");
    }
    this.n++;
    return out;
  }
}

// HKDF as the spec defines it (§4.3), with HMAC-SHA256: two or three 32-byte outputs.
function hkdf(chainingKey: Uint8Array, inputKeyMaterial: Uint8Array, outputs: 2 | 3): Uint8Array[] {
  const tempKey = hmac(sha256, chainingKey, inputKeyMaterial);
  const out1 = hmac(sha256, tempKey, Uint8Array.of(1));
  const out2 = hmac(sha256, tempKey, concat(out1, Uint8Array.of(2)));
  if (outputs === 2) return [out1, out2];
  return [out1, out2, hmac(sha256, tempKey, concat(out2, Uint8Array.of(3)))];
}

class SymmetricState {
  ck: Uint8Array;
  h: Uint8Array;
  readonly cipher: CipherState;

  constructor(name: string, suite: Suite) {
    const bytes = utf8(name);
    if (bytes.length <= kHashSize) {
      this.h = new Uint8Array(kHashSize);
      this.h.set(bytes);
    } else {
      this.h = sha256(bytes);
    }
    this.ck = this.h.slice();
    this.cipher = new CipherState(suite);
  }

  mixKey(inputKeyMaterial: Uint8Array): void {
    const [ck, tempKey] = hkdf(this.ck, inputKeyMaterial, 2);
    this.ck = ck;
    this.cipher.initializeKey(tempKey);
  }

  mixHash(data: Uint8Array): void {
    this.h = sha256(concat(this.h, data));
  }

  encryptAndHash(plaintext: Uint8Array): Uint8Array {
    const ciphertext = this.cipher.encryptWithAd(this.h, plaintext);
    this.mixHash(ciphertext);
    return ciphertext;
  }

  decryptAndHash(ciphertext: Uint8Array): Uint8Array {
    let plaintext: Uint8Array;
    try {
      plaintext = this.cipher.decryptWithAd(this.h, ciphertext);
    } catch {
      throw new NoiseError("handshake message fails authentication", "handshake_failed");
    }
    this.mixHash(ciphertext);
    return plaintext;
  }

  split(): [CipherState, CipherState] {
    const [k1, k2] = hkdf(this.ck, new Uint8Array(0), 2);
    const c1 = new CipherState(this.cipher.suite);
    const c2 = new CipherState(this.cipher.suite);
    c1.initializeKey(k1);
    c2.initializeKey(k2);
    return [c1, c2];
  }
}

export interface KeyPair {
  privateKey: Uint8Array;
  publicKey: Uint8Array;
}

export function generateKeyPair(): KeyPair {
  const privateKey = x25519.utils.randomPrivateKey();
  return { privateKey, publicKey: x25519.getPublicKey(privateKey) };
}

export function keyPairOf(privateKey: Uint8Array): KeyPair {
  if (privateKey.length !== kKeySize) throw new Error(`a private key is ${kKeySize} bytes`);
  return { privateKey: privateKey.slice(), publicKey: x25519.getPublicKey(privateKey) };
}

const kFieldPrime = (1n << 255n) - 19n;

// A canonical encoding: the top bit clear and the value below the field prime, so one key has
// one ID. (Low-order points are refused where they are used: their DH result is zero.)
export function isCanonicalPublicKey(key: Uint8Array): boolean {
  if (key.length !== kKeySize || (key[31] & 0x80) !== 0) return false;
  let value = 0n;
  for (let i = kKeySize - 1; i >= 0; i--) value = (value << 8n) | BigInt(key[i]);
  return value < kFieldPrime;
}

function dh(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array {
  if (!isCanonicalPublicKey(publicKey)) {
    throw new NoiseError("remote key is not a canonical X25519 public key", "bad_key");
  }
  let shared: Uint8Array;
  try {
    shared = x25519.getSharedSecret(privateKey, publicKey);
  } catch {
    throw new NoiseError("remote key is of low order", "bad_key");
  }
  if (shared.every((b) => b === 0)) throw new NoiseError("remote key is of low order", "bad_key");
  return shared;
}

export interface HandshakeConfig {
  suite: Suite;
  initiator: boolean;
  prologue: Uint8Array;
  staticKey: KeyPair;
  // Fixed ephemeral key (test vectors only); a fresh one is generated otherwise.
  ephemeralKey?: KeyPair;
}

type Token = "e" | "s" | "ee" | "es" | "se";
// XX: -> e; <- e, ee, s, es; -> s, se.
const kXX: Token[][] = [["e"], ["e", "ee", "s", "es"], ["s", "se"]];

export interface TransportCiphers {
  send: CipherState;
  receive: CipherState;
  handshakeHash: Uint8Array;
}

export class HandshakeState {
  private readonly symmetric: SymmetricState;
  private readonly s: KeyPair;
  private e: KeyPair | undefined;
  private re: Uint8Array | undefined;
  private rs: Uint8Array | undefined;
  private message = 0;

  constructor(private readonly config: HandshakeConfig) {
    this.symmetric = new SymmetricState(protocolName(config.suite), config.suite);
    this.symmetric.mixHash(config.prologue);
    this.s = config.staticKey;
  }

  get complete(): boolean {
    return this.message === kXX.length;
  }

  myTurnToWrite(): boolean {
    return !this.complete && (this.message % 2 === 0) === this.config.initiator;
  }

  // The remote static key, once a message carried it.
  get remoteStatic(): Uint8Array | undefined {
    return this.rs;
  }

  writeMessage(payload: Uint8Array): Uint8Array {
    if (!this.myTurnToWrite()) throw new Error("not this side's turn to write");
    const parts: Uint8Array[] = [];
    for (const token of kXX[this.message]) {
      switch (token) {
        case "e":
          this.e = this.config.ephemeralKey ?? generateKeyPair();
          parts.push(this.e.publicKey);
          this.symmetric.mixHash(this.e.publicKey);
          break;
        case "s":
          parts.push(this.symmetric.encryptAndHash(this.s.publicKey));
          break;
        default:
          this.mixDh(token);
      }
    }
    parts.push(this.symmetric.encryptAndHash(payload));
    this.message++;
    return concat(...parts);
  }

  readMessage(message: Uint8Array): Uint8Array {
    if (this.complete || this.myTurnToWrite()) throw new Error("not this side's turn to read");
    let at = 0;
    const take = (size: number): Uint8Array => {
      if (message.length - at < size) {
        throw new NoiseError("handshake message too short", "handshake_failed");
      }
      at += size;
      return message.subarray(at - size, at);
    };
    for (const token of kXX[this.message]) {
      switch (token) {
        case "e":
          this.re = take(kKeySize).slice();
          this.symmetric.mixHash(this.re);
          break;
        case "s": {
          const size = kKeySize + (this.symmetric.cipher.hasKey() ? kTagSize : 0);
          this.rs = this.symmetric.decryptAndHash(take(size));
          break;
        }
        default:
          this.mixDh(token);
      }
    }
    const payload = this.symmetric.decryptAndHash(message.subarray(at));
    this.message++;
    return payload;
  }

  split(): TransportCiphers {
    if (!this.complete) throw new Error("the handshake is not complete");
    const [c1, c2] = this.symmetric.split();
    return this.config.initiator
      ? { send: c1, receive: c2, handshakeHash: this.symmetric.h }
      : { send: c2, receive: c1, handshakeHash: this.symmetric.h };
  }

  // ee, es, se: the first letter is the initiator's key, the second the responder's (§7.1).
  private mixDh(token: "ee" | "es" | "se"): void {
    const initiatorKey = token[0] === "e" ? "e" : "s";
    const responderKey = token[1] === "e" ? "e" : "s";
    const mine = this.config.initiator ? initiatorKey : responderKey;
    const theirs = this.config.initiator ? responderKey : initiatorKey;
    const local = mine === "e" ? this.e : this.s;
    const remote = theirs === "e" ? this.re : this.rs;
    if (!local || !remote) throw new NoiseError("handshake message out of order", "handshake_failed");
    this.symmetric.mixKey(dh(local.privateKey, remote));
  }
}
