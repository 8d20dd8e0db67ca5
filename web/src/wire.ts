// Constants and the record layer of the wire protocol v1 (docs/PROTOCOL.md), as peer/wire.h
// has them: the preamble, refusals, and frames cut into flags-byte + chunk records.
import { fromBinary, toBinary } from "@bufbuild/protobuf";

import { concat } from "./bytes.js";
import { type Frame, FrameSchema } from "./gen/mesh/v1/wire_pb.js";
import { kTagSize, type Suite } from "./noise.js";

export const kProtocolVersion = 1;
export const kPreambleSize = 8;
const kMagic = [0x4d, 0x45, 0x53, 0x48]; // "MESH"
const kRefusalMarker = 0xff;
export const kWebSocketProtocol = "mesh.v1";

export const kSuiteIds: Record<Suite, number> = { AESGCM: 1, ChaChaPoly: 2 };
export const kSuites: Suite[] = ["AESGCM", "ChaChaPoly"];

export const kMaxNoiseMessage = 65535;
export const kMaxHandshakeMessage = 1024;
const kFlagFin = 0x01;
// A packed record (with FIN): whole frames, each after its 2-byte big-endian length. Sent only
// to a side whose Hello has packed_records.
const kFlagPacked = 0x02;
const kPackedLengthSize = 2;
export const kRecordOverhead = 1 + kTagSize; // flags byte + AEAD tag
export const kMaxChunk = kMaxNoiseMessage - kRecordOverhead; // 65518
// A frame may be max_payload plus this (the envelope around a Send's payload).
export const kFrameOverhead = 4096;
export const kMissedHeartbeats = 3;

// "MESH", version, suite id, link kind (0: a peer), zero. It is also the Noise prologue.
export function encodePreamble(suite: Suite): Uint8Array {
  return Uint8Array.of(...kMagic, kProtocolVersion, kSuiteIds[suite], 0, 0);
}

export interface Refusal {
  reason: "version" | "suite" | "link_kind" | "unknown";
  suites: Suite[]; // what the refusing side speaks
}

// The broker's answer to a preamble it will not serve, if `bytes` is one.
export function parseRefusal(bytes: Uint8Array): Refusal | undefined {
  if (bytes.length !== kPreambleSize || kMagic.some((b, i) => bytes[i] !== b)) return undefined;
  if (bytes[4] !== kRefusalMarker) return undefined;
  const reasons = { 1: "version", 2: "suite", 3: "link_kind" } as const;
  return {
    reason: reasons[bytes[5] as 1 | 2 | 3] ?? "unknown",
    suites: kSuites.filter((suite) => (bytes[6] & (1 << (kSuiteIds[suite] - 1))) !== 0),
  };
}

export function encodeFrame(frame: Frame): Uint8Array {
  return toBinary(FrameSchema, frame);
}

// Record plaintexts for one frame: each a flags byte and at most kMaxChunk bytes of it, the
// last one flagged FIN.
export function frameRecords(serialized: Uint8Array): Uint8Array[] {
  const records: Uint8Array[] = [];
  let at = 0;
  do {
    const chunk = serialized.subarray(at, at + kMaxChunk);
    at += chunk.length;
    records.push(concat(Uint8Array.of(at === serialized.length ? kFlagFin : 0), chunk));
  } while (at < serialized.length);
  return records;
}

// Record plaintexts for frames sent together to a side that reads packed records: the small ones
// share records, in order; one too large for a packed record goes as its own records.
export function packedRecords(frames: Uint8Array[]): Uint8Array[] {
  const records: Uint8Array[] = [];
  let open: Uint8Array[] = [];
  let openSize = 1;
  const seal = () => {
    if (open.length === 0) return;
    records.push(concat(Uint8Array.of(kFlagFin | kFlagPacked), ...open));
    open = [];
    openSize = 1;
  };
  for (const frame of frames) {
    const entry = kPackedLengthSize + frame.length;
    if (1 + entry > 1 + kMaxChunk) {
      seal();
      records.push(...frameRecords(frame));
      continue;
    }
    if (openSize + entry > 1 + kMaxChunk) seal();
    open.push(Uint8Array.of(frame.length >> 8, frame.length & 0xff), frame);
    openSize += entry;
  }
  seal();
  return records;
}

export class WireError extends Error {
  constructor(
    message: string,
    readonly reason: "bad_record" | "frame_too_large" | "malformed_frame",
  ) {
    super(message);
    this.name = "WireError";
  }
}

// Reassembles frames from record plaintexts: push() returns a frame once its FIN record came.
export class FrameAssembler {
  private chunks: Uint8Array[] = [];
  private size = 0;

  constructor(private readonly maxFrame: number) {}

  get inFrame(): boolean {
    return this.chunks.length > 0;
  }

  // The frames this record completes: none, one, or (a packed record) several.
  push(plaintext: Uint8Array): Frame[] {
    if (plaintext.length < 1) throw new WireError("record without a flags byte", "bad_record");
    const flags = plaintext[0];
    if ((flags & kFlagPacked) !== 0) return this.unpack(plaintext);
    if ((flags & ~kFlagFin) !== 0) throw new WireError(`unknown record flags ${flags}`, "bad_record");
    this.size += plaintext.length - 1;
    if (this.size > this.maxFrame) {
      throw new WireError(`frame over ${this.maxFrame} bytes`, "frame_too_large");
    }
    this.chunks.push(plaintext.subarray(1));
    if ((flags & kFlagFin) === 0) return [];
    const serialized = this.chunks.length === 1 ? this.chunks[0] : concat(...this.chunks);
    this.chunks = [];
    this.size = 0;
    return [parseFrame(serialized)];
  }

  private unpack(record: Uint8Array): Frame[] {
    if (record[0] !== (kFlagFin | kFlagPacked)) {
      throw new WireError("a packed record must have flags FIN|PACKED alone", "bad_record");
    }
    if (this.inFrame) throw new WireError("a packed record inside a frame of several", "bad_record");
    if (record.length === 1) throw new WireError("a packed record without frames", "bad_record");
    const frames: Frame[] = [];
    for (let at = 1; at < record.length; ) {
      if (record.length - at < kPackedLengthSize) {
        throw new WireError("a packed record ends inside a length", "bad_record");
      }
      const size = (record[at] << 8) | record[at + 1];
      at += kPackedLengthSize;
      if (size > record.length - at) throw new WireError("a packed frame runs past its record", "bad_record");
      if (size > this.maxFrame) throw new WireError(`frame over ${this.maxFrame} bytes`, "frame_too_large");
      frames.push(parseFrame(record.subarray(at, at + size)));
      at += size;
    }
    return frames;
  }
}

function parseFrame(serialized: Uint8Array): Frame {
  try {
    return fromBinary(FrameSchema, serialized);
  } catch (e) {
    throw new WireError(`not a mesh.v1.Frame: ${(e as Error).message}`, "malformed_frame");
  }
}
