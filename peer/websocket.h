// Peer links over WebSocket (DESIGN §3): the upgrade on path /v1/link with subprotocol mesh.v1,
// then a ByteStream that carries each Noise message as one binary WebSocket message.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "peer/stream.h"

namespace mesh::peer {

inline constexpr char kWebSocketPath[] = "/v1/link";
inline constexpr char kWebSocketProtocol[] = "mesh.v1";

struct WebSocketAcceptOptions {
  // Origins a browser page may connect from (exact "scheme://host[:port]"); empty: any. Noise
  // authenticates peers; this only limits which sites embed the broker.
  std::vector<std::string> allowed_origins;
  std::chrono::milliseconds timeout{10'000};  // for the upgrade request
};

// Server: reads the HTTP upgrade on `socket` and accepts it. A request that is not an upgrade
// to /v1/link gets an HTTP error; a missing subprotocol or a disallowed Origin is upgraded and
// closed with 1008 (policy), as browsers see only close codes. The status says why.
boost::asio::awaitable<absl::StatusOr<std::unique_ptr<ByteStream>>> AcceptWebSocket(
    boost::asio::ip::tcp::socket socket, const WebSocketAcceptOptions& options);

// Client: the upgrade to `path` on `host` (the Host header) over a connected socket.
boost::asio::awaitable<absl::StatusOr<std::unique_ptr<ByteStream>>> ConnectWebSocket(
    boost::asio::ip::tcp::socket socket, const std::string& host, const std::string& path);

// "ws://HOST:PORT/PATH" into "HOST:PORT" and the path ("/v1/link" when none is given); an error
// for wss:// (not built yet) or another scheme.
struct WebSocketAddress {
  std::string host_port;
  std::string path;
};
absl::StatusOr<WebSocketAddress> ParseWebSocketAddress(const std::string& address);
bool IsWebSocketAddress(const std::string& address);

}  // namespace mesh::peer
