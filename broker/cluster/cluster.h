// The mesh (DESIGN §5): cluster links on 7800 (Noise_XXpsk3 with the cluster secret), membership
// from seeds and DNS, presence (peer -> node for the whole mesh), homes by rendezvous hashing,
// and forwarding. The router asks this class where a mailbox without a local session goes
// (Placement); forwarders carry its messages over the cluster link to the next hop, which acks
// once it owns them, and only then does this broker delete its copy.
//
// This class is the facade and holds the lock; the parts are plain classes beside it:
// cluster_link.h (one link's batches, windows and acks), membership.h (members, dials, DNS),
// presence.h (who is connected where, and what a member may say) and homes.h (pure functions).
#pragma once

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "broker/cluster/homes.h"
#include "broker/cluster/presence.h"
#include "broker/routing/router.h"
#include "crypto/crypto.h"
#include "mesh/v1/control.pb.h"
#include "peer/counter.h"
#include "peer/peer.h"

namespace mesh::broker {

struct ClusterConfig {
  std::string listen = "0.0.0.0:7800";
  std::string advertise;           // host:port members dial; empty: the listen address
  std::vector<std::string> peers;  // seed addresses, host:port
  std::string dns;                 // name:port, re-resolved: its A records are seeds
  std::chrono::milliseconds dns_interval{5000};
  std::chrono::milliseconds suspect_timeout{30'000};
  std::chrono::milliseconds probe_interval{1000};
  std::string node_name;
  std::string secret_file;  // re-read on ReloadSecret()
  int max_pending_handshakes = 256;
  int max_pending_handshakes_per_ip = 32;
  // Set: a member must present a node certificate by this authority (--mesh-authority), and
  // this node sends `node_cert` (its own, checked at start).
  std::optional<crypto::AuthorityKey> authority;
  std::string node_cert;
  PresenceLimits presence;
};

// The cluster secret file: 64 hex characters, or two lines (current, next). Initiators use the
// current one; responders accept either, so the secret rotates without splitting the mesh.
// Group-readable is fine (Kubernetes Secrets); readable by others is refused.
struct ClusterSecrets {
  crypto::Secret<crypto::kKeySize> current;
  std::optional<crypto::Secret<crypto::kKeySize>> next;
};
absl::StatusOr<ClusterSecrets> LoadClusterSecret(const std::string& path);

// What the mesh did, as plain counters; broker/ exports them.
struct ClusterStats {
  peer::LinkStats links;             // cluster links: handshakes and failures by reason
  LatencyHistogram forward_latency;  // forwarded -> owned by the next hop
  std::atomic<uint64_t> refused_version{0};
  // Presence entries a member sent for another node's sessions, or with a future epoch.
  std::atomic<uint64_t> presence_refused{0};
  // Placement questions the router asked (NextHop): what membership changes, refused forwards
  // and presence changes cost, never a walk of every mailbox at rest.
  std::atomic<uint64_t> placement_queries{0};
  // Members refused for a missing certificate or a duplicate node ID count in `links.failures`
  // (not_certified, duplicate_node).
  std::atomic<uint64_t> handoff_messages{0};  // forwarded while draining or after a move
};

class Cluster final : public Placement {
 public:
  // `shards` run the cluster links (spread over them); the first also runs the listener and
  // the cluster's periodic work.
  // `stats` must outlive the shards' io_contexts (links they hold count into it).
  Cluster(ClusterConfig config, const crypto::KeyPair& key, const ClusterSecrets& secrets,
          Router& router, std::vector<boost::asio::io_context*> shards,
          peer::LinkConfig link_config, ClusterStats& stats);
  ~Cluster() override;

  // Binds the cluster listener and starts dialling the seeds.
  absl::Status Start();
  // Closes every cluster link; call from any thread.
  void Stop();
  // Once the shards' threads have ended: drops the links this object holds, while their
  // io_contexts still exist (a socket must go before its io_context).
  void Release();
  // Re-reads the secret file (the broker calls it on SIGHUP and when the file changes).
  void ReloadSecret();
  // Announces that this node drains: from now on it is left out of every home, and its
  // mailboxes go to their homes among the others.
  void StartDrain();
  // Members other than this node whose link is up.
  size_t LiveMembers() const;
  // This node and every member it knows, for ListMembers.
  std::vector<mesh::v1::Member> Members() const;
  // The node (ID as text) the peer is connected to, if any broker of the mesh says so.
  std::optional<std::string> Locate(std::string_view peer) const;
  // Peers the mesh knows to be connected (to any member, this one included).
  int64_t PresencePeers() const;
  // Entries of the presence table, tombstones of recent departures included.
  int64_t PresenceEntries() const;
  // Members by state, for mesh_cluster_members{state}.
  std::vector<std::pair<std::string, int64_t>> MemberCounts() const;
  uint16_t port() const;

  // Placement
  std::string NextHop(std::string_view recipient) override;
  std::shared_ptr<Session> Forwarder(std::string_view recipient, const std::string& node) override;
  bool Usable(const Session& forwarder) override;
  void OnSession(const crypto::PeerId& peer, bool connected) override;

 private:
  class Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace mesh::broker
