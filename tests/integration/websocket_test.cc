// Peer links over WebSocket against the real broker (DESIGN §3): the client library on
// ws:// and on TCP reach each other, offline mail included, and every bad input on 7780 gets
// its refusal while the broker keeps serving. The bad inputs come from Boost.Beast's client.
#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "client/client.h"
#include "tests/integration/broker_process.h"
#include "tests/integration/raw_peer.h"
#include "tests/integration/test_peers.h"

namespace mesh::testing {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using mesh::v1::SendAck;
using tcp = asio::ip::tcp;

std::string WsAddress(const BrokerProcess& broker, const std::string& scheme = "ws") {
  return scheme + "://127.0.0.1:" + std::to_string(broker.ListenerPort("ws")) + "/v1/link";
}

// A self-signed TLS certificate made by Debian's openssl (not by the code under test), naming
// `names` (a subjectAltName list such as "IP:127.0.0.1"); removed with the object.
class Certificate {
 public:
  explicit Certificate(const std::string& names) {
    char tmpl[] = "/tmp/mesh-wss-XXXXXX";
    dir_ = mkdtemp(tmpl);
    const std::string command =
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 "
        "-subj /CN=mesh-test -addext subjectAltName=" +
        names + " -keyout " + key() + " -out " + cert() + " 2>/dev/null";
    made_ = std::system(command.c_str()) == 0;
  }
  ~Certificate() { std::filesystem::remove_all(dir_); }
  bool made() const { return made_; }
  std::string cert() const { return dir_ + "/cert.pem"; }
  std::string key() const { return dir_ + "/key.pem"; }

 private:
  std::string dir_;
  bool made_ = false;
};

// A raw WebSocket client: upgrades with the given subprotocol and Origin, then lets the test
// write what it likes and read what the broker answers.
class RawWebSocket {
 public:
  RawWebSocket(uint16_t port, const std::string& protocol, const std::string& origin = "")
      : ws_(io_) {
    beast::get_lowest_layer(ws_).connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    beast::get_lowest_layer(ws_).expires_after(std::chrono::seconds(15));
    ws_.set_option(websocket::stream_base::decorator([=](websocket::request_type& request) {
      if (!protocol.empty()) request.set(http::field::sec_websocket_protocol, protocol);
      if (!origin.empty()) request.set(http::field::origin, origin);
    }));
    ws_.handshake("127.0.0.1", "/v1/link", ec_);
  }
  bool upgraded() const { return !ec_; }
  void WriteBinary(const std::string& bytes) {
    ws_.binary(true);
    ws_.write(asio::buffer(bytes), ec_);
  }
  void WriteText(const std::string& text) {
    ws_.text(true);
    ws_.write(asio::buffer(text), ec_);
  }
  // Reads until the broker closes; the close code it sent (0 if none came within 15 s).
  uint16_t CloseCode() {
    beast::flat_buffer buffer;
    for (;;) {
      beast::error_code ec;
      ws_.read(buffer, ec);
      if (ec == websocket::error::closed) return ws_.reason().code;
      if (ec) return 0;
      buffer.clear();
    }
  }

