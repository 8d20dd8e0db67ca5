#include "broker/control/rest_routes.h"

#include <google/protobuf/util/json_util.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace mesh::broker {

namespace http = boost::beast::http;

RestTarget SplitTarget(std::string_view target) {
  RestTarget out;
  const size_t mark = target.find('?');
  out.path = std::string(target.substr(0, mark));
  if (mark == std::string_view::npos) return out;
  for (absl::string_view pair :
       absl::StrSplit(absl::string_view(target.data() + mark + 1, target.size() - mark - 1), '&',
                      absl::SkipEmpty())) {
    const size_t eq = pair.find('=');
    out.query[std::string(pair.substr(0, eq))] =
        eq == absl::string_view::npos ? "" : std::string(pair.substr(eq + 1));
  }
  return out;
}

RestRoute MatchPath(std::string_view path) {
  static const std::vector<std::pair<std::string_view, http::verb>> kFixed = {
      {"/healthz", http::verb::get},        {"/readyz", http::verb::get},
      {"/metrics", http::verb::get},        {"/api/v1/stats", http::verb::get},
      {"/api/v1/peers", http::verb::get},   {"/api/v1/messages", http::verb::post},
      {"/api/v1/members", http::verb::get}, {"/api/v1/drain", http::verb::post},
      {"/api/v1/events", http::verb::get},
  };
  for (const auto& [endpoint, method] : kFixed) {
    if (path == endpoint) return {std::string(endpoint), {method}, {}};
  }
  for (const std::string_view prefix : {"/api/v1/peers/", "/api/v1/mailboxes/"}) {
    if (path.size() > prefix.size() && path.substr(0, prefix.size()) == prefix &&
        path.find('/', prefix.size()) == std::string_view::npos) {
      return {std::string(prefix) + "{id}",
              {http::verb::get, http::verb::delete_},
              std::string(path.substr(prefix.size()))};
    }
  }
  return {std::string(kNoRoute), {}, {}};
}

absl::Status ParseJsonBody(std::string_view body, google::protobuf::Message& message) {
  if (body.empty()) return absl::OkStatus();
  google::protobuf::util::JsonParseOptions options;
  auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(body.data(), body.size()), &message, options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("the body is not a JSON ", message.GetTypeName(),
                                                   ": ", std::string(status.message())));
  }
  return absl::OkStatus();
}

}  // namespace mesh::broker
