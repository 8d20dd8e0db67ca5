// The secure peer link against the running mesh-broker binary: handshakes over both suites,
// heartbeats, clean stops, and every kind of bad input of DESIGN §3. Each bad input must end in
// a clear error (an Error frame where the link is up, a log line and a counter always), a closed
// connection, and a broker that goes on serving other links.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "client/client.h"
#include "peer/proxy_protocol.h"
#include "peer/wire.h"
#include "tests/integration/broker_process.h"
#include "tests/integration/raw_peer.h"

namespace mesh::testing {
namespace {

using namespace std::chrono_literals;
using crypto::CipherSuite;

class PeerLinkTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(crypto::Init().ok()); }

  void StartBroker(std::vector<std::string> args = {}, std::string data_dir = "") {
    broker_ = std::make_unique<BrokerProcess>(std::move(args), std::move(data_dir));
    ASSERT_TRUE(broker_->started()) << broker_->Log();
  }

  absl::StatusOr<client::PingResult> PingBroker(std::optional<CipherSuite> suite = std::nullopt) {
    client::ConnectOptions options;
    options.address = broker_->address();
    options.key = &client_key_;
    options.suite = suite;
    options.agent = "peer-link-test";
    return client::Ping(options, 2, kTestDeadline);
  }

  // A real client completes a handshake and two pings: the broker still serves.
  void ExpectServes() {
    auto result = PingBroker();
    ASSERT_TRUE(result.ok()) << result.status() << "\n" << broker_->Log();
    EXPECT_EQ(result->round_trips.size(), 2u);
  }

  // The violation was logged with its reason while the broker ran, and counted: the count
  // appears in the stats the broker logs when it stops (with exit code 0).
  void ExpectLoggedAndCounted(const std::string& reason) {
    EXPECT_TRUE(broker_->WaitForLogLine({"\"reason\":\"" + reason + "\""})) << broker_->Log();
    ASSERT_EQ(broker_->Stop(SIGTERM), 0) << broker_->Log();
    EXPECT_GE(broker_->FailureCount(reason), 1u) << broker_->Log();
  }

  // Sends a preamble with one byte changed and returns the broker's 8-byte answer, if any.
  std::optional<crypto::Bytes> SendPreamble(size_t index, uint8_t value, RawConnection& conn) {
    peer::Preamble preamble = peer::EncodePreamble(CipherSuite::kAesGcm, peer::LinkKind::kPeer);
    preamble[index] = value;
    EXPECT_TRUE(conn.Write(preamble));
    return conn.Read(peer::kPreambleSize);
  }

  void ExpectRefusal(size_t index, uint8_t value, peer::RefusalReason reason) {
    RawConnection conn(broker_->port());
    auto answer = SendPreamble(index, value, conn);
    ASSERT_TRUE(answer.has_value());
    auto refusal = peer::ParseRefusal(*answer);
    ASSERT_TRUE(refusal.has_value());
    EXPECT_EQ(refusal->reason, reason);
    EXPECT_EQ(refusal->suites, peer::SpokenSuites());
    EXPECT_TRUE(conn.WaitClosed());
  }

  // Completes a handshake by hand and returns the connection for the test to misbehave on.
  std::unique_ptr<RawConnection> EstablishRaw(RawNoiseClient& raw) {
    auto conn = std::make_unique<RawConnection>(broker_->port());
    EXPECT_TRUE(conn->connected());
    auto status = raw.Handshake(*conn);
    EXPECT_TRUE(status.ok()) << status;
    return conn;
  }

  void ExpectErrorFrameThenClose(RawNoiseClient& raw, RawConnection& conn,
                                 mesh::v1::ErrorCode code) {
    auto frame = raw.ReadFrame(conn);
    ASSERT_TRUE(frame.has_value()) << broker_->Log();
    ASSERT_TRUE(frame->has_error()) << frame->DebugString();
    EXPECT_EQ(frame->error().code(), code) << frame->error().message();
    EXPECT_FALSE(frame->error().message().empty());
    EXPECT_TRUE(conn.WaitClosed());
  }

  crypto::KeyPair client_key_ = crypto::KeyPair::Generate();
  std::unique_ptr<BrokerProcess> broker_;
};

