// mesh-broker: flags (each with a MESH_* environment variable) into a BrokerConfig, then run.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cctype>
#include <iostream>

#include "broker/broker.h"
#include "broker/log.h"

namespace {

// --admin-token-file <-> MESH_ADMIN_TOKEN_FILE
std::string EnvName(const std::string& flag) {
  std::string env = "MESH_";
  for (char c : flag) env.push_back(c == '-' ? '_' : static_cast<char>(std::toupper(c)));
  return env;
}

std::string HostName() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

}  // namespace

// jemalloc's options, read when it starts (ignored when another allocator is linked, as under
// the sanitizers). Freed pages go back to the system after the decay time on a background
// thread: a broker at rest allocates nothing that would otherwise trigger the purge, and kept
// the memory of a spike (200,000 peers that came and went) for good.
extern "C" const char* malloc_conf;
const char* malloc_conf = "background_thread:true";

int main(int argc, char** argv) {
  CLI::App app{"mesh-broker: relays addressed messages between peers over Noise-secured links"};
  app.set_help_flag("-h,--help,--helpfull", "Print every flag with its environment variable");
  mesh::broker::BrokerConfig config;
  int64_t handshake_timeout_ms = config.link.handshake_timeout.count();
  int64_t heartbeat_interval_ms = config.link.heartbeat_interval.count();
  int64_t frame_timeout_ms = config.link.frame_timeout.count();
  std::string log_level = "info";
  std::string store_sync = "batch";
  int64_t store_sync_interval_us = config.store.sync_interval.count();
  double store_min_free_percent = config.store.min_free_fraction * 100;
  int64_t store_unavailable_timeout_s = config.store_unavailable_timeout.count();
  auto& routing = config.routing;
  int64_t ack_window_ms = routing.ack_window.count();
  int64_t default_ttl_s = routing.default_ttl.count();
  int64_t max_ttl_s = routing.max_ttl.count();
  int64_t dedup_window_s = routing.dedup_window.count();
  int64_t expiry_sweep_s = routing.expiry_sweep_interval.count();

  auto flag = [&](const std::string& name, auto& value, const std::string& help) {
    return app.add_option("--" + name, value, help)->envname(EnvName(name))->capture_default_str();
  };
  flag("listen-peer", config.listen_peer, "Address for peer links (HOST:PORT; port 0 picks one)");
  flag("listen-ws", config.listen_ws,
       "Address for peer links over WebSocket, path /v1/link, subprotocol mesh.v1 (HOST:PORT; "
       "port 0 picks one; empty: off)");
  flag("ws-allowed-origins", config.ws_allowed_origins,
       "Origins (scheme://host[:port]) whose pages may open WebSocket links; none given: any")
      ->delimiter(',');
  flag("ws-tls", config.ws_tls,
       "TLS (wss://) on --listen-ws with --tls-cert-file: auto (when a certificate is given), on, "
       "or off (TLS terminated in front of the broker)")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  flag("listen-grpc", config.listen_grpc,
       "Address for the gRPC control plane (HOST:PORT; port 0 picks one; empty: off)");
  flag("listen-http", config.listen_http,
       "Address for REST, /metrics and the health endpoints (HOST:PORT; port 0 picks one; "
       "empty: off)");
  flag("admin-token-file", config.admin_token_file,
       "File holding the control plane's bearer token (default: admin.token in the data dir, "
       "created on first start)");
  auto* tls_cert = flag("tls-cert-file", config.tls_cert_file,
                        "PEM certificate: serve the control plane and --listen-ws over TLS");
  auto* tls_key = flag("tls-key-file", config.tls_key_file, "PEM private key for --tls-cert-file");
  tls_cert->needs(tls_key);
  tls_key->needs(tls_cert);
  flag("data-dir", config.data_dir, "Directory for the node key and the store");
  flag("node-name", config.node_name, "Name announced to peers (default: the host name)");
  flag("node-cert-file", config.node_cert_file,
       "This node's certificate from the mesh authority (mesh-cli certify), sent to clients "
       "so those given --mesh-authority can verify the broker");
  std::string mesh_authority;
  flag("mesh-authority", mesh_authority,
       "The mesh authority's public key (mesh-cli authority): cluster members must present a "
       "node certificate by it, so the cluster secret alone admits no one; needs "
       "--node-cert-file");
  flag("threads", config.threads, "I/O threads, one io_context each (0: one per core)")
      ->check(CLI::Range(0, 1024));
  flag("max-payload", config.link.max_payload, "Largest message payload in bytes")
      ->check(CLI::Range(size_t{1}, size_t{64} << 20));
  flag("handshake-timeout-ms", handshake_timeout_ms, "Deadline for a Noise handshake")
      ->check(CLI::PositiveNumber);
  flag("heartbeat-interval-ms", heartbeat_interval_ms,
       "Ping interval; a link silent for 3 intervals is closed")
      ->check(CLI::PositiveNumber);
  flag("frame-timeout-ms", frame_timeout_ms, "Deadline for a frame once begun")
      ->check(CLI::PositiveNumber);
  flag("frame-memory-budget", config.frame_memory_budget,
       "Bytes for partly received frames across all links; reads pause when spent")
      ->check(CLI::PositiveNumber);
  flag("frame-memory-per-ip", config.frame_memory_per_ip,
       "Bytes of that budget the links of one address (IPv6: one /64) may hold together")
      ->check(CLI::PositiveNumber);
  flag("max-pending-handshakes", config.max_pending_handshakes, "Handshakes in progress at once")
      ->check(CLI::PositiveNumber);
  flag("max-pending-handshakes-per-ip", config.max_pending_handshakes_per_ip,
       "Handshakes in progress at once from one address")
      ->check(CLI::PositiveNumber);
  flag("new-links-per-ip-rate", config.new_links_per_ip_rate,
       "New peer links per second from one address (IPv6: one /64); 0: no limit")
      ->check(CLI::NonNegativeNumber);
  flag("new-links-per-ip-burst", config.new_links_per_ip_burst,
       "New peer links one address may open at once above the rate")
      ->check(CLI::PositiveNumber);
  app.add_flag("--proxy-protocol", config.proxy_protocol,
               "Peer connections start with a PROXY protocol v2 header (a load balancer's, e.g. "
               "an NLB with proxy protocol on): its source address is the one capped, logged and "
               "shown; a connection without a valid header is refused")
      ->envname(EnvName("proxy-protocol"));
  flag("store-sync", store_sync,
       "always: fsync every write; batch: one fsync covers the writes of an interval; none: no "
       "fsync (survives a crash of the process, not of the machine)")
      ->check(CLI::IsMember({"always", "batch", "none"}));
  flag("store-sync-interval-us", store_sync_interval_us, "batch: at most one fsync per interval")
      ->check(CLI::Range(int64_t{0}, int64_t{1'000'000}));
  flag("ack-window-ms", ack_window_ms,
       "Online fast path: a message delivered at once is written only if not acknowledged within "
       "this window (0: write every message before delivering it)")
      ->check(CLI::Range(int64_t{0}, int64_t{60'000}));
  flag("default-ttl-s", default_ttl_s, "TTL of a message that names none")
      ->check(CLI::PositiveNumber);
  flag("max-ttl-s", max_ttl_s, "Longest TTL a Send may ask for")->check(CLI::PositiveNumber);
  flag("dedup-window-s", dedup_window_s,
       "Retries with the same (from, id) within it are stored once")
      ->check(CLI::PositiveNumber);
  flag("mailbox-max-messages", routing.mailbox_max_messages, "Messages one mailbox may hold")
      ->check(CLI::PositiveNumber);
  flag("mailbox-max-bytes", routing.mailbox_max_bytes, "Bytes one mailbox may hold")
      ->check(CLI::PositiveNumber);
  flag("sender-share", routing.sender_share,
       "Share of one mailbox's message quota a single sender may hold")
      ->check(CLI::Range(0.0, 1.0));
  flag("sender-max-messages", routing.sender_max_messages,
       "Messages one sender may have waiting across all mailboxes")
      ->check(CLI::PositiveNumber);
  flag("store-max-bytes", routing.store_max_bytes,
       "High-water mark of queued bytes; above it Sends get STORE_FULL and the broker is not "
       "ready (0: none)");
  flag("store-unavailable-timeout-s", store_unavailable_timeout_s,
       "After a failed write the store retries; once it has been unavailable this long "
       "without a resume (and its volume is not full), /healthz answers 503 so that a "
       "supervisor restarts the broker (0: never)")
      ->check(CLI::NonNegativeNumber);
  flag("store-min-free-percent", store_min_free_percent,
       "High-water mark of the data dir's volume: with less of it free, Sends get STORE_FULL "
       "and the broker is not ready until one more percent is free (0: none)")
      ->check(CLI::Range(0.0, 100.0));
  flag("send-rate", routing.send_rate, "Messages per second one peer may send (0: no limit)")
      ->check(CLI::NonNegativeNumber);
  flag("send-burst", routing.send_burst, "Messages a peer may send at once above the rate")
      ->check(CLI::PositiveNumber);
  flag("max-in-flight", routing.max_in_flight,
       "Deliveries in flight per link, whatever credit the peer grants")
      ->check(CLI::PositiveNumber);
  flag("expiry-sweep-interval-s", expiry_sweep_s, "How often expired messages are reclaimed")
      ->check(CLI::PositiveNumber);
  auto& cluster = config.cluster;
  int64_t suspect_timeout_ms = cluster.suspect_timeout.count();
  int64_t dns_interval_ms = cluster.dns_interval.count();
  int64_t presence_grace_ms = cluster.presence.grace.count();
  int64_t presence_skew_ms = cluster.presence.max_skew.count();
  int64_t drain_timeout_s = config.drain_timeout.count();
  flag("cluster-secret-file", config.cluster_secret_file,
       "The mesh's 32-byte secret (64 hex characters): turns the mesh on; brokers without it "
       "cannot join");
  flag("listen-cluster", cluster.listen, "Address for cluster links (HOST:PORT; port 0 picks one)");
  flag("cluster-advertise", cluster.advertise,
       "HOST:PORT other members dial to reach this one (default: the listen address; a pod's "
       "IP in Kubernetes)");
  app.add_option("--cluster-peers", cluster.peers,
                 "Seed members, HOST:PORT,...; one is enough: members exchange their lists")
      ->envname(EnvName("cluster-peers"))
      ->delimiter(',');
  flag("cluster-dns", cluster.dns,
       "NAME:PORT whose A records are the members (a headless Service), re-resolved");
  flag("cluster-dns-interval-ms", dns_interval_ms, "How often --cluster-dns is resolved again")
      ->check(CLI::PositiveNumber);
  flag("suspect-timeout-ms", suspect_timeout_ms,
       "How long an unreachable member keeps its homes (messages for them wait) before it is gone")
      ->check(CLI::PositiveNumber);
  flag("presence-grace-ms", presence_grace_ms,
       "How long the mesh remembers a peer that disconnected (so a late, stale announcement "
       "still loses); then it is forgotten. At least twice --presence-max-skew-ms")
      ->check(CLI::PositiveNumber);
  flag("presence-max-skew-ms", presence_skew_ms,
       "How far ahead of this broker's clock a member's presence epoch may be (clock skew "
       "between brokers); later ones are ignored")
      ->check(CLI::PositiveNumber);
  flag("drain-timeout-s", drain_timeout_s,
       "Longest a drain (SIGTERM) spends handing mailboxes off before it stops anyway")
      ->check(CLI::PositiveNumber);
  flag("log-level", log_level, "debug, info, warn or error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  CLI11_PARSE(app, argc, argv);

  config.link.handshake_timeout = std::chrono::milliseconds(handshake_timeout_ms);
  config.link.heartbeat_interval = std::chrono::milliseconds(heartbeat_interval_ms);
  config.link.frame_timeout = std::chrono::milliseconds(frame_timeout_ms);
  if (config.node_name.empty()) config.node_name = HostName();
  config.store.sync = *mesh::store::ParseSyncPolicy(store_sync);  // checked by IsMember above
  config.store.sync_interval = std::chrono::microseconds(store_sync_interval_us);
  config.store.min_free_fraction = store_min_free_percent / 100;
  routing.ack_window = std::chrono::milliseconds(ack_window_ms);
  routing.default_ttl = std::chrono::seconds(default_ttl_s);
  routing.max_ttl = std::chrono::seconds(max_ttl_s);
  routing.dedup_window = std::chrono::seconds(dedup_window_s);
  routing.expiry_sweep_interval = std::chrono::seconds(expiry_sweep_s);
  cluster.suspect_timeout = std::chrono::milliseconds(suspect_timeout_ms);
  if (!mesh_authority.empty()) {
    auto authority = mesh::crypto::AuthorityKey::Parse(mesh_authority);
    if (!authority.ok()) {
      std::cerr << "--mesh-authority: " << authority.status().message() << "\n";
      return 2;
    }
    cluster.authority = *authority;
  }
  cluster.dns_interval = std::chrono::milliseconds(dns_interval_ms);
  cluster.presence.grace = std::chrono::milliseconds(presence_grace_ms);
  cluster.presence.max_skew = std::chrono::milliseconds(presence_skew_ms);
  if (presence_grace_ms < 2 * presence_skew_ms) {
    std::cerr << "--presence-grace-ms must be at least twice --presence-max-skew-ms, or an "
                 "epoch forgotten could exceed a fresh one\n";
    return 2;
  }
  config.drain_timeout = std::chrono::seconds(drain_timeout_s);
  config.store_unavailable_timeout = std::chrono::seconds(store_unavailable_timeout_s);

  using mesh::broker::Log;
  mesh::broker::InitLogging(log_level);
  if (auto status = mesh::crypto::Init(); !status.ok()) {
    Log(spdlog::level::critical, "startup_failed", {{"error", std::string(status.message())}});
    return 1;
  }
  auto key = mesh::broker::LoadOrCreateNodeKey(config.data_dir);
  if (!key.ok()) {
    Log(spdlog::level::critical, "startup_failed",
        {{"error", std::string(key.status().message())}});
    return 1;
  }
  mesh::broker::Broker broker(config, *std::move(key));
  if (auto status = broker.Start(); !status.ok()) {
    Log(spdlog::level::critical, "startup_failed", {{"error", std::string(status.message())}});
    return 1;
  }
  broker.Wait();
  Log(spdlog::level::info, "stopped", {});
  return 0;
}
