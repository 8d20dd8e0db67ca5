// The data plane against the running mesh-broker binary with its real RocksDB store: delivery
// online and offline, acknowledgements, order, limits, sessions. Where a test needs to show that
// something did NOT arrive, it sends a marker after it: FIFO per recipient means the marker
// arrives first exactly when the other message does not exist.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "tests/integration/broker_process.h"
#include "tests/integration/test_peers.h"

namespace mesh::testing {
namespace {

using mesh::v1::SendAck;
using namespace std::chrono_literals;

class DataPlaneTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(crypto::Init().ok()); }

  void StartBroker(std::vector<std::string> args = {}, std::string data_dir = "") {
    broker_ = std::make_unique<BrokerProcess>(std::move(args), std::move(data_dir));
    ASSERT_TRUE(broker_->started()) << broker_->Log();
  }

  std::unique_ptr<FramePeer> Peer(crypto::KeyPair key = crypto::KeyPair::Generate(),
                                  uint32_t credit = 1000) {
    auto peer = std::make_unique<FramePeer>(broker_->port(), std::move(key));
    EXPECT_TRUE(peer->Connect(credit));
    return peer;
  }

  // The stats line the broker logs when it stops: the value of `field`.
  uint64_t StoppedStat(const std::string& field) {
    const std::string log = broker_->Log();
    const std::string needle = "\"" + field + "\":";
    auto at = log.find("\"event\":\"routing_stats\"");
    if (at == std::string::npos) return 0;
    at = log.find(needle, at);
    return at == std::string::npos ? 0 : std::stoull(log.substr(at + needle.size()));
  }

  // Waits until the broker has a session for `peer` with credit: a message for it now takes
  // the online fast path (when nothing is queued for it).
  bool WaitForCredit(const crypto::PeerId& peer) {
    return WaitForPeer(peer, [](const std::string& body) {
      // proto3 JSON: 64-bit numbers are strings, and zero is left out.
      return body.find("\"connected\":true") != std::string::npos &&
             body.find("\"credit\":\"") != std::string::npos;
    });
  }

  // Waits until the broker has no session for `peer`: everything its last link sent (a final
  // DeliverAck) has been handled, so a new link cannot get those messages again.
  bool WaitForOffline(const crypto::PeerId& peer) {
    return WaitForPeer(peer, [](const std::string& body) {
      return !body.empty() && body.find("\"connected\":true") == std::string::npos;
    });
  }

  bool WaitForPeer(const crypto::PeerId& peer, std::function<bool(const std::string&)> done) {
    const auto deadline = std::chrono::steady_clock::now() + kTestDeadline;
    do {
      if (done(broker_->ApiGet("/api/v1/peers/" + peer.ToString()))) return true;
      std::this_thread::sleep_for(10ms);
    } while (std::chrono::steady_clock::now() < deadline);
    return false;
  }

  // A key file for mesh-cli, in the test's scratch dir (beside the broker's data dir).
  std::string KeyFile(const crypto::KeyPair& key) {
    const std::string path = broker_->data_dir() + "/../" + key.public_key.ToString() + ".key";
    EXPECT_TRUE(crypto::WriteKeyFile(path, key).ok());
    return path;
  }

  // `mesh-cli listen -n count` as `key` (its dedup file beside the key file); returns once the
  // broker has let the session go, so a later link cannot race its last DeliverAck.
  ProcessResult CliListen(const crypto::KeyPair& key, const std::string& key_file, int count) {
    auto result = RunProcess({std::string(MESH_BINARY_DIR) + "/client/mesh-cli", "listen", "-n",
                              std::to_string(count), "--key", key_file, "--broker",
                              broker_->address(), "--dedup-file", key_file + ".dedup"});
    EXPECT_TRUE(WaitForOffline(key.public_key)) << broker_->Log();
    return result;
  }

  std::unique_ptr<BrokerProcess> broker_;
};

MATCHER_P(HasStatus, status, "") { return arg.has_value() && arg->status() == status; }

