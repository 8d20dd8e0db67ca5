// Mailboxes at rest (DESIGN §4): a start reads the counts the store keeps in its meta family,
// never the payloads, and those counts stay exact whatever moment a kill -9 picks: during a
// fill, a drain or an expiry sweep. A count that is off shows as a mailbox that never empties
// (too high) or one that empties early and underflows (too low).
#include <gtest/gtest.h>
#include <signal.h>

#include <random>
#include <thread>

#include "tests/integration/acked_load.h"
#include "tests/integration/broker_process.h"
#include "tests/integration/test_peers.h"

namespace mesh::testing {
namespace {

using namespace std::chrono_literals;

constexpr auto kDeadline = std::chrono::seconds(60);

// The "messages" of GET /api/v1/mailboxes/ID; -1 when the answer has none.
int64_t MailboxMessages(const BrokerProcess& broker, const crypto::PeerId& id) {
  const std::string view = broker.ApiGet("/api/v1/mailboxes/" + id.ToString());
  const std::string field = "\"messages\":\"";
  const size_t at = view.find(field);
  if (at == std::string::npos) return -1;
  return std::stoll(view.substr(at + field.size()));
}

bool WaitFor(const std::function<bool()>& condition) {
  const auto deadline = std::chrono::steady_clock::now() + kDeadline;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

std::mt19937& Random() {
  static std::mt19937 random(std::random_device{}());
  return random;
}

std::chrono::milliseconds RandomMs(int low, int high) {
  return std::chrono::milliseconds(std::uniform_int_distribution<int>(low, high)(Random()));
}

class StoreCountsTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(crypto::Init().ok()); }

  // Kills the broker with SIGKILL and starts another on its data dir and port. The first one
  // owns the data dir (it removes it when destroyed), so the dead are kept until the end.
  void KillAndRestart() {
    ASSERT_EQ(broker_->Stop(SIGKILL), -1);
    dead_.push_back(std::move(broker_));
    broker_ = std::make_unique<BrokerProcess>(args_, data_dir_);
    ASSERT_TRUE(broker_->started()) << broker_->Log();
  }

  void Start(std::vector<std::string> extra = {}) {
    args_ = {"--send-rate", "0"};
    args_.insert(args_.end(), extra.begin(), extra.end());
    broker_ = std::make_unique<BrokerProcess>(args_);
    ASSERT_TRUE(broker_->started()) << broker_->Log();
    data_dir_ = broker_->data_dir();
    args_.insert(args_.end(), {"--listen-peer", broker_->address()});
  }

  // A peer that never saw these messages drains the mailbox: what it receives by the time the
  // broker's count reaches zero must be exactly the count the broker started from.
  void ExpectCountIsWhatDrains(const crypto::KeyPair& key) {
    const int64_t count = MailboxMessages(*broker_, key.public_key);
    ASSERT_GE(count, 0) << broker_->Log();
    LibraryPeer peer({broker_->address()}, key);
    ASSERT_TRUE(WaitFor([&] { return MailboxMessages(*broker_, key.public_key) == 0; }))
        << "counted " << count << ", now " << MailboxMessages(*broker_, key.public_key);
    const auto received = peer.WaitForMessages(static_cast<size_t>(count), kDeadline);
    EXPECT_EQ(static_cast<int64_t>(received.size()), count);
  }

