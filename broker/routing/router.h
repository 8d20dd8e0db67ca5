// Routing on one node (DESIGN §3, §4): the session registry, Send -> SendAck, delivery in order
// under the recipient's credit, DeliverAck, the online fast path, mailboxes, quotas and expiry.
//
// Threads: every method may be called from any shard. State is split by recipient into stripes,
// each under its own mutex, so Sends to different recipients do not contend; a session's frames
// are queued and flushed on its link's executor (Session::Queue).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "broker/routing/events.h"
#include "broker/routing/session.h"
#include "peer/counter.h"
#include "store/store.h"

namespace mesh::broker {

struct RouterConfig {
  std::string node_id;  // 32 bytes, stamped as ingress node on stored envelopes
  size_t max_payload = size_t{1} << 20;
  std::chrono::seconds default_ttl{7 * 24 * 3600};
  std::chrono::seconds max_ttl{30 * 24 * 3600};
  std::chrono::seconds dedup_window{600};
  // Online fast path: deliver first, store only if no DeliverAck within this window.
  // Zero stores every message before delivering it.
  std::chrono::milliseconds ack_window{100};
  uint64_t mailbox_max_messages = 100'000;
  uint64_t mailbox_max_bytes = uint64_t{256} << 20;
  double sender_share = 0.5;                 // of one mailbox's quota a single sender may hold
  uint64_t sender_max_messages = 1'000'000;  // one sender, across all mailboxes
  // High-water mark of queued bytes (0: none); the store's volume has its own (statfs,
  // StoreOptions::min_free_fraction). Above either, Sends get STORE_FULL and Full() is true.
  uint64_t store_max_bytes = 0;
  double send_rate = 20'000;  // per peer, messages/s; 0: no limit
  double send_burst = 40'000;
  uint32_t max_in_flight = 1024;                     // per link, whatever the credit says
  uint64_t max_in_flight_bytes = uint64_t{8} << 20;  // per link
  size_t max_loaded = 2048;  // messages of one online mailbox kept in memory; the rest in the store
  std::chrono::seconds expiry_sweep_interval{30};
};

// What routing did, as plain counters (sharded: every message updates several from any
// shard); broker/ exports them.
struct RouterStats {
  static constexpr int kStatuses = mesh::v1::SendAck::Status_ARRAYSIZE;
  ShardedCounter<uint64_t> sends;
  std::array<ShardedCounter<uint64_t>, kStatuses> acks;  // SendAcks by status
  ShardedCounter<uint64_t> delivered;                    // Deliver frames (redeliveries too)
  ShardedCounter<uint64_t> acked;                        // deliveries acknowledged
  ShardedCounter<uint64_t> fast_path;  // acknowledged by the recipient before any store write
  ShardedCounter<uint64_t> stored;     // messages written to a mailbox
  ShardedCounter<uint64_t> expired;
  ShardedCounter<int64_t> queued;        // messages owned and not yet acknowledged
  ShardedCounter<int64_t> queued_bytes;  // their stored size
  ShardedCounter<int64_t> sessions;
  ShardedCounter<uint64_t> sessions_total;
  ShardedCounter<uint64_t> replaced;
  ShardedCounter<uint64_t> forwarded_out;  // handed to a forwarder (resends too)
  ShardedCounter<uint64_t> forwarded_in;   // taken from another broker
  ShardedCounter<uint64_t> forward_acked;  // owned by the next hop, deleted here
  // Accept -> DeliverAck: on the online fast path, and for messages that were written first
  // (a recipient offline or behind; these include the time spent waiting in a mailbox).
  LatencyHistogram delivery_latency_fast;
  LatencyHistogram delivery_latency_stored;
};

// Where mailboxes go when their recipient has no session here: the mesh (broker/cluster)
// implements it; a single broker has none and keeps every mailbox. Called under a stripe lock,
// so an implementation must never call back into the Router.
class Placement {
 public:
  virtual ~Placement() = default;
  // The node (ID, 32 bytes) the recipient's messages go to next; empty: keep them here.
  virtual std::string NextHop(std::string_view recipient) = 0;
  // A forwarder (Session) towards `node` for the recipient's mailbox; null while no link to it
  // is up (the messages wait here, on disk once their ack window passes).
  virtual std::shared_ptr<Session> Forwarder(std::string_view recipient,
                                             const std::string& node) = 0;
  // Whether a forwarder made earlier still rides a live link.
  virtual bool Usable(const Session& forwarder) = 0;
  // A peer session began or ended here (outside every router lock).
  virtual void OnSession(const crypto::PeerId& peer, bool connected) = 0;
};

// What the control plane sees of one peer on this broker.
struct PeerView {
  std::string id;  // 32 raw bytes
  bool connected = false;
  std::string remote_address;
  Session::Clock::time_point connected_at{};
  uint64_t in_flight = 0;  // deliveries not yet acknowledged
  uint64_t credit = 0;     // Credit granted on the current link
  uint64_t mailbox_messages = 0;
  uint64_t mailbox_bytes = 0;
};

class Router {
 public:
  Router(RouterConfig config, store::Store& store);
  ~Router();
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // Rebuilds mailbox counts from the store; call once before the first session.
  absl::Status Recover();