TEST_F(DataPlaneTest, DeliversOnlineAtOnceWithTheAuthenticatedSender) {
  StartBroker();
  LibraryPeer alice({broker_->address()});
  LibraryPeer bob({broker_->address()});
  ASSERT_TRUE(bob.WaitConnected());
  auto result = alice.Send(bob.id(), "hello bob");
  EXPECT_EQ(result.status, SendAck::ACCEPTED) << result.detail;
  auto messages = bob.WaitForMessages(1);
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_EQ(messages[0].payload, "hello bob");
  EXPECT_EQ(messages[0].from, alice.id());
  EXPECT_EQ(messages[0].id, result.id);
  EXPECT_GT(messages[0].sent_at_ms, 0u);
}

TEST_F(DataPlaneTest, OfflineMessagesSurviveABrokerRestartAndArriveInOrder) {
  StartBroker();
  auto bob_key = crypto::KeyPair::Generate();
  const crypto::PeerId bob = bob_key.public_key;
  {
    auto alice = Peer();
    for (int i = 0; i < 50; ++i) {
      EXPECT_THAT(alice->Send(bob, "m" + std::to_string(i)), HasStatus(SendAck::ACCEPTED));
    }
  }
  ASSERT_EQ(broker_->Stop(SIGTERM), 0) << broker_->Log();
  BrokerProcess second({}, broker_->data_dir());
  ASSERT_TRUE(second.started()) << second.Log();
  EXPECT_TRUE(second.WaitForLogLine({"store_recovered", "\"messages\":50"})) << second.Log();

  FramePeer receiver(second.port(), bob_key);
  ASSERT_TRUE(receiver.Connect());
  for (int i = 0; i < 50; ++i) {
    auto deliver = receiver.NextDeliver();
    ASSERT_TRUE(deliver) << "message " << i << "\n" << second.Log();
    EXPECT_EQ(deliver->payload(), "m" + std::to_string(i));
    ASSERT_TRUE(receiver.Ack({deliver->seq()}));
  }
}

TEST_F(DataPlaneTest, OrderHoldsPerRecipientAcrossStoredBacklogAndLiveMessages) {
  StartBroker({"--max-in-flight", "7"});
  auto bob_key = crypto::KeyPair::Generate();
  auto alice = Peer();
  // A backlog while bob is away, then more while he drains it under a small window.
  for (int i = 0; i < 100; ++i) {
    ASSERT_THAT(alice->Send(bob_key.public_key, std::to_string(i)), HasStatus(SendAck::ACCEPTED));
  }
  auto bob = Peer(std::move(bob_key), 5);
  for (int i = 100; i < 300; ++i) {
    ASSERT_TRUE(alice->SendNoWait(bob->id(), std::to_string(i), RandomId()));
  }
  for (int i = 0; i < 300; ++i) {
    auto deliver = bob->NextDeliver();
    ASSERT_TRUE(deliver) << i;
    ASSERT_EQ(deliver->payload(), std::to_string(i));
    ASSERT_TRUE(bob->Ack({deliver->seq()}));
  }
}

TEST_F(DataPlaneTest, ExpiredMessagesAreNeverDeliveredAndAreReclaimed) {
  StartBroker({"--expiry-sweep-interval-s", "1"});
  auto bob_key = crypto::KeyPair::Generate();
  auto alice = Peer();
  const auto sent = std::chrono::system_clock::now();
  ASSERT_THAT(alice->Send(bob_key.public_key, "short-lived", RandomId(), 1),
              HasStatus(SendAck::ACCEPTED));
  // Its TTL is one second: wait for the wall clock to pass it (a condition, not a guess).
  while (std::chrono::system_clock::now() < sent + 1500ms) std::this_thread::sleep_for(50ms);
  ASSERT_THAT(alice->Send(bob_key.public_key, "marker"), HasStatus(SendAck::ACCEPTED));
  auto bob = Peer(std::move(bob_key));
  auto first = bob->NextDeliver();
  ASSERT_TRUE(first);
  EXPECT_EQ(first->payload(), "marker");
  ASSERT_TRUE(bob->Ack({first->seq()}));
  ASSERT_TRUE(bob->Sync());
  ASSERT_EQ(broker_->Stop(SIGTERM), 0);
  EXPECT_EQ(StoppedStat("expired"), 1u) << broker_->Log();
  EXPECT_EQ(StoppedStat("queued"), 0u) << broker_->Log();
}

