#include "peer/websocket.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "peer/peer.h"
#include "peer/wire.h"

namespace mesh::peer {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using asio::awaitable;
using asio::redirect_error;
using asio::use_awaitable;
using error_code = boost::system::error_code;
using tcp = asio::ip::tcp;
// The socket itself (or TLS over it) under the websocket stream: Beast's tcp_stream would add
// its timers to every idle link; the few deadlines here are Deadline's.
using Tls = asio::ssl::stream<tcp::socket>;
template <class Next>
using Ws = websocket::stream<Next>;

template <class Next>
tcp::socket& SocketOf(Ws<Next>& ws) {
  return beast::get_lowest_layer(ws);
}

constexpr size_t kMaxMessage = 65535;
constexpr auto kCloseTimeout = std::chrono::seconds(1);

websocket::close_code CloseCodeOf(mesh::v1::ErrorCode reason) {
  switch (reason) {
    case mesh::v1::ERROR_CODE_UNSPECIFIED:
      return websocket::close_code::normal;
    case mesh::v1::FRAME_TOO_LARGE:
    case mesh::v1::HANDSHAKE_TOO_LARGE:
      return websocket::close_code::too_big;
    case mesh::v1::OVERLOADED:
    case mesh::v1::STALLED:
      return websocket::close_code::policy_error;
    default:
      return websocket::close_code::protocol_error;
  }
}

// Closes the socket under `ws` unless destroyed first: the deadline of an upgrade, or of a
// close. `armed` keeps a timer that fired just before the destructor ran from closing a socket
// whose upgrade has meanwhile succeeded (a cancel cannot take back a queued completion).
class Deadline {
 public:
  template <class Next>
  Deadline(const std::shared_ptr<Ws<Next>>& ws, std::chrono::steady_clock::time_point at)
      : timer_(ws->get_executor()), armed_(std::make_shared<bool>(true)) {
    timer_.expires_at(at);
    timer_.async_wait([weak = std::weak_ptr<Ws<Next>>(ws), armed = armed_](const error_code& ec) {
      auto ws = weak.lock();
      if (ec || !*armed || !ws) return;
      error_code ignored;
      SocketOf(*ws).close(ignored);
    });
  }
  ~Deadline() { *armed_ = false; }  // destroying timer_ cancels its wait
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

 private:
  asio::steady_timer timer_;
  std::shared_ptr<bool> armed_;
};

// Sends a close unless one went already (Beast sends 1009 itself), then lets the other side
// read it: the socket is shut for sending and drained until the other side closes, all within
// kCloseTimeout. Closing at once would reset the connection under the close frame.
template <class Next>
void CloseSoon(std::shared_ptr<Ws<Next>> ws, const websocket::close_reason& reason) {
  auto executor = ws->get_executor();
  asio::co_spawn(
      executor,
      [ws = std::move(ws), reason]() -> awaitable<void> {
        Deadline deadline(ws, std::chrono::steady_clock::now() + kCloseTimeout);
        auto& socket = SocketOf(*ws);
        error_code ec;
        if (ws->is_open()) co_await ws->async_close(reason, redirect_error(use_awaitable, ec));
        socket.shutdown(tcp::socket::shutdown_send, ec);
        std::array<char, 512> sink;
        for (ec.clear(); !ec;) {
          co_await socket.async_read_some(asio::buffer(sink), redirect_error(use_awaitable, ec));
        }
        socket.close(ec);
      },
      asio::detached);
}

// Reads one WebSocket message per read and hands it on as the TCP layout would carry it: a
// 2-byte length first, except for an 8-byte message that starts with the magic (a preamble
// or a refusal; no Noise message is that short).
template <class Next>
class WebSocket final : public ByteStream {
 public:
  // A TLS stream needs no context of ours kept: its SSL holds a reference to the SSL_CTX.
  explicit WebSocket(std::shared_ptr<Ws<Next>> ws) : ws_(std::move(ws)) {
    ws_->binary(true);
    ws_->read_message_max(kMaxMessage);
    error_code ec;  // the Link keeps its own deadlines
    SocketOf(*ws_).set_option(tcp::no_delay(true), ec);
  }
  ~WebSocket() override { Close(mesh::v1::ERROR_CODE_UNSPECIFIED); }

  Executor get_executor() override { return ws_->get_executor(); }
  bool is_open() const override { return !closed_ && ws_->is_open(); }

