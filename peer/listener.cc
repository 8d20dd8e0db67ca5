#include "peer/listener.h"

#include <algorithm>
#include <boost/asio/connect.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <memory>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace mesh::peer {
namespace {

namespace asio = boost::asio;
using asio::redirect_error;
using asio::use_awaitable;
using asio::ip::tcp;
using boost::system::error_code;

// After a failed accept: long enough not to spin on EMFILE, short enough to serve again soon.
constexpr auto kAcceptPause = std::chrono::milliseconds(50);

}  // namespace

absl::StatusOr<std::pair<std::string, std::string>> SplitHostPort(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 == address.size()) {
    return absl::InvalidArgumentError(absl::StrCat("'", address, "' is not HOST:PORT"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return std::make_pair(host, address.substr(colon + 1));
}

absl::StatusOr<tcp::acceptor> Listen(asio::io_context& io, const std::string& address) {
  auto host_port = SplitHostPort(address);
  if (!host_port.ok()) return host_port.status();
  int port = 0;
  if (!absl::SimpleAtoi(host_port->second, &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("'", address, "' is not HOST:PORT"));
  }
  const std::string host = host_port->first.empty() ? "0.0.0.0" : host_port->first;
  error_code ec;
  const auto ip = asio::ip::make_address(host, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("'", host, "' is not an IP address"));
  const tcp::endpoint endpoint(ip, static_cast<uint16_t>(port));
  tcp::acceptor acceptor(io);
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address, ": ", ec.message()));
  }
  return acceptor;
}

asio::awaitable<void> AcceptLoop(tcp::acceptor& acceptor, std::vector<asio::io_context*> shards,
                                 ServeConnection serve,
                                 std::function<void(const error_code&)> on_failure) {
  for (size_t next = 0;; next = (next + 1) % shards.size()) {
    error_code ec;
    tcp::socket socket =
        co_await acceptor.async_accept(*shards[next], redirect_error(use_awaitable, ec));
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
    if (ec) {
      if (on_failure) on_failure(ec);
      asio::steady_timer pause(acceptor.get_executor(), kAcceptPause);
      co_await pause.async_wait(redirect_error(use_awaitable, ec));
      if (!acceptor.is_open()) co_return;
      continue;
    }
    const auto remote = socket.remote_endpoint(ec);
    if (ec) continue;  // gone already
    serve(next, std::move(socket), remote);
  }
}

asio::awaitable<absl::StatusOr<tcp::socket>> Dial(const std::string& address,
                                                  std::chrono::milliseconds timeout, bool spread) {
  auto executor = co_await asio::this_coro::executor;
  auto host_port = SplitHostPort(address);
  if (!host_port.ok()) co_return host_port.status();
  if (host_port->first.empty()) host_port->first = "127.0.0.1";
  tcp::resolver resolver(executor);
  error_code ec;
  auto resolved = co_await resolver.async_resolve(host_port->first, host_port->second,
                                                  redirect_error(use_awaitable, ec));
  if (ec) {
    co_return absl::UnavailableError(absl::StrCat("cannot resolve ", address, ": ", ec.message()));
  }
  std::vector<tcp::endpoint> candidates;
  for (const auto& entry : resolved) candidates.push_back(entry.endpoint());
  if (spread) {
    thread_local std::mt19937 shuffle(std::random_device{}());
    std::shuffle(candidates.begin(), candidates.end(), shuffle);
  }
  // The deadline's handler may already be queued when the connect completes, and then runs
  // after this coroutine has returned: it reaches the socket only while the coroutine has it.
  auto socket = std::make_shared<tcp::socket>(executor);
  asio::steady_timer deadline(executor, timeout);
  deadline.async_wait([weak = std::weak_ptr<tcp::socket>(socket)](const error_code& e) {
    auto socket = weak.lock();
    if (e || !socket) return;
    error_code ignored;
    socket->close(ignored);
  });
  co_await asio::async_connect(*socket, candidates, redirect_error(use_awaitable, ec));
  deadline.cancel();
  if (ec) {
    co_return absl::UnavailableError(
        absl::StrCat("cannot connect to ", address, ": ",
                     ec == asio::error::operation_aborted ? "timed out" : ec.message()));
  }
  co_return std::move(*socket);
}

}  // namespace mesh::peer
