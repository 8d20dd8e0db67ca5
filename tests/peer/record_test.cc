// The record layer and wire constants without sockets: chunking at the 65518-byte boundary,
// reassembly, limits, refusal encoding and the reason carried by a status.
#include "peer/record.h"

#include <gtest/gtest.h>

#include "peer/peer.h"
#include "peer/wire.h"

namespace mesh::peer {
namespace {

using crypto::Bytes;
using crypto::CipherState;

class RecordTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(crypto::Init().ok());
    Bytes key(crypto::kKeySize, 9);
    send_.InitializeKey(key);
    receive_.InitializeKey(key);
  }

  // Splits `wire` into records, decrypts them, feeds the assembler; returns every frame.
  std::vector<mesh::v1::Frame> Decode(Bytes& wire, FrameAssembler& assembler,
                                      absl::Status& status) {
    std::vector<mesh::v1::Frame> frames;
    size_t at = 0;
    while (at < wire.size()) {
      size_t length = (size_t{wire[at]} << 8) | wire[at + 1];
      EXPECT_LE(length, kMaxNoiseMessage);
      uint8_t* message = wire.data() + at + kLengthPrefixSize;
      EXPECT_TRUE(receive_.DecryptWithAd({}, {message, length}, message).ok());
      at += kLengthPrefixSize + length;
      const crypto::ByteSpan record(message, length - crypto::kTagSize);
      if ((message[0] & kFlagPacked) != 0) {
        status = ForEachPackedFrame(record, kDefaultMaxPayload + kFrameOverhead,
                                    [&](crypto::ByteSpan frame) {
                                      frames.push_back(*ParseFrame(frame));
                                      return absl::OkStatus();
                                    });
        if (!status.ok()) return frames;
        ++packed_records_;
        continue;
      }
      auto bytes = assembler.Push(record);
      if (!bytes.ok()) {
        status = bytes.status();
        return frames;
      }
      if (bytes->has_value()) frames.push_back(*ParseFrame(**bytes));
    }
    return frames;
  }

  mesh::v1::Frame SendOf(size_t payload_size) {
    mesh::v1::Frame frame;
    frame.mutable_send()->set_payload(std::string(payload_size, 'x'));
    frame.mutable_send()->set_ttl_s(60);
    return frame;
  }

  CipherState send_, receive_;
  Bytes scratch_;
  size_t packed_records_ = 0;
};

TEST_F(RecordTest, ChunksAndReassemblesFramesAroundTheChunkBoundary) {
  for (size_t payload : {size_t{0}, size_t{1}, kMaxChunk - 8, kMaxChunk, kMaxChunk + 1,
                         3 * kMaxChunk + 5, kDefaultMaxPayload}) {
    SCOPED_TRACE(payload);
    const mesh::v1::Frame frame = SendOf(payload);
    Bytes wire;
    ASSERT_TRUE(AppendFrameRecords(frame, send_, scratch_, wire).ok());
    const size_t size = frame.ByteSizeLong();
    const size_t records = std::max<size_t>(1, (size + kMaxChunk - 1) / kMaxChunk);
    EXPECT_EQ(wire.size(), size + records * (kLengthPrefixSize + kRecordOverhead));
    FrameAssembler assembler(kDefaultMaxPayload + kFrameOverhead);
    absl::Status status;
    auto frames = Decode(wire, assembler, status);
    ASSERT_TRUE(status.ok()) << status;
    ASSERT_EQ(frames.size(), 1u);
    EXPECT_EQ(frames[0].send().payload().size(), payload);
    EXPECT_FALSE(assembler.in_progress());
  }
}

