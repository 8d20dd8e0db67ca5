// Fuzzes the record-layer decoder: the input is a byte stream of length-prefixed transport
// messages, split as a link splits them, opened by a CipherState (keyless, so the fuzzer reaches
// the plaintext paths, or keyed on the input's first bit), reassembled (or unpacked, for packed
// records) and parsed into Frames.
#include <google/protobuf/stubs/logging.h>

#include <cstdint>
#include <cstring>

#include "peer/record.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  (void)mesh::crypto::Init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mesh;
  if (size == 0) return 0;
  crypto::CipherState receive;
  if ((data[0] & 0x80) != 0) receive.InitializeKey(crypto::Bytes(crypto::kKeySize, 0x5a));
  const size_t max_frame = 256 + (data[0] & 0x7f) * 1024;
  peer::FrameAssembler assembler(max_frame);
  crypto::Bytes stream(data + 1, data + size);
  size_t at = 0;
  while (stream.size() - at >= peer::kLengthPrefixSize) {
    const size_t length = (size_t{stream[at]} << 8) | stream[at + 1];
    if (length < peer::kRecordOverhead && receive.HasKey()) break;  // the link refuses these
    if (stream.size() - at - peer::kLengthPrefixSize < length) break;
    uint8_t* message = stream.data() + at + peer::kLengthPrefixSize;
    at += peer::kLengthPrefixSize + length;
    size_t plain = length;
    if (receive.HasKey()) {
      if (!receive.DecryptWithAd({}, {message, length}, message).ok()) break;
      plain -= crypto::kTagSize;
    }
    if (plain > 0 && (message[0] & peer::kFlagPacked) != 0 && !assembler.in_progress()) {
      auto status = peer::ForEachPackedFrame({message, plain}, max_frame, [](crypto::ByteSpan f) {
        auto frame = peer::ParseFrame(f);
        return frame.ok() ? absl::OkStatus() : frame.status();
      });
      if (!status.ok()) break;
      continue;
    }
    auto frame_bytes = assembler.Push({message, plain});
    if (!frame_bytes.ok()) {
      (void)peer::ReasonName(peer::ErrorCodeOf(frame_bytes.status()));
      break;
    }
    if (!frame_bytes->has_value()) continue;
    auto frame = peer::ParseFrame(**frame_bytes);
    if (frame.ok()) (void)peer::FrameName(*frame);
  }
  return 0;
}
