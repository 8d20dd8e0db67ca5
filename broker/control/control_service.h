// The control plane's operations (DESIGN §6), written once: the gRPC and REST adapters only
// translate requests and statuses. Every operation but health needs the admin token.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "broker/routing/router.h"
#include "crypto/crypto.h"
#include "mesh/v1/control.pb.h"
#include "monitoring/metrics.h"
#include "peer/counter.h"
#include "peer/peer.h"
#include "store/store.h"

namespace mesh::broker {

// A certificate and key (PEM files) for the control plane's listeners; both empty: plaintext.
struct TlsFiles {
  std::string cert;
  std::string key;
  bool enabled() const { return !cert.empty() || !key.empty(); }
};

// What the control service sees of the broker it runs in.
struct ControlContext {
  Router* router = nullptr;
  const peer::LinkStats* links = nullptr;
  const peer::MemoryBudget* frame_budget = nullptr;
  store::Store* store = nullptr;
  const LatencyHistogram* store_write_duration = nullptr;
  const LatencyHistogram* store_sync_duration = nullptr;
  crypto::PeerId node_id;
  std::string node_name;
  std::string version;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::function<bool()> ready;     // serving and accepting
  std::function<bool()> live;      // false: a restart is the way out (liveness)
  std::function<bool()> draining;  // a drain is under way
  // Starts a drain (or says one is under way) and tells what it will do with what is held.
  std::function<mesh::v1::DrainResponse()> start_drain;
  // The mesh, when there is one: its members, where a peer is connected (node ID as text),
  // and its series for the metrics snapshot.
  std::function<std::vector<mesh::v1::Member>()> members;
  std::function<std::optional<std::string>(std::string_view peer)> locate;
  const peer::LinkStats* cluster_links = nullptr;  // cluster handshakes and failures
  std::function<void(monitoring::BrokerSnapshot&)> cluster;
};

// Links ended by each reason (every reason present; all zero without `links`).
std::map<std::string, uint64_t> FailuresByReason(const peer::LinkStats* links);

// A latency histogram as the monitoring module takes it.
monitoring::Histogram ToMonitoring(const LatencyHistogram& histogram);

class ControlService {
 public:
  ControlService(ControlContext context, const std::string& admin_token);

  // True for "Bearer <the admin token>", compared in constant time.
  bool Authorized(std::string_view authorization) const;
  // Replaces the admin token (a reload); false when it is the one in use.
  bool SetAdminToken(const std::string& admin_token);

  absl::StatusOr<mesh::v1::Stats> GetStats(const mesh::v1::GetStatsRequest& request) const;
  absl::StatusOr<mesh::v1::ListPeersResponse> ListPeers(
      const mesh::v1::ListPeersRequest& request) const;
  absl::StatusOr<mesh::v1::Peer> GetPeer(const mesh::v1::GetPeerRequest& request) const;
  absl::StatusOr<mesh::v1::DisconnectPeerResponse> DisconnectPeer(
      const mesh::v1::DisconnectPeerRequest& request);
  // Waits for the SendAck (at most `timeout`): for callers with a thread to spare (gRPC).
  absl::StatusOr<mesh::v1::SendMessageResponse> SendMessage(
      const mesh::v1::SendMessageRequest& request,
      std::chrono::milliseconds timeout = std::chrono::seconds(15));
  // The same without waiting: `done` runs once with the answer, on the thread that settles it
  // (at once for an invalid request, which returns null). The caller keeps the returned
  // sender until then; dropping it abandons the answer (the message may still arrive).
  using SendDone = std::function<void(absl::StatusOr<mesh::v1::SendMessageResponse>)>;
  std::shared_ptr<Session> StartSend(const mesh::v1::SendMessageRequest& request, SendDone done);
  absl::StatusOr<mesh::v1::Mailbox> GetMailbox(const mesh::v1::GetMailboxRequest& request) const;
  absl::StatusOr<mesh::v1::PurgeMailboxResponse> PurgeMailbox(
      const mesh::v1::PurgeMailboxRequest& request);
  absl::StatusOr<mesh::v1::ListMembersResponse> ListMembers(
      const mesh::v1::ListMembersRequest& request) const;
  absl::StatusOr<mesh::v1::DrainResponse> Drain(const mesh::v1::DrainRequest& request);
  // A new watcher of the broker's events; cancel it when the stream ends.
  std::shared_ptr<EventWatcher> WatchEvents(const mesh::v1::WatchEventsRequest& request);

  bool ready() const { return context_.ready && context_.ready(); }
  bool live() const { return !context_.live || context_.live(); }

  // Every broker series for a scrape; the success rate is over the last minute.
  monitoring::BrokerSnapshot MetricsSnapshot();

 private:
  struct RateSample {
    std::chrono::steady_clock::time_point at;
    uint64_t delivered;
    uint64_t failed;
  };

  ControlContext context_;
  mutable std::mutex token_mu_;
  std::string expected_authorization_;  // "Bearer <token>"; guarded by token_mu_
  std::mutex rate_mu_;
  std::deque<RateSample> rate_samples_;  // one per scrape, the last minute and one before it
};

// Reads the admin token from `path`, or, when `path` is empty, from <data_dir>/admin.token,
// creating it (32 random bytes, base64url, mode 0600) on first start.
absl::StatusOr<std::string> LoadOrCreateAdminToken(const std::string& path,
                                                   const std::string& data_dir);

}  // namespace mesh::broker
