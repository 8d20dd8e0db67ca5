// What the REST server reads from a request before it calls the control service: the path and
// query of the target, the route it names, and a proto3 JSON body. Pure functions, no sockets,
// so the fuzzer reaches them with any bytes a client can send.
#pragma once

#include <google/protobuf/message.h>

#include <boost/beast/http/verb.hpp>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace mesh::broker {

struct RestTarget {
  std::string path;
  std::map<std::string, std::string> query;  // later repeats of a name win
};

// Splits "/a/b?x=1&y=2" into the path and its query parameters. Nothing is percent-decoded:
// no route or parameter of the API needs it.
RestTarget SplitTarget(std::string_view target);

// One route: its template (the metrics label), the methods it takes, and the path's {id}.
struct RestRoute {
  std::string endpoint;  // "/api/v1/peers/{id}"; kNoRoute when nothing matched
  std::vector<boost::beast::http::verb> methods;  // empty when nothing matched
  std::string id;                                 // never holds a '/'
};
inline constexpr std::string_view kNoRoute = "other";

RestRoute MatchPath(std::string_view path);

// `body` as `message` in the proto3 JSON mapping; an empty body is an empty message. The
// error says what was expected and what the JSON parser found.
absl::Status ParseJsonBody(std::string_view body, google::protobuf::Message& message);

}  // namespace mesh::broker