TEST_F(RecordTest, SeveralFramesInOneBufferComeOutInOrder) {
  Bytes wire;
  for (int i = 0; i < 5; ++i) {
    mesh::v1::Frame ping;
    ping.mutable_ping()->set_nonce(i);
    ASSERT_TRUE(AppendFrameRecords(ping, send_, scratch_, wire).ok());
  }
  FrameAssembler assembler(1024);
  absl::Status status;
  auto frames = Decode(wire, assembler, status);
  ASSERT_EQ(frames.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(frames[i].ping().nonce(), static_cast<uint64_t>(i));
}

TEST_F(RecordTest, RejectsFrameOverTheMaximum) {
  Bytes wire;
  ASSERT_TRUE(AppendFrameRecords(SendOf(100'000), send_, scratch_, wire).ok());
  FrameAssembler assembler(70'000);
  absl::Status status;
  Decode(wire, assembler, status);
  EXPECT_EQ(ErrorCodeOf(status), mesh::v1::FRAME_TOO_LARGE);
}

TEST(FrameAssembler, RejectsEmptyRecordAndUnknownFlags) {
  FrameAssembler assembler(1024);
  EXPECT_EQ(ErrorCodeOf(assembler.Push({}).status()), mesh::v1::BAD_RECORD);
  const uint8_t flags[] = {0x02};
  EXPECT_EQ(ErrorCodeOf(assembler.Push(flags).status()), mesh::v1::BAD_RECORD);
}

TEST(FrameAssembler, EmptyNonFinRecordsStartAFrame) {
  FrameAssembler assembler(1024);
  const uint8_t empty_more[] = {0x00};
  auto first = assembler.Push(empty_more);
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->has_value());
  EXPECT_TRUE(assembler.in_progress());
  const uint8_t fin[] = {kFlagFin, 0x32, 0x00};  // Frame{ping{}}
  auto done = assembler.Push(fin);
  ASSERT_TRUE(done.ok());
  ASSERT_TRUE(done->has_value());
  auto frame = ParseFrame(**done);
  ASSERT_TRUE(frame.ok());
  EXPECT_TRUE(frame->has_ping());
}

TEST(ParseFrame, RejectsGarbageAndEmptyFrames) {
  const uint8_t garbage[] = {0xff, 0xff, 0xff};
  EXPECT_EQ(ErrorCodeOf(ParseFrame(garbage).status()), mesh::v1::MALFORMED_FRAME);
  EXPECT_EQ(ErrorCodeOf(ParseFrame({}).status()), mesh::v1::MALFORMED_FRAME);
}

TEST(Wire, ChunkFillsAMaximalNoiseMessage) {
  EXPECT_EQ(kLengthPrefixSize + kFlagsSize + kMaxChunk + crypto::kTagSize, size_t{65537});
}

TEST(Wire, PreambleAndRefusalRoundTrip) {
  Preamble preamble = EncodePreamble(crypto::CipherSuite::kChaChaPoly, LinkKind::kCluster);
  EXPECT_EQ(preamble, (Preamble{'M', 'E', 'S', 'H', 1, 2, 1, 0}));
  EXPECT_FALSE(ParseRefusal(preamble).has_value());
  auto refusal = ParseRefusal(EncodeRefusal(RefusalReason::kSuite));
  ASSERT_TRUE(refusal.has_value());
  EXPECT_EQ(refusal->reason, RefusalReason::kSuite);
  EXPECT_EQ(refusal->suites, SpokenSuites());
  EXPECT_NE(SpokenSuites() & 0x2, 0) << "ChaChaPoly is always spoken";
}

TEST(Wire, StatusCarriesItsReason) {
  absl::Status status = LinkError(mesh::v1::FRAME_TIMEOUT, "slow");
  EXPECT_EQ(ErrorCodeOf(status), mesh::v1::FRAME_TIMEOUT);
  EXPECT_EQ(ReasonName(ErrorCodeOf(status)), "frame_timeout");
  EXPECT_EQ(ErrorCodeOf(absl::OkStatus()), mesh::v1::ERROR_CODE_UNSPECIFIED);
  EXPECT_EQ(ErrorCodeOf(absl::UnavailableError("reset")), mesh::v1::ERROR_CODE_UNSPECIFIED);
}

}  // namespace
}  // namespace mesh::peer