  // ---- the mesh (DESIGN §5) ----
  // Set once, before links start; borrowed.
  void SetPlacement(Placement* placement);
  // Asks the placement again for every mailbox without a local session (membership changed or
  // a link came or went), or for one (its presence changed).
  void RebindAll();
  void Rebind(std::string_view recipient);
  // Places again only the mailboxes bound for another broker that have no forwarder: those a
  // next hop refused, or whose next hop had no link up. Costs what waits, so it runs every
  // second.
  void PlaceUnbound();
  // A message another broker forwards: admitted like a Send from envelope.from(). `sender` is
  // a local session whose sink gets a SendAck with id `ack_ref` once the message is owned here.
  void OnForward(Session& sender, mesh::v1::StoredEnvelope envelope, std::string ack_ref);
  // The next hop owns these deliveries of a forwarder (owned = true), or refused them: refused
  // ones stay here and the forwarder is let go until the next PlaceUnbound.
  void OnForwardAcks(Session& forwarder, const std::vector<uint64_t>& link_seqs, bool owned);
  // A drained broker owns nothing new: Sends and forwards are refused (STORE_UNAVAILABLE,
  // "draining"), so the sender or the forwarding member keeps them and goes elsewhere.
  void RefuseNewMessages() { refusing_.store(true); }
  // Messages held here (owned, not yet acknowledged by a recipient or a next hop).
  int64_t QueuedMessages() const { return stats_.queued.load(); }
  // At a high-water mark: the store's volume is nearly full, or queued bytes reached
  // --store-max-bytes (and have not yet fallen below 90% of it). New messages get STORE_FULL;
  // deliveries, acknowledgements, expiry and purges go on and bring it back.
  bool Full() const;
  // Whether queued bytes reached --store-max-bytes since the last call: a spell shorter than
  // the tick that logs the changes is logged too.
  bool TakeWentFull();

  // A link is up: registers its session, replacing (GoAway REPLACED) an older one of the same
  // peer, and starts delivering the peer's mailbox once it sends Credit. On the link's executor.
  absl::StatusOr<std::shared_ptr<Session>> Attach(std::shared_ptr<peer::Link> link,
                                                  std::string remote_address = {});
  // A frame from the session's link (or a local sender's Send); a non-OK status closes the link
  // with it.
  absl::Status OnFrame(Session& session, mesh::v1::Frame& frame);
  // Takes one token of `peer`'s send rate (held per peer ID across its links) for a request
  // that is not a Send, such as a Ping; false when it has none left.
  bool TakeRateToken(std::string_view peer);
  // The link ended (`reason`, for watchers): unacknowledged deliveries go back to the mailbox
  // for the next session.
  void Detach(Session& session, std::string_view reason = "closed");

  // ---- for the control plane; thread-safe ----
  // Connected peers ordered by ID, those after `after` (raw bytes; empty: from the first).
  std::vector<PeerView> ListPeers(std::string_view after, size_t limit) const;
  // The peer's session and mailbox here; nullopt when it has neither.
  std::optional<PeerView> GetPeer(std::string_view id) const;
  // GoAway{reason}, then the link closes; false if the peer has no session here.
  bool Disconnect(std::string_view id, mesh::v1::GoAway::Reason reason = mesh::v1::GoAway::ADMIN);
  // GoAway(reason) to every session; returns how many.
  size_t GoAwayAll(mesh::v1::GoAway::Reason reason);
  // GoAway(reason) to at most n sessions (the longest connected first); returns how many.
  size_t GoAwaySome(size_t n, mesh::v1::GoAway::Reason reason);
  // Drops the peer's owned messages that are not in flight, in memory and in the store; returns
  // how many. Messages not yet acknowledged to their senders are left alone.
  absl::StatusOr<uint64_t> PurgeMailbox(std::string_view id);
  // Messages held here for another broker (the outboxes), without a local session.
  uint64_t OutboxMessages() const;
  // Mailboxes holding messages here, in memory or at rest in the store.
  size_t MailboxCount() const;
  // Mailboxes in memory: active ones (a session, a forwarder, work under way).
  size_t MailboxesInMemory() const;
  // Peer connected/disconnected and rejected sends are published here.
  EventHub& events() { return events_; }

  // Periodic work: stores fast-path messages whose ack window passed, lets go mailboxes at
  // rest, and starts an expiry sweep (on a thread of the router's own) when one is due. Call
  // from one thread.
  void Tick();
  // Stops the thread that sweeps expired messages and walks the mailboxes at rest (it reads
  // the store and asks the placement): before either goes. The destructor does it too.
  void StopBackground();

  const RouterStats& stats() const { return stats_; }
  const RouterConfig& config() const { return config_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  RouterConfig config_;
  RouterStats stats_;
  EventHub events_;
  std::atomic<bool> refusing_{false};
};

}  // namespace mesh::broker
