#include "monitoring/metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>

#include "prometheus/text_serializer.h"

namespace mesh::monitoring {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// Buckets for HTTP request durations: 100 µs to 10 s.
const std::vector<double> kHttpBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                          0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                          1,      2.5,     5,      10};

MetricFamily Single(const std::string& name, const std::string& help, MetricType type,
                    double value) {
  ClientMetric metric;
  if (type == MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  return {name, help, type, {metric}};
}

MetricFamily Counter(const std::string& name, const std::string& help, uint64_t value) {
  return Single(name, help, MetricType::Counter, static_cast<double>(value));
}

MetricFamily Gauge(const std::string& name, const std::string& help, double value) {
  return Single(name, help, MetricType::Gauge, value);
}

template <typename Value>
MetricFamily ByLabel(const std::string& name, const std::string& help, MetricType type,
                     const std::string& label, const std::map<std::string, Value>& values) {
  MetricFamily family{name, help, type, {}};
  for (const auto& [key, value] : values) {
    ClientMetric metric;
    metric.label.push_back({label, key});
    if (type == MetricType::Counter) {
      metric.counter.value = static_cast<double>(value);
    } else {
      metric.gauge.value = static_cast<double>(value);
    }
    family.metric.push_back(std::move(metric));
  }
  return family;
}

ClientMetric SecondsMetric(const Histogram& h) {
  ClientMetric metric;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.counts.size(); ++i) {
    cumulative += h.counts[i];
    ClientMetric::Bucket bucket;
    bucket.cumulative_count = cumulative;
    bucket.upper_bound = i < h.bounds_micros.size() ? static_cast<double>(h.bounds_micros[i]) / 1e6
                                                    : std::numeric_limits<double>::infinity();
    metric.histogram.bucket.push_back(bucket);
  }
  metric.histogram.sample_count = cumulative;
  metric.histogram.sample_sum = static_cast<double>(h.sum_micros) / 1e6;
  return metric;
}

MetricFamily Seconds(const std::string& name, const std::string& help, const Histogram& h) {
  return {name, help, MetricType::Histogram, {SecondsMetric(h)}};
}

// One histogram per value of `label`.
MetricFamily SecondsBy(const std::string& name, const std::string& help, const std::string& label,
                       const std::map<std::string, const Histogram*>& histograms) {
  MetricFamily family{name, help, MetricType::Histogram, {}};
  for (const auto& [value, histogram] : histograms) {
    ClientMetric metric = SecondsMetric(*histogram);
    metric.label.push_back({label, value});
    family.metric.push_back(std::move(metric));
  }
  return family;
}

}  // namespace

