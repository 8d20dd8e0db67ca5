// Peer links over WebSocket (DESIGN §3): the upgrade on path /v1/link with subprotocol mesh.v1,
// then a ByteStream that carries each Noise message as one binary WebSocket message; wss:// puts
// TLS under it.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "peer/stream.h"

namespace boost::asio::ssl {
class context;
}  // namespace boost::asio::ssl

namespace mesh::peer {

using TlsContext = std::shared_ptr<boost::asio::ssl::context>;

// A server's TLS (1.2 and later) from PEM files: the certificate chain and its private key.
// Idle connections give their buffers back, so a TLS link at rest costs little more than a
// plain one.
absl::StatusOr<TlsContext> ServerTlsContext(const std::string& cert_file,
                                            const std::string& key_file);
// A client's: the system's trust anchors, or those in `ca_file` (PEM) when it is given.
absl::StatusOr<TlsContext> ClientTlsContext(const std::string& ca_file);

inline constexpr char kWebSocketPath[] = "/v1/link";
inline constexpr char kWebSocketProtocol[] = "mesh.v1";

struct WebSocketAcceptOptions {
  // Origins a browser page may connect from (exact "scheme://host[:port]"); empty: any. Noise
  // authenticates peers; this only limits which sites embed the broker.
  std::vector<std::string> allowed_origins;
  std::chrono::milliseconds timeout{10'000};  // for the TLS handshake and the upgrade request
  TlsContext tls;                             // set: wss (TLS before the upgrade)
};

// Server: reads the HTTP upgrade on `socket` and accepts it. A request that is not an upgrade
// to /v1/link gets an HTTP error; a missing subprotocol or a disallowed Origin is upgraded and
// closed with 1008 (policy), as browsers see only close codes. The status says why.
boost::asio::awaitable<absl::StatusOr<std::unique_ptr<ByteStream>>> AcceptWebSocket(
    boost::asio::ip::tcp::socket socket, const WebSocketAcceptOptions& options);

// "ws://HOST:PORT/PATH" or "wss://…" into its parts, the path "/v1/link" when none is given.
struct WebSocketAddress {
  std::string host_port;  // what is dialled and sent as Host
  std::string host;       // what the server's certificate must name (wss)
  std::string path;
  bool tls = false;
};

// Client: the upgrade to `address` over a connected socket; for wss://, first a TLS handshake
// that checks the server's certificate against `tls` and the address's host.
boost::asio::awaitable<absl::StatusOr<std::unique_ptr<ByteStream>>> ConnectWebSocket(
    boost::asio::ip::tcp::socket socket, const WebSocketAddress& address, TlsContext tls);

absl::StatusOr<WebSocketAddress> ParseWebSocketAddress(const std::string& address);
bool IsWebSocketAddress(const std::string& address);

}  // namespace mesh::peer
