// Fuzzes the broker's WebSocket peer listener (DESIGN §3): the input is everything a client
// sends on 7780 (the HTTP upgrade, then WebSocket frames carrying the preamble and handshake
// messages) over a real socket pair, then the end of the stream. peer::AcceptWebSocket and
// Link::Accept over its stream must refuse cleanly, never crash or hang.
#include <google/protobuf/stubs/logging.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <cstdint>

#include "peer/peer.h"
#include "peer/websocket.h"

namespace {

const mesh::crypto::KeyPair& ResponderKey() {
  static const mesh::crypto::KeyPair key = mesh::crypto::KeyPair::Generate();
  return key;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  (void)mesh::crypto::Init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mesh;
  if (size > 8192) return 0;  // larger inputs only fill socket buffers
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return 0;
  size_t written = 0;
  while (written < size) {
    ssize_t n = write(fds[1], data + written, size - written);
    if (n <= 0) break;
    written += static_cast<size_t>(n);
  }
  shutdown(fds[1], SHUT_WR);

  boost::asio::io_context io;
  boost::asio::ip::tcp::socket socket(io);
  socket.assign(boost::asio::ip::tcp::v4(), fds[0]);
  static peer::LinkStats stats;
  peer::LinkConfig config;
  config.handshake_timeout = std::chrono::milliseconds(2000);
  mesh::v1::Hello hello;
  hello.set_node_name("fuzz");
  boost::asio::co_spawn(
      io,
      [&]() -> peer::awaitable<void> {
        auto stream = co_await peer::AcceptWebSocket(
            std::move(socket), {{"https://allowed.example"}, std::chrono::milliseconds(2000)});
        if (!stream.ok()) co_return;
        auto link = co_await peer::Link::Accept(*std::move(stream), ResponderKey(), hello,
                                                peer::LinkKind::kPeer, config, stats);
        if (link.ok()) (*link)->Close(absl::OkStatus());
      },
      boost::asio::detached);
  io.run();
  close(fds[1]);
  return 0;
}
