// Constants of the wire protocol v1 (DESIGN §3), each derived from the ones it depends on.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "absl/status/statusor.h"
#include "crypto/crypto.h"

namespace mesh::peer {

// Preamble: "MESH", version, suite id, link kind, zero. It is also the Noise prologue.
inline constexpr size_t kPreambleSize = 8;
inline constexpr std::array<uint8_t, 4> kMagic = {'M', 'E', 'S', 'H'};
inline constexpr uint8_t kProtocolVersion = 1;
// A refused preamble is answered with "MESH", this marker, a reason, the suites spoken, zero.
inline constexpr uint8_t kRefusalMarker = 0xFF;

enum class LinkKind : uint8_t { kPeer = 0, kCluster = 1 };
enum class RefusalReason : uint8_t { kVersion = 1, kSuite = 2, kLinkKind = 3 };

// Every Noise message is preceded by its length, 2 bytes big-endian.
inline constexpr size_t kLengthPrefixSize = 2;
inline constexpr size_t kMaxNoiseMessage = 65535;
inline constexpr size_t kMaxHandshakeMessage = 1024;

// Record layer: a transport message's plaintext is a flags byte and a chunk of a frame.
inline constexpr size_t kFlagsSize = 1;
inline constexpr uint8_t kFlagFin = 0x01;
// A packed record (with FIN): whole frames, each after its length (2 bytes big-endian). Sent
// only to a side whose Hello has packed_records.
inline constexpr uint8_t kFlagPacked = 0x02;
inline constexpr size_t kPackedLengthSize = 2;
inline constexpr size_t kRecordOverhead = kFlagsSize + crypto::kTagSize;
inline constexpr size_t kMaxChunk = kMaxNoiseMessage - kRecordOverhead;  // 65518
inline constexpr size_t kMaxPackedFrame = kMaxChunk - kPackedLengthSize;

// max_frame = max_payload + this, for the envelope around a Send's payload.
inline constexpr size_t kFrameOverhead = 4096;
inline constexpr size_t kDefaultMaxPayload = size_t{1} << 20;

inline constexpr std::chrono::milliseconds kDefaultHandshakeTimeout{10'000};
inline constexpr std::chrono::milliseconds kDefaultHeartbeatInterval{15'000};
inline constexpr std::chrono::milliseconds kDefaultFrameTimeout{30'000};
// A link is closed once this many heartbeat intervals pass without a byte from the other side.
inline constexpr int kMissedHeartbeats = 3;
// A link closes well before its send nonce could reach the spec's reserved 2^64 - 1.
inline constexpr uint64_t kNonceLimit = ~uint64_t{0} - (uint64_t{1} << 32);

using Preamble = std::array<uint8_t, kPreambleSize>;

Preamble EncodePreamble(crypto::CipherSuite suite, LinkKind kind);
// Bitmask of suites this process can speak: bit (suite id - 1).
uint8_t SpokenSuites();
Preamble EncodeRefusal(RefusalReason reason);

struct Refusal {
  RefusalReason reason;
  uint8_t suites;  // bitmask of the suites the refusing side speaks
};
// The refusal carried in 8 bytes, if they are one.
std::optional<Refusal> ParseRefusal(std::span<const uint8_t> bytes);

}  // namespace mesh::peer