  std::vector<std::string> args_;
  std::string data_dir_;
  std::unique_ptr<BrokerProcess> broker_;
  std::vector<std::unique_ptr<BrokerProcess>> dead_;
};

TEST_F(StoreCountsTest, ARestartReadsCountsNotPayloads) {
  constexpr int kMailboxes = 100000;
  Start();
  const auto fill =
      RunProcess({std::string(MESH_BINARY_DIR) + "/bench/mesh-bench", "-b", broker_->address(),
                  "--mode", "fill", "--pairs", "4", "--count", std::to_string(kMailboxes / 4),
                  "--recipients", std::to_string(kMailboxes), "--threads", "1"},
                 std::chrono::seconds(120));
  ASSERT_EQ(fill.exit_code, 0) << fill.out << fill.err;
  ASSERT_EQ(broker_->Metric("mesh_messages_queue_size"), kMailboxes);

  KillAndRestart();
  EXPECT_EQ(broker_->Metric("mesh_messages_queue_size"), kMailboxes);
  EXPECT_EQ(broker_->Metric("mesh_messages_queued_bytes"),
            kMailboxes * static_cast<double>(160 + 256));  // store::AccountedBytes
  EXPECT_EQ(broker_->Metric("mesh_store_messages_read_total"), 0) << broker_->Log();
}

TEST_F(StoreCountsTest, CountsStayExactThroughKillsDuringFillsAndDrains) {
  Start();
  std::vector<crypto::KeyPair> recipients(3);
  std::vector<crypto::PeerId> ids;
  for (auto& key : recipients) {
    key = crypto::KeyPair::Generate();
    ids.push_back(key.public_key);
  }
  auto fast_retry = [](client::SessionOptions& options) {
    options.backoff_min = 20ms;
    options.backoff_max = 200ms;
  };
  std::vector<std::unique_ptr<LibraryPeer>> senders;
  for (int s = 0; s < 4; ++s) {
    senders.push_back(std::make_unique<LibraryPeer>(std::vector<std::string>{broker_->address()},
                                                    crypto::KeyPair::Generate(), fast_retry));
  }
  {
    AcknowledgedLoad load(std::move(senders), ids, /*burst=*/4);
    for (int kill = 0; kill < 3; ++kill) {
      std::this_thread::sleep_for(RandomMs(50, 300));
      KillAndRestart();
    }
    ASSERT_TRUE(load.StopAndWaitForAnswers()) << broker_->Log();
  }
  KillAndRestart();
  // The first mailbox drains with a kill at a random moment of it; the counts after the
  // restart still say what is left.
  {
    LibraryPeer draining({broker_->address()}, recipients[0]);
    std::this_thread::sleep_for(RandomMs(0, 30));
    KillAndRestart();
  }
  for (const auto& key : recipients) ExpectCountIsWhatDrains(key);
  KillAndRestart();
  EXPECT_EQ(broker_->Metric("mesh_messages_queue_size"), 0);
  EXPECT_EQ(broker_->Metric("mesh_messages_queued_bytes"), 0);
}

TEST_F(StoreCountsTest, CountsStayExactThroughAKillDuringAnExpirySweep) {
  Start({"--expiry-sweep-interval-s", "1"});
  const crypto::KeyPair recipient = crypto::KeyPair::Generate();
  LibraryPeer sender({broker_->address()});
  constexpr int kMessages = 2000;
  for (int i = 0; i < kMessages; ++i) {
    // Half expire in a second, half stay.
    const auto result = sender.Send(recipient.public_key, "m" + std::to_string(i), i % 2 ? 1 : 600);
    ASSERT_EQ(result.status, mesh::v1::SendAck::ACCEPTED) << result.detail;
  }
  std::this_thread::sleep_for(RandomMs(1000, 2500));  // a sweep may be under way
  KillAndRestart();
  ASSERT_TRUE(WaitFor([&] {
    return MailboxMessages(*broker_, recipient.public_key) == kMessages / 2;
  })) << MailboxMessages(*broker_, recipient.public_key);
  ExpectCountIsWhatDrains(recipient);
}

// A mailbox at rest leaves memory; read back by a send, a sweep or its recipient it keeps its
// order, its dedup and its senders' shares.
TEST_F(StoreCountsTest, AMailboxLetGoAndReadBackKeepsOrderDedupAndShares) {
  Start({"--mailbox-max-messages", "40"});  // a sender's share: 20
  FramePeer first(broker_->port()), second(broker_->port());
  ASSERT_TRUE(first.Connect());
  ASSERT_TRUE(second.Connect());
  const crypto::KeyPair recipient = crypto::KeyPair::Generate();
  std::vector<std::string> ids;
  auto send = [&](FramePeer& sender, int n) {
    ids.push_back(RandomId());
    auto ack = sender.Send(recipient.public_key, "m" + std::to_string(n), ids.back());
    return ack ? ack->status() : mesh::v1::SendAck::STATUS_UNSPECIFIED;
  };
  // Only the two senders' (empty, connected) mailboxes stay in memory.
  auto at_rest = [&] {
    return WaitFor([&] { return broker_->Metric("mesh_mailboxes_in_memory") == 2; });
  };
  for (int n = 0; n < 20; ++n) ASSERT_EQ(send(first, n), mesh::v1::SendAck::ACCEPTED);
  ASSERT_TRUE(at_rest()) << broker_->Metric("mesh_mailboxes_in_memory");
  EXPECT_EQ(broker_->Metric("mesh_mailboxes"), 1);

  // Read back for each send: the share, the dedup entry and the order survive.
  EXPECT_EQ(send(first, 20), mesh::v1::SendAck::SENDER_QUOTA);
  ids.pop_back();  // refused: not in the mailbox
  ASSERT_TRUE(at_rest());
  auto retry = first.Send(recipient.public_key, "m5", ids[5]);
  ASSERT_TRUE(retry.has_value());
  EXPECT_EQ(retry->status(), mesh::v1::SendAck::DUPLICATE);
  auto reused = first.Send(recipient.public_key, "not m5", ids[5]);
  ASSERT_TRUE(reused.has_value());
  EXPECT_EQ(reused->status(), mesh::v1::SendAck::INVALID);
  ASSERT_TRUE(at_rest());
  for (int n = 20; n < 40; ++n) ASSERT_EQ(send(second, n), mesh::v1::SendAck::ACCEPTED);
  ASSERT_TRUE(at_rest());
  EXPECT_EQ(send(second, 40), mesh::v1::SendAck::MAILBOX_FULL);
  ids.pop_back();

  FramePeer reader(broker_->port(), recipient);
  ASSERT_TRUE(reader.Connect());
  std::vector<uint64_t> seqs;
  for (int n = 0; n < 40; ++n) {
    auto deliver = reader.NextDeliver();
    ASSERT_TRUE(deliver.has_value()) << "message " << n;
    EXPECT_EQ(deliver->payload(), "m" + std::to_string(n));
    EXPECT_EQ(deliver->id(), ids[n]);
    seqs.push_back(deliver->seq());
  }
  ASSERT_TRUE(reader.Ack(seqs));
  ASSERT_TRUE(WaitFor([&] { return broker_->Metric("mesh_mailboxes") == 0; }));
  EXPECT_EQ(broker_->Metric("mesh_messages_queue_size"), 0);
}

}  // namespace
}  // namespace mesh::testing
