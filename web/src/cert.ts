// Node certificates (docs/CLUSTER.md): the mesh authority's Ed25519 signature over a broker's
// node ID and an expiry. Layout (140 bytes): "MNC1", node ID (32), expiry as big-endian Unix
// seconds (8), the authority's public key (32), signature over everything before it (64).
import { ed25519 } from "@noble/curves/ed25519";

import { equalBytes, fromBase64Url, toBase64Url } from "./bytes.js";

export const kNodeCertificateSize = 4 + 32 + 8 + 32 + 64;
const kSignedSize = kNodeCertificateSize - 64;
const kMagic = [0x4d, 0x4e, 0x43, 0x31]; // "MNC1"

export interface BrokerTrust {
  authority?: Uint8Array; // require a valid node certificate signed by this Ed25519 key
  pinned?: Uint8Array[]; // require one of these broker keys
}

export function parseAuthorityKey(text: string): Uint8Array {
  const key = fromBase64Url(text.trim());
  if (key.length !== 32) throw new Error("an authority key is 32 bytes of unpadded base64url");
  return key;
}

export class TrustError extends Error {
  name = "TrustError";
}

// Throws a TrustError unless `cert` is a certificate by `authority` for `node`, valid at `nowS`.
export function verifyNodeCertificate(cert: Uint8Array, authority: Uint8Array, node: Uint8Array, nowS: number): void {
  if (cert.length === 0) throw new TrustError("the broker sent no node certificate");
  if (cert.length !== kNodeCertificateSize) {
    throw new TrustError(`a node certificate is ${kNodeCertificateSize} bytes, got ${cert.length}`);
  }
  if (kMagic.some((b, i) => cert[i] !== b)) throw new TrustError("not a node certificate (bad magic)");
  const signedBy = cert.subarray(44, 76);
  let valid = false;
  try {
    valid = ed25519.verify(cert.subarray(kSignedSize), cert.subarray(0, kSignedSize), signedBy, { zip215: false });
  } catch {
    valid = false;
  }
  if (!valid) throw new TrustError("node certificate signature does not verify");
  if (!equalBytes(signedBy, authority)) {
    throw new TrustError(`node certificate is signed by authority ${toBase64Url(signedBy)}, not ${toBase64Url(authority)}`);
  }
  if (!equalBytes(cert.subarray(4, 36), node)) {
    throw new TrustError(`node certificate names node ${toBase64Url(cert.subarray(4, 36))}, not ${toBase64Url(node)}`);
  }
  const expires = Number(new DataView(cert.buffer, cert.byteOffset + 36, 8).getBigUint64(0));
  if (expires <= nowS) {
    throw new TrustError(`node certificate expired at ${new Date(expires * 1000).toISOString()}`);
  }
}

// Every check `trust` names must pass; the TrustError says which one failed.
export function checkBroker(trust: BrokerTrust, broker: Uint8Array, nodeCert: Uint8Array): void {
  const id = toBase64Url(broker);
  if (trust.pinned?.length && !trust.pinned.some((key) => equalBytes(key, broker))) {
    throw new TrustError(`broker ${id} is not one of the pinned broker keys`);
  }
  if (trust.authority) {
    try {
      verifyNodeCertificate(nodeCert, trust.authority, broker, Math.floor(Date.now() / 1000));
    } catch (e) {
      throw new TrustError(`broker ${id} is not certified by the mesh authority: ${(e as Error).message}`);
    }
  }
}
