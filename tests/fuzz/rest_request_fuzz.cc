// Fuzzes what the REST server does with a client's bytes before the control service sees them:
// Beast's HTTP/1.1 parser with the server's limits, then the target's path and query, the route,
// and the proto3 JSON body of the requests that carry one. Any input either parses into a route
// that keeps the invariants below or is refused with an error; nothing may crash or hang.
#include <google/protobuf/stubs/logging.h>

#include <boost/beast/core/buffers_prefix.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "broker/control/rest_routes.h"
#include "mesh/v1/control.pb.h"

namespace http = boost::beast::http;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mesh::broker;
  http::request_parser<http::string_body> parser;
  parser.eager(true);
  parser.header_limit(16 * 1024);  // HttpOptions' defaults
  parser.body_limit(size_t{2} << 20);
  boost::system::error_code ec;
  size_t offset = 0;
  while (offset < size && !parser.is_done()) {
    const size_t used = parser.put(boost::asio::buffer(data + offset, size - offset), ec);
    if (ec == http::error::need_more) break;
    if (ec) return 0;  // refused: the server answers 400, 413 or 431
    if (used == 0) break;
    offset += used;
  }
  if (!parser.is_done()) {
    parser.put_eof(ec);
    if (ec || !parser.is_done()) return 0;
  }
  const auto& request = parser.get();
  const std::string_view raw_target(request.target().data(), request.target().size());
  const RestTarget target = SplitTarget(raw_target);
  if (target.path.size() > raw_target.size() || target.path.find('?') != std::string::npos) {
    abort();
  }
  const RestRoute route = MatchPath(target.path);
  if ((route.endpoint == kNoRoute) != route.methods.empty()) abort();
  const bool has_id = route.endpoint.ends_with("/{id}");
  if (has_id != !route.id.empty() || route.id.find('/') != std::string::npos) abort();

  const std::string_view body = request.body();
  if (route.endpoint == "/api/v1/drain") {
    mesh::v1::DrainRequest drain;
    (void)ParseJsonBody(body, drain);
  } else {
    // Every other body still goes through the JSON mapping of the richest request.
    mesh::v1::SendMessageRequest send;
    const auto status = ParseJsonBody(body, send);
    if (body.empty() && !status.ok()) abort();
  }
  return 0;
}
