// Preamble encoding, protocol-violation reasons and the record layer.
#include "peer/record.h"

#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace mesh::peer {
namespace {

constexpr char kReasonPayloadUrl[] = "type.mesh/mesh.v1.ErrorCode";

// The 2-byte big-endian length before a transport message and before a packed frame.
void PutLength(uint8_t* p, size_t length) {
  p[0] = static_cast<uint8_t>(length >> 8);
  p[1] = static_cast<uint8_t>(length);
}

}  // namespace

Preamble EncodePreamble(crypto::CipherSuite suite, LinkKind kind) {
  return {kMagic[0],
          kMagic[1],
          kMagic[2],
          kMagic[3],
          kProtocolVersion,
          static_cast<uint8_t>(suite),
          static_cast<uint8_t>(kind),
          0};
}

uint8_t SpokenSuites() {
  uint8_t mask = 0;
  for (auto suite : {crypto::CipherSuite::kAesGcm, crypto::CipherSuite::kChaChaPoly}) {
    if (crypto::SuiteAvailable(suite)) mask |= 1u << (static_cast<uint8_t>(suite) - 1);
  }
  return mask;
}

Preamble EncodeRefusal(RefusalReason reason) {
  return {
      kMagic[0],      kMagic[1], kMagic[2], kMagic[3], kRefusalMarker, static_cast<uint8_t>(reason),
      SpokenSuites(), 0};
}

std::optional<Refusal> ParseRefusal(std::span<const uint8_t> bytes) {
  if (bytes.size() != kPreambleSize || !std::equal(kMagic.begin(), kMagic.end(), bytes.begin()) ||
      bytes[4] != kRefusalMarker) {
    return std::nullopt;
  }
  return Refusal{static_cast<RefusalReason>(bytes[5]), bytes[6]};
}

absl::Status LinkError(mesh::v1::ErrorCode code, absl::string_view message) {
  absl::StatusCode status_code = code == mesh::v1::INTERNAL ? absl::StatusCode::kInternal
                                                            : absl::StatusCode::kFailedPrecondition;
  absl::Status status(status_code, std::string(message));
  status.SetPayload(kReasonPayloadUrl, absl::Cord(std::to_string(static_cast<int>(code))));
  return status;
}

mesh::v1::ErrorCode ErrorCodeOf(const absl::Status& status) {
  auto payload = status.GetPayload(kReasonPayloadUrl);
  int code = 0;
  if (!payload || !absl::SimpleAtoi(std::string(*payload), &code) ||
      !mesh::v1::ErrorCode_IsValid(code)) {
    return mesh::v1::ERROR_CODE_UNSPECIFIED;
  }
  return static_cast<mesh::v1::ErrorCode>(code);
}

std::string ReasonName(mesh::v1::ErrorCode code) {
  return absl::AsciiStrToLower(mesh::v1::ErrorCode_Name(code));
}

absl::Status AppendFrameRecords(const google::protobuf::MessageLite& frame,
                                crypto::CipherState& send, crypto::Bytes& scratch,
                                crypto::Bytes& out) {
  const size_t size = frame.ByteSizeLong();
  scratch.resize(size);
  frame.SerializeWithCachedSizesToArray(scratch.data());
  size_t offset = 0;
  do {
    const size_t chunk = std::min(kMaxChunk, size - offset);
    const bool fin = offset + chunk == size;
    const size_t message = kFlagsSize + chunk + crypto::kTagSize;
    const size_t at = out.size();
    out.resize(at + kLengthPrefixSize + message);
    uint8_t* p = out.data() + at;
    PutLength(p, message);
    uint8_t* plaintext = p + kLengthPrefixSize;
    plaintext[0] = fin ? kFlagFin : 0;
    if (chunk != 0) std::memcpy(plaintext + kFlagsSize, scratch.data() + offset, chunk);
    if (auto status = send.EncryptWithAd({}, {plaintext, kFlagsSize + chunk}, plaintext);
        !status.ok()) {
      out.resize(at);
      return LinkError(mesh::v1::NONCE_EXHAUSTED, status.message());
    }
    offset += chunk;
  } while (offset < size);
  return absl::OkStatus();
}

absl::Status AppendPackedFrame(const google::protobuf::MessageLite& frame,
                               crypto::CipherState& send, crypto::Bytes& scratch,
                               crypto::Bytes& out, std::optional<size_t>& open_at) {
  const size_t size = frame.ByteSizeLong();
  if (size > kMaxPackedFrame) {
    if (auto status = SealPackedRecord(send, out, open_at); !status.ok()) return status;
    return AppendFrameRecords(frame, send, scratch, out);
  }
  // The open record's plaintext runs from after its length prefix to the end of `out`.
  if (open_at && out.size() - *open_at - kLengthPrefixSize + kPackedLengthSize + size >
                     kFlagsSize + kMaxChunk) {
    if (auto status = SealPackedRecord(send, out, open_at); !status.ok()) return status;
  }
  if (!open_at) {
    open_at = out.size();
    out.resize(out.size() + kLengthPrefixSize);  // filled in when sealed
    out.push_back(kFlagFin | kFlagPacked);
  }
  const size_t at = out.size();
  out.resize(at + kPackedLengthSize + size);
  PutLength(out.data() + at, size);
  frame.SerializeWithCachedSizesToArray(out.data() + at + kPackedLengthSize);
  return absl::OkStatus();
}

