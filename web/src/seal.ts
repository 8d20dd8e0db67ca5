// End-to-end sealing as the C++ client does it (crypto/seal.cc): crypto_box (X25519,
// XSalsa20-Poly1305) from the sender's static key to the recipient's, the plaintext prefixed
// with a 16-byte BLAKE2b fingerprint of (id, from, to). Layout: version 1, 24-byte nonce, box.
import { blake2b } from "@noble/hashes/blake2b";
import nacl from "tweetnacl";

import { concat, equalBytes } from "./bytes.js";
import type { KeyPair } from "./noise.js";

const kSealVersion = 1;
const kBindingSize = 16;
export const kSealOverhead = 1 + nacl.box.nonceLength + nacl.box.overheadLength + kBindingSize;

function binding(id: Uint8Array, from: Uint8Array, to: Uint8Array): Uint8Array {
  return blake2b(concat(id, from, to), { dkLen: kBindingSize });
}

export function sealPayload(sender: KeyPair, recipient: Uint8Array, id: Uint8Array, payload: Uint8Array): Uint8Array {
  const nonce = nacl.randomBytes(nacl.box.nonceLength);
  const plain = concat(binding(id, sender.publicKey, recipient), payload);
  const box = nacl.box(plain, nonce, recipient, sender.privateKey);
  plain.fill(0);
  return concat(Uint8Array.of(kSealVersion), nonce, box);
}

export class SealError extends Error {
  name = "SealError";
}

// The payload a sealed message carries, if it was sealed by `sender` to `recipient` for this id.
export function openSealed(recipient: KeyPair, sender: Uint8Array, id: Uint8Array, sealed: Uint8Array): Uint8Array {
  if (sealed.length < kSealOverhead || sealed[0] !== kSealVersion) {
    throw new SealError("not a sealed payload");
  }
  const nonce = sealed.subarray(1, 1 + nacl.box.nonceLength);
  const plain = nacl.box.open(sealed.subarray(1 + nacl.box.nonceLength), nonce, sender, recipient.privateKey);
  if (!plain) throw new SealError("sealed payload fails authentication");
  if (!equalBytes(plain.subarray(0, kBindingSize), binding(id, sender, recipient.publicKey))) {
    throw new SealError("sealed payload names another message, sender or recipient");
  }
  return plain.slice(kBindingSize);
}
