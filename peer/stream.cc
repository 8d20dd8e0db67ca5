#include "peer/stream.h"

#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

namespace mesh::peer {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::redirect_error;
using asio::use_awaitable;
using tcp = asio::ip::tcp;

class Tcp final : public ByteStream {
 public:
  explicit Tcp(tcp::socket socket) : socket_(std::move(socket)) {
    error_code ec;
    socket_.set_option(tcp::no_delay(true), ec);
    socket_.non_blocking(true, ec);  // TryRead must never block a shard
  }
  ~Tcp() override { Close(mesh::v1::ERROR_CODE_UNSPECIFIED); }

  Executor get_executor() override { return socket_.get_executor(); }
  bool is_open() const override { return socket_.is_open(); }
  size_t TryRead(asio::mutable_buffer buffer, error_code& ec) override {
    return socket_.read_some(buffer, ec);
  }
  awaitable<void> WaitReadable(error_code& ec) override {
    co_await socket_.async_wait(tcp::socket::wait_read, redirect_error(use_awaitable, ec));
  }
  awaitable<size_t> ReadSome(asio::mutable_buffer buffer, error_code& ec) override {
    co_return co_await socket_.async_read_some(buffer, redirect_error(use_awaitable, ec));
  }
  awaitable<void> Write(asio::const_buffer bytes, size_t, error_code& ec) override {
    co_await asio::async_write(socket_, bytes, redirect_error(use_awaitable, ec));
  }
  void Close(mesh::v1::ErrorCode) override {
    if (!socket_.is_open()) return;
    error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
  }

 private:
  tcp::socket socket_;
};

class StreamErrors final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "mesh.stream"; }
  std::string message(int value) const override {
    switch (static_cast<StreamError>(value)) {
      case StreamError::kTextMessage:
        return "a text WebSocket message (links carry binary messages only)";
      case StreamError::kMessageTooLarge:
        return "a WebSocket message over 65535 bytes";
    }
    return "stream error";
  }
};

}  // namespace

const boost::system::error_category& StreamErrorCategory() {
  static const StreamErrors category;
  return category;
}

std::unique_ptr<ByteStream> TcpStream(tcp::socket socket) {
  return std::make_unique<Tcp>(std::move(socket));
}

awaitable<void> ReadExact(ByteStream& stream, asio::mutable_buffer buffer,
                          boost::system::error_code& ec) {
  while (buffer.size() > 0) {
    const size_t n = co_await stream.ReadSome(buffer, ec);
    if (ec) co_return;
    buffer += n;
  }
}

}  // namespace mesh::peer