  size_t TryRead(asio::mutable_buffer buffer, error_code& ec) override {
    if (!Pending()) {
      ec = asio::error::would_block;
      return 0;
    }
    ec.clear();
    return Take(buffer);
  }
  awaitable<void> WaitReadable(error_code& ec) override {
    ec.clear();
    if (!Pending()) co_await ReadMessage(ec);
  }
  awaitable<size_t> ReadSome(asio::mutable_buffer buffer, error_code& ec) override {
    ec.clear();
    if (!Pending()) co_await ReadMessage(ec);
    if (ec) co_return 0;
    co_return Take(buffer);
  }
  awaitable<void> Write(asio::const_buffer bytes, size_t raw, error_code& ec) override {
    const auto* data = static_cast<const uint8_t*>(bytes.data());
    size_t at = 0;
    if (raw > 0) {
      co_await ws_->async_write(asio::buffer(data, raw), redirect_error(use_awaitable, ec));
      if (ec) co_return;
      at = raw;
    }
    while (at + kLengthPrefixSize <= bytes.size()) {
      const size_t length = (size_t{data[at]} << 8) | data[at + 1];
      at += kLengthPrefixSize;
      if (at + length > bytes.size()) break;
      co_await ws_->async_write(asio::buffer(data + at, length), redirect_error(use_awaitable, ec));
      if (ec) co_return;
      at += length;
    }
    if (at != bytes.size()) ec = asio::error::invalid_argument;  // not whole messages: a bug
  }
  void Close(mesh::v1::ErrorCode reason) override {
    if (closed_) return;
    closed_ = true;
    if (!SocketOf(*ws_).is_open()) return;
    CloseSoon(ws_, websocket::close_reason(CloseCodeOf(reason)));
  }

 private:
  bool Pending() const { return head_size_ > head_at_ || message_.size() > 0; }

  // Reads the next whole message. An idle link waits for it on a read of its first byte into
  // `first_`, so it holds no message buffer (Beast prepares 1,536 bytes in one for a pending
  // whole-message read); the rest of the message follows into `message_`.
  awaitable<void> ReadMessage(error_code& ec) {
    size_t first =
        co_await ws_->async_read_some(asio::buffer(&first_, 1), redirect_error(use_awaitable, ec));
    if (!ec && !ws_->is_message_done()) {
      co_await ws_->async_read(message_, redirect_error(use_awaitable, ec));
    }
    if (ec == websocket::error::closed) {
      ec = asio::error::eof;  // a close from the other side ends the link as TCP's FIN does
    } else if (ec == websocket::error::message_too_big) {
      ec = MakeError(StreamError::kMessageTooLarge);
    } else if (!ec && ws_->got_text()) {
      ec = MakeError(StreamError::kTextMessage);
    }
    if (ec) {
      message_.clear();
      co_return;
    }
    const size_t size = first + message_.size();
    const auto* rest = static_cast<const uint8_t*>(message_.data().data());
    const bool raw = size == kPreambleSize && first_ == kMagic[0] &&
                     std::equal(kMagic.begin() + 1, kMagic.end(), rest);
    head_[0] = static_cast<uint8_t>(size >> 8);
    head_[1] = static_cast<uint8_t>(size);
    head_[2] = first_;
    head_at_ = raw ? kLengthPrefixSize : 0;
    head_size_ = kLengthPrefixSize + first;
  }

  size_t Take(asio::mutable_buffer buffer) {
    auto* out = static_cast<uint8_t*>(buffer.data());
    size_t n = 0;
    while (n < buffer.size() && head_at_ < head_size_) out[n++] = head_[head_at_++];
    const size_t body = std::min(buffer.size() - n, message_.size());
    asio::buffer_copy(asio::buffer(out + n, body), message_.data());
    message_.consume(body);
    n += body;
    if (!Pending()) {
      head_size_ = head_at_ = 0;
      message_.shrink_to_fit();  // idle links keep no message buffer
    }
    return n;
  }

