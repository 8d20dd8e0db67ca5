// The bytes under a Link: a TCP socket, or a WebSocket connection that carries each Noise
// message as one binary message (DESIGN §3). A Link reads and writes the TCP layout either way
// (a preamble, then length-prefixed Noise messages); a WebSocket stream adds the length prefix
// to each message it reads and takes it off each one it writes.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/system/error_code.hpp>
#include <memory>

#include "mesh/v1/wire.pb.h"

namespace mesh::peer {

class ByteStream {
 public:
  using Executor = boost::asio::any_io_executor;
  using error_code = boost::system::error_code;
  virtual ~ByteStream() = default;

  virtual Executor get_executor() = 0;
  virtual bool is_open() const = 0;
  // Reads what is there without waiting: would_block when nothing is.
  virtual size_t TryRead(boost::asio::mutable_buffer buffer, error_code& ec) = 0;
  // Waits until a read would find bytes, without a buffer of the caller's (idle links hold
  // none).
  virtual boost::asio::awaitable<void> WaitReadable(error_code& ec) = 0;
  virtual boost::asio::awaitable<size_t> ReadSome(boost::asio::mutable_buffer buffer,
                                                  error_code& ec) = 0;
  // Writes all of `bytes`: the first `raw` of them (a preamble, a refusal) as they are, the
  // rest as whole length-prefixed messages.
  virtual boost::asio::awaitable<void> Write(boost::asio::const_buffer bytes, size_t raw,
                                             error_code& ec) = 0;
  // Closes now, saying why where the transport can (a WebSocket close code); idempotent.
  virtual void Close(mesh::v1::ErrorCode reason) = 0;
};

// What a transport refused in what it read; a Link reports it as a protocol violation.
enum class StreamError {
  kTextMessage = 1,      // a WebSocket text message: links carry binary messages only
  kMessageTooLarge = 2,  // a WebSocket message over 65535 bytes (no Noise message is)
};
const boost::system::error_category& StreamErrorCategory();
inline boost::system::error_code MakeError(StreamError e) {
  return {static_cast<int>(e), StreamErrorCategory()};
}

// TCP: the bytes as they are, Nagle off, reads never blocking the shard.
std::unique_ptr<ByteStream> TcpStream(boost::asio::ip::tcp::socket socket);

// Reads exactly buffer.size() bytes.
boost::asio::awaitable<void> ReadExact(ByteStream& stream, boost::asio::mutable_buffer buffer,
                                       boost::system::error_code& ec);

}  // namespace mesh::peer
