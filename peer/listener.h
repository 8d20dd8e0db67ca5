// TCP under every listener and dialler: the peer links (7700, and 7780 under WebSocket), the
// mesh (7800), the control plane's HTTP (8080), and the dials of clients and of brokers.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace mesh::peer {

// "host:port" or "[v6]:port" into host and port text; the host may be empty.
absl::StatusOr<std::pair<std::string, std::string>> SplitHostPort(const std::string& address);

// A socket listening on "HOST:PORT" (an IP address; an empty host is every interface, port 0
// picks one), with SO_REUSEADDR, on `io`.
absl::StatusOr<boost::asio::ip::tcp::acceptor> Listen(boost::asio::io_context& io,
                                                      const std::string& address);

// Accepts on `acceptor` until it is closed. Connection i goes to shards[i % shards.size()]: its
// socket is bound to that io_context and `serve` gets the shard's index. A failed accept (out of
// descriptors, say) goes to `on_failure`, and the loop pauses before the next one instead of
// spinning on an error that repeats.
using ServeConnection = std::function<void(size_t shard, boost::asio::ip::tcp::socket socket,
                                           const boost::asio::ip::tcp::endpoint& remote)>;
boost::asio::awaitable<void> AcceptLoop(
    boost::asio::ip::tcp::acceptor& acceptor, std::vector<boost::asio::io_context*> shards,
    ServeConnection serve, std::function<void(const boost::system::error_code&)> on_failure);

// Resolves "HOST:PORT" (an empty host is 127.0.0.1) and connects to one of its addresses within
// `timeout`, on the calling coroutine's executor. With `spread` the addresses are tried in a
// random order, so that a name with several (a headless Service) spreads its clients and one
// that answers GoAway is not every retry's first choice.
boost::asio::awaitable<absl::StatusOr<boost::asio::ip::tcp::socket>> Dial(
    const std::string& address, std::chrono::milliseconds timeout, bool spread);

}  // namespace mesh::peer