TEST_F(DataPlaneTest, TtlOverTheMaximumIsRejected) {
  StartBroker({"--max-ttl-s", "60"});
  auto alice = Peer();
  auto ack = alice->Send(crypto::KeyPair::Generate().public_key, "x", RandomId(), 61);
  ASSERT_THAT(ack, HasStatus(SendAck::INVALID));
  EXPECT_NE(ack->detail().find("ttl"), std::string::npos);
}

TEST_F(DataPlaneTest, MailboxAndSenderQuotasRejectWithReasons) {
  StartBroker({"--mailbox-max-messages", "4", "--sender-share", "0.5"});
  const crypto::PeerId bob = crypto::KeyPair::Generate().public_key;
  auto alice = Peer();
  auto carol = Peer();
  EXPECT_THAT(alice->Send(bob, "a1"), HasStatus(SendAck::ACCEPTED));
  EXPECT_THAT(alice->Send(bob, "a2"), HasStatus(SendAck::ACCEPTED));
  // Alice holds her half of bob's mailbox; carol still has room.
  EXPECT_THAT(alice->Send(bob, "a3"), HasStatus(SendAck::SENDER_QUOTA));
  EXPECT_THAT(carol->Send(bob, "c1"), HasStatus(SendAck::ACCEPTED));
  EXPECT_THAT(carol->Send(bob, "c2"), HasStatus(SendAck::ACCEPTED));
  auto full = carol->Send(bob, "c3");
  EXPECT_THAT(full, HasStatus(SendAck::MAILBOX_FULL));
  EXPECT_FALSE(full->detail().empty());
  // Another mailbox is unaffected.
  EXPECT_THAT(alice->Send(crypto::KeyPair::Generate().public_key, "elsewhere"),
              HasStatus(SendAck::ACCEPTED));
}

TEST_F(DataPlaneTest, RetriedSendIsStoredAndDeliveredOnce) {
  StartBroker();
  auto bob_key = crypto::KeyPair::Generate();
  auto alice = Peer();
  const std::string id = RandomId();
  EXPECT_THAT(alice->Send(bob_key.public_key, "once", id), HasStatus(SendAck::ACCEPTED));
  EXPECT_THAT(alice->Send(bob_key.public_key, "once", id), HasStatus(SendAck::DUPLICATE));
  // The same id with other contents is not a retry.
  EXPECT_THAT(alice->Send(bob_key.public_key, "other", id), HasStatus(SendAck::INVALID));
  ASSERT_THAT(alice->Send(bob_key.public_key, "marker"), HasStatus(SendAck::ACCEPTED));
  auto bob = Peer(std::move(bob_key));
  auto first = bob->NextDeliver();
  auto second = bob->NextDeliver();
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->payload(), "once");
  EXPECT_EQ(second->payload(), "marker");
}

TEST_F(DataPlaneTest, RetryWhileTheRecipientIsOnlineIsAlsoDeduplicated) {
  // The ack window is 0: every message is written before delivery, with its dedup entry.
  StartBroker({"--ack-window-ms", "0"});
  auto bob = Peer();
  auto alice = Peer();
  const std::string id = RandomId();
  EXPECT_THAT(alice->Send(bob->id(), "once", id), HasStatus(SendAck::ACCEPTED));
  EXPECT_THAT(alice->Send(bob->id(), "once", id), HasStatus(SendAck::DUPLICATE));
  ASSERT_THAT(alice->Send(bob->id(), "marker"), HasStatus(SendAck::ACCEPTED));
  auto first = bob->NextDeliver();
  auto second = bob->NextDeliver();
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->payload(), "once");
  EXPECT_EQ(second->payload(), "marker");
}

