#include "broker/control/http_server.h"

#include <google/protobuf/util/json_util.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "broker/control/rest_routes.h"
#include "peer/peer.h"
#include "peer/websocket.h"

namespace mesh::broker {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::awaitable;
using asio::use_awaitable;
using tcp = asio::ip::tcp;
using Request = http::request<http::string_body>;

constexpr auto kIdleTimeout = std::chrono::seconds(60);
// How long a SendMessage waits for its SendAck before answering DEADLINE_EXCEEDED.
constexpr auto kSendTimeout = std::chrono::milliseconds(15000);
constexpr auto kEventHeartbeat = std::chrono::seconds(15);
constexpr const char* kJson = "application/json";

// A SendMessage whose SendAck has not come yet: the connection's coroutine waits on `timer`,
// which the answer (from whatever thread settles it, posted to the server's thread) cancels.
// The single HTTP thread serves /readyz and /metrics meanwhile.
struct PendingSend {
  explicit PendingSend(asio::io_context& io) : timer(io) {}
  std::shared_ptr<Session> sender;  // kept until the answer comes, or the wait ends
  asio::steady_timer timer;
  std::optional<absl::StatusOr<mesh::v1::SendMessageResponse>> result;
};

struct Reply {
  Reply(http::status status = http::status::ok, std::string body = {},
        std::string content_type = kJson)
      : status(status), body(std::move(body)), content_type(std::move(content_type)) {}
  http::status status;
  std::string body;
  std::string content_type;
  std::string allow;                     // for 405
  std::shared_ptr<PendingSend> pending;  // set: the reply is the send's answer, once it comes
};

http::status HttpStatusOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return http::status::ok;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return http::status::bad_request;
    case absl::StatusCode::kUnauthenticated:
      return http::status::unauthorized;
    case absl::StatusCode::kPermissionDenied:
      return http::status::forbidden;
    case absl::StatusCode::kNotFound:
      return http::status::not_found;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted:
      return http::status::conflict;
    case absl::StatusCode::kResourceExhausted:
      return http::status::too_many_requests;
    case absl::StatusCode::kUnavailable:
      return http::status::service_unavailable;
    case absl::StatusCode::kDeadlineExceeded:
      return http::status::gateway_timeout;
    case absl::StatusCode::kUnimplemented:
      return http::status::not_implemented;
    default:
      return http::status::internal_server_error;
  }
}

// {code, message}: the google.rpc code name and a sentence a person can act on.
Reply Error(absl::StatusCode code, std::string_view message,
            std::optional<http::status> status = std::nullopt) {
  nlohmann::json body;
  body["code"] = absl::StatusCodeToString(code);
  body["message"] = std::string(message);
  return {status.value_or(HttpStatusOf(code)), body.dump() + "\n"};
}

Reply Error(const absl::Status& status) {
  return Error(status.code(), std::string(status.message()));
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out + "\n";
}

template <typename Response>
Reply Answer(const absl::StatusOr<Response>& result) {
  if (!result.ok()) return Error(result.status());
  return {http::status::ok, ToJson(*result)};
}

}  // namespace

struct HttpServer::Impl {
  Impl(monitoring::RequestMetrics& metrics, HttpOptions options)
      : metrics(metrics), options(std::move(options)), acceptor(io) {}

  // Null while the broker starts (HttpServer::Serve sets it on this thread): only /healthz
  // answers 200 meanwhile, so a startup probe sees a live process during a long recovery.
  ControlService* service = nullptr;
  monitoring::RequestMetrics& metrics;
  HttpOptions options;
  asio::io_context io;
  tcp::acceptor acceptor;
  peer::TlsContext tls;  // set: every connection starts with a TLS handshake
  std::thread thread;
  int port = 0;

