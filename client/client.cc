#include "client/client.h"

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "absl/strings/str_cat.h"
#include "peer/websocket.h"

namespace mesh::client {
namespace {

namespace asio = boost::asio;
using asio::redirect_error;
using asio::use_awaitable;
using boost::system::error_code;

// A TCP link for "HOST:PORT", a WebSocket one for "ws[s]://HOST:PORT[/PATH]" (DESIGN §3).
peer::awaitable<absl::StatusOr<std::unique_ptr<peer::ByteStream>>> Open(
    const ConnectOptions& options) {
  if (!peer::IsWebSocketAddress(options.address)) {
    auto socket = co_await peer::Dial(options.address, options.connect_timeout, /*spread=*/true);
    if (!socket.ok()) co_return socket.status();
    co_return peer::TcpStream(*std::move(socket));
  }
  auto ws = peer::ParseWebSocketAddress(options.address);
  if (!ws.ok()) co_return ws.status();
  peer::TlsContext tls;
  if (ws->tls) {
    auto context = peer::ClientTlsContext(options.trust.tls_ca_file);
    if (!context.ok()) co_return context.status();
    tls = *std::move(context);
  }
  auto socket = co_await peer::Dial(ws->host_port, options.connect_timeout, /*spread=*/true);
  if (!socket.ok()) co_return socket.status();
  co_return co_await peer::ConnectWebSocket(*std::move(socket), *ws, std::move(tls));
}

}  // namespace

absl::Status CheckBroker(const BrokerTrust& trust, const crypto::PeerId& broker,
                         const mesh::v1::Hello& hello) {
  if (!trust.pinned.empty() &&
      std::find(trust.pinned.begin(), trust.pinned.end(), broker) == trust.pinned.end()) {
    return absl::UnauthenticatedError(
        absl::StrCat("broker ", broker.ToString(), " is not one of the pinned broker keys"));
  }
  if (trust.authority) {
    const auto& cert = hello.node_cert();
    const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
    auto status =
        crypto::VerifyNodeCertificate({reinterpret_cast<const uint8_t*>(cert.data()), cert.size()},
                                      *trust.authority, broker, now);
    if (!status.ok()) {
      return absl::UnauthenticatedError(
          absl::StrCat("broker ", broker.ToString(),
                       " is not certified by the mesh authority: ", status.message()));
    }
  }
  return absl::OkStatus();
}

peer::awaitable<absl::StatusOr<std::shared_ptr<peer::Link>>> Connect(const ConnectOptions& options,
                                                                     peer::LinkStats& stats) {
  if (options.key == nullptr) co_return absl::InvalidArgumentError("a client needs a static key");
  mesh::v1::Hello hello;
  hello.set_protocol_version(peer::kProtocolVersion);
  hello.set_agent(options.agent);
  crypto::CipherSuite suite = options.suite.value_or(crypto::PreferredSuite());
  // Checked after handshake message 2, before message 3 carries our key and Hello: a broker
  // that fails the check never learns who dialled it (DESIGN §3, untrusted peers).
  peer::Link::RemoteVerifier verify;
  if (options.trust.verifies()) {
    verify = [&trust = options.trust](const crypto::PeerId& broker, const mesh::v1::Hello& hello) {
      return CheckBroker(trust, broker, hello);
    };
  }
  for (int attempt = 0;; ++attempt) {
    auto stream = co_await Open(options);
    if (!stream.ok()) co_return stream.status();
    auto link = co_await peer::Link::Connect(*std::move(stream), *options.key, hello, suite,
                                             options.link, stats, peer::LinkKind::kPeer, verify);
    if (link.ok() || attempt > 0) co_return link;
    // One retry with the best common suite when the broker refused ours.
    auto spoken = peer::RefusedSuites(link.status());
    if (!spoken || peer::ErrorCodeOf(link.status()) != mesh::v1::UNSUPPORTED_SUITE) co_return link;
    std::optional<crypto::CipherSuite> common;
    for (auto candidate : {crypto::CipherSuite::kAesGcm, crypto::CipherSuite::kChaChaPoly}) {
      if (!common && candidate != suite && crypto::SuiteAvailable(candidate) &&
          (*spoken & (1u << (static_cast<int>(candidate) - 1)))) {
        common = candidate;
      }
    }
    if (!common) co_return link;
    suite = *common;
  }
}

absl::StatusOr<PingResult> Ping(const ConnectOptions& options, int count,
                                std::chrono::milliseconds pong_timeout) {
  asio::io_context io;
  peer::LinkStats stats;
  absl::StatusOr<PingResult> result = absl::UnknownError("ping did not run");
  asio::co_spawn(
      io,
      [&]() -> peer::awaitable<void> {
        const auto start = peer::Clock::now();
        auto link = co_await Connect(options, stats);
        if (!link.ok()) {
          result = link.status();
          co_return;
        }
        PingResult ping;
        ping.handshake =
            std::chrono::duration_cast<std::chrono::microseconds>(peer::Clock::now() - start);
        ping.broker_id = (*link)->remote_id();
        ping.node_name = (*link)->remote_hello().node_name();
        ping.suite = (*link)->suite();

        asio::steady_timer pong_wait(io);
        uint64_t last_pong = 0;
        absl::Status ended = absl::OkStatus();
        bool running = true;
        asio::co_spawn(
            io,
            [&, l = *link]() -> peer::awaitable<void> {
              ended = co_await l->Run([&](mesh::v1::Frame& frame) {
                if (frame.has_pong()) {
                  last_pong = frame.pong().nonce();
                  pong_wait.cancel();
                }
                return absl::OkStatus();
              });
              running = false;
              pong_wait.cancel();
            },
            asio::detached);

        for (uint64_t nonce = 1; nonce <= static_cast<uint64_t>(count) && running; ++nonce) {
          const auto sent = peer::Clock::now();
          mesh::v1::Frame frame;
          frame.mutable_ping()->set_nonce(nonce);
          (*link)->Send(frame);
          pong_wait.expires_after(pong_timeout);
          while (last_pong != nonce && running) {
            error_code ec;
            co_await pong_wait.async_wait(redirect_error(use_awaitable, ec));
            if (!ec) break;  // timed out
          }
          if (last_pong != nonce) break;
          ping.round_trips.push_back(
              std::chrono::duration_cast<std::chrono::microseconds>(peer::Clock::now() - sent));
        }
        (*link)->Close(absl::OkStatus());
        if (ping.round_trips.size() == static_cast<size_t>(count)) {
          result = ping;
        } else if (!running && !ended.ok()) {
          result = absl::UnavailableError(absl::StrCat("link closed: ", ended.message()));
        } else {
          result = absl::DeadlineExceededError(
              absl::StrCat("no Pong within ", pong_timeout.count(), " ms"));
        }
        // Run's coroutine refers to this frame's locals: wait for it to end before leaving.
        while (running) {
          pong_wait.expires_after(pong_timeout);
          error_code ec;
          co_await pong_wait.async_wait(redirect_error(use_awaitable, ec));
        }
      },
      asio::detached);
  io.run();
  return result;
}

}  // namespace mesh::client