TEST_F(DataPlaneTest, RetryOfAnUnacknowledgedFastPathMessageWaitsForTheSameAck) {
  // A long ack window keeps the message on the fast path (delivered, not written) while bob
  // holds it unacknowledged: retries are compared with the message itself.
  StartBroker({"--ack-window-ms", "60000"});
  auto bob = Peer();
  auto alice = Peer();
  const std::string id = RandomId();
  ASSERT_TRUE(alice->SendNoWait(bob->id(), "once", id));
  auto deliver = bob->NextDeliver();
  ASSERT_TRUE(deliver);
  EXPECT_THAT(alice->Send(bob->id(), "other", id), HasStatus(SendAck::INVALID));
  ASSERT_TRUE(alice->SendNoWait(bob->id(), "once", id));  // joins the first one's waiters
  ASSERT_TRUE(alice->Sync());
  ASSERT_TRUE(bob->Ack({deliver->seq()}));
  EXPECT_THAT(alice->AwaitAck(id), HasStatus(SendAck::ACCEPTED));
  EXPECT_THAT(alice->AwaitAck(id), HasStatus(SendAck::DUPLICATE));
  // Delivered once: the next message bob sees is the one after it.
  const std::string marker = RandomId();
  ASSERT_TRUE(alice->SendNoWait(bob->id(), "marker", marker));
  auto next = bob->NextDeliver();
  ASSERT_TRUE(next);
  EXPECT_EQ(next->payload(), "marker");
  ASSERT_TRUE(bob->Ack({next->seq()}));
  EXPECT_THAT(alice->AwaitAck(marker), HasStatus(SendAck::ACCEPTED));
}

TEST_F(DataPlaneTest, OversizedMessageIsRejectedAndTheLinkStaysUsable) {
  StartBroker({"--max-payload", "1024"});
  auto bob = Peer();
  auto alice = Peer();
  auto ack = alice->Send(bob->id(), std::string(2000, 'x'));
  ASSERT_THAT(ack, HasStatus(SendAck::TOO_LARGE));
  EXPECT_NE(ack->detail().find("1024"), std::string::npos);
  EXPECT_THAT(alice->Send(bob->id(), "small"), HasStatus(SendAck::ACCEPTED));
  auto deliver = bob->NextDeliver();
  ASSERT_TRUE(deliver);
  EXPECT_EQ(deliver->payload(), "small");
}

TEST_F(DataPlaneTest, MalformedSendsAreRejectedAsInvalid) {
  StartBroker();
  auto alice = Peer();
  EXPECT_THAT(alice->Send(crypto::KeyPair::Generate().public_key, "x", "short-id"),
              HasStatus(SendAck::INVALID));
  // A recipient that is not a canonical key (all 0xff: top bit set) is no peer ID.
  crypto::PeerId bogus;
  bogus.bytes.fill(0xff);
  EXPECT_THAT(alice->Send(bogus, "x"), HasStatus(SendAck::INVALID));
  EXPECT_THAT(alice->Send(crypto::KeyPair::Generate().public_key, "fine"),
              HasStatus(SendAck::ACCEPTED));
}

TEST_F(DataPlaneTest, SenderRateIsLimitedPerPeer) {
  StartBroker({"--send-rate", "1", "--send-burst", "3"});
  auto alice = Peer();
  auto carol = Peer();
  const crypto::PeerId bob = crypto::KeyPair::Generate().public_key;
  for (int i = 0; i < 3; ++i) EXPECT_THAT(alice->Send(bob, "x"), HasStatus(SendAck::ACCEPTED));
  EXPECT_THAT(alice->Send(bob, "x"), HasStatus(SendAck::RATE_LIMITED));
  EXPECT_THAT(carol->Send(bob, "y"), HasStatus(SendAck::ACCEPTED));
}