std::vector<MetricFamily> Families(const BrokerSnapshot& s) {
  std::vector<MetricFamily> out;
  out.push_back(ByLabel<int>("mesh_build_info", "Build of this broker (always 1)",
                             MetricType::Gauge, "version", {{s.version, 1}}));
  out.push_back(
      Gauge("mesh_ready", "1 while the broker is ready to serve (not draining)", s.ready ? 1 : 0));
  out.push_back(Gauge("mesh_uptime_seconds", "Seconds since the broker started",
                      static_cast<double>(s.uptime_s)));

  out.push_back(Counter("mesh_peers_total", "Peer sessions established", s.peers_total));
  out.push_back(Gauge("mesh_peers_connected", "Peers with a session on this broker",
                      static_cast<double>(s.peers_connected)));
  out.push_back(Counter("mesh_handshakes_started_total", "Noise handshakes begun (peer links)",
                        s.handshakes_started));
  out.push_back(Counter("mesh_handshakes_completed_total", "Noise handshakes completed",
                        s.handshakes_completed));
  out.push_back(Seconds("mesh_handshake_duration_seconds",
                        "From accept to the last handshake message", s.handshake_duration));
  out.push_back(Gauge("mesh_frame_memory_bytes",
                      "Bytes reserved for partly received frames (--frame-memory-budget)",
                      static_cast<double>(s.frame_memory_bytes)));
  out.push_back(ByLabel("mesh_frames_rejected_total",
                        "Links closed for a protocol violation or failure, by reason",
                        MetricType::Counter, "reason", s.frames_rejected));

  out.push_back(
      Counter("mesh_messages_sent_total", "Send frames received from peers", s.messages_sent));
  out.push_back(Counter("mesh_messages_accepted_total",
                        "Messages the broker took ownership of (SendAck ACCEPTED)",
                        s.messages_accepted));
  out.push_back(Counter("mesh_messages_delivered_total", "Messages acknowledged by their recipient",
                        s.messages_delivered));
  out.push_back(
      Counter("mesh_messages_failed_total", "Messages rejected or expired", s.messages_failed));
  out.push_back(ByLabel("mesh_messages_rejected_total", "Sends rejected, by SendAck status",
                        MetricType::Counter, "reason", s.messages_rejected));
  out.push_back(
      Counter("mesh_messages_expired_total", "Messages dropped at their TTL", s.messages_expired));
  out.push_back(Counter("mesh_messages_fast_path_total",
                        "Messages acknowledged by an online recipient before any store write",
                        s.messages_fast_path));
  out.push_back(
      Counter("mesh_messages_stored_total", "Messages written to a mailbox", s.messages_stored));
  out.push_back(Gauge("mesh_messages_queue_size", "Messages owned and not yet acknowledged",
                      static_cast<double>(s.queue_size)));
  out.push_back(Gauge("mesh_mailboxes", "Mailboxes holding messages, in memory or at rest on disk",
                      static_cast<double>(s.mailboxes)));
  out.push_back(Gauge("mesh_mailboxes_in_memory",
                      "Mailboxes held in memory: those with a session, a forwarder or work under "
                      "way (a mailbox at rest costs disk only)",
                      static_cast<double>(s.mailboxes_in_memory)));
  out.push_back(Gauge("mesh_messages_queued_bytes",
                      "Bytes of the queued messages (as quotas count)",
                      static_cast<double>(s.queued_bytes)));
  out.push_back(Gauge("mesh_success_rate",
                      "Delivered / (delivered + failed) over the last minute (1 when idle)",
                      s.success_rate));
  out.push_back(SecondsBy(
      "mesh_delivery_latency_seconds",
      "From accepting a message to its recipient's DeliverAck; path=fast: delivered before any "
      "write, path=stored: written first (time waiting in a mailbox included)",
      "path", {{"fast", &s.delivery_latency_fast}, {"stored", &s.delivery_latency_stored}}));

  out.push_back(Counter("mesh_store_writes_total", "RocksDB writes (each a group of commits)",
                        s.store_writes));
  out.push_back(Counter("mesh_store_syncs_total", "WAL fsyncs", s.store_syncs));
  out.push_back(Counter("mesh_store_failed_writes_total", "Failed store writes or syncs",
                        s.store_failed_writes));
  out.push_back(Counter("mesh_store_messages_read_total",
                        "Stored messages read back from disk (a start reads none: it reads counts)",
                        s.store_messages_read));
  out.push_back(Gauge("mesh_store_size_bytes",
                      "Mailbox data in the store: live data on disk plus memtables (estimates)",
                      static_cast<double>(s.store_size_bytes)));
  out.push_back(Gauge("mesh_store_available",
                      "0 from a failed store write (disk full, I/O error) until the store resumes",
                      s.store_available ? 1 : 0));
  out.push_back(Gauge("mesh_store_full",
                      "1 at a high-water mark (volume free space, --store-max-bytes): Sends get "
                      "STORE_FULL",
                      s.store_full ? 1 : 0));
  out.push_back(Gauge("mesh_draining", "1 while the broker drains", s.draining ? 1 : 0));
  out.push_back(
      Seconds("mesh_store_write_duration_seconds", "One RocksDB write", s.store_write_duration));
  out.push_back(Seconds("mesh_store_sync_duration_seconds", "One WAL fsync (batch policy)",
                        s.store_sync_duration));

  out.push_back(ByLabel("mesh_cluster_members", "Members of the mesh by state", MetricType::Gauge,
                        "state", s.cluster_members));
  out.push_back(ByLabel("mesh_messages_forwarded_total",
                        "Messages forwarded between brokers, by direction", MetricType::Counter,
                        "direction", s.messages_forwarded));
  out.push_back(Gauge("mesh_outbox_messages",
                      "Messages held here for another broker (waiting for its link or its ack)",
                      static_cast<double>(s.outbox_messages)));
  out.push_back(Gauge("mesh_presence_peers",
                      "Peers connected to any member of the mesh, as this broker's presence "
                      "table has them (this broker's own peers included)",
                      static_cast<double>(s.presence_peers)));
  out.push_back(Counter("mesh_handoff_messages_total",
                        "Messages handed to another member by a drain", s.handoff_messages));
  out.push_back(Gauge("mesh_presence_entries",
                      "Entries of the presence table: connected peers and, for the grace "
                      "period, recent departures",
                      static_cast<double>(s.presence_entries)));
  out.push_back(Counter("mesh_placement_queries_total",
                        "Times the router asked the mesh where a mailbox goes (membership and "
                        "presence changes, refused forwards)",
                        s.placement_queries));
  out.push_back(Counter("mesh_presence_refused_total",
                        "Presence entries a member sent for another node's sessions or with an "
                        "epoch in the future, ignored",
                        s.presence_refused));
  out.push_back(ByLabel("mesh_cluster_handshake_failures_total",
                        "Cluster links refused or failed, by reason (a wrong cluster secret "
                        "fails as handshake_failed)",
                        MetricType::Counter, "reason", s.cluster_handshake_failures));
  out.push_back(Seconds("mesh_forward_latency_seconds",
                        "From forwarding a message to the next hop owning it", s.forward_latency));
  return out;
}

