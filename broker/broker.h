// The broker process: shards (one io_context and thread per core), the peer listener on 7700,
// and the lifecycle from start to a clean stop.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "broker/cluster/cluster.h"
#include "broker/routing/router.h"
#include "crypto/crypto.h"
#include "peer/peer.h"
#include "store/store.h"

namespace mesh::broker {

struct BrokerConfig {
  std::string listen_peer = "0.0.0.0:7700";
  // Peer links over WebSocket (browsers: DESIGN §3), path /v1/link; empty: off.
  std::string listen_ws = "0.0.0.0:7780";
  std::vector<std::string> ws_allowed_origins;  // empty: any Origin
  // wss on listen_ws: "auto" when tls_cert_file is given, "on" (requires it), or "off" (TLS
  // terminated in front of the broker, as by an NLB).
  std::string ws_tls = "auto";
  std::string listen_grpc = "0.0.0.0:50051";  // empty: no gRPC control plane
  std::string listen_http = "0.0.0.0:8080";   // REST, /metrics, health; empty: off
  std::string admin_token_file;               // empty: <data_dir>/admin.token, created once
  std::string tls_cert_file;  // PEM; with tls_key_file: TLS for the control plane (and wss)
  std::string tls_key_file;
  std::string data_dir = "./mesh-data";
  std::string node_name;       // empty: the host name
  std::string node_cert_file;  // the mesh authority's certificate for this node; sent in Hello
  int threads = 0;             // 0: one per core
  peer::LinkConfig link;
  size_t frame_memory_budget = size_t{256} << 20;
  // What the links of one source address (an IPv6 /64) may hold of that budget together: a
  // host that begins many large frames and stalls them leaves the rest to other hosts.
  size_t frame_memory_per_ip = size_t{32} << 20;
  int max_pending_handshakes = 1024;
  int max_pending_handshakes_per_ip = 64;
  // New peer links per second from one source address (an IPv6 /64), and at once above that:
  // a reconnect costs a handshake, so this bounds what one host can make the broker compute.
  // Generous, as many phones may share one carrier NAT address.
  double new_links_per_ip_rate = 50;
  double new_links_per_ip_burst = 500;
  // Peer connections start with a PROXY protocol v2 header (a load balancer's), whose source
  // address is the one capped, logged and shown; a connection without one is refused.
  bool proxy_protocol = false;
  store::StoreOptions store;  // path: empty means <data_dir>/store
  RouterConfig routing;       // node_id and max_payload are filled in from the above
  // The mesh: on when a cluster secret is given.
  std::string cluster_secret_file;
  ClusterConfig cluster;
  std::chrono::seconds drain_timeout{120};
  // Liveness (/healthz) fails once the store has been unavailable this long without a resume,
  // unless its volume is at the high-water mark (a restart would not make room). 0: never.
  std::chrono::seconds store_unavailable_timeout{60};
};

class Broker {
 public:
  Broker(BrokerConfig config, crypto::KeyPair node_key);
  ~Broker();
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  // Binds the listeners and starts the shards; logs one line per listener.
  absl::Status Start();
  // Blocks until the broker stopped (SIGINT; SIGTERM once its drain ended), then returns.
  void Wait();
  // Asks the broker to stop: no new links, GoAway to every peer, close. Thread-safe.
  void Stop(std::string_view why);

  const peer::LinkStats& link_stats() const;
  const RouterStats& router_stats() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// Opens (creating on first start) the data dir and the node key inside it.
absl::StatusOr<crypto::KeyPair> LoadOrCreateNodeKey(const std::string& data_dir);

}  // namespace mesh::broker