TEST_F(PeerLinkTest, HandshakesOverBothSuitesAndAnswersPing) {
  StartBroker();
  auto node_key = crypto::LoadKeyFile(broker_->data_dir() + "/node.key");
  ASSERT_TRUE(node_key.ok()) << node_key.status();
  for (CipherSuite suite : {CipherSuite::kAesGcm, CipherSuite::kChaChaPoly}) {
    if (!crypto::SuiteAvailable(suite)) continue;
    auto result = PingBroker(suite);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->broker_id, node_key->public_key) << "the broker proves its node key";
    EXPECT_EQ(result->suite, suite);
    EXPECT_EQ(result->round_trips.size(), 2u);
  }
  EXPECT_TRUE(broker_->WaitForLogLine(
      {"\"event\":\"link_up\"", client_key_.public_key.ToString(), "peer-link-test"}));
  EXPECT_EQ(broker_->Stop(SIGTERM), 0);
}

TEST_F(PeerLinkTest, BrokerHelloAnnouncesLimits) {
  StartBroker({"--max-payload", "4096", "--heartbeat-interval-ms", "7000"});
  RawNoiseClient raw;
  auto conn = EstablishRaw(raw);
  EXPECT_EQ(raw.broker_hello().protocol_version(), peer::kProtocolVersion);
  EXPECT_EQ(raw.broker_hello().limits().max_payload(), 4096u);
  EXPECT_EQ(raw.broker_hello().limits().heartbeat_interval_ms(), 7000u);
  EXPECT_GT(raw.broker_hello().limits().dedup_window_s(), 0u);
  EXPECT_FALSE(raw.broker_hello().node_name().empty());
}

