// Byte helpers shared by the client's modules: concatenation, comparison and the text forms
// the broker uses (hex in test vectors, unpadded base64url for keys and IDs).

export function concat(...parts: Uint8Array[]): Uint8Array {
  let size = 0;
  for (const part of parts) size += part.length;
  const out = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

export function fromHex(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) throw new Error(`not hex: ${hex}`);
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

const kHexPairs = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, "0"));

// Also the key of ids in maps (pending sends, dedup): a plain loop over a table, as it runs for
// every message.
export function toHex(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i++) out += kHexPairs[bytes[i]];
  return out;
}

const kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// Unpadded base64url, as libsodium's URLSAFE_NO_PADDING variant writes it.
export function toBase64Url(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    const chars = Math.min(4, Math.ceil(((bytes.length - i) * 8) / 6));
    for (let c = 0; c < chars; c++) out += kAlphabet[(n >> (18 - 6 * c)) & 63];
  }
  return out;
}

// Strict: only the alphabet, no padding, and no stray bits in the last character, so each
// value has exactly one text form (an ID compares equal as text and as bytes).
export function fromBase64Url(text: string): Uint8Array {
  if (text.length % 4 === 1) throw new Error("not unpadded base64url (bad length)");
  const out = new Uint8Array(Math.floor((text.length * 6) / 8));
  let bits = 0;
  let value = 0;
  let at = 0;
  for (const char of text) {
    const digit = kAlphabet.indexOf(char);
    if (digit < 0) throw new Error(`not unpadded base64url (character '${char}')`);
    value = (value << 6) | digit;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = (value >> bits) & 0xff;
    }
  }
  if ((value & ((1 << bits) - 1)) !== 0) throw new Error("not unpadded base64url (stray bits)");
  return out;
}

export function utf8(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}