TEST_F(DataPlaneTest, FromIsAlwaysTheAuthenticatedSenderAndMailboxesArePrivate) {
  StartBroker();
  auto bob_key = crypto::KeyPair::Generate();
  auto carol_key = crypto::KeyPair::Generate();
  auto alice = Peer();
  auto mallory = Peer();
  ASSERT_THAT(alice->Send(bob_key.public_key, "for bob"), HasStatus(SendAck::ACCEPTED));
  ASSERT_THAT(mallory->Send(carol_key.public_key, "for carol"), HasStatus(SendAck::ACCEPTED));
  auto carol = Peer(std::move(carol_key));
  auto got = carol->NextDeliver();
  ASSERT_TRUE(got);
  EXPECT_EQ(got->payload(), "for carol");
  EXPECT_EQ(got->from(), Raw(mallory->id()));
  ASSERT_TRUE(carol->Ack({got->seq()}));
  ASSERT_THAT(alice->Send(carol->id(), "marker"), HasStatus(SendAck::ACCEPTED));
  auto next = carol->NextDeliver();
  ASSERT_TRUE(next);
  EXPECT_EQ(next->payload(), "marker");  // never bob's message
  auto bob = Peer(std::move(bob_key));
  auto bobs = bob->NextDeliver();
  ASSERT_TRUE(bobs);
  EXPECT_EQ(bobs->payload(), "for bob");
  EXPECT_EQ(bobs->from(), Raw(alice->id()));
}

TEST_F(DataPlaneTest, AckingAnotherLinksSeqsRemovesNothing) {
  StartBroker();
  auto bob_key = crypto::KeyPair::Generate();
  auto alice = Peer();
  ASSERT_THAT(alice->Send(bob_key.public_key, "keep"), HasStatus(SendAck::ACCEPTED));
  // Alice acknowledges seqs she was never sent: bob's message must stay.
  ASSERT_TRUE(alice->Ack({1, 2, 3}));
  auto bob = Peer(std::move(bob_key));
  auto deliver = bob->NextDeliver();
  ASSERT_TRUE(deliver);
  EXPECT_EQ(deliver->payload(), "keep");
}

TEST_F(DataPlaneTest, ASecondSessionReplacesTheFirst) {
  StartBroker();
  auto bob_key = crypto::KeyPair::Generate();
  auto first = Peer(bob_key);
  // The broker has attached the first session before the second begins: a handshake done on
  // the client's side does not say so, and the later attach is the one that stays.
  ASSERT_TRUE(first->Sync());
  auto second = Peer(bob_key);
  auto go_away = first->NextOtherFrame();
  ASSERT_TRUE(go_away && go_away->has_go_away());
  EXPECT_EQ(go_away->go_away().reason(), mesh::v1::GoAway::REPLACED);
  EXPECT_TRUE(first->WaitClosed());
  auto alice = Peer();
  ASSERT_THAT(alice->Send(bob_key.public_key, "to the new one"), HasStatus(SendAck::ACCEPTED));
  auto deliver = second->NextDeliver();
  ASSERT_TRUE(deliver);
  EXPECT_EQ(deliver->payload(), "to the new one");
}

TEST_F(DataPlaneTest, UnacknowledgedDeliveriesComeBackOnTheNextLink) {
  StartBroker();
  auto bob_key = crypto::KeyPair::Generate();
  auto alice = Peer();
  std::string first_seq_payload;
  {
    auto bob = Peer(bob_key);
    ASSERT_THAT(alice->Send(bob_key.public_key, "never acked"), HasStatus(SendAck::ACCEPTED));
    auto deliver = bob->NextDeliver();
    ASSERT_TRUE(deliver);
    EXPECT_EQ(deliver->payload(), "never acked");
  }  // bob's link drops without a DeliverAck
  {
    auto bob = Peer(bob_key);
    auto again = bob->NextDeliver();
    ASSERT_TRUE(again) << broker_->Log();
    EXPECT_EQ(again->payload(), "never acked");
    ASSERT_TRUE(bob->Ack({again->seq()}));
    ASSERT_THAT(alice->Send(bob_key.public_key, "marker"), HasStatus(SendAck::ACCEPTED));
    auto marker = bob->NextDeliver();
    ASSERT_TRUE(marker);
    EXPECT_EQ(marker->payload(), "marker");
    ASSERT_TRUE(bob->Ack({marker->seq()}));
    // The broker has the ack before this link closes: a new link attached first would take
    // the marker back as unacknowledged (and ignore the late ack of a replaced session).
    ASSERT_TRUE(bob->Sync());
  }
  auto bob = Peer(bob_key);
  ASSERT_THAT(alice->Send(bob_key.public_key, "last"), HasStatus(SendAck::ACCEPTED));
  auto last = bob->NextDeliver();
  ASSERT_TRUE(last);
  EXPECT_EQ(last->payload(), "last");  // nothing acknowledged came back
}

