// The record layer (DESIGN §3): a Frame is serialized, cut into chunks of at most kMaxChunk bytes,
// each sent as one length-prefixed Noise transport message whose plaintext is flags + chunk.
// Kept free of sockets so that tests and fuzzers drive it directly.
#pragma once

#include <functional>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "crypto/crypto.h"
#include "mesh/v1/wire.pb.h"
#include "peer/wire.h"

namespace mesh::peer {

// Attaches a protocol-violation reason to a status, so one enum feeds the Error frame, the
// metric label and the log line.
absl::Status LinkError(mesh::v1::ErrorCode code, absl::string_view message);
// The reason a status carries; UNSPECIFIED for OK and for statuses made elsewhere (the other
// side's Error frame, a reset connection): those are not this side's protocol violations.
mesh::v1::ErrorCode ErrorCodeOf(const absl::Status& status);
// "frame_too_large" for FRAME_TOO_LARGE: the label and log spelling of a reason.
std::string ReasonName(mesh::v1::ErrorCode code);

// Appends the frame's records (length prefix + encrypted flags and chunk) to `out`.
// `scratch` is reused between calls to hold the serialized frame.
absl::Status AppendFrameRecords(const google::protobuf::MessageLite& frame,
                                crypto::CipherState& send, crypto::Bytes& scratch,
                                crypto::Bytes& out);

// Appends `frame` to the packed record open at the end of `out` (`open_at` is where it starts),
// opening one when there is none or it is full. A frame too large for a packed record goes out
// as records of its own (AppendFrameRecords, with `scratch`), after the open record is sealed.
absl::Status AppendPackedFrame(const google::protobuf::MessageLite& frame,
                               crypto::CipherState& send, crypto::Bytes& scratch,
                               crypto::Bytes& out, std::optional<size_t>& open_at);
// Finishes the open packed record, if any: its length prefix and encryption.
absl::Status SealPackedRecord(crypto::CipherState& send, crypto::Bytes& out,
                              std::optional<size_t>& open_at);
// Calls `on_frame` with each frame of a packed record's plaintext (flags included), in order,
// and stops at its first error. Frames over `max_frame`, and records that are not a whole
// number of frames or hold none, are protocol violations.
absl::Status ForEachPackedFrame(crypto::ByteSpan record, size_t max_frame,
                                const std::function<absl::Status(crypto::ByteSpan)>& on_frame);

// Reassembles frames from decrypted record plaintexts. Single-record frames pass through
// without a copy.
class FrameAssembler {
 public:
  explicit FrameAssembler(size_t max_frame) : max_frame_(max_frame) {}

  // Takes one record plaintext (flags + chunk). Returns the serialized frame when this record
  // completes one; the span is valid until the next Push or Reset.
  absl::StatusOr<std::optional<crypto::ByteSpan>> Push(crypto::ByteSpan record);
  // Bytes held: of a frame in progress, or of the last multi-record frame until Reset.
  size_t buffered() const { return buffer_.size(); }
  // A frame has begun and is not complete.
  bool in_progress() const { return started_ && !completed_; }
  // Drops a partial frame and gives its memory back.
  void Reset();

 private:
  size_t max_frame_;
  crypto::Bytes buffer_;
  bool started_ = false;  // a non-FIN record arrived (its chunk may have been empty)
  bool completed_ = false;
};

// The name of the frame's body ("send", "ping", ...), for logs and errors.
std::string FrameName(const mesh::v1::Frame& frame);

// Parses one serialized Frame.
absl::StatusOr<mesh::v1::Frame> ParseFrame(crypto::ByteSpan bytes);

}  // namespace mesh::peer