  std::shared_ptr<Ws<Next>> ws_;
  beast::flat_buffer message_;  // a message after its first byte
  uint8_t first_ = 0;
  // What goes before message_ to the reader: the 2-byte length (skipped for a preamble or a
  // refusal, which travel raw) and the message's first byte.
  uint8_t head_[kLengthPrefixSize + 1] = {};
  size_t head_size_ = 0;
  size_t head_at_ = 0;
  bool closed_ = false;
};

bool HasToken(const std::string& list, absl::string_view token) {
  for (absl::string_view item : absl::StrSplit(list, ',')) {
    if (absl::StripAsciiWhitespace(item) == token) return true;
  }
  return false;
}

// The upgrade on an accepted connection (after TLS, for wss), within `deadline_at`.
template <class Next>
awaitable<absl::StatusOr<std::unique_ptr<ByteStream>>> Upgrade(
    std::shared_ptr<Ws<Next>> ws, const WebSocketAcceptOptions& options,
    std::chrono::steady_clock::time_point deadline_at) {
  Deadline deadline(ws, deadline_at);
  beast::flat_buffer buffer;
  http::request<http::empty_body> request;
  http::request_parser<http::empty_body> parser;
  parser.header_limit(8 * 1024);
  error_code ec;
  co_await http::async_read(ws->next_layer(), buffer, parser, redirect_error(use_awaitable, ec));
  if (ec) {
    co_return absl::InvalidArgumentError(
        absl::StrCat("not an HTTP WebSocket upgrade: ", ec.message()));
  }
  request = parser.release();
  auto refuse_http = [&](http::status status, std::string why) -> awaitable<absl::Status> {
    http::response<http::string_body> response(status, request.version());
    response.set(http::field::content_type, "text/plain");
    response.set(http::field::connection, "close");
    response.body() = why + "\n";
    response.prepare_payload();
    error_code ignored;
    co_await http::async_write(ws->next_layer(), response, redirect_error(use_awaitable, ignored));
    SocketOf(*ws).close(ignored);
    co_return absl::InvalidArgumentError(why);
  };
  const std::string target(request.target());
  if (target != kWebSocketPath && !absl::StartsWith(target, absl::StrCat(kWebSocketPath, "?"))) {
    co_return co_await refuse_http(
        http::status::not_found,
        absl::StrCat("no endpoint ", target, "; links use ", kWebSocketPath));
  }
  if (!websocket::is_upgrade(request)) {
    co_return co_await refuse_http(http::status::upgrade_required,
                                   "a WebSocket upgrade is expected here");
  }
  std::string policy;
  const std::string protocols(request[http::field::sec_websocket_protocol]);
  const std::string origin(request[http::field::origin]);
  const bool speaks = HasToken(protocols, kWebSocketProtocol);
  if (!speaks) {
    policy = absl::StrCat("the subprotocol ", kWebSocketProtocol, " is required");
  } else if (!options.allowed_origins.empty() && !origin.empty() &&
             std::find(options.allowed_origins.begin(), options.allowed_origins.end(), origin) ==
                 options.allowed_origins.end()) {
    policy = absl::StrCat("origin ", origin, " is not allowed (--ws-allowed-origins)");
  }
  ws->set_option(websocket::stream_base::decorator([speaks](websocket::response_type& response) {
    if (speaks) response.set(http::field::sec_websocket_protocol, kWebSocketProtocol);
  }));
  co_await ws->async_accept(request, redirect_error(use_awaitable, ec));
  if (ec) co_return absl::InvalidArgumentError(absl::StrCat("WebSocket upgrade: ", ec.message()));
  if (!policy.empty()) {
    // A WebSocket close reason is at most 123 bytes.
    CloseSoon(ws,
              websocket::close_reason(websocket::close_code::policy_error, policy.substr(0, 123)));
    co_return absl::PermissionDeniedError(policy);
  }
  co_return std::make_unique<WebSocket<Next>>(std::move(ws));
}

// The client's upgrade over a connected (and, for wss, TLS) stream.
template <class Next>
awaitable<absl::StatusOr<std::unique_ptr<ByteStream>>> Handshake(std::shared_ptr<Ws<Next>> ws,
                                                                 const WebSocketAddress& address) {
  // A client masks what it sends through this buffer, one write per buffer's worth: room for a
  // whole packed record keeps it one write (Beast's default, 4 KiB, made a 64 KiB record 16).
  ws->write_buffer_bytes(kMaxMessage);
  ws->set_option(websocket::stream_base::decorator([](websocket::request_type& request) {
    request.set(http::field::sec_websocket_protocol, kWebSocketProtocol);
  }));
  websocket::response_type response;
  error_code ec;
  co_await ws->async_handshake(response, address.host_port, address.path,
                               redirect_error(use_awaitable, ec));
  const std::string where = absl::StrCat(address.host_port, address.path);
  if (ec) {
    co_return absl::UnavailableError(
        absl::StrCat("WebSocket upgrade at ", where, ": ", ec.message()));
  }
  if (std::string(response[http::field::sec_websocket_protocol]) != kWebSocketProtocol) {
    co_return absl::UnavailableError(
        absl::StrCat("the server at ", where, " does not speak ", kWebSocketProtocol));
  }
  co_return std::make_unique<WebSocket<Next>>(std::move(ws));
}

bool IsIpAddress(const std::string& host) {
  error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

}  // namespace

awaitable<absl::StatusOr<std::unique_ptr<ByteStream>>> AcceptWebSocket(
    tcp::socket socket, const WebSocketAcceptOptions& options) {
  const auto deadline_at = std::chrono::steady_clock::now() + options.timeout;
  if (!options.tls) {
    co_return co_await Upgrade(std::make_shared<Ws<tcp::socket>>(std::move(socket)), options,
                               deadline_at);
  }
  auto ws = std::make_shared<Ws<Tls>>(std::move(socket), *options.tls);
  {
    Deadline deadline(ws, deadline_at);
    error_code ec;
    co_await ws->next_layer().async_handshake(asio::ssl::stream_base::server,
                                              redirect_error(use_awaitable, ec));
    if (ec) co_return absl::InvalidArgumentError(absl::StrCat("TLS handshake: ", ec.message()));
  }
  co_return co_await Upgrade(std::move(ws), options, deadline_at);
}

awaitable<absl::StatusOr<std::unique_ptr<ByteStream>>> ConnectWebSocket(
    tcp::socket socket, const WebSocketAddress& address, TlsContext tls) {
  const auto deadline_at = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  if (!address.tls) {
    auto ws = std::make_shared<Ws<tcp::socket>>(std::move(socket));
    Deadline deadline(ws, deadline_at);
    co_return co_await Handshake(std::move(ws), address);
  }
  if (!tls) co_return absl::InvalidArgumentError("wss:// needs a TLS context");
  auto ws = std::make_shared<Ws<Tls>>(std::move(socket), *tls);
  Deadline deadline(ws, deadline_at);
  Tls& stream = ws->next_layer();
  // SNI for a name (never for an address), and the certificate must name the host.
  if (!IsIpAddress(address.host) &&
      !SSL_set_tlsext_host_name(stream.native_handle(), address.host.c_str())) {
    co_return absl::InvalidArgumentError(absl::StrCat("bad TLS server name ", address.host));
  }
  stream.set_verify_mode(asio::ssl::verify_peer);
  stream.set_verify_callback(asio::ssl::host_name_verification(address.host));
  error_code ec;
  co_await stream.async_handshake(asio::ssl::stream_base::client,
                                  redirect_error(use_awaitable, ec));
  if (ec) {
    co_return absl::UnavailableError(
        absl::StrCat("TLS handshake with ", address.host_port, ": ", ec.message()));
  }
  co_return co_await Handshake(std::move(ws), address);
}

bool IsWebSocketAddress(const std::string& address) {
  return absl::StartsWith(address, "ws://") || absl::StartsWith(address, "wss://");
}

absl::StatusOr<WebSocketAddress> ParseWebSocketAddress(const std::string& address) {
  absl::string_view rest = address;
  WebSocketAddress out;
  out.tls = absl::ConsumePrefix(&rest, "wss://");
  if (!out.tls && !absl::ConsumePrefix(&rest, "ws://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", address, "' is not a ws:// or wss:// address"));
  }
  const size_t slash = rest.find('/');
  out.host_port = std::string(rest.substr(0, slash));
  out.path = slash == absl::string_view::npos ? kWebSocketPath : std::string(rest.substr(slash));
  auto host_port = SplitHostPort(out.host_port);
  if (out.host_port.empty() || !host_port.ok() || host_port->first.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("'", address, "' names no HOST:PORT"));
  }
  out.host = host_port->first;
  return out;
}

absl::StatusOr<TlsContext> ServerTlsContext(const std::string& cert_file,
                                            const std::string& key_file) {
  auto context = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  context->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                       asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                       asio::ssl::context::no_tlsv1_1);
  SSL_CTX_set_mode(context->native_handle(), SSL_MODE_RELEASE_BUFFERS);
  error_code ec;
  context->use_certificate_chain_file(cert_file, ec);
  if (!ec) context->use_private_key_file(key_file, asio::ssl::context::pem, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot use TLS files ", cert_file, " and ", key_file, ": ", ec.message()));
  }
  return context;
}

absl::StatusOr<TlsContext> ClientTlsContext(const std::string& ca_file) {
  auto context = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  context->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                       asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                       asio::ssl::context::no_tlsv1_1);
  error_code ec;
  if (ca_file.empty()) {
    context->set_default_verify_paths(ec);
  } else {
    context->load_verify_file(ca_file, ec);
  }
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat("cannot load TLS trust anchors",
                                                   ca_file.empty() ? "" : " from " + ca_file, ": ",
                                                   ec.message()));
  }
  return context;
}

}  // namespace mesh::peer