TEST_F(PeerLinkTest, NodeKeyIsCreatedOnceAndKeptAcrossRestarts) {
  char tmpl[] = "/tmp/mesh-data-XXXXXX";
  std::string data_dir = std::string(mkdtemp(tmpl)) + "/data";
  StartBroker({}, data_dir);
  auto first = PingBroker();
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(broker_->Stop(SIGTERM), 0);
  struct stat st {};
  ASSERT_EQ(stat((data_dir + "/node.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  StartBroker({}, data_dir);
  auto second = PingBroker();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(first->broker_id, second->broker_id);
  EXPECT_EQ(broker_->Stop(SIGINT), 0);
  std::filesystem::remove_all(std::filesystem::path(data_dir).parent_path());
}

TEST_F(PeerLinkTest, RefusesToStartWithWorldReadableNodeKey) {
  char tmpl[] = "/tmp/mesh-data-XXXXXX";
  std::string data_dir = mkdtemp(tmpl);
  ASSERT_TRUE(crypto::WriteKeyFile(data_dir + "/node.key", crypto::KeyPair::Generate()).ok());
  chmod((data_dir + "/node.key").c_str(), 0644);
  BrokerProcess broker({}, data_dir);
  EXPECT_FALSE(broker.started());
  EXPECT_EQ(broker.early_exit_code(), 1);
  EXPECT_NE(broker.Log().find("chmod 600"), std::string::npos) << broker.Log();
  std::filesystem::remove_all(data_dir);
}

TEST_F(PeerLinkTest, StopsCleanlyWithGoAwayToOpenLinks) {
  for (int signal : {SIGTERM, SIGINT}) {
    StartBroker();
    RawNoiseClient raw;
    auto conn = EstablishRaw(raw);
    ExpectServes();
    ASSERT_EQ(broker_->Stop(signal), 0) << broker_->Log();
    auto frame = raw.ReadFrame(*conn);
    ASSERT_TRUE(frame.has_value());
    ASSERT_TRUE(frame->has_go_away());
    // SIGTERM drains (a broker alone keeps its mailboxes on disk), SIGINT stops at once.
    EXPECT_EQ(frame->go_away().reason(),
              signal == SIGTERM ? mesh::v1::GoAway::DRAINING : mesh::v1::GoAway::SHUTTING_DOWN);
    EXPECT_TRUE(conn->WaitClosed());
  }
}

TEST_F(PeerLinkTest, RejectsGarbagePreamble) {
  StartBroker();
  RawConnection conn(broker_->port());
  ASSERT_TRUE(conn.Write(std::string("GET / HTTP/1.1\r\nHost: mesh\r\n\r\n")));
  EXPECT_TRUE(conn.WaitClosed());
  ExpectServes();
  ExpectLoggedAndCounted("bad_preamble");
}

TEST_F(PeerLinkTest, RefusesUnknownVersionWithReason) {
  StartBroker();
  ExpectRefusal(4, 9, peer::RefusalReason::kVersion);
  ExpectServes();
  ExpectLoggedAndCounted("unsupported_version");
}

TEST_F(PeerLinkTest, RefusesUnknownSuiteWithReason) {
  StartBroker();
  ExpectRefusal(5, 7, peer::RefusalReason::kSuite);
  ExpectServes();
  ExpectLoggedAndCounted("unsupported_suite");
}

TEST_F(PeerLinkTest, RefusesClusterLinkKindOnPeerPort) {
  StartBroker();
  ExpectRefusal(6, static_cast<uint8_t>(peer::LinkKind::kCluster), peer::RefusalReason::kLinkKind);
  ExpectServes();
  ExpectLoggedAndCounted("wrong_link_kind");
}

TEST_F(PeerLinkTest, ClosesTruncatedHandshake) {
  StartBroker();
  RawConnection conn(broker_->port());
  peer::Preamble preamble = peer::EncodePreamble(CipherSuite::kAesGcm, peer::LinkKind::kPeer);
  ASSERT_TRUE(conn.Write(preamble));
  ASSERT_TRUE(conn.Write(crypto::Bytes{0, 32, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));  // 10 of 32 bytes
  conn.ShutdownWrite();
  EXPECT_TRUE(conn.WaitClosed());
  ExpectServes();
  ExpectLoggedAndCounted("truncated");
}

TEST_F(PeerLinkTest, RefusesHandshakeLengthPrefixOverLimit) {
  StartBroker();
  RawConnection conn(broker_->port());
  ASSERT_TRUE(conn.Write(peer::EncodePreamble(CipherSuite::kAesGcm, peer::LinkKind::kPeer)));
  ASSERT_TRUE(conn.Write(crypto::Bytes{0xff, 0xff}));
  EXPECT_TRUE(conn.WaitClosed());
  ExpectServes();
  ExpectLoggedAndCounted("handshake_too_large");
}

TEST_F(PeerLinkTest, FlippedByteInEachHandshakeMessageFailsTheHandshake) {
  StartBroker();
  for (int message : {1, 2, 3}) {
    for (size_t byte : {size_t{0}, size_t{17}, size_t{40}, ~size_t{0}}) {
      SCOPED_TRACE("message " + std::to_string(message) + " byte " + std::to_string(byte));
      RawConnection conn(broker_->port());
      RawNoiseClient raw;
      // byte ~0 wraps to the message's last byte.
      Tamper tamper{message, byte == ~size_t{0} ? size_t{1023} : byte};
      absl::Status status = raw.Handshake(conn, CipherSuite::kAesGcm, tamper);
      if (message == 3) {
        // Only the broker can notice message 3: it must close without a word.
        EXPECT_TRUE(status.ok()) << status;
        EXPECT_TRUE(conn.WaitClosed());
      } else {
        // Message 2 authenticates the whole transcript, so this side notices either flip.
        EXPECT_FALSE(status.ok());
      }
    }
  }
  ExpectServes();
  ExpectLoggedAndCounted("handshake_failed");
}

TEST_F(PeerLinkTest, RecordThatFailsToDecryptGetsErrorFrame) {
  StartBroker();
  RawNoiseClient raw;
  auto conn = EstablishRaw(raw);
  crypto::Bytes forged = {0, 40};
  forged.resize(42, 0xab);
  ASSERT_TRUE(conn->Write(forged));
  ExpectErrorFrameThenClose(raw, *conn, mesh::v1::DECRYPT_FAILED);
  ExpectServes();
  ExpectLoggedAndCounted("decrypt_failed");
}

TEST_F(PeerLinkTest, FrameOverMaximumGetsErrorFrame) {
  StartBroker({"--max-payload", "1024"});  // max frame: 1024 + 4096 bytes
  RawNoiseClient raw;
  auto conn = EstablishRaw(raw);
  crypto::Bytes chunk(1 + 4000, 0x42);
  chunk[0] = 0;  // not FIN
  ASSERT_TRUE(raw.SendRecord(*conn, chunk));
  ASSERT_TRUE(raw.SendRecord(*conn, chunk));
  ExpectErrorFrameThenClose(raw, *conn, mesh::v1::FRAME_TOO_LARGE);
  ExpectServes();
  ExpectLoggedAndCounted("frame_too_large");
}

TEST_F(PeerLinkTest, MalformedFrameGetsErrorFrame) {
  StartBroker();
  RawNoiseClient raw;
  auto conn = EstablishRaw(raw);
  ASSERT_TRUE(raw.SendRecord(*conn, crypto::Bytes{peer::kFlagFin, 0xff, 0xff, 0xff, 0xff}));
  ExpectErrorFrameThenClose(raw, *conn, mesh::v1::MALFORMED_FRAME);
  ExpectServes();
  ExpectLoggedAndCounted("malformed_frame");
}

TEST_F(PeerLinkTest, UnknownRecordFlagsGetErrorFrame) {
  StartBroker();
  RawNoiseClient raw;
  auto conn = EstablishRaw(raw);
  ASSERT_TRUE(raw.SendRecord(*conn, crypto::Bytes{0x80, 0x32, 0x00}));
  ExpectErrorFrameThenClose(raw, *conn, mesh::v1::BAD_RECORD);
  ExpectLoggedAndCounted("bad_record");
}

// A peer may pack frames into one record (the broker's Hello says it reads them): two Pings
// in one record get their Pongs in order. This raw peer's Hello does not offer packed records,
// so the broker answers it unpacked (ReadFrame reads only plain records).
TEST_F(PeerLinkTest, PackedRecordFromAPeerIsReadFrameByFrame) {
  StartBroker();
  RawNoiseClient raw;
  auto conn = EstablishRaw(raw);
  ASSERT_TRUE(raw.broker_hello().packed_records());
  crypto::Bytes record{peer::kFlagFin | peer::kFlagPacked};
  for (uint64_t nonce : {7, 8}) {
    mesh::v1::Frame ping;
    ping.mutable_ping()->set_nonce(nonce);
    const std::string bytes = ping.SerializeAsString();
    record.push_back(0);
    record.push_back(static_cast<uint8_t>(bytes.size()));
    record.insert(record.end(), bytes.begin(), bytes.end());
  }
  ASSERT_TRUE(raw.SendRecord(*conn, record));
  for (uint64_t nonce : {7, 8}) {
    auto pong = raw.ReadFrame(*conn, /*answer_pings=*/false);
    ASSERT_TRUE(pong.has_value()) << broker_->Log();
    EXPECT_EQ(pong->pong().nonce(), nonce);
  }
}

TEST_F(PeerLinkTest, PackedRecordRunningPastItsEndGetsErrorFrame) {
  StartBroker();
  RawNoiseClient raw;
  auto conn = EstablishRaw(raw);
  ASSERT_TRUE(raw.SendRecord(*conn, crypto::Bytes{peer::kFlagFin | peer::kFlagPacked, 0, 9, 0x32}));
  ExpectErrorFrameThenClose(raw, *conn, mesh::v1::BAD_RECORD);
  ExpectServes();
  ExpectLoggedAndCounted("bad_record");
}

TEST_F(PeerLinkTest, FrameInTheWrongDirectionGetsErrorFrame) {
  StartBroker();
  RawNoiseClient raw;
  auto conn = EstablishRaw(raw);
  mesh::v1::Frame deliver;
  deliver.mutable_deliver()->set_seq(1);
  ASSERT_TRUE(raw.SendFrame(*conn, deliver));
  ExpectErrorFrameThenClose(raw, *conn, mesh::v1::UNEXPECTED_FRAME);
  ExpectLoggedAndCounted("unexpected_frame");
}

TEST_F(PeerLinkTest, DripFeedingTheHandshakeHitsItsDeadlineWhileOthersAreServed) {
  StartBroker({"--handshake-timeout-ms", "2000"});
  RawConnection conn(broker_->port());
  const peer::Preamble preamble = peer::EncodePreamble(CipherSuite::kAesGcm, peer::LinkKind::kPeer);
  std::atomic<bool> closed{false};
  std::thread drip([&] {
    for (size_t i = 0; i < preamble.size() && !closed; ++i) {
      if (!conn.Write(crypto::ByteSpan(&preamble[i], 1))) break;
      std::this_thread::sleep_for(1s);
    }
  });
  ExpectServes();  // while the drip is in progress
  EXPECT_TRUE(conn.WaitClosed());
  closed = true;
  drip.join();
  ExpectLoggedAndCounted("handshake_timeout");
}

TEST_F(PeerLinkTest, DripFeedingAFrameHitsTheFrameDeadline) {
  StartBroker({"--frame-timeout-ms", "2000"});
  RawNoiseClient raw;
  auto conn = EstablishRaw(raw);
  std::atomic<bool> stop{false};
  std::thread drip([&] {
    const uint8_t bytes[] = {0x01, 0x00, 0x00, 0x00, 0x00, 0x00};
    for (uint8_t b : bytes) {
      if (stop || !conn->Write(crypto::ByteSpan(&b, 1))) break;
      std::this_thread::sleep_for(1s);
    }
  });
  ExpectErrorFrameThenClose(raw, *conn, mesh::v1::FRAME_TIMEOUT);
  stop = true;
  drip.join();
  ExpectServes();
  ExpectLoggedAndCounted("frame_timeout");
}

TEST_F(PeerLinkTest, SilentPeerIsClosedAfterThreeMissedHeartbeats) {
  StartBroker({"--heartbeat-interval-ms", "300"});
  RawNoiseClient raw;
  auto conn = EstablishRaw(raw);
  EXPECT_TRUE(conn->WaitClosed());  // never answers the broker's Pings
  ExpectLoggedAndCounted("heartbeat_timeout");
}

TEST_F(PeerLinkTest, PeerThatAnswersPingsStaysUp) {
  StartBroker({"--heartbeat-interval-ms", "200"});
  RawNoiseClient raw;
  auto conn = EstablishRaw(raw);
  // Answer the broker's Pings for well over three intervals; then it must still answer ours.
  const auto until = std::chrono::steady_clock::now() + 1500ms;
  while (std::chrono::steady_clock::now() < until) {
    raw.ReadFrame(*conn, /*answer_pings=*/true, 100ms);
  }
  mesh::v1::Frame ping;
  ping.mutable_ping()->set_nonce(77);
  ASSERT_TRUE(raw.SendFrame(*conn, ping));
  auto pong = raw.ReadFrame(*conn);
  ASSERT_TRUE(pong.has_value());
  ASSERT_TRUE(pong->has_pong());
  EXPECT_EQ(pong->pong().nonce(), 77u);
}

TEST_F(PeerLinkTest, CapsPendingHandshakesPerAddress) {
  StartBroker({"--max-pending-handshakes-per-ip", "4"});
  std::vector<std::unique_ptr<RawConnection>> idle;
  for (int i = 0; i < 4; ++i) {
    idle.push_back(std::make_unique<RawConnection>(broker_->port()));
    ASSERT_TRUE(idle.back()->Write(crypto::Bytes{'M'}));  // a handshake begun, never finished
  }
  RawConnection refused(broker_->port());
  EXPECT_TRUE(refused.WaitClosed());
  EXPECT_TRUE(broker_->WaitForLogLine({"\"reason\":\"overloaded\""}));
  idle.clear();  // frees the slots
  const auto deadline = std::chrono::steady_clock::now() + kTestDeadline;
  absl::StatusOr<client::PingResult> result = absl::UnknownError("not tried");
  while (!result.ok() && std::chrono::steady_clock::now() < deadline) result = PingBroker();
  EXPECT_TRUE(result.ok()) << result.status();
  ExpectLoggedAndCounted("overloaded");
}

// A PROXY v2 header, as a load balancer sends it, for a TCP client at `source`:`port`.
crypto::Bytes ProxyV2Header(const std::string& source, uint16_t port) {
  const auto address = boost::asio::ip::make_address(source);
  crypto::Bytes block;
  auto append = [&](const auto& bytes) { block.insert(block.end(), bytes.begin(), bytes.end()); };
  if (address.is_v4()) {
    append(address.to_v4().to_bytes());
    append(boost::asio::ip::make_address_v4("10.0.0.1").to_bytes());  // the broker's pod
  } else {
    append(address.to_v6().to_bytes());
    append(boost::asio::ip::make_address_v6("fd00::1").to_bytes());
  }
  block.insert(block.end(),
               {static_cast<uint8_t>(port >> 8), static_cast<uint8_t>(port), 0x1E, 0x14});  // 7700
  crypto::Bytes header(peer::kProxySignature.begin(), peer::kProxySignature.end());
  header.insert(header.end(), {0x21, static_cast<uint8_t>(address.is_v4() ? 0x11 : 0x21), 0,
                               static_cast<uint8_t>(block.size())});
  header.insert(header.end(), block.begin(), block.end());
  return header;
}

// The response to GET `path` on the control plane's REST port, with the admin token: the
// head, then a body of Content-Length bytes.
std::string RestGet(uint16_t port, const std::string& path, const std::string& token) {
  RawConnection conn(port);
  EXPECT_TRUE(conn.Write("GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " +
                         token + "\r\n\r\n"));
  std::string response;
  while (!response.ends_with("\r\n\r\n")) {
    auto byte = conn.Read(1);
    if (!byte) return response;
    response.push_back(static_cast<char>((*byte)[0]));
  }
  const std::string lower = absl::AsciiStrToLower(response);
  const size_t at = lower.find("content-length:");
  size_t length = 0;
  if (at == std::string::npos ||
      !absl::SimpleAtoi(lower.substr(at + 15, lower.find('\r', at) - at - 15), &length)) {
    return response;
  }
  auto body = conn.Read(length);
  if (body) response.append(body->begin(), body->end());
  return response;
}

// Behind a load balancer every connection comes from its address (here 127.0.0.1): with
// --proxy-protocol the per-address cap, the logs and the control plane use the source the
// PROXY v2 header carries, and a connection without a header is refused.
TEST_F(PeerLinkTest, ProxyProtocolCapsAndShowsTheCarriedSource) {
  // A long handshake deadline, so the connection closed within kTestDeadline is the refused one.
  StartBroker({"--proxy-protocol", "--max-pending-handshakes-per-ip", "4", "--handshake-timeout-ms",
               "60000"});
  const std::string source_a = "203.0.113.7";
  // Five handshakes begun from A, never finished: the shards read their headers in any order,
  // so whichever comes fifth is refused.
  std::vector<std::unique_ptr<RawConnection>> idle;
  for (int i = 0; i < 5; ++i) {
    idle.push_back(std::make_unique<RawConnection>(broker_->port()));
    ASSERT_TRUE(idle.back()->Write(ProxyV2Header(source_a, 40000 + i)));
    ASSERT_TRUE(idle.back()->Write(crypto::Bytes{'M'}));
  }
  EXPECT_TRUE(
      broker_->WaitForLogLine({"\"reason\":\"overloaded\"", "\"remote\":\"" + source_a + "\""}))
      << broker_->Log();
  int closed = 0;
  for (auto& conn : idle) closed += conn->WaitClosed(200ms) ? 1 : 0;
  EXPECT_EQ(closed, 1);

  // Another source through the same balancer address still gets in, and is shown as itself.
  const std::string source_b = "2001:db8:5:6::20";
  auto conn = std::make_unique<RawConnection>(broker_->port());
  ASSERT_TRUE(conn->Write(ProxyV2Header(source_b, 50000)));
  RawNoiseClient raw;
  auto status = raw.Handshake(*conn);
  ASSERT_TRUE(status.ok()) << status << "\n" << broker_->Log();
  const std::string peer_id = raw.key().public_key.ToString();
  EXPECT_TRUE(broker_->WaitForLogLine(
      {"\"event\":\"link_up\"", peer_id, "\"remote\":\"" + source_b + "\""}))
      << broker_->Log();
  std::ifstream token_file(broker_->data_dir() + "/admin.token");
  std::string token;
  token_file >> token;
  const uint16_t http = broker_->ListenerPort("http");
  ASSERT_NE(http, 0) << broker_->Log();
  const std::string got = RestGet(http, "/api/v1/peers/" + peer_id, token);
  EXPECT_NE(got.find("\"" + source_b + "\""), std::string::npos) << got;
  EXPECT_EQ(got.find("127.0.0.1"), std::string::npos) << got;
  const std::string listed = RestGet(http, "/api/v1/peers", token);
  EXPECT_NE(listed.find("\"" + source_b + "\""), std::string::npos) << listed;

  // A client that speaks to the port directly, without a header, is refused.
  RawConnection bare(broker_->port());
  RawNoiseClient direct;
  EXPECT_FALSE(direct.Handshake(bare).ok());
  EXPECT_TRUE(bare.WaitClosed());
  EXPECT_TRUE(broker_->WaitForLogLine({"\"reason\":\"bad_preamble\"", "PROXY v2"}))
      << broker_->Log();
  idle.clear();
  conn.reset();
  ExpectLoggedAndCounted("overloaded");
  EXPECT_GE(broker_->FailureCount("bad_preamble"), 1u) << broker_->Log();
}

// Node certificates (DESIGN §5): a client given the mesh authority refuses a broker without a
// valid certificate for its proven key; a client given broker keys refuses any other key.
class BrokerTrustTest : public PeerLinkTest {
 protected:
  void SetUp() override {
    PeerLinkTest::SetUp();
    char tmpl[] = "/tmp/mesh-trust-XXXXXX";
    dir_ = mkdtemp(tmpl);
    std::filesystem::create_directory(dir_ + "/data");
    ASSERT_TRUE(crypto::WriteKeyFile(dir_ + "/data/node.key", node_key_).ok());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes a certificate for `node` expiring `valid_for` from now and returns its path.
  std::string WriteCert(const crypto::PeerId& node, std::chrono::seconds valid_for) {
    const auto now = std::chrono::duration_cast<std::chrono::seconds>(
        std::chrono::system_clock::now().time_since_epoch());
    const std::string path = dir_ + "/node-" + std::to_string(++certs_) + ".cert";
    auto cert = crypto::IssueNodeCertificate(authority_, node, (now + valid_for).count());
    EXPECT_TRUE(crypto::WriteNodeCertificateFile(path, cert).ok());
    return path;
  }

  absl::StatusOr<client::PingResult> PingWith(client::BrokerTrust trust) {
    client::ConnectOptions options;
    options.address = broker_->address();
    options.key = &client_key_;
    options.trust = std::move(trust);
    return client::Ping(options, 1, kTestDeadline);
  }

  std::string dir_;
  int certs_ = 0;
  crypto::KeyPair node_key_ = crypto::KeyPair::Generate();
  crypto::AuthorityKeyPair authority_ = crypto::AuthorityKeyPair::Generate();
};

TEST_F(BrokerTrustTest, ClientVerifiesTheBrokersCertificateAgainstItsAuthority) {
  StartBroker({"--node-cert-file", WriteCert(node_key_.public_key, 3600s)}, dir_ + "/data");
  auto verified = PingWith({.authority = authority_.public_key});
  ASSERT_TRUE(verified.ok()) << verified.status() << "\n" << broker_->Log();
  EXPECT_EQ(verified->broker_id, node_key_.public_key);

  auto other = PingWith({.authority = crypto::AuthorityKeyPair::Generate().public_key});
  EXPECT_EQ(other.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(other.status().message().find("signed by authority"), std::string::npos)
      << other.status();
  ExpectServes();
}

TEST_F(BrokerTrustTest, ClientWithAnAuthorityRefusesABrokerWithoutCertificate) {
  StartBroker({}, dir_ + "/data");
  auto refused = PingWith({.authority = authority_.public_key});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(refused.status().message().find("no node certificate"), std::string::npos)
      << refused.status();
  // Without checks the same broker is reachable: the refusal was the client's.
  ExpectServes();
}

// The client checks the broker after handshake message 2 and before message 3, which carries
// its static key: a broker that fails the check ends up with a truncated handshake, never a
// link naming the client's peer ID.
TEST_F(BrokerTrustTest, ARefusedBrokerNeverLearnsTheClientsId) {
  StartBroker({}, dir_ + "/data");
  const client::BrokerTrust refusing[] = {
      {.authority = authority_.public_key},
      {.pinned = {crypto::KeyPair::Generate().public_key}},
  };
  for (const auto& trust : refusing) {
    EXPECT_EQ(PingWith(trust).status().code(), absl::StatusCode::kUnauthenticated);
  }
  // Each attempt ends in the broker's log one way or the other (refused handshake, or a link
  // that came up and went down): wait for both before looking for the client's ID.
  auto ended = [&] {
    const std::string log = broker_->Log();
    size_t count = 0;
    for (const char* event : {"\"event\":\"link_refused\"", "\"event\":\"link_down\""}) {
      for (size_t at = log.find(event); at != std::string::npos; at = log.find(event, at + 1)) {
        ++count;
      }
    }
    return count;
  };
  const auto deadline = std::chrono::steady_clock::now() + kTestDeadline;
  while (ended() < std::size(refusing) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  const std::string log = broker_->Log();
  EXPECT_EQ(ended(), std::size(refusing)) << log;
  EXPECT_EQ(log.find(client_key_.public_key.ToString()), std::string::npos) << log;
  EXPECT_EQ(log.find("\"event\":\"link_up\""), std::string::npos) << log;
}

TEST_F(BrokerTrustTest, PinnedBrokerKeyAcceptsOnlyThatBroker) {
  StartBroker({}, dir_ + "/data");
  EXPECT_TRUE(PingWith({.pinned = {node_key_.public_key}}).ok());
  auto refused = PingWith({.pinned = {crypto::KeyPair::Generate().public_key}});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(refused.status().message().find("not one of the pinned"), std::string::npos)
      << refused.status();
}

TEST_F(BrokerTrustTest, BrokerRefusesToStartWithAnotherNodesOrAnExpiredCertificate) {
  for (const auto& [cert, why] :
       {std::pair{WriteCert(crypto::KeyPair::Generate().public_key, 3600s), "names node"},
        std::pair{WriteCert(node_key_.public_key, -60s), "expired"}}) {
    BrokerProcess broker({"--node-cert-file", cert}, dir_ + "/data");
    EXPECT_FALSE(broker.started());
    EXPECT_EQ(broker.early_exit_code(), 1);
    EXPECT_NE(broker.Log().find(why), std::string::npos) << broker.Log();
  }
  std::ofstream(dir_ + "/garbage.cert") << "# not a certificate\nAAAA\n";
  BrokerProcess broker({"--node-cert-file", dir_ + "/garbage.cert"}, dir_ + "/data");
  EXPECT_FALSE(broker.started());
  EXPECT_NE(broker.Log().find("garbage.cert"), std::string::npos) << broker.Log();
}

// The operator's path: mesh-cli makes the authority and the certificate, and checks the broker.
TEST_F(BrokerTrustTest, MeshCliCertifiesABrokerAndVerifiesIt) {
  const std::string cli = std::string(MESH_BINARY_DIR) + "/client/mesh-cli";
  auto run = [](const std::string& command) {
    std::string out;
    FILE* pipe = popen((command + " 2>&1").c_str(), "r");
    char buffer[512];
    while (pipe && fgets(buffer, sizeof buffer, pipe)) out += buffer;
    const int status = pipe ? pclose(pipe) : -1;
    return std::pair{WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
  };
  auto [keygen_exit, authority] = run(cli + " authority-keygen --out " + dir_ + "/authority.key");
  ASSERT_EQ(keygen_exit, 0) << authority;
  authority.erase(authority.find_last_not_of('\n') + 1);
  auto [certify_exit, certified] =
      run(cli + " certify --authority-key " + dir_ + "/authority.key --node " + dir_ +
          "/data/node.key --days 30 --out " + dir_ + "/cli.cert");
  ASSERT_EQ(certify_exit, 0) << certified;
  EXPECT_NE(certified.find(node_key_.public_key.ToString()), std::string::npos) << certified;

  StartBroker({"--node-cert-file", dir_ + "/cli.cert"}, dir_ + "/data");
  auto [ping_exit, pinged] =
      run(cli + " ping -c 1 --mesh-authority " + authority + " " + broker_->address());
  EXPECT_EQ(ping_exit, 0) << pinged;
  EXPECT_NE(pinged.find(" verified"), std::string::npos) << pinged;
  auto [wrong_exit, wrong] =
      run(cli + " ping -c 1 --mesh-authority " +
          crypto::AuthorityKeyPair::Generate().public_key.ToString() + " " + broker_->address());
  EXPECT_NE(wrong_exit, 0) << wrong;
  EXPECT_NE(wrong.find("not certified by the mesh authority"), std::string::npos) << wrong;
  auto [plain_exit, plain] = run(cli + " ping -c 1 " + broker_->address());
  EXPECT_EQ(plain_exit, 0) << plain;
  EXPECT_NE(plain.find("unverified"), std::string::npos) << plain;
}

}  // namespace
}  // namespace mesh::testing