TEST_F(DataPlaneTest, NoCreditMeansNoDelivery) {
  StartBroker();
  auto bob_key = crypto::KeyPair::Generate();
  auto bob = Peer(bob_key, /*credit=*/0);
  auto alice = Peer();
  ASSERT_THAT(alice->Send(bob->id(), "waits for credit"), HasStatus(SendAck::ACCEPTED));
  EXPECT_FALSE(bob->NextDeliver(300ms));  // bounded by credit: it must not come yet
  ASSERT_TRUE(bob->Credit(1));
  auto deliver = bob->NextDeliver();
  ASSERT_TRUE(deliver);
  EXPECT_EQ(deliver->payload(), "waits for credit");
}

TEST_F(DataPlaneTest, SealedPayloadsAreOpenedByTheRecipientAndStoredAsCiphertext) {
  StartBroker();
  auto seal = [](client::SessionOptions& options) { options.seal = true; };
  LibraryPeer alice({broker_->address()}, crypto::KeyPair::Generate(), seal);
  auto bob_key = crypto::KeyPair::Generate();
  const std::string secret = "the plaintext only bob may read";
  auto result = alice.Send(bob_key.public_key, secret);
  ASSERT_EQ(result.status, SendAck::ACCEPTED) << result.detail;
  // At rest (WAL and tables) there is no trace of the plaintext.
  for (const auto& file : std::filesystem::recursive_directory_iterator(broker_->data_dir())) {
    if (!file.is_regular_file()) continue;
    std::ifstream in(file.path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    EXPECT_EQ(bytes.find(secret), std::string::npos) << file.path();
  }
  LibraryPeer bob({broker_->address()}, std::move(bob_key), seal);
  auto messages = bob.WaitForMessages(1);
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_TRUE(messages[0].sealed_status.ok()) << messages[0].sealed_status;
  EXPECT_EQ(messages[0].payload, secret);
}

TEST_F(DataPlaneTest, ClientLibraryShowsAMessageOnceAcrossItsRestarts) {
  // A long ack window: a slow (sanitizer) build must not fall off the fast path.
  StartBroker({"--ack-window-ms", "10000"});
  const std::string dedup_file = broker_->data_dir() + "/../client-dedup";
  auto bob_key = crypto::KeyPair::Generate();
  auto with_file = [&](client::SessionOptions& options) { options.dedup_file = dedup_file; };
  auto alice = Peer();
  const std::string id = RandomId();
  {
    LibraryPeer bob({broker_->address()}, bob_key, with_file);
    // The fast path needs bob's session bound with credit when the message comes: one sent
    // before would be stored, with a dedup entry at the broker, and so would later ones while
    // that backlog is read back (a message never overtakes it).
    ASSERT_TRUE(WaitForCredit(bob_key.public_key)) << broker_->Log();
    ASSERT_THAT(alice->Send(bob_key.public_key, "exactly once", id), HasStatus(SendAck::ACCEPTED));
    ASSERT_EQ(bob.WaitForMessages(1).size(), 1u);
  }
  // On the online fast path the broker keeps no dedup entry (DESIGN §3): a retry of the same
  // (from, id) reaches the recipient again, and the library, restarted, must drop it.
  LibraryPeer bob({broker_->address()}, bob_key, with_file);
  ASSERT_THAT(alice->Send(bob_key.public_key, "exactly once", id), HasStatus(SendAck::ACCEPTED));
  ASSERT_THAT(alice->Send(bob_key.public_key, "marker"), HasStatus(SendAck::ACCEPTED));
  auto messages = bob.WaitForMessages(1);
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_EQ(messages[0].payload, "marker");
}

TEST_F(DataPlaneTest, MeshCliListenTakesExactlyCountAndLeavesTheRestQueued) {
  StartBroker();
  auto bob_key = crypto::KeyPair::Generate();
  const std::string bob_key_file = KeyFile(bob_key);
  auto alice = Peer();
  for (const char* payload : {"m1", "m2", "m3"}) {
    ASSERT_THAT(alice->Send(bob_key.public_key, payload), HasStatus(SendAck::ACCEPTED));
  }
  auto listen = [&](int count) {
    auto result = CliListen(bob_key, bob_key_file, count);
    EXPECT_EQ(result.exit_code, 0) << result.err;
    std::vector<std::string> payloads;
    std::istringstream lines(result.out);
    for (std::string line; std::getline(lines, line);) {
      const auto at = line.find("\"payload\":\"");
      payloads.push_back(at == std::string::npos ? line : line.substr(at + 11, 2));
    }
    return payloads;
  };
  EXPECT_THAT(listen(1), ::testing::ElementsAre("m1"));
  EXPECT_THAT(listen(2), ::testing::ElementsAre("m2", "m3"));
  // Nothing shown comes back (the last one was acknowledged before the exit): a new message
  // is the next one.
  ASSERT_THAT(alice->Send(bob_key.public_key, "m4"), HasStatus(SendAck::ACCEPTED));
  EXPECT_THAT(listen(1), ::testing::ElementsAre("m4"));
}

// The dedup file tells who wrote to this key: owner-only whatever the umask.
TEST_F(DataPlaneTest, MeshCliListenKeepsItsDedupFileOwnerOnly) {
  StartBroker();
  auto bob_key = crypto::KeyPair::Generate();
  const std::string bob_key_file = KeyFile(bob_key);
  auto alice = Peer();
  ASSERT_THAT(alice->Send(bob_key.public_key, "m1"), HasStatus(SendAck::ACCEPTED));
  const mode_t umask_before = umask(022);  // mesh-cli inherits it
  auto result = CliListen(bob_key, bob_key_file, 1);
  umask(umask_before);
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.out.find("\"payload\":\"m1\""), std::string::npos) << result.out;
  struct stat st {};
  ASSERT_EQ(stat((bob_key_file + ".dedup").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_size, 56);  // the one message's record: from, id, time
}

TEST_F(DataPlaneTest, AThousandPeersAtOnce) {
  StartBroker({"--max-pending-handshakes-per-ip", "2000"});
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  limit.rlim_cur = limit.rlim_max;
  setrlimit(RLIMIT_NOFILE, &limit);
  ASSERT_GE(limit.rlim_cur, 1100u) << "the test needs 1,000 descriptors";

  // 1,000 sessions on the real client library, sharing one io_context thread.
  constexpr int kPeers = 1000;
  boost::asio::io_context io;
  std::vector<crypto::KeyPair> keys(kPeers);
  for (auto& key : keys) key = crypto::KeyPair::Generate();
  std::vector<std::shared_ptr<client::Session>> sessions;
  std::atomic<int> connected{0}, received{0}, accepted{0};
  for (int i = 0; i < kPeers; ++i) {
    client::SessionOptions options;
    options.brokers = {broker_->address()};
    options.key = &keys[i];
    auto session = client::Session::Create(io.get_executor(), options);
    session->OnState([&](bool up, const absl::Status&) {
      if (up) ++connected;
    });
    session->OnMessage([&, i](const client::Message& message) {
      // Each peer gets one message, from its neighbour.
      if (message.from == keys[(i + kPeers - 1) % kPeers].public_key) ++received;
    });
    ASSERT_TRUE(session->Start().ok());
    sessions.push_back(session);
  }
  std::thread runner([&] { io.run_for(60s); });
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (connected < kPeers && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(connected.load(), kPeers);
  for (int i = 0; i < kPeers; ++i) {
    sessions[i]->Send(keys[(i + 1) % kPeers].public_key, "hi", [&](const client::SendResult& r) {
      if (r.status == SendAck::ACCEPTED) ++accepted;
    });
  }
  while ((received < kPeers || accepted < kPeers) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(accepted.load(), kPeers);
  EXPECT_EQ(received.load(), kPeers);
  for (auto& session : sessions) session->Close();
  io.stop();
  runner.join();
}

}  // namespace
}  // namespace mesh::testing
