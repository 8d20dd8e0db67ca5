// What a member of the mesh may do (DESIGN §5, "Secrets and trust"), against real brokers:
//  - a member speaks only for its own sessions, with epochs not in the future, and a session a
//    false claim pushes out comes back (the client reconnects after REPLACED);
//  - where a mesh authority is configured, the cluster secret alone admits no one;
//  - a second broker with a node key already live (a cloned volume) is refused, never merged;
//  - presence forgets peers that left; a mesh at rest asks no placement questions.
// The misbehaving member is this test, holding the cluster secret and speaking the cluster
// protocol through the real peer::Link, as a compromised pod could.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/time/clock.h"
#include "tests/integration/broker_process.h"
#include "tests/integration/test_peers.h"

namespace mesh::testing {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

constexpr char kSecretHex[] = "5f0c7a1e9b3d2c4a6e8f1b3d5c7a9e0f2b4d6c8a0e1f3b5d7c9a2e4f6b8d0c1a";

uint64_t WallMs() { return static_cast<uint64_t>(absl::ToUnixMillis(absl::Now())); }

// Holds the cluster secret and speaks the cluster protocol over one real link.
class ClusterSpeaker {
 public:
  explicit ClusterSpeaker(crypto::KeyPair key = crypto::KeyPair::Generate())
      : key_(std::move(key)),
        secret_([] {
          const std::string bytes = absl::HexStringToBytes(kSecretHex);
          return crypto::Secret<crypto::kKeySize>(
              {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
        }()),
        work_(asio::make_work_guard(io_)),
        thread_([this] { io_.run(); }) {}

  ~ClusterSpeaker() {
    asio::post(io_, [this] {
      if (link_) link_->Close(absl::OkStatus());
    });
    WaitEnded();
    work_.reset();
    io_.stop();
    thread_.join();
  }

  // Dials the cluster port, sends `hello` and waits for the broker's hello (true) or the end of
  // the link (false).
  bool Join(uint16_t port, mesh::v1::ClusterHello hello) {
    hello.set_version(mesh::v1::CLUSTER_VERSION_1);
    asio::co_spawn(io_, Run(port, std::move(hello)), asio::detached);
    std::unique_lock lock(mu_);
    changed_.wait_for(lock, kTestDeadline, [&] { return broker_hello_.has_value() || ended_; });
    return broker_hello_.has_value() && !ended_;
  }

  void Send(mesh::v1::ClusterFrame frame) {
    asio::post(io_, [this, frame = std::move(frame)] {
      if (link_) link_->Send(frame);
    });
  }

  // A probe and its reply: the broker has handled every frame sent before it.
  bool Sync() {
    const uint64_t nonce = ++next_nonce_;
    mesh::v1::ClusterFrame probe;
    probe.mutable_probe()->set_nonce(nonce);
    Send(std::move(probe));
    std::unique_lock lock(mu_);
    return changed_.wait_for(lock, kTestDeadline, [&] { return replied_ >= nonce || ended_; }) &&
           replied_ >= nonce;
  }

  // How the link ended (the broker's Error says why), once it has.
  std::optional<absl::Status> WaitEnded() {
    std::unique_lock lock(mu_);
    if (!changed_.wait_for(lock, kTestDeadline, [&] { return ended_; })) return std::nullopt;
    return end_status_;
  }

  std::optional<mesh::v1::ClusterHello> broker_hello() {
    std::lock_guard lock(mu_);
    return broker_hello_;
  }
  const crypto::PeerId& id() const { return key_.public_key; }
  const crypto::PeerId& broker_id() const { return broker_id_; }

 private:
  asio::awaitable<void> Run(uint16_t port, mesh::v1::ClusterHello hello) {
    asio::ip::tcp::socket socket(io_);
    boost::system::error_code ec;
    co_await socket.async_connect({asio::ip::make_address("127.0.0.1"), port},
                                  asio::redirect_error(asio::use_awaitable, ec));
    absl::Status status = absl::UnavailableError(ec.message());
    if (!ec) {
      peer::LinkConfig config;
      config.psk = &secret_;
      mesh::v1::Hello link_hello;
      link_hello.set_protocol_version(peer::kProtocolVersion);
      auto link = co_await peer::Link::Connect(std::move(socket), key_, link_hello,
                                               crypto::CipherSuite::kChaChaPoly, config, stats_,
                                               peer::LinkKind::kCluster);
      status = link.status();
      if (link.ok()) {
        link_ = *link;
        broker_id_ = link_->remote_id();
        mesh::v1::ClusterFrame frame;
        *frame.mutable_hello() = std::move(hello);
        link_->Send(frame);
        status = co_await link_->RunCluster([this](mesh::v1::ClusterFrame& frame) {
          std::lock_guard lock(mu_);
          if (frame.has_hello()) broker_hello_ = frame.hello();
          if (frame.has_probe_reply()) replied_ = std::max(replied_, frame.probe_reply().nonce());
          changed_.notify_all();
          return absl::OkStatus();
        });
      }
    }
    std::lock_guard lock(mu_);
    ended_ = true;
    end_status_ = status;
    changed_.notify_all();
  }

  crypto::KeyPair key_;
  crypto::Secret<crypto::kKeySize> secret_;
  peer::LinkStats stats_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::shared_ptr<peer::Link> link_;  // on io_'s thread
  crypto::PeerId broker_id_;
  std::atomic<uint64_t> next_nonce_{0};
  std::mutex mu_;
  std::condition_variable changed_;
  std::optional<mesh::v1::ClusterHello> broker_hello_;
  uint64_t replied_ = 0;
  bool ended_ = false;
  absl::Status end_status_;
  std::thread thread_;  // last: it runs io_, which uses everything above
};

mesh::v1::ClusterFrame PresenceOf(const crypto::PeerId& peer, const std::string& node,
                                  uint64_t epoch_ms) {
  mesh::v1::ClusterFrame frame;
  auto* entry = frame.mutable_presence()->add_entries();
  entry->set_peer(Raw(peer));
  entry->set_node(node);
  entry->set_epoch_ms(epoch_ms);
  entry->set_connected(true);
  return frame;
}

// Until the broker has attached the peer's session: a client whose handshake is done may not be
// attached yet, and an announcement made meanwhile would race its arrival.
bool WaitAttached(const BrokerProcess& broker, const crypto::PeerId& peer) {
  const auto deadline = std::chrono::steady_clock::now() + kTestDeadline;
  while (std::chrono::steady_clock::now() < deadline) {
    if (broker.ApiGet("/api/v1/peers/" + peer.ToString()).find("\"connected\":true") !=
        std::string::npos) {
      return true;
    }
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

class MeshTrustTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(crypto::Init().ok());
    dir_ = std::filesystem::temp_directory_path() /
           ("mesh-trust-" + std::to_string(getpid()) + "-" + std::to_string(rand()));
    std::filesystem::create_directories(dir_);
    secret_ = dir_ / "cluster.secret";
    std::ofstream(secret_) << kSecretHex << "\n";
    std::filesystem::permissions(secret_, std::filesystem::perms::owner_read);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::vector<std::string> MeshArgs(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--listen-cluster", "127.0.0.1:0", "--cluster-secret-file",
                                     secret_.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }

  // A data dir (0700) holding `key` as its node key.
  std::string DataDirWithKey(const std::string& name, const crypto::KeyPair& key) {
    const std::string dir = (dir_ / name).string();
    std::filesystem::create_directories(dir);
    ::chmod(dir.c_str(), 0700);
    EXPECT_TRUE(crypto::WriteKeyFile(dir + "/node.key", key).ok());
    return dir;
  }

  std::filesystem::path dir_;
  std::filesystem::path secret_;
};

TEST_F(MeshTrustTest, AMemberCannotAnnounceAnotherNodesSessionsOrAnEpochInTheFuture) {
  BrokerProcess broker(MeshArgs());
  ASSERT_TRUE(broker.started()) << broker.Log();
  LibraryPeer victim({broker.address()});
  ASSERT_TRUE(victim.WaitConnected());
  ASSERT_TRUE(WaitAttached(broker, victim.id())) << broker.Log();

  ClusterSpeaker forger;
  ASSERT_TRUE(forger.Join(broker.ListenerPort("cluster"), {}));
  const std::string forger_node = Raw(forger.id());
  forger.Send(PresenceOf(victim.id(), forger_node, std::numeric_limits<uint64_t>::max()));
  forger.Send(PresenceOf(victim.id(), forger_node, WallMs() + 3'600'000));
  // "The victim is on another member": not the forger's to say.
  forger.Send(PresenceOf(victim.id(), Raw(crypto::KeyPair::Generate().public_key), WallMs() + 1));
  ASSERT_TRUE(forger.Sync()) << broker.Log();

  EXPECT_EQ(broker.Metric("mesh_presence_refused_total"), 3);
  EXPECT_TRUE(broker.WaitForLogLine({"presence_refused"}));
  EXPECT_NE(broker.ApiGet("/api/v1/peers/" + victim.id().ToString()).find("\"connected\":true"),
            std::string::npos)
      << "the victim's session was left alone";
  LibraryPeer alice({broker.address()});
  ASSERT_TRUE(alice.Send(victim.id(), "still yours").ok());
  auto messages = victim.WaitForMessages(1);
  ASSERT_EQ(messages.size(), 1u) << broker.Log();
  EXPECT_EQ(messages[0].payload, "still yours");
}

TEST_F(MeshTrustTest, ASessionAFalseClaimPushesOutComesBackAndGetsItsMail) {
  BrokerProcess broker(MeshArgs());
  ASSERT_TRUE(broker.started()) << broker.Log();
  LibraryPeer victim({broker.address()}, crypto::KeyPair::Generate(),
                     [&](client::SessionOptions& options) { options.replaced_retry = 200ms; });
  ASSERT_TRUE(victim.WaitConnected());
  ASSERT_TRUE(WaitAttached(broker, victim.id())) << broker.Log();

  // Within the rules (its own node, an epoch of now): the broker believes it and closes the
  // victim's session with REPLACED. The client comes back, with an epoch above the claim.
  ClusterSpeaker forger;
  ASSERT_TRUE(forger.Join(broker.ListenerPort("cluster"), {}));
  forger.Send(PresenceOf(victim.id(), Raw(forger.id()), WallMs() + 1));
  ASSERT_TRUE(forger.Sync());

  // A second session of the victim's (the only peer so far) proves it was pushed out and came
  // back; the broker then places it here again, not at the forger.
  const std::string path = "/api/v1/peers/" + victim.id().ToString();
  const std::string forger_id = forger.id().ToString();
  const auto deadline = std::chrono::steady_clock::now() + kTestDeadline;
  std::string view;
  while (std::chrono::steady_clock::now() < deadline) {
    view = broker.ApiGet(path);
    if (broker.Metric("mesh_peers_total") >= 2 &&
        view.find("\"connected\":true") != std::string::npos &&
        view.find(forger_id) == std::string::npos) {
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(broker.Metric("mesh_peers_total"), 2) << broker.Log();
  ASSERT_NE(view.find("\"connected\":true"), std::string::npos)
      << "the victim's client did not come back: " << view << broker.Log();
  ASSERT_EQ(view.find(forger_id), std::string::npos) << view;
  LibraryPeer alice({broker.address()});
  ASSERT_TRUE(alice.Send(victim.id(), "after the blip").ok());
  auto messages = victim.WaitForMessages(1);
  ASSERT_EQ(messages.size(), 1u) << broker.Log();
  EXPECT_EQ(messages[0].payload, "after the blip");
}

TEST_F(MeshTrustTest, WithAnAuthorityTheClusterSecretAloneAdmitsNoOne) {
  const auto authority = crypto::AuthorityKeyPair::Generate();
  const int64_t expiry = absl::ToUnixSeconds(absl::Now()) + 86'400;
  const auto node_key = crypto::KeyPair::Generate();
  const std::string data_dir = DataDirWithKey("certified", node_key);
  const std::string cert_file = (dir_ / "node.cert").string();
  ASSERT_TRUE(crypto::WriteNodeCertificateFile(
                  cert_file, crypto::IssueNodeCertificate(authority, node_key.public_key, expiry))
                  .ok());
  const std::string authority_text = authority.public_key.ToString();

  // An authority without a certificate of its own: members would refuse it, so it does not start.
  BrokerProcess uncertified(MeshArgs({"--mesh-authority", authority_text}));
  EXPECT_FALSE(uncertified.started());
  EXPECT_NE(uncertified.Log().find("--node-cert-file"), std::string::npos) << uncertified.Log();

  BrokerProcess broker(
      MeshArgs({"--mesh-authority", authority_text, "--node-cert-file", cert_file}), data_dir);
  ASSERT_TRUE(broker.started()) << broker.Log();
  const uint16_t port = broker.ListenerPort("cluster");

  {  // the secret and no certificate
    ClusterSpeaker member;
    member.Join(port, {});  // the broker's hello comes first; then it reads ours
    EXPECT_FALSE(member.Sync());
    auto ended = member.WaitEnded();
    ASSERT_TRUE(ended.has_value());
    EXPECT_NE(ended->message().find("not_certified"), std::string::npos) << *ended;
  }
  {  // the secret and another node's certificate (copied from the broker)
    ClusterSpeaker member;
    mesh::v1::ClusterHello hello;
    hello.set_node_cert(crypto::IssueNodeCertificate(authority, node_key.public_key, expiry).data(),
                        crypto::kNodeCertificateSize);
    member.Join(port, hello);
    EXPECT_FALSE(member.Sync());
    auto ended = member.WaitEnded();
    ASSERT_TRUE(ended.has_value());
    EXPECT_NE(ended->message().find("not_certified"), std::string::npos) << *ended;
  }
  EXPECT_EQ(broker.Metric("mesh_cluster_handshake_failures_total{reason=\"not_certified\"}"), 2);
  {  // a certificate by the authority for its own key: a member; and the broker shows its own
    ClusterSpeaker member;
    const crypto::Bytes cert = crypto::IssueNodeCertificate(authority, member.id(), expiry);
    mesh::v1::ClusterHello hello;
    hello.set_node_cert(cert.data(), cert.size());
    ASSERT_TRUE(member.Join(port, hello)) << broker.Log();
    EXPECT_TRUE(member.Sync());
    const std::string theirs = member.broker_hello()->node_cert();
    EXPECT_EQ(theirs.size(), crypto::kNodeCertificateSize);
    EXPECT_TRUE(crypto::VerifyNodeCertificate(
                    {reinterpret_cast<const uint8_t*>(theirs.data()), theirs.size()},
                    authority.public_key, member.broker_id(), absl::ToUnixSeconds(absl::Now()))
                    .ok());
  }
}

TEST_F(MeshTrustTest, ABrokerWithANodeKeyAlreadyLiveIsRefusedNotMerged) {
  const auto key = crypto::KeyPair::Generate();
  BrokerProcess original(MeshArgs(), DataDirWithKey("original", key));
  ASSERT_TRUE(original.started()) << original.Log();
  const std::string original_cluster =
      "127.0.0.1:" + std::to_string(original.ListenerPort("cluster"));
  BrokerProcess third(MeshArgs({"--cluster-peers", original_cluster}));
  ASSERT_TRUE(third.started()) << third.Log();
  ASSERT_TRUE(third.WaitForLogLine({"member_joined"})) << third.Log();
  const std::string third_cluster = "127.0.0.1:" + std::to_string(third.ListenerPort("cluster"));

  // A copy of the original's volume: the same node.key, another process.
  BrokerProcess clone(MeshArgs({"--cluster-peers", original_cluster + "," + third_cluster}),
                      DataDirWithKey("clone", key));
  ASSERT_TRUE(clone.started()) << clone.Log();
  EXPECT_TRUE(original.WaitForLogLine({"duplicate_node_id"})) << original.Log();
  EXPECT_TRUE(third.WaitForLogLine({"duplicate_node_id"})) << third.Log();
  EXPECT_TRUE(clone.WaitForLogLine({"duplicate_node_id"})) << clone.Log();
  // The third broker still knows the node at the original's address, once.
  const std::string members = third.ApiGet("/api/v1/members");
  const std::string id = key.public_key.ToString();
  const size_t at = members.find(id);
  ASSERT_NE(at, std::string::npos) << members;
  EXPECT_EQ(members.find(id, at + 1), std::string::npos) << members;
  EXPECT_NE(members.find(original_cluster), std::string::npos) << members;
  EXPECT_EQ(members.find("127.0.0.1:" + std::to_string(clone.ListenerPort("cluster"))),
            std::string::npos)
      << members;
}

TEST_F(MeshTrustTest, PresenceForgetsPeersThatLeftAfterTheGrace) {
  const std::vector<std::string> grace = {"--presence-grace-ms", "1000", "--presence-max-skew-ms",
                                          "500"};
  BrokerProcess b0(MeshArgs(grace));
  ASSERT_TRUE(b0.started()) << b0.Log();
  auto args = MeshArgs(grace);
  args.push_back("--cluster-peers");
  args.push_back("127.0.0.1:" + std::to_string(b0.ListenerPort("cluster")));
  BrokerProcess b1(args);
  ASSERT_TRUE(b1.started()) << b1.Log();
  ASSERT_TRUE(b1.WaitForLogLine({"member_joined"})) << b1.Log();

  constexpr int kKeys = 50;
  for (int i = 0; i < kKeys; ++i) {
    FramePeer peer(b0.port());
    ASSERT_TRUE(peer.Connect());
    ASSERT_TRUE(peer.Sync());
  }
  // b1 heard of them (as connected, then as tombstones), and both forget them.
  auto wait_for = [](const BrokerProcess& broker, auto done) {
    const auto deadline = std::chrono::steady_clock::now() + kTestDeadline;
    double value = broker.Metric("mesh_presence_entries");
    while (!done(value) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(50ms);
      value = broker.Metric("mesh_presence_entries");
    }
    return value;
  };
  EXPECT_GT(wait_for(b1, [](double v) { return v > 0; }), 0) << b1.Log();
  EXPECT_EQ(wait_for(b1, [](double v) { return v == 0; }), 0) << b1.Log();
  EXPECT_EQ(wait_for(b0, [](double v) { return v == 0; }), 0) << b0.Log();
  EXPECT_EQ(b0.Metric("mesh_presence_peers"), 0);
}

TEST_F(MeshTrustTest, AMeshAtRestAsksNoPlacementQuestions) {
  BrokerProcess b0(MeshArgs());
  ASSERT_TRUE(b0.started()) << b0.Log();
  auto args = MeshArgs();
  args.push_back("--cluster-peers");
  args.push_back("127.0.0.1:" + std::to_string(b0.ListenerPort("cluster")));
  BrokerProcess b1(args);
  ASSERT_TRUE(b1.started()) << b1.Log();
  ASSERT_TRUE(b0.WaitForLogLine({"member_joined"})) << b0.Log();

  // Mail for 200 offline peers: about half homed at each broker.
  FramePeer alice(b0.port());
  ASSERT_TRUE(alice.Connect());
  for (int i = 0; i < 200; ++i) {
    auto ack = alice.Send(crypto::KeyPair::Generate().public_key, "at rest");
    ASSERT_TRUE(ack && ack->status() == mesh::v1::SendAck::ACCEPTED);
  }
  // Settled: what is homed at b1 went there.
  const auto deadline = std::chrono::steady_clock::now() + kTestDeadline;
  while (b0.Metric("mesh_outbox_messages") != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(b0.Metric("mesh_outbox_messages"), 0) << b0.Log();
  ASSERT_GT(b1.Metric("mesh_messages_queue_size"), 0) << b1.Log();

  // Over three probe intervals (the cluster's tick), mailboxes at rest cost no question.
  const double b0_before = b0.Metric("mesh_placement_queries_total");
  const double b1_before = b1.Metric("mesh_placement_queries_total");
  ASSERT_GT(b0_before, 0) << "placing the mail asked questions";
  ASSERT_GE(b1_before, 0);
  std::this_thread::sleep_for(3500ms);
  EXPECT_EQ(b0.Metric("mesh_placement_queries_total"), b0_before);
  EXPECT_EQ(b1.Metric("mesh_placement_queries_total"), b1_before);
}

}  // namespace
}  // namespace mesh::testing
