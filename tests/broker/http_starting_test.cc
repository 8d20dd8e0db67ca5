// The control plane's HTTP listener while the broker starts (before its store has recovered):
// alive, not ready, and a clear 503 for everything else. Real sockets, a Beast client.
#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "broker/control/http_server.h"
#include "prometheus/registry.h"

namespace mesh::broker {
namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;

http::response<http::string_body> Get(int port, const std::string& target) {
  asio::io_context io;
  asio::ip::tcp::socket socket(io);
  socket.connect({asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)});
  http::request<http::empty_body> request(http::verb::get, target, 11);
  request.set(http::field::host, "127.0.0.1");
  request.set(http::field::authorization, "Bearer not-checked-while-starting");
  http::write(socket, request);
  boost::beast::flat_buffer buffer;
  http::response<http::string_body> response;
  http::read(socket, buffer, response);
  return response;
}

TEST(HttpStartingTest, AliveButNotReadyUntilTheServiceIsThere) {
  prometheus::Registry registry;
  monitoring::RequestMetrics metrics(registry);
  HttpOptions options;
  options.address = "127.0.0.1:0";
  options.exposition = [] {
    ADD_FAILURE() << "/metrics read the service before it was there";
    return std::string();
  };
  auto server = HttpServer::Start(metrics, options);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();

  const auto healthz = Get(port, "/healthz");
  EXPECT_EQ(healthz.result(), http::status::ok);
  EXPECT_NE(healthz.body().find("starting"), std::string::npos) << healthz.body();
  EXPECT_EQ(Get(port, "/readyz").result(), http::status::service_unavailable);
  EXPECT_EQ(Get(port, "/metrics").result(), http::status::service_unavailable);
  const auto stats = Get(port, "/api/v1/stats");
  EXPECT_EQ(stats.result(), http::status::service_unavailable);
  EXPECT_NE(stats.body().find("\"UNAVAILABLE\""), std::string::npos) << stats.body();
  // An unknown path is still told where the API is, starting or not.
  EXPECT_EQ(Get(port, "/nope").result(), http::status::not_found);
  (*server)->Shutdown();
}

}  // namespace
}  // namespace mesh::broker
