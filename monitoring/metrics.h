// Every mesh_* series (DESIGN §7), named and described in this one place. The broker fills a
// BrokerSnapshot from its plain counters when Prometheus scrapes, so the data path never touches
// a metrics library; request counters of the control plane live in RequestMetrics. No label
// ever carries a peer ID, and every labelled series exists from the start at zero.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"

namespace mesh::monitoring {

// A latency histogram as counted by the broker: counts per bucket (not cumulative), the last
// bucket +Inf, bounds in microseconds.
struct Histogram {
  std::vector<uint64_t> bounds_micros;
  std::vector<uint64_t> counts;
  uint64_t sum_micros = 0;
};

struct BrokerSnapshot {
  std::string version;
  bool ready = false;
  uint64_t uptime_s = 0;

  uint64_t peers_total = 0;
  int64_t peers_connected = 0;
  uint64_t handshakes_started = 0;
  uint64_t handshakes_completed = 0;
  Histogram handshake_duration;
  std::map<std::string, uint64_t> frames_rejected;  // by reason: every reason present
  uint64_t frame_memory_bytes = 0;                  // reserved for partly received frames

  uint64_t messages_sent = 0;                         // Send frames received
  uint64_t messages_accepted = 0;                     // owned by the broker
  uint64_t messages_delivered = 0;                    // acknowledged by their recipient
  uint64_t messages_failed = 0;                       // rejected or expired
  std::map<std::string, uint64_t> messages_rejected;  // by SendAck status: every one present
  uint64_t messages_expired = 0;
  uint64_t messages_fast_path = 0;
  uint64_t messages_stored = 0;
  int64_t queue_size = 0;            // messages owned and not yet acknowledged
  uint64_t mailboxes = 0;            // holding messages, in memory or at rest
  uint64_t mailboxes_in_memory = 0;  // active ones (and empty ones of connected peers)
  int64_t queued_bytes = 0;
  double success_rate = 1;            // delivered / (delivered + failed) over the last minute
  Histogram delivery_latency_fast;    // path="fast": delivered before any write
  Histogram delivery_latency_stored;  // path="stored": written first (mailbox time included)

  uint64_t store_writes = 0;
  uint64_t store_syncs = 0;
  uint64_t store_failed_writes = 0;
  uint64_t store_messages_read = 0;
  uint64_t store_size_bytes = 0;
  bool store_available = true;
  bool store_full = false;  // at a high-water mark: Sends get STORE_FULL
  bool draining = false;
  Histogram store_write_duration;
  Histogram store_sync_duration;

  // The mesh (one member until it exists): members by state, forwarded messages by direction.
  std::map<std::string, int64_t> cluster_members;
  std::map<std::string, uint64_t> messages_forwarded;
  uint64_t outbox_messages = 0;    // held here for another broker
  int64_t presence_peers = 0;      // peers connected anywhere in the mesh, as this broker knows
  uint64_t handoff_messages = 0;   // forwarded by a drain
  uint64_t presence_refused = 0;   // entries a member may not announce
  int64_t presence_entries = 0;    // the presence table, tombstones included
  uint64_t placement_queries = 0;  // mailboxes the router asked the mesh about
  std::map<std::string, uint64_t> cluster_handshake_failures;  // by reason: every one present
  Histogram forward_latency;                                   // forwarded -> owned by the next hop
};

// The families of a snapshot, for the text exposition.
std::vector<prometheus::MetricFamily> Families(const BrokerSnapshot& snapshot);

// The process's own series under their conventional names (process_cpu_seconds_total,
// process_resident_memory_bytes, process_open_fds, process_max_fds,
// process_start_time_seconds), read from /proc/self; empty where /proc is not there.
std::vector<prometheus::MetricFamily> ProcessFamilies();

// The control plane's own request counters (prometheus-cpp, in `registry`): HTTP by method,
// route template and status, gRPC by method and code, and HTTP durations.
class RequestMetrics {
 public:
  explicit RequestMetrics(prometheus::Registry& registry);

  // Creates the series for a route at zero, so dashboards and rules see them at once.
  void DeclareHttpRoute(const std::string& method, const std::string& endpoint,
                        const std::vector<int>& statuses);
  void DeclareGrpcMethod(const std::string& method, const std::vector<std::string>& codes);
  void CountHttp(const std::string& method, const std::string& endpoint, int status,
                 std::chrono::microseconds duration);
  void CountGrpc(const std::string& method, const std::string& code);

 private:
  prometheus::Family<prometheus::Counter>& http_requests_;
  prometheus::Family<prometheus::Histogram>& http_duration_;
  prometheus::Family<prometheus::Counter>& grpc_requests_;
};

// Prometheus' text exposition of `families`.
std::string Exposition(const std::vector<prometheus::MetricFamily>& families);

}  // namespace mesh::monitoring
