// The control service over HTTP (port 8080): the REST twin of every gRPC operation in the
// proto3 JSON mapping, WatchEvents as Server-Sent Events, and /metrics, /healthz, /readyz.
// Boost.Beast on its own thread, away from the data path's shards.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "broker/control/control_service.h"
#include "monitoring/metrics.h"
#include "peer/websocket.h"

namespace mesh::broker {

struct HttpOptions {
  std::string address;                      // HOST:PORT; port 0 picks one
  size_t body_limit = size_t{2} << 20;      // larger bodies: 413
  uint32_t header_limit = 16 * 1024;        // larger headers: 431
  std::function<std::string()> exposition;  // the text of GET /metrics
  TlsFiles tls;                             // HTTPS when set
};

class HttpServer {
 public:
  // Listens at once, before the broker has recovered its store: until Serve, /healthz answers
  // 200 ("starting"), /readyz and /metrics 503, and the API 503 UNAVAILABLE.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(monitoring::RequestMetrics& metrics,
                                                           HttpOptions options);
  // Every endpoint answers from `service` from now on; it must outlive the server.
  void Serve(ControlService& service);
  // HTTPS only: connections from now on use `tls` (a renewed certificate); those open keep
  // theirs.
  void SetTls(peer::TlsContext tls);
  ~HttpServer();

  int port() const;
  // Closes the listener and every connection (event streams too), then joins the thread.
  void Shutdown();

 private:
  struct Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mesh::broker
