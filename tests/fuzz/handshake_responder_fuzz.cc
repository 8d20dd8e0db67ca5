// Fuzzes the responder side of a link as the broker runs it: peer::Link::Accept reads the
// input as everything an initiator sends (preamble, length-prefixed handshake messages) over a
// real socket pair, then sees the end of the stream. It must fail cleanly, never crash or hang.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include "peer/peer.h"
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
        auto link = co_await peer::Link::Accept(std::move(*socket), fuzz::ResponderKey(), hello,
                                                peer::LinkKind::kPeer, config, stats);
        if (link.ok()) (*link)->Close(absl::OkStatus());
      },
      boost::asio::detached);
  io.run();
  close(writer);
  return 0;
}