  Reply Handle(const Request& request, const RestRoute& match,
               const std::map<std::string, std::string>& query) {
    const http::verb method = request.method();
    if (match.endpoint == "/healthz") {
      return service->live() ? Reply{http::status::ok, "ok\n", "text/plain"}
                             : Reply{http::status::service_unavailable,
                                     "store unavailable, not resuming: restart\n", "text/plain"};
    }
    if (match.endpoint == "/readyz") {
      return service->ready()
                 ? Reply{http::status::ok, "ready\n", "text/plain"}
                 : Reply{http::status::service_unavailable, "not ready\n", "text/plain"};
    }
    if (match.endpoint == "/metrics") {
      return {http::status::ok, options.exposition ? options.exposition() : std::string(),
              "text/plain; version=0.0.4; charset=utf-8"};
    }
    if (match.endpoint == "/api/v1/stats") return Answer(service->GetStats({}));
    if (match.endpoint == "/api/v1/peers") {
      mesh::v1::ListPeersRequest list;
      if (auto it = query.find("page_size"); it != query.end()) {
        uint32_t size = 0;
        if (!absl::SimpleAtoi(it->second, &size)) {
          return Error(absl::StatusCode::kInvalidArgument,
                       absl::StrCat("page_size '", it->second, "' is not a number"));
        }
        list.set_page_size(size);
      }
      if (auto it = query.find("page_token"); it != query.end()) list.set_page_token(it->second);
      return Answer(service->ListPeers(list));
    }
    if (match.endpoint == "/api/v1/peers/{id}") {
      if (method == http::verb::get) {
        mesh::v1::GetPeerRequest get;
        get.set_id(match.id);
        return Answer(service->GetPeer(get));
      }
      mesh::v1::DisconnectPeerRequest disconnect;
      disconnect.set_id(match.id);
      return Answer(service->DisconnectPeer(disconnect));
    }
    if (match.endpoint == "/api/v1/mailboxes/{id}") {
      if (method == http::verb::get) {
        mesh::v1::GetMailboxRequest get;
        get.set_id(match.id);
        return Answer(service->GetMailbox(get));
      }
      mesh::v1::PurgeMailboxRequest purge;
      purge.set_id(match.id);
      return Answer(service->PurgeMailbox(purge));
    }
    if (match.endpoint == "/api/v1/messages") {
      mesh::v1::SendMessageRequest send;
      if (auto status = ParseJsonBody(request.body(), send); !status.ok()) return Error(status);
      Reply reply;
      reply.pending = std::make_shared<PendingSend>(io);
      reply.pending->sender = service->StartSend(
          send, [this, weak = std::weak_ptr<PendingSend>(reply.pending)](auto result) {
            asio::post(io, [weak, result = std::move(result)]() mutable {
              auto pending = weak.lock();
              if (!pending) return;  // the wait ended: nobody to answer
              pending->result = std::move(result);
              pending->timer.cancel();
            });
          });
      return reply;
    }
    if (match.endpoint == "/api/v1/members") return Answer(service->ListMembers({}));
    if (match.endpoint == "/api/v1/drain") {
      mesh::v1::DrainRequest drain;
      if (auto status = ParseJsonBody(request.body(), drain); !status.ok()) return Error(status);
      return Answer(service->Drain(drain));
    }
    return Error(absl::StatusCode::kNotFound, "no such endpoint");
  }

  // Before the control service is there: alive, not ready, nothing else yet.
  static Reply Starting(const RestRoute& match) {
    if (match.endpoint == "/healthz") {
      return {http::status::ok, "starting: the store is recovering\n", "text/plain"};
    }
    if (match.endpoint == "/readyz" || match.endpoint == "/metrics") {
      return {http::status::service_unavailable, "starting: the store is recovering\n",
              "text/plain"};
    }
    return Error(absl::StatusCode::kUnavailable,
                 "the broker is starting (its store is recovering): retry in a moment");
  }

  // Routing, method and token checks around Handle; `events` is set for a stream to start.
  Reply Route(const Request& request, const RestRoute& match, const RestTarget& target,
              bool& events) {
    if (service == nullptr && !match.methods.empty()) return Starting(match);
    if (match.methods.empty()) {
      return Error(
          absl::StatusCode::kNotFound,
          absl::StrCat("no endpoint ", target.path, "; the API is under /api/v1 (docs/API.md)"));
    }
    if (std::find(match.methods.begin(), match.methods.end(), request.method()) ==
        match.methods.end()) {
      std::string allow;
      for (auto method : match.methods) {
        absl::StrAppend(&allow, allow.empty() ? "" : ", ", std::string(http::to_string(method)));
      }
      Reply reply = Error(absl::StatusCode::kInvalidArgument,
                          absl::StrCat(std::string(request.method_string()), " is not allowed on ",
                                       match.endpoint, "; use ", allow),
                          http::status::method_not_allowed);
      reply.allow = allow;
      return reply;
    }
    if (match.endpoint.rfind("/api/", 0) == 0) {
      const auto header = request.find(http::field::authorization);
      const std::string_view authorization =
          header == request.end()
              ? std::string_view()
              : std::string_view(header->value().data(), header->value().size());
      if (!service->Authorized(authorization)) {
        return Error(absl::StatusCode::kUnauthenticated,
                     "missing or wrong admin token: send 'Authorization: Bearer <token>' (the "
                     "token is in --admin-token-file, or admin.token in the data dir)");
      }
    }
    if (match.endpoint == "/api/v1/events") {
      events = true;
      return {};
    }
    return Handle(request, match, target.query);
  }

