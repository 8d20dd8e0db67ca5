import assert from "node:assert/strict";
import { test } from "node:test";

import { fromHex, toHex } from "../src/bytes.js";
import {
  CipherState,
  HandshakeState,
  isCanonicalPublicKey,
  keyPairOf,
  NoiseError,
  type Suite,
} from "../src/noise.js";
import { loadVectors, type Vector } from "./vectors.js";

// Both sides of a vector with its fixed keys: every message written must be the vector's
// ciphertext byte for byte, and every one read must give back its payload.
function run(vector: Vector): void {
  const suite = vector.protocol_name.split("_")[3] as Suite;
  const side = (initiator: boolean) =>
    new HandshakeState({
      suite,
      initiator,
      prologue: fromHex(initiator ? vector.init_prologue : vector.resp_prologue),
      staticKey: keyPairOf(fromHex((initiator ? vector.init_static : vector.resp_static)!)),
      ephemeralKey: keyPairOf(fromHex(initiator ? vector.init_ephemeral : vector.resp_ephemeral)),
    });
  const initiator = side(true);
  const responder = side(false);
  let ciphers: { send: CipherState; receive: CipherState }[] = [];
  vector.messages.forEach((message, i) => {
    const payload = fromHex(message.payload);
    const fromInitiator = i % 2 === 0;
    if (i < 3) {
      const [writer, reader] = fromInitiator ? [initiator, responder] : [responder, initiator];
      assert.equal(toHex(writer.writeMessage(payload)), message.ciphertext, `message ${i}`);
      assert.equal(toHex(reader.readMessage(fromHex(message.ciphertext))), message.payload);
      if (i === 2) {
        const [a, b] = [initiator.split(), responder.split()];
        if (vector.handshake_hash) {
          assert.equal(toHex(a.handshakeHash), vector.handshake_hash);
          assert.equal(toHex(b.handshakeHash), vector.handshake_hash);
        }
        ciphers = [a, b];
      }
      return;
    }
    const [writer, reader] = fromInitiator ? [ciphers[0], ciphers[1]] : [ciphers[1], ciphers[0]];
    const sealed = writer.send.encryptWithAd(new Uint8Array(0), payload);
    assert.equal(toHex(sealed), message.ciphertext, `transport message ${i}`);
    assert.equal(toHex(reader.receive.decryptWithAd(new Uint8Array(0), sealed)), message.payload);
  });
}

for (const file of ["cacophony-25519-sha256.json", "snow-25519-sha256.json"]) {
  const xx = loadVectors(file).filter((v) => /^Noise_XX_25519_(AESGCM|ChaChaPoly)_SHA256$/.test(v.protocol_name));
  test(`${file}: every Noise_XX vector, both suites, both roles`, () => {
    assert.deepEqual(new Set(xx.map((v) => v.protocol_name)), new Set([
      "Noise_XX_25519_AESGCM_SHA256",
      "Noise_XX_25519_ChaChaPoly_SHA256",
    ]));
    for (const vector of xx) run(vector);
  });
}

test("a tampered handshake message fails authentication", () => {
  const [vector] = loadVectors("cacophony-25519-sha256.json").filter(
    (v) => v.protocol_name === "Noise_XX_25519_AESGCM_SHA256",
  );
  const responder = new HandshakeState({
    suite: "AESGCM",
    initiator: false,
    prologue: fromHex(vector.resp_prologue),
    staticKey: keyPairOf(fromHex(vector.resp_static!)),
    ephemeralKey: keyPairOf(fromHex(vector.resp_ephemeral)),
  });
  const initiator = new HandshakeState({
    suite: "AESGCM",
    initiator: true,
    prologue: fromHex(vector.init_prologue),
    staticKey: keyPairOf(fromHex(vector.init_static!)),
  });
  responder.readMessage(initiator.writeMessage(new Uint8Array(0)));
  const second = responder.writeMessage(new Uint8Array(0));
  second[40] ^= 1;
  assert.throws(() => initiator.readMessage(second), (e: unknown) =>
    e instanceof NoiseError && e.reason === "handshake_failed");
});

test("a low-order or non-canonical ephemeral key is refused", () => {
  const make = (initiator: boolean) =>
    new HandshakeState({
      suite: "ChaChaPoly",
      initiator,
      prologue: new Uint8Array(0),
      staticKey: keyPairOf(new Uint8Array(32).fill(initiator ? 1 : 2)),
    });
  const zero = new Uint8Array(32); // u = 0: of low order
  const noncanonical = new Uint8Array(32).fill(0xff);
  noncanonical[31] = 0x7f; // 2^255 - 1 >= p
  assert.equal(isCanonicalPublicKey(noncanonical), false);
  for (const key of [zero, noncanonical]) {
    const initiator = make(true);
    initiator.writeMessage(new Uint8Array(0));
    const responder = make(false);
    responder.readMessage(key); // message 1 is the ephemeral key alone
    assert.throws(() => responder.writeMessage(new Uint8Array(0)), (e: unknown) =>
      e instanceof NoiseError && e.reason === "bad_key");
  }
});

test("a transport message read out of order fails and leaves the nonce where it was", () => {
  const a = new CipherState("AESGCM");
  const b = new CipherState("AESGCM");
  a.initializeKey(new Uint8Array(32).fill(7));
  b.initializeKey(new Uint8Array(32).fill(7));
  const first = a.encryptWithAd(new Uint8Array(0), Uint8Array.of(1));
  const second = a.encryptWithAd(new Uint8Array(0), Uint8Array.of(2));
  assert.throws(() => b.decryptWithAd(new Uint8Array(0), second), NoiseError);
  assert.deepEqual(b.decryptWithAd(new Uint8Array(0), first), Uint8Array.of(1));
});
