// Peer keys and IDs: an X25519 key pair whose public key, as 43 characters of unpadded
// base64url, is the peer's ID (docs/PROTOCOL.md, Keys).
import { fromBase64Url, toBase64Url } from "./bytes.js";
import { generateKeyPair, isCanonicalPublicKey, keyPairOf, type KeyPair } from "./noise.js";

export type { KeyPair };
export { generateKeyPair, keyPairOf };

export function peerIdText(publicKey: Uint8Array): string {
  return toBase64Url(publicKey);
}

// A peer ID as text into its 32 bytes; an Error says what is wrong with it.
export function parsePeerId(text: string): Uint8Array {
  const trimmed = text.trim();
  if (trimmed.length !== 43) {
    throw new Error(`a peer ID is 43 characters of base64url, got ${trimmed.length} characters`);
  }
  const bytes = fromBase64Url(trimmed);
  if (!isCanonicalPublicKey(bytes)) throw new Error("a peer ID must be a canonical X25519 key");
  return bytes;
}

// The key file mesh-cli writes: a comment line, then the private key as one base64url line.
export function formatKeyFile(key: KeyPair): string {
  return `# mesh X25519 static key; peer ID ${peerIdText(key.publicKey)}\n${toBase64Url(key.privateKey)}\n`;
}

export function parseKeyFile(text: string): KeyPair {
  const lines = text.split("\n").map((line) => line.trim()).filter((line) => line && !line.startsWith("#"));
  if (lines.length !== 1) throw new Error("a key file holds one line of base64url after its comment");
  const privateKey = fromBase64Url(lines[0]);
  if (privateKey.length !== 32) throw new Error("a private key is 32 bytes");
  return keyPairOf(privateKey);
}