 private:
  asio::io_context io_;
  websocket::stream<beast::tcp_stream> ws_;
  beast::error_code ec_;
};

class WebSocketTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(crypto::Init().ok()); }
  void StartBroker(std::vector<std::string> args = {}) {
    broker_ = std::make_unique<BrokerProcess>(std::move(args));
    ASSERT_TRUE(broker_->started()) << broker_->Log();
    // 7780 opens after 7700 (and after its certificate loads): wait for it to say so.
    ASSERT_TRUE(broker_->WaitForLogLine({"\"listening\"", "\"listener\":\"ws\""}))
        << broker_->Log();
    ASSERT_NE(broker_->ListenerPort("ws"), 0) << broker_->Log();
  }
  // A whole link over WebSocket still works: the broker kept serving.
  void ExpectServing() {
    LibraryPeer alice({WsAddress(*broker_)});
    LibraryPeer bob({broker_->address()});
    ASSERT_TRUE(bob.WaitConnected());
    EXPECT_EQ(alice.Send(bob.id(), "still here").status, SendAck::ACCEPTED);
    EXPECT_EQ(bob.WaitForMessages(1).size(), 1u);
  }
  // Waits until `n` links of `peer` have ended (the broker logs link_down for each).
  bool WaitForLinksDown(const crypto::PeerId& peer, size_t n) {
    const std::string needle = "\"event\":\"link_down\",\"peer\":\"" + peer.ToString() + "\"";
    const auto deadline = std::chrono::steady_clock::now() + kTestDeadline;
    while (std::chrono::steady_clock::now() < deadline) {
      const std::string log = broker_->Log();
      size_t count = 0;
      for (size_t at = log.find(needle); at != std::string::npos; at = log.find(needle, at + 1)) {
        ++count;
      }
      if (count >= n) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  std::unique_ptr<BrokerProcess> broker_;
};

TEST_F(WebSocketTest, AWebSocketPeerAndATcpPeerExchangeOnlineAndOfflineMail) {
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  LibraryPeer browser({WsAddress(*broker_)});
  auto phone_key = crypto::KeyPair::Generate();
  const crypto::PeerId phone = phone_key.public_key;
  ASSERT_TRUE(browser.WaitConnected());
  // The phone is offline: its mail waits in its mailbox.
  for (int i = 0; i < 20; ++i) {
    auto sent = browser.Send(phone, "offline " + std::to_string(i));
    ASSERT_EQ(sent.status, SendAck::ACCEPTED) << sent.detail;
  }
  LibraryPeer tcp_peer({broker_->address()}, std::move(phone_key));
  auto arrived = tcp_peer.WaitForMessages(20);
  ASSERT_EQ(arrived.size(), 20u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(arrived[i].payload, "offline " + std::to_string(i));
  EXPECT_EQ(arrived[0].from, browser.id());
  // And back, online, to the browser; a payload near the largest record crosses whole.
  const std::string large(60'000, 'w');
  ASSERT_EQ(tcp_peer.Send(browser.id(), large).status, SendAck::ACCEPTED);
  auto back = browser.WaitForMessages(1);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].payload, large);
  EXPECT_EQ(back[0].from, phone);
}

TEST_F(WebSocketTest, AWebSocketLinkAndATcpLinkWithOneKeyReplaceEachOther) {
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  const auto key = crypto::KeyPair::Generate();
  auto stop_when_replaced = [](client::SessionOptions& options) {
    options.stop_when_replaced = true;
  };
  LibraryPeer alice({broker_->address()});
  LibraryPeer over_ws({WsAddress(*broker_)}, key, stop_when_replaced);
  ASSERT_TRUE(over_ws.WaitConnected());
  ASSERT_EQ(alice.Send(key.public_key, "to the browser").status, SendAck::ACCEPTED);
  ASSERT_EQ(over_ws.WaitForMessages(1).size(), 1u);
  {
    // The same key over TCP takes the session; what is sent next reaches it there.
    LibraryPeer over_tcp({broker_->address()}, key, stop_when_replaced);
    ASSERT_TRUE(over_tcp.WaitConnected());
    ASSERT_TRUE(WaitForLinksDown(key.public_key, 1)) << broker_->Log();
    ASSERT_EQ(alice.Send(key.public_key, "to the phone").status, SendAck::ACCEPTED);
    auto arrived = over_tcp.WaitForMessages(1);
    ASSERT_EQ(arrived.size(), 1u);
    EXPECT_EQ(arrived[0].payload, "to the phone");
    // And back: WebSocket again.
    LibraryPeer again({WsAddress(*broker_)}, key, stop_when_replaced);
    ASSERT_TRUE(again.WaitConnected());
    ASSERT_TRUE(WaitForLinksDown(key.public_key, 2)) << broker_->Log();
    ASSERT_EQ(alice.Send(key.public_key, "to the browser again").status, SendAck::ACCEPTED);
    auto back = again.WaitForMessages(1);
    ASSERT_EQ(back.size(), 1u);
    EXPECT_EQ(back[0].payload, "to the browser again");
  }
  EXPECT_EQ(over_ws.WaitForMessages(1).size(), 1u);  // only the first: it was replaced
}

// An upgrade request that never ends holds a handshake slot only until the handshake deadline:
// the broker closes the connection (counted bad_preamble) and keeps serving.
TEST_F(WebSocketTest, AnUpgradeThatNeverEndsIsClosedAtTheHandshakeDeadline) {
  ASSERT_NO_FATAL_FAILURE(StartBroker({"--handshake-timeout-ms", "2000"}));
  RawConnection stalled(broker_->ListenerPort("ws"));
  ASSERT_TRUE(stalled.connected());
  ASSERT_TRUE(stalled.Write(std::string("GET /v1/link HTTP/1.1\r\nHost: x\r\n")));
  EXPECT_TRUE(stalled.WaitClosed()) << broker_->Log();
  ExpectServing();
}

TEST_F(WebSocketTest, BadInputsAreRefusedAndTheBrokerKeepsServing) {
  ASSERT_NO_FATAL_FAILURE(StartBroker({"--ws-allowed-origins", "https://chat.example"}));
  const uint16_t port = broker_->ListenerPort("ws");
  {
    RawWebSocket no_protocol(port, "");
    ASSERT_TRUE(no_protocol.upgraded());
    EXPECT_EQ(no_protocol.CloseCode(), websocket::close_code::policy_error);
  }
  {
    RawWebSocket wrong_protocol(port, "mqtt");
    ASSERT_TRUE(wrong_protocol.upgraded());
    EXPECT_EQ(wrong_protocol.CloseCode(), websocket::close_code::policy_error);
  }
  {
    RawWebSocket elsewhere(port, "mesh.v1", "https://evil.example");
    ASSERT_TRUE(elsewhere.upgraded());
    EXPECT_EQ(elsewhere.CloseCode(), websocket::close_code::policy_error);
  }
  {
    RawWebSocket garbage(port, "mesh.v1", "https://chat.example");
    ASSERT_TRUE(garbage.upgraded());
    garbage.WriteBinary("GARBAGE!");
    EXPECT_EQ(garbage.CloseCode(), websocket::close_code::protocol_error);
  }
  {
    RawWebSocket text(port, "mesh.v1");
    ASSERT_TRUE(text.upgraded());
    text.WriteText("hello");
    EXPECT_EQ(text.CloseCode(), websocket::close_code::protocol_error);
  }
  {
    RawWebSocket oversize(port, "mesh.v1");
    ASSERT_TRUE(oversize.upgraded());
    oversize.WriteBinary(std::string(70'000, 'x'));
    // Refused as it begins: 1009 when the close frame outruns the reset of the connection
    // (the client is still writing what the broker will not read).
    const uint16_t code = oversize.CloseCode();
    EXPECT_TRUE(code == websocket::close_code::too_big || code == 0) << code;
    EXPECT_TRUE(broker_->WaitForLogLine({"frame_too_large", "over 65535"})) << broker_->Log();
  }
  {
    // Not an upgrade at all: an HTTP answer, then the connection closes.
    asio::io_context io;
    beast::tcp_stream stream(io);
    stream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    stream.expires_after(std::chrono::seconds(15));
    http::request<http::empty_body> request(http::verb::get, "/v1/link", 11);
    request.set(http::field::host, "127.0.0.1");
    http::write(stream, request);
    beast::flat_buffer buffer;
    http::response<http::string_body> response;
    http::read(stream, buffer, response);
    EXPECT_EQ(response.result(), http::status::upgrade_required);
  }
  ExpectServing();
}

// wss: TLS from --tls-cert-file on 7780, the same link above it. The client checks the broker's
// certificate against the trust anchors it is given and the host it dialled.
TEST_F(WebSocketTest, WssCarriesMailWhenTheCertificateIsTrusted) {
  Certificate certificate("IP:127.0.0.1");
  ASSERT_TRUE(certificate.made());
  ASSERT_NO_FATAL_FAILURE(
      StartBroker({"--tls-cert-file", certificate.cert(), "--tls-key-file", certificate.key()}));
  ASSERT_TRUE(broker_->WaitForLogLine({"\"listener\":\"ws\"", "\"tls\":true"})) << broker_->Log();
  auto trusting = [&](client::SessionOptions& options) {
    options.trust.tls_ca_file = certificate.cert();
  };
  LibraryPeer browser({WsAddress(*broker_, "wss")}, crypto::KeyPair::Generate(), trusting);
  ASSERT_TRUE(browser.WaitConnected()) << broker_->Log();
  auto phone_key = crypto::KeyPair::Generate();
  const crypto::PeerId phone = phone_key.public_key;
  ASSERT_EQ(browser.Send(phone, "while you were away").status, SendAck::ACCEPTED);
  LibraryPeer tcp_peer({broker_->address()}, std::move(phone_key));
  auto arrived = tcp_peer.WaitForMessages(1);
  ASSERT_EQ(arrived.size(), 1u);
  EXPECT_EQ(arrived[0].payload, "while you were away");
  const std::string large(60'000, 's');
  ASSERT_EQ(tcp_peer.Send(browser.id(), large).status, SendAck::ACCEPTED);
  auto back = browser.WaitForMessages(1);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].payload, large);
}

TEST_F(WebSocketTest, WssRefusesWhatTheCertificateDoesNotProveAndKeepsServing) {
  Certificate certificate("DNS:elsewhere.example");  // names another host than 127.0.0.1
  Certificate trusted("IP:127.0.0.1");
  ASSERT_TRUE(certificate.made() && trusted.made());
  ASSERT_NO_FATAL_FAILURE(
      StartBroker({"--tls-cert-file", certificate.cert(), "--tls-key-file", certificate.key()}));
  auto ping = [&](const std::string& address, const std::string& ca_file) {
    const auto key = crypto::KeyPair::Generate();
    client::ConnectOptions options;
    options.address = address;
    options.key = &key;
    options.trust.tls_ca_file = ca_file;
    return client::Ping(options, 1, kTestDeadline);
  };
  const std::string wss = WsAddress(*broker_, "wss");
  // Another authority's anchors: the chain does not verify.
  auto untrusted = ping(wss, trusted.cert());
  ASSERT_FALSE(untrusted.ok());
  EXPECT_TRUE(absl::StrContains(untrusted.status().message(), "certificate verify failed"))
      << untrusted.status();
  // The right anchors, but the certificate names another host.
  auto wrong_host = ping(wss, certificate.cert());
  ASSERT_FALSE(wrong_host.ok());
  EXPECT_TRUE(absl::StrContains(wrong_host.status().message(), "certificate verify failed"))
      << wrong_host.status();
  // Plain ws:// on the TLS port: no upgrade, and the broker says why.
  EXPECT_FALSE(ping(WsAddress(*broker_), "").ok());
  EXPECT_TRUE(broker_->WaitForLogLine({"bad_preamble", "TLS handshake"})) << broker_->Log();
  // Through all of it the broker kept serving.
  LibraryPeer alice({broker_->address()});
  LibraryPeer bob({broker_->address()});
  ASSERT_TRUE(bob.WaitConnected());
  EXPECT_EQ(alice.Send(bob.id(), "still here").status, SendAck::ACCEPTED);
  EXPECT_EQ(bob.WaitForMessages(1).size(), 1u);
}

// A renewed certificate (cert-manager rewrites the Secret's files) is taken on SIGHUP or when the
// files change: new wss links get it, and a pair that does not load keeps the one in use.
TEST_F(WebSocketTest, WssTakesARenewedCertificateWithoutARestart) {
  Certificate first("IP:127.0.0.1");
  Certificate renewed("IP:127.0.0.1");
  ASSERT_TRUE(first.made() && renewed.made());
  char tmpl[] = "/tmp/mesh-wss-live-XXXXXX";
  const std::string live = mkdtemp(tmpl);
  const std::string cert = live + "/tls.crt";
  const std::string key = live + "/tls.key";
  auto install = [&](const Certificate& from) {
    for (const auto& [source, target] :
         {std::pair{from.cert(), cert}, std::pair{from.key(), key}}) {
      std::filesystem::copy_file(source, target + ".new",
                                 std::filesystem::copy_options::overwrite_existing);
      std::filesystem::rename(target + ".new", target);  // as a Secret volume swaps its files
    }
  };
  install(first);
  ASSERT_NO_FATAL_FAILURE(StartBroker({"--tls-cert-file", cert, "--tls-key-file", key}));
  auto ping = [&](const std::string& ca_file) {
    const auto client_key = crypto::KeyPair::Generate();
    client::ConnectOptions options;
    options.address = WsAddress(*broker_, "wss");
    options.key = &client_key;
    options.trust.tls_ca_file = ca_file;
    return client::Ping(options, 1, kTestDeadline);
  };
  ASSERT_TRUE(ping(first.cert()).ok());
  EXPECT_FALSE(ping(renewed.cert()).ok());

  install(renewed);
  ASSERT_EQ(::kill(broker_->pid(), SIGHUP), 0);
  ASSERT_TRUE(broker_->WaitForLogLine({"tls_reloaded"})) << broker_->Log();
  auto now_renewed = ping(renewed.cert());
  EXPECT_TRUE(now_renewed.ok()) << now_renewed.status();
  EXPECT_FALSE(ping(first.cert()).ok());

  // A broken pair is refused and the renewed certificate stays in use.
  {
    std::ofstream broken(cert + ".new");
    broken << "not a certificate\n";
  }
  std::filesystem::rename(cert + ".new", cert);
  ASSERT_EQ(::kill(broker_->pid(), SIGHUP), 0);
  ASSERT_TRUE(broker_->WaitForLogLine({"tls_reload_failed"})) << broker_->Log();
  auto still = ping(renewed.cert());
  EXPECT_TRUE(still.ok()) << still.status();
  std::filesystem::remove_all(live);
}

// Behind a proxy that terminates TLS (an NLB), --ws-tls off keeps 7780 plain while the control
// plane keeps its certificate.
TEST_F(WebSocketTest, WsTlsOffKeepsTheWebSocketListenerPlain) {
  Certificate certificate("IP:127.0.0.1");
  ASSERT_TRUE(certificate.made());
  ASSERT_NO_FATAL_FAILURE(StartBroker({"--tls-cert-file", certificate.cert(), "--tls-key-file",
                                       certificate.key(), "--ws-tls", "off"}));
  ExpectServing();
}

}  // namespace
}  // namespace mesh::testing