RequestMetrics::RequestMetrics(prometheus::Registry& registry)
    : http_requests_(prometheus::BuildCounter()
                         .Name("mesh_http_requests_total")
                         .Help("HTTP requests by method, route template and status")
                         .Register(registry)),
      http_duration_(prometheus::BuildHistogram()
                         .Name("mesh_http_request_duration_seconds")
                         .Help("HTTP request handling time by route template")
                         .Register(registry)),
      grpc_requests_(prometheus::BuildCounter()
                         .Name("mesh_grpc_requests_total")
                         .Help("gRPC calls by method and status code")
                         .Register(registry)) {}

void RequestMetrics::DeclareHttpRoute(const std::string& method, const std::string& endpoint,
                                      const std::vector<int>& statuses) {
  for (int status : statuses) {
    http_requests_.Add(
        {{"method", method}, {"endpoint", endpoint}, {"status", std::to_string(status)}});
  }
  http_duration_.Add({{"endpoint", endpoint}}, kHttpBuckets);
}

void RequestMetrics::DeclareGrpcMethod(const std::string& method,
                                       const std::vector<std::string>& codes) {
  for (const auto& code : codes) grpc_requests_.Add({{"method", method}, {"code", code}});
}

void RequestMetrics::CountHttp(const std::string& method, const std::string& endpoint, int status,
                               std::chrono::microseconds duration) {
  http_requests_
      .Add({{"method", method}, {"endpoint", endpoint}, {"status", std::to_string(status)}})
      .Increment();
  http_duration_.Add({{"endpoint", endpoint}}, kHttpBuckets)
      .Observe(static_cast<double>(duration.count()) / 1e6);
}

void RequestMetrics::CountGrpc(const std::string& method, const std::string& code) {
  grpc_requests_.Add({{"method", method}, {"code", code}}).Increment();
}

std::vector<MetricFamily> ProcessFamilies() {
  std::vector<MetricFamily> out;
  std::ifstream stat("/proc/self/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  // Fields after the command name (in parentheses, which may hold spaces): state is field 3.
  const size_t close = text.rfind(')');
  if (close == std::string::npos) return out;
  std::istringstream fields(text.substr(close + 2));
  std::vector<std::string> field((std::istream_iterator<std::string>(fields)),
                                 std::istream_iterator<std::string>());
  if (field.size() < 22) return out;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  // field[0] is field 3 (state): utime is 14, stime 15, starttime 22, rss 24.
  const double cpu = (std::stod(field[11]) + std::stod(field[12])) / ticks;
  out.push_back(Single("process_cpu_seconds_total", "User and system CPU time spent, seconds",
                       MetricType::Counter, cpu));
  out.push_back(Gauge("process_resident_memory_bytes", "Resident memory, bytes",
                      std::stod(field[21]) * page));
  std::ifstream uptime("/proc/uptime");
  double up = 0;
  uptime >> up;
  const auto now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  out.push_back(Gauge("process_start_time_seconds", "Start time since the Unix epoch, seconds",
                      now - up + std::stod(field[19]) / ticks));
  size_t fds = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++fds;
  }
  out.push_back(Gauge("process_open_fds", "Open file descriptors", static_cast<double>(fds)));
  struct rlimit limit {};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    out.push_back(Gauge("process_max_fds", "Limit of open file descriptors",
                        static_cast<double>(limit.rlim_cur)));
  }
  return out;
}

std::string Exposition(const std::vector<MetricFamily>& families) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

}  // namespace mesh::monitoring
