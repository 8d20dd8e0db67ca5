// What the link fuzzers share: the responder's key, quiet protobuf logs, and the input written
// into one end of a socket pair (then shut for writing), the other end a socket for `io`.
#pragma once

#include <google/protobuf/stubs/logging.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <cstdint>
#include <optional>

#include "crypto/crypto.h"

namespace mesh::fuzz {

inline const crypto::KeyPair& ResponderKey() {
  static const crypto::KeyPair key = crypto::KeyPair::Generate();
  return key;
}

inline void InitLinkFuzzing() {
  google::protobuf::SetLogHandler(nullptr);
  (void)crypto::Init();
}

// The socket reading `data`; `writer` is the other end, for the caller to close after io.run().
inline std::optional<boost::asio::ip::tcp::socket> SocketReading(boost::asio::io_context& io,
                                                                 const uint8_t* data, size_t size,
                                                                 int& writer) {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return std::nullopt;
  size_t written = 0;
  while (written < size) {
    ssize_t n = write(fds[1], data + written, size - written);
    if (n <= 0) break;
    written += static_cast<size_t>(n);
  }
  shutdown(fds[1], SHUT_WR);
  writer = fds[1];
  boost::asio::ip::tcp::socket socket(io);
  socket.assign(boost::asio::ip::tcp::v4(), fds[0]);
  return socket;
}

}  // namespace mesh::fuzz
