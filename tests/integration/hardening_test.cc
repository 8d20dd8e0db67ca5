// The broker against what an operator's mistakes, a crash at the wrong moment or an untrusted
// peer can do to it (DESIGN §3 "Untrusted peers", §4): files that tell an operator what to
// delete stay true, secrets stay private, and no peer can make it hold unbounded memory.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "peer/wire.h"
#include "tests/integration/broker_process.h"
#include "tests/integration/test_peers.h"

namespace mesh::testing {
namespace {

using mesh::v1::SendAck;
using namespace std::chrono_literals;

class HardeningTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(crypto::Init().ok()); }
};

int ModeOf(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int>(st.st_mode & 07777);
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A drain writes DRAINED {"empty":true}; the broker then restarts on the same volume and takes
// mail. If it dies without draining, a DRAINED left from before would tell the operator to
// delete a volume holding acknowledged mail: it must be gone before the store opens.
TEST_F(HardeningTest, ARestartRemovesDrainedBeforeItTakesMail) {
  BrokerProcess drained;
  ASSERT_TRUE(drained.started()) << drained.Log();
  ASSERT_EQ(drained.Stop(SIGTERM), 0) << drained.Log();
  const std::string marker = drained.data_dir() + "/DRAINED";
  ASSERT_THAT(ReadAll(marker), ::testing::HasSubstr("\"empty\":true"));

  auto bob = crypto::KeyPair::Generate();
  {
    BrokerProcess restarted({}, drained.data_dir());
    ASSERT_TRUE(restarted.started()) << restarted.Log();
    EXPECT_FALSE(std::filesystem::exists(marker)) << ReadAll(marker);
    FramePeer alice(restarted.port());
    ASSERT_TRUE(alice.Connect());
    auto ack = alice.Send(bob.public_key, "kept across a crash");
    ASSERT_TRUE(ack.has_value());
    ASSERT_EQ(ack->status(), SendAck::ACCEPTED) << ack->detail();
    restarted.Stop(SIGKILL);
  }
  EXPECT_FALSE(std::filesystem::exists(marker)) << ReadAll(marker);

  BrokerProcess again({}, drained.data_dir());
  ASSERT_TRUE(again.started()) << again.Log();
  FramePeer reader(again.port(), bob);
  ASSERT_TRUE(reader.Connect());
  auto deliver = reader.NextDeliver();
  ASSERT_TRUE(deliver.has_value());
  EXPECT_EQ(deliver->payload(), "kept across a crash");
}

// The data dir, the node key and the admin token a first start creates are the owner's only.
TEST_F(HardeningTest, AFirstStartCreatesItsFilesPrivate) {
  std::string name = std::filesystem::temp_directory_path().string() + "/mesh-private-XXXXXX";
  ASSERT_NE(::mkdtemp(name.data()), nullptr);
  const std::string data_dir = name + "/data";
  const mode_t old_umask = ::umask(022);  // a typical shell's, which left it 0755
  {
    BrokerProcess broker({}, data_dir);
    ::umask(old_umask);
    ASSERT_TRUE(broker.started()) << broker.Log();
    EXPECT_EQ(ModeOf(data_dir), 0700);
    EXPECT_EQ(ModeOf(data_dir + "/node.key"), 0600);
    EXPECT_EQ(ModeOf(data_dir + "/admin.token"), 0600);
    EXPECT_EQ(broker.Stop(SIGINT), 0);
  }
  std::filesystem::remove_all(name);
}

// A token file others may write is someone else's token: refused at start, as key files are.
TEST_F(HardeningTest, AnAdminTokenFileOthersMayWriteIsRefused) {
  const std::string token =
      std::filesystem::temp_directory_path().string() + "/mesh-token-" + std::to_string(::getpid());
  {
    std::ofstream out(token);
    out << "a-token-of-thirty-two-characters\n";
  }
  ::chmod(token.c_str(), 0662);
  BrokerProcess broker({"--admin-token-file", token});
  EXPECT_FALSE(broker.started());
  EXPECT_THAT(broker.Log(), ::testing::HasSubstr("may be read or written by other users"));
  ::chmod(token.c_str(), 0620);
  BrokerProcess group_writable({"--admin-token-file", token});
  EXPECT_FALSE(group_writable.started());
  ::chmod(token.c_str(), 0640);
  BrokerProcess group_readable({"--admin-token-file", token});
  EXPECT_TRUE(group_readable.started()) << group_readable.Log();
  std::filesystem::remove(token);
}

// Peers that stream Pings or invalid Sends and never read the replies. The broker must stop
// reading them rather than queue every Pong and SendAck: memory stays bounded, and a peer that
// behaves is served all along.
TEST_F(HardeningTest, PeersThatStopReadingCannotMakeTheBrokerBufferTheirReplies) {
  // Under AddressSanitizer freed memory waits in a quarantine (256 MB by default), which would
  // count as growth here: a small one keeps the figure about the broker (no effect otherwise).
  ::setenv("ASAN_OPTIONS", "quarantine_size_mb=8", /*overwrite=*/0);
  BrokerProcess broker;
  ASSERT_TRUE(broker.started()) << broker.Log();
  FramePeer honest(broker.port());
  ASSERT_TRUE(honest.Connect());
  ASSERT_TRUE(honest.Sync());
  const uint64_t before = broker.ResidentBytes();

  constexpr int kFlooders = 4;
  std::vector<std::unique_ptr<RawConnection>> connections;
  std::vector<std::thread> flooders;
  std::atomic<bool> stop{false};
  std::atomic<int> handshakes{0};
  for (int i = 0; i < kFlooders; ++i) {
    connections.push_back(std::make_unique<RawConnection>(broker.port()));
    flooders.emplace_back([&, conn = connections.back().get(), invalid = i % 2 == 1] {
      RawNoiseClient noise;
      if (!noise.Handshake(*conn).ok()) return;
      ++handshakes;
      mesh::v1::Frame frame;
      if (invalid) {
        frame.mutable_send()->set_id(RandomId());  // no recipient: answered INVALID
      } else {
        frame.mutable_ping()->set_nonce(1);
      }
      // Blocks once the broker stops reading; Shutdown below wakes it.
      while (!stop && noise.SendFrame(*conn, frame)) {
      }
    });
  }
  uint64_t peak = before;
  const auto end = std::chrono::steady_clock::now() + 20s;  // inside the 30 s frame timeout
  while (std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(250ms);
    peak = std::max(peak, broker.ResidentBytes());
  }
  EXPECT_EQ(handshakes.load(), kFlooders);
  EXPECT_TRUE(honest.Sync()) << "a peer that reads its replies is still served";
  stop = true;
  for (auto& conn : connections) conn->Shutdown();
  for (auto& flooder : flooders) flooder.join();
  EXPECT_LT(peak - before, uint64_t{64} << 20)
      << "RSS went from " << before << " to " << peak << " bytes";
  std::printf("rss_before=%llu rss_peak=%llu\n", static_cast<unsigned long long>(before),
              static_cast<unsigned long long>(peak));
}

// The send rate belongs to the peer, not to its link: reconnecting does not refill it.
TEST_F(HardeningTest, TheSendRateHoldsAcrossReconnects) {
  BrokerProcess broker({"--send-rate", "1", "--send-burst", "3"});
  ASSERT_TRUE(broker.started()) << broker.Log();
  const auto alice = crypto::KeyPair::Generate();
  const auto bob = crypto::KeyPair::Generate();
  int accepted = 0;
  int limited = 0;
  for (int i = 0; i < 6; ++i) {  // one link per message
    FramePeer link(broker.port(), alice);
    ASSERT_TRUE(link.Connect());
    auto ack = link.Send(bob.public_key, "m" + std::to_string(i));
    ASSERT_TRUE(ack.has_value());
    (ack->status() == SendAck::ACCEPTED ? accepted : limited) += 1;
  }
  // 3 from the burst, at most a few more from the refill while the links came and went.
  EXPECT_LE(accepted, 4);
  EXPECT_GE(limited, 2);
}

// New links are rated per source address: a host reconnecting in a loop gets its burst, then
// refusals before any handshake work, while the links it has stay up.
TEST_F(HardeningTest, NewLinksAreRatedPerSourceAddress) {
  BrokerProcess broker({"--new-links-per-ip-rate", "0.5", "--new-links-per-ip-burst", "3"});
  ASSERT_TRUE(broker.started()) << broker.Log();
  std::vector<std::unique_ptr<FramePeer>> links;
  for (int i = 0; i < 3; ++i) {
    links.push_back(std::make_unique<FramePeer>(broker.port()));
    ASSERT_TRUE(links.back()->Connect()) << i;
  }
  RawConnection refused(broker.port());
  RawNoiseClient noise;
  EXPECT_FALSE(noise.Handshake(refused).ok());
  EXPECT_TRUE(links.front()->Sync()) << "links made before stay up";
  EXPECT_TRUE(broker.WaitForLogLine({"link_refused", "new-links-per-ip-rate"}));
}

// A frame's records, plaintext (flags byte + chunk), as the record layer cuts them.
std::vector<crypto::Bytes> RecordsOf(const mesh::v1::Frame& frame) {
  const std::string bytes = frame.SerializeAsString();
  std::vector<crypto::Bytes> records;
  for (size_t at = 0; at < bytes.size(); at += peer::kMaxChunk) {
    const size_t n = std::min(peer::kMaxChunk, bytes.size() - at);
    crypto::Bytes record(1 + n);
    record[0] = at + n == bytes.size() ? peer::kFlagFin : 0;
    std::copy_n(bytes.data() + at, n, record.begin() + 1);
    records.push_back(std::move(record));
  }
  return records;
}

// Two large uploads that both begin while the frame budget holds only one: the first reserves
// a whole frame as it begins and completes; the second waits, then completes. Charged record
// by record, each held half the budget and neither could finish until the frame timeout.
TEST_F(HardeningTest, LargeUploadsThatBeginTogetherBothComplete) {
  const size_t max_frame = peer::kDefaultMaxPayload + peer::kFrameOverhead;
  BrokerProcess broker(
      {"--frame-memory-budget", std::to_string(max_frame * 6 / 5), "--frame-timeout-ms", "5000"});
  ASSERT_TRUE(broker.started()) << broker.Log();
  const auto bob = crypto::KeyPair::Generate();
  struct Uploader {
    explicit Uploader(uint16_t port) : conn(port) {}
    RawConnection conn;
    RawNoiseClient noise;
    std::vector<crypto::Bytes> records;
    std::string id = RandomId();
  };
  std::vector<std::unique_ptr<Uploader>> uploads;
  for (int i = 0; i < 2; ++i) {
    uploads.push_back(std::make_unique<Uploader>(broker.port()));
    Uploader& up = *uploads.back();
    ASSERT_TRUE(up.noise.Handshake(up.conn).ok());
    mesh::v1::Frame frame;
    frame.mutable_send()->set_id(up.id);
    frame.mutable_send()->set_to(Raw(bob.public_key));
    frame.mutable_send()->set_payload(std::string(1'000'000, static_cast<char>('a' + i)));
    up.records = RecordsOf(frame);
    ASSERT_GT(up.records.size(), 8u);
  }
  // Both begin (half of each), then both finish.
  for (auto& up : uploads) {
    for (size_t r = 0; r < up->records.size() / 2; ++r) {
      ASSERT_TRUE(up->noise.SendRecord(up->conn, up->records[r]));
    }
  }
  std::vector<std::thread> rest;  // a paused link stops reading: its writes may block
  for (auto& up : uploads) {
    rest.emplace_back([up = up.get()] {
      for (size_t r = up->records.size() / 2; r < up->records.size(); ++r) {
        if (!up->noise.SendRecord(up->conn, up->records[r])) return;
      }
    });
  }
  for (auto& thread : rest) thread.join();
  for (auto& up : uploads) {
    auto frame = up->noise.ReadFrame(up->conn);
    ASSERT_TRUE(frame.has_value() && frame->has_send_ack()) << broker.Log();
    EXPECT_EQ(frame->send_ack().id(), up->id);
    EXPECT_EQ(frame->send_ack().status(), SendAck::ACCEPTED) << frame->send_ack().detail();
  }
}

// One host begins more large frames than its share of the frame budget and stalls them all:
// it pins only its share, and another host's large upload completes at once. Without a share
// per address, the stalled frames held the whole budget until the frame timeout.
TEST_F(HardeningTest, OneHostsStalledFramesLeaveTheFrameBudgetToOthers) {
  const size_t max_frame = peer::kDefaultMaxPayload + peer::kFrameOverhead;
  BrokerProcess broker({"--frame-memory-budget", std::to_string(max_frame * 4),
                        "--frame-memory-per-ip", std::to_string(max_frame * 2),
                        "--frame-timeout-ms", "120000"});
  ASSERT_TRUE(broker.started()) << broker.Log();
  const auto bob = crypto::KeyPair::Generate();
  auto large_send = [&](const std::string& id) {
    mesh::v1::Frame frame;
    frame.mutable_send()->set_id(id);
    frame.mutable_send()->set_to(Raw(bob.public_key));
    frame.mutable_send()->set_payload(std::string(1'000'000, 'x'));
    return RecordsOf(frame);
  };
  struct Stalled {
    explicit Stalled(uint16_t port) : conn(port, "127.0.0.1") {}
    RawConnection conn;
    RawNoiseClient noise;
  };
  std::vector<std::unique_ptr<Stalled>> stalled;
  for (int i = 0; i < 4; ++i) {  // as many as the whole budget holds
    stalled.push_back(std::make_unique<Stalled>(broker.port()));
    ASSERT_TRUE(stalled.back()->noise.Handshake(stalled.back()->conn).ok());
    ASSERT_TRUE(stalled.back()->noise.SendRecord(stalled.back()->conn, large_send(RandomId())[0]));
  }
  // The host holds its share, and no more, before the other host begins.
  const double share = static_cast<double>(max_frame * 2);
  const auto deadline = std::chrono::steady_clock::now() + kTestDeadline;
  while (broker.Metric("mesh_frame_memory_bytes") < share &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_EQ(broker.Metric("mesh_frame_memory_bytes"), share) << broker.Log();

  RawConnection other_host(broker.port(), "127.0.0.2");
  ASSERT_TRUE(other_host.connected()) << "cannot bind 127.0.0.2";
  RawNoiseClient uploader;
  ASSERT_TRUE(uploader.Handshake(other_host).ok());
  const std::string id = RandomId();
  std::thread upload([&] {
    for (const auto& record : large_send(id)) {
      if (!uploader.SendRecord(other_host, record)) return;
    }
  });
  auto ack = uploader.ReadFrame(other_host);
  other_host.Shutdown();
  upload.join();
  ASSERT_TRUE(ack.has_value() && ack->has_send_ack()) << broker.Log();
  EXPECT_EQ(ack->send_ack().id(), id);
  EXPECT_EQ(ack->send_ack().status(), SendAck::ACCEPTED) << ack->send_ack().detail();
}

// The fair share counts bytes: one sender's few large messages cannot fill a mailbox for all.
TEST_F(HardeningTest, OneSendersLargeMessagesLeaveRoomForOthers) {
  BrokerProcess broker({"--mailbox-max-bytes", "9600", "--max-payload", "4000"});
  ASSERT_TRUE(broker.started()) << broker.Log();
  const auto bob = crypto::KeyPair::Generate();
  FramePeer alice(broker.port());
  ASSERT_TRUE(alice.Connect());
  auto first = alice.Send(bob.public_key, std::string(3000, 'a'));
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->status(), SendAck::ACCEPTED) << first->detail();
  std::optional<SendAck> refused;
  for (int i = 0; i < 3 && !(refused && refused->status() != SendAck::ACCEPTED); ++i) {
    refused = alice.Send(bob.public_key, std::string(3000, 'a'));
    ASSERT_TRUE(refused.has_value());
  }
  EXPECT_EQ(refused->status(), SendAck::SENDER_QUOTA) << refused->detail();
  FramePeer carol(broker.port());
  ASSERT_TRUE(carol.Connect());
  auto ack = carol.Send(bob.public_key, "hi");
  ASSERT_TRUE(ack.has_value());
  EXPECT_EQ(ack->status(), SendAck::ACCEPTED) << ack->detail();
}

// Invalid Sends earn an answer too, so they cost the sender's rate like valid ones.
TEST_F(HardeningTest, InvalidSendsCountAgainstTheRate) {
  BrokerProcess broker({"--send-rate", "1", "--send-burst", "3"});
  ASSERT_TRUE(broker.started()) << broker.Log();
  FramePeer alice(broker.port());
  ASSERT_TRUE(alice.Connect());
  const auto bob = crypto::KeyPair::Generate();
  for (int i = 0; i < 3; ++i) {
    const std::string id = "short-" + std::to_string(i);  // ids are 16 bytes
    ASSERT_TRUE(alice.SendNoWait(bob.public_key, "x", id));
    auto ack = alice.AwaitAck(id);
    ASSERT_TRUE(ack.has_value());
    EXPECT_EQ(ack->status(), SendAck::INVALID) << ack->detail();
  }
  auto ack = alice.Send(bob.public_key, "valid");
  ASSERT_TRUE(ack.has_value());
  EXPECT_EQ(ack->status(), SendAck::RATE_LIMITED) << ack->detail();
}

// A REST SendMessage waits for its SendAck (here: until the recipient acknowledges the fast
// path delivery) without holding up the control plane's other requests.
TEST_F(HardeningTest, ARestSendAwaitingItsAckDoesNotHoldUpOtherRequests) {
  BrokerProcess broker({"--ack-window-ms", "60000"});
  ASSERT_TRUE(broker.started()) << broker.Log();
  FramePeer bob(broker.port());
  ASSERT_TRUE(bob.Connect());
  ASSERT_TRUE(bob.Sync());
  std::atomic<bool> answered{false};
  std::string answer;
  std::thread send([&] {
    answer = broker.ApiRequest("POST", "/api/v1/messages",
                               "{\"to\":\"" + bob.id().ToString() + "\",\"payload\":\"aGVsbG8=\"}");
    answered = true;
  });
  auto deliver = bob.NextDeliver();  // delivered at once; its SendAck waits for bob's ack
  ASSERT_TRUE(deliver.has_value());
  EXPECT_EQ(deliver->payload(), "hello");
  EXPECT_EQ(broker.ApiGet("/readyz"), "ready\n");
  EXPECT_FALSE(answered.load()) << "the send cannot be answered before bob acknowledges";
  ASSERT_TRUE(bob.Ack({deliver->seq()}));
  send.join();
  EXPECT_THAT(answer, ::testing::HasSubstr("ACCEPTED"));
}

}  // namespace
}  // namespace mesh::testing