absl::Status SealPackedRecord(crypto::CipherState& send, crypto::Bytes& out,
                              std::optional<size_t>& open_at) {
  if (!open_at) return absl::OkStatus();
  const size_t start = *open_at;
  open_at.reset();
  const size_t plaintext = out.size() - start - kLengthPrefixSize;
  out.resize(out.size() + crypto::kTagSize);
  PutLength(out.data() + start, plaintext + crypto::kTagSize);
  uint8_t* message = out.data() + start + kLengthPrefixSize;
  if (auto status = send.EncryptWithAd({}, {message, plaintext}, message); !status.ok()) {
    out.resize(start);
    return LinkError(mesh::v1::NONCE_EXHAUSTED, status.message());
  }
  return absl::OkStatus();
}

absl::Status ForEachPackedFrame(crypto::ByteSpan record, size_t max_frame,
                                const std::function<absl::Status(crypto::ByteSpan)>& on_frame) {
  if (record.empty() || record[0] != (kFlagFin | kFlagPacked)) {
    return LinkError(mesh::v1::BAD_RECORD, "a packed record must have flags FIN|PACKED alone");
  }
  crypto::ByteSpan rest = record.subspan(kFlagsSize);
  if (rest.empty()) return LinkError(mesh::v1::BAD_RECORD, "a packed record without frames");
  while (!rest.empty()) {
    if (rest.size() < kPackedLengthSize) {
      return LinkError(mesh::v1::BAD_RECORD, "a packed record ends inside a length");
    }
    const size_t size = (size_t{rest[0]} << 8) | rest[1];
    rest = rest.subspan(kPackedLengthSize);
    if (size > rest.size()) {
      return LinkError(mesh::v1::BAD_RECORD, "a packed frame runs past its record");
    }
    if (size > max_frame) {
      return LinkError(mesh::v1::FRAME_TOO_LARGE,
                       absl::StrCat("frame exceeds the maximum of ", max_frame, " bytes"));
    }
    if (auto status = on_frame(rest.first(size)); !status.ok()) return status;
    rest = rest.subspan(size);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<crypto::ByteSpan>> FrameAssembler::Push(crypto::ByteSpan record) {
  if (completed_) Reset();
  if (record.empty()) return LinkError(mesh::v1::BAD_RECORD, "record without a flags byte");
  const uint8_t flags = record[0];
  if ((flags & ~kFlagFin) != 0) {
    return LinkError(mesh::v1::BAD_RECORD, absl::StrCat("unknown record flags ", flags));
  }
  crypto::ByteSpan chunk = record.subspan(kFlagsSize);
  if (buffer_.size() + chunk.size() > max_frame_) {
    return LinkError(mesh::v1::FRAME_TOO_LARGE,
                     absl::StrCat("frame exceeds the maximum of ", max_frame_, " bytes"));
  }
  const bool fin = (flags & kFlagFin) != 0;
  if (fin && !started_) {
    completed_ = true;
    return std::optional<crypto::ByteSpan>(chunk);
  }
  buffer_.insert(buffer_.end(), chunk.begin(), chunk.end());
  started_ = true;
  if (!fin) return std::optional<crypto::ByteSpan>();
  completed_ = true;
  return std::optional<crypto::ByteSpan>(crypto::ByteSpan(buffer_));
}

void FrameAssembler::Reset() {
  crypto::Bytes().swap(buffer_);
  started_ = false;
  completed_ = false;
}

std::string FrameName(const mesh::v1::Frame& frame) {
  const auto* oneof = frame.GetDescriptor()->oneof_decl(0);
  const auto* field = frame.GetReflection()->GetOneofFieldDescriptor(frame, oneof);
  return field == nullptr ? "empty" : field->name();
}

absl::StatusOr<mesh::v1::Frame> ParseFrame(crypto::ByteSpan bytes) {
  mesh::v1::Frame frame;
  if (!frame.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return LinkError(mesh::v1::MALFORMED_FRAME, "record payload is not a mesh.v1.Frame");
  }
  if (frame.body_case() == mesh::v1::Frame::BODY_NOT_SET) {
    return LinkError(mesh::v1::MALFORMED_FRAME, "frame has no body");
  }
  return frame;
}

}  // namespace mesh::peer
