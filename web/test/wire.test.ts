import assert from "node:assert/strict";
import { test } from "node:test";

import { create, equals } from "@bufbuild/protobuf";

import { fromBase64Url, toBase64Url } from "../src/bytes.js";
import { type Frame, FrameSchema } from "../src/gen/mesh/v1/wire_pb.js";
import { formatKeyFile, generateKeyPair, parseKeyFile, parsePeerId, peerIdText } from "../src/keys.js";
import { openSealed, sealPayload } from "../src/seal.js";
import { encodeFrame, encodePreamble, FrameAssembler, frameRecords, kMaxChunk, packedRecords, parseRefusal, WireError } from "../src/wire.js";

test("frames round-trip through records, large ones in several chunks", () => {
  const payload = new Uint8Array(3 * kMaxChunk + 5).map((_, i) => i & 0xff);
  for (const frame of [
    create(FrameSchema, { body: { case: "credit", value: { n: 256 } } }),
    create(FrameSchema, { body: { case: "deliverAck", value: { seqs: [1n, 2n, 1n << 40n] } } }),
    create(FrameSchema, { body: { case: "send", value: { id: new Uint8Array(16).fill(7), to: new Uint8Array(32).fill(9), payload, ttlS: 60 } } }),
  ]) {
    const records = frameRecords(encodeFrame(frame));
    const assembler = new FrameAssembler(payload.length + 4096);
    const out = records.map((record) => assembler.push(record));
    assert.ok(out.slice(0, -1).every((f) => f.length === 0));
    assert.equal(out.at(-1)!.length, 1);
    assert.ok(equals(FrameSchema, out.at(-1)![0], frame));
    assert.ok(records.every((r) => r.length <= kMaxChunk + 1));
  }
});

test("small frames share packed records, in order; a large one goes alone", () => {
  const frames: Frame[] = [];
  for (let i = 0; i < 3000; i++) {
    frames.push(create(FrameSchema, { body: { case: "deliverAck", value: { seqs: [BigInt(i)] } } }));
  }
  frames.push(create(FrameSchema, { body: { case: "send", value: { payload: new Uint8Array(2 * kMaxChunk) } } }));
  frames.push(create(FrameSchema, { body: { case: "credit", value: { n: 5 } } }));
  const records = packedRecords(frames.map(encodeFrame));
  assert.ok(records.length <= 5, `${records.length} records`);
  const assembler = new FrameAssembler(4 * kMaxChunk);
  const out = records.flatMap((record) => assembler.push(record));
  assert.equal(out.length, frames.length);
  out.forEach((frame, i) => assert.ok(equals(FrameSchema, frame, frames[i]), `frame ${i}`));
});

test("malformed packed records are refused", () => {
  const reason = (record: Uint8Array, max = 100) => {
    try {
      return `ok ${new FrameAssembler(max).push(record).length}`;
    } catch (e) {
      return (e as WireError).reason;
    }
  };
  assert.equal(reason(Uint8Array.of(3, 0, 2, 0x32, 0, 0, 2, 0x32, 0)), "ok 2");
  assert.equal(reason(Uint8Array.of(3)), "bad_record");
  assert.equal(reason(Uint8Array.of(2, 0, 2, 0x32, 0)), "bad_record");
  assert.equal(reason(Uint8Array.of(3, 0, 2, 0x32, 0, 0)), "bad_record");
  assert.equal(reason(Uint8Array.of(3, 0, 9, 0x32)), "bad_record");
  assert.equal(reason(Uint8Array.of(3, 0, 2, 0x32, 0), 1), "frame_too_large");
});

test("an empty frame is one FIN record", () => {
  assert.deepEqual(frameRecords(new Uint8Array(0)), [Uint8Array.of(1)]);
});

test("bad records and frames are refused with the broker's reasons", () => {
  const reason = (push: () => unknown) => {
    try {
      push();
    } catch (e) {
      return (e as WireError).reason;
    }
    return "accepted";
  };
  assert.equal(reason(() => new FrameAssembler(100).push(new Uint8Array(0))), "bad_record");
  assert.equal(reason(() => new FrameAssembler(100).push(Uint8Array.of(0x05))), "bad_record");
  assert.equal(reason(() => new FrameAssembler(4).push(Uint8Array.of(0, 1, 2, 3, 4, 5))), "frame_too_large");
  assert.equal(reason(() => new FrameAssembler(100).push(Uint8Array.of(1, 0xff, 0xff))), "malformed_frame");
});

test("preambles and refusals", () => {
  assert.deepEqual(encodePreamble("AESGCM"), Uint8Array.of(0x4d, 0x45, 0x53, 0x48, 1, 1, 0, 0));
  assert.deepEqual(encodePreamble("ChaChaPoly"), Uint8Array.of(0x4d, 0x45, 0x53, 0x48, 1, 2, 0, 0));
  assert.deepEqual(parseRefusal(Uint8Array.of(0x4d, 0x45, 0x53, 0x48, 0xff, 2, 0b10, 0)), { reason: "suite", suites: ["ChaChaPoly"] });
  assert.equal(parseRefusal(encodePreamble("AESGCM")), undefined);
  assert.equal(parseRefusal(new Uint8Array(48)), undefined);
});

test("peer IDs and key files are the C++ client's text forms", () => {
  const key = generateKeyPair();
  const id = peerIdText(key.publicKey);
  assert.equal(id.length, 43);
  assert.deepEqual(parsePeerId(id), key.publicKey);
  assert.deepEqual(parseKeyFile(formatKeyFile(key)).publicKey, key.publicKey);
  assert.throws(() => parsePeerId(id.slice(1)), /43 characters/);
  assert.throws(() => parsePeerId("!" + id.slice(1)), /base64url/);
  for (const n of [0, 1, 2, 3, 31, 32, 33]) {
    const bytes = new Uint8Array(n).map((_, i) => (i * 37) & 0xff);
    assert.deepEqual(fromBase64Url(toBase64Url(bytes)), bytes);
  }
  // The last of 43 characters carries 4 bits and 2 unused ones: setting one is a second
  // spelling of the same bytes, refused.
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  const stray = alphabet[alphabet.indexOf(id.at(-1)!) | 1];
  assert.throws(() => fromBase64Url(id.slice(0, -1) + stray), /stray bits/);
});

test("a sealed payload opens only for its recipient, sender and id", () => {
  const alice = generateKeyPair();
  const bob = generateKeyPair();
  const eve = generateKeyPair();
  const id = new Uint8Array(16).fill(1);
  const sealed = sealPayload(alice, bob.publicKey, id, new TextEncoder().encode("hi"));
  assert.equal(new TextDecoder().decode(openSealed(bob, alice.publicKey, id, sealed)), "hi");
  assert.throws(() => openSealed(bob, alice.publicKey, new Uint8Array(16).fill(2), sealed), /names another message/);
  assert.throws(() => openSealed(eve, alice.publicKey, id, sealed), /fails authentication/);
  assert.throws(() => openSealed(bob, eve.publicKey, id, sealed), /fails authentication/);
  assert.throws(() => openSealed(bob, alice.publicKey, id, sealed.subarray(0, 20)), /not a sealed payload/);
});