  awaitable<void> Serve(tcp::socket socket) {
    const peer::TlsContext context = tls;  // a reload meanwhile changes only later connections
    if (!context) {
      beast::tcp_stream stream(std::move(socket));
      co_await Exchange(stream);
      beast::error_code ignored;
      stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
      co_return;
    }
    beast::ssl_stream<beast::tcp_stream> stream(beast::tcp_stream(std::move(socket)), *context);
    beast::get_lowest_layer(stream).expires_after(kIdleTimeout);
    beast::error_code ec;
    co_await stream.async_handshake(asio::ssl::stream_base::server,
                                    asio::redirect_error(use_awaitable, ec));
    if (ec) co_return;  // not TLS, or a client that went away: nothing to answer
    co_await Exchange(stream);
    beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(2));
    co_await stream.async_shutdown(asio::redirect_error(use_awaitable, ec));
  }

  // Requests and responses on one connection, plain or TLS, until it ends.
  template <typename Stream>
  awaitable<void> Exchange(Stream& stream) {
    beast::flat_buffer buffer;
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.header_limit(options.header_limit);
      parser.body_limit(options.body_limit);
      beast::get_lowest_layer(stream).expires_after(kIdleTimeout);
      beast::error_code ec;
      co_await http::async_read(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
      if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
          ec == asio::error::eof || ec == asio::error::connection_reset) {
        break;
      }
      const auto started = std::chrono::steady_clock::now();
      Reply reply;
      RestRoute match{std::string(kNoRoute), {}, {}};
      bool keep_alive = false;
      bool events = false;
      if (ec == http::error::body_limit) {
        reply = Error(absl::StatusCode::kInvalidArgument,
                      absl::StrCat("the body is over ", options.body_limit, " bytes"),
                      http::status::payload_too_large);
      } else if (ec == http::error::header_limit) {
        reply = Error(absl::StatusCode::kInvalidArgument,
                      absl::StrCat("the headers are over ", options.header_limit, " bytes"),
                      http::status::request_header_fields_too_large);
      } else if (ec) {
        reply = Error(absl::StatusCode::kInvalidArgument,
                      absl::StrCat("not an HTTP/1.1 request: ", ec.message()));
      } else {
        const Request& request = parser.get();
        auto target =
            SplitTarget(std::string_view(request.target().data(), request.target().size()));
        match = MatchPath(target.path);
        keep_alive = request.keep_alive();
        reply = Route(request, match, target, events);
        if (reply.pending) reply = co_await AwaitSend(*reply.pending);
        if (events) {
          metrics.CountHttp("GET", match.endpoint, 200, {});
          co_await StreamEvents(stream, request.version());
          break;
        }
      }
      http::response<http::string_body> response{reply.status, parser.get().version()};
      response.set(http::field::server, "mesh-broker");
      response.set(http::field::content_type, reply.content_type);
      if (!reply.allow.empty()) response.set(http::field::allow, reply.allow);
      response.keep_alive(keep_alive);
      response.body() = std::move(reply.body);
      response.prepare_payload();
      const std::string method = ec ? "OTHER" : std::string(parser.get().method_string());
      co_await http::async_write(stream, response, asio::redirect_error(use_awaitable, ec));
      metrics.CountHttp(method, match.endpoint, static_cast<int>(reply.status),
                        std::chrono::duration_cast<std::chrono::microseconds>(
                            std::chrono::steady_clock::now() - started));
      if (ec || !keep_alive) break;
    }
  }

  awaitable<Reply> AwaitSend(PendingSend& pending) {
    if (!pending.result) {
      pending.timer.expires_after(kSendTimeout);
      beast::error_code ec;
      co_await pending.timer.async_wait(asio::redirect_error(use_awaitable, ec));
    }
    if (!pending.result) {
      co_return Error(absl::StatusCode::kDeadlineExceeded,
                      absl::StrCat("no SendAck within ", kSendTimeout.count(),
                                   " ms; the message may still arrive"));
    }
    co_return Answer(*pending.result);
  }

  // Server-Sent Events: one "data:" line of proto3 JSON per event, a comment line every 15 s
  // (so a gone client is noticed), until the client leaves or the server stops.
  template <typename Stream>
  awaitable<void> StreamEvents(Stream& stream, unsigned version) {
    auto watcher = service->WatchEvents({});
    struct CancelOnExit {
      std::shared_ptr<EventWatcher> watcher;
      ~CancelOnExit() { watcher->Cancel(); }
    } cancel{watcher};
    auto wake = std::make_shared<asio::steady_timer>(io);
    watcher->OnReady([weak = std::weak_ptr<asio::steady_timer>(wake), this] {
      asio::post(io, [weak] {
        if (auto timer = weak.lock()) timer->cancel();
      });
    });
    http::response<http::empty_body> response{http::status::ok, version};
    response.set(http::field::server, "mesh-broker");
    response.set(http::field::content_type, "text/event-stream");
    response.set(http::field::cache_control, "no-cache");
    response.keep_alive(false);
    http::response_serializer<http::empty_body> serializer{response};
    beast::error_code ec;
    beast::get_lowest_layer(stream).expires_never();
    co_await http::async_write_header(stream, serializer, asio::redirect_error(use_awaitable, ec));
    while (!ec) {
      std::string out;
      while (auto event = watcher->TryNext()) {
        google::protobuf::util::JsonPrintOptions options;
        std::string json;
        (void)google::protobuf::util::MessageToJsonString(*event, &json, options);
        absl::StrAppend(&out, "data: ", json, "\n\n");
      }
      if (!out.empty()) {
        co_await asio::async_write(stream, asio::buffer(out),
                                   asio::redirect_error(use_awaitable, ec));
        continue;
      }
      wake->expires_after(kEventHeartbeat);
      beast::error_code waited;
      co_await wake->async_wait(asio::redirect_error(use_awaitable, waited));
      if (!waited) {  // the heartbeat, not an event
        static const std::string kComment = ": still here\n\n";
        co_await asio::async_write(stream, asio::buffer(kComment),
                                   asio::redirect_error(use_awaitable, ec));
      }
    }
  }

  awaitable<void> AcceptLoop() {
    co_await peer::AcceptLoop(
        acceptor, {&io},
        [this](size_t, tcp::socket socket, const tcp::endpoint&) {
          asio::co_spawn(io, Serve(std::move(socket)), asio::detached);
        },
        [](const beast::error_code&) {});  // out of descriptors: the loop pauses and goes on
  }
};

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(monitoring::RequestMetrics& metrics,
                                                              HttpOptions options) {
  auto impl = std::make_unique<Impl>(metrics, std::move(options));
  if (impl->options.tls.enabled()) {
    auto tls = peer::ServerTlsContext(impl->options.tls.cert, impl->options.tls.key);
    if (!tls.ok()) return tls.status();
    impl->tls = *std::move(tls);
  }
  auto acceptor = peer::Listen(impl->io, impl->options.address);
  if (!acceptor.ok()) {
    return absl::Status(acceptor.status().code(),
                        absl::StrCat("HTTP: ", acceptor.status().message()));
  }
  impl->acceptor = *std::move(acceptor);
  impl->port = impl->acceptor.local_endpoint().port();
  // Every route's series exist at zero from the start, the answers a caller can expect
  // included (401 without a token, 400 for bad input), so rules see a first error's rise.
  const std::vector<int> kApiStatuses = {200, 400, 401, 404, 405, 429, 503};
  metrics.DeclareHttpRoute("GET", "/healthz", {200, 503});
  metrics.DeclareHttpRoute("GET", "/readyz", {200, 503});
  metrics.DeclareHttpRoute("GET", "/metrics", {200});
  for (const char* route : {"/api/v1/stats", "/api/v1/peers", "/api/v1/peers/{id}",
                            "/api/v1/mailboxes/{id}", "/api/v1/members", "/api/v1/events"}) {
    metrics.DeclareHttpRoute("GET", route, kApiStatuses);
  }
  for (const char* route : {"/api/v1/peers/{id}", "/api/v1/mailboxes/{id}"}) {
    metrics.DeclareHttpRoute("DELETE", route, kApiStatuses);
  }
  for (const char* route : {"/api/v1/messages", "/api/v1/drain"}) {
    metrics.DeclareHttpRoute("POST", route, kApiStatuses);
  }
  metrics.DeclareHttpRoute("GET", "other", {404});
  Impl& self = *impl;
  asio::co_spawn(self.io, self.AcceptLoop(), asio::detached);
  self.thread = std::thread([&self] { self.io.run(); });
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

int HttpServer::port() const { return impl_->port; }

void HttpServer::Serve(ControlService& service) {
  asio::post(impl_->io, [impl = impl_.get(), &service] { impl->service = &service; });
}

void HttpServer::SetTls(peer::TlsContext tls) {
  asio::post(impl_->io, [impl = impl_.get(), tls = std::move(tls)] { impl->tls = tls; });
}

void HttpServer::Shutdown() {
  if (!impl_ || !impl_->thread.joinable()) return;
  asio::post(impl_->io, [impl = impl_.get()] {
    beast::error_code ec;
    impl->acceptor.close(ec);
    impl->io.stop();
  });
  impl_->thread.join();
}

}  // namespace mesh::broker
