// Fuzzes the broker's WebSocket peer listener (DESIGN §3): the input is everything a client
// sends on 7780 (the HTTP upgrade, then WebSocket frames carrying the preamble and handshake
// messages) over a real socket pair, then the end of the stream. peer::AcceptWebSocket and
// Link::Accept over its stream must refuse cleanly, never crash or hang.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include "peer/peer.h"
#include "peer/websocket.h"
#include "tests/fuzz/socket_input.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  mesh::fuzz::InitLinkFuzzing();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mesh;
  if (size > 8192) return 0;  // larger inputs only fill socket buffers
  boost::asio::io_context io;
  int writer = -1;
  auto socket = fuzz::SocketReading(io, data, size, writer);
  if (!socket) return 0;
  static peer::LinkStats stats;
  peer::LinkConfig config;
  config.handshake_timeout = std::chrono::milliseconds(2000);
  mesh::v1::Hello hello;
  hello.set_node_name("fuzz");
  boost::asio::co_spawn(
      io,
      [&]() -> peer::awaitable<void> {
        auto stream = co_await peer::AcceptWebSocket(
            std::move(*socket),
            {{"https://allowed.example"}, std::chrono::milliseconds(2000), nullptr});
        if (!stream.ok()) co_return;
        auto link = co_await peer::Link::Accept(*std::move(stream), fuzz::ResponderKey(), hello,
                                                peer::LinkKind::kPeer, config, stats);
        if (link.ok()) (*link)->Close(absl::OkStatus());
      },
      boost::asio::detached);
  io.run();
  close(writer);
  return 0;
}
