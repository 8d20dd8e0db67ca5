// One authenticated peer link as routing sees it: its outgoing frame queue, which any thread
// may fill, and its delivery window, which the router guards with the peer's stripe lock.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "mesh/v1/store.pb.h"
#include "peer/peer.h"

namespace mesh::broker {

// Deliveries in flight over one cluster link, shared by every forwarder riding it: however many
// mailboxes go to a member, what waits for its acks is bounded; the rest stays in the mailboxes
// (on disk once their ack window passes), and forwarders that found it full are woken as acks
// come back.
struct ForwardWindow {
  explicit ForwardWindow(int64_t limit) : limit(limit) {}
  const int64_t limit;
  std::atomic<int64_t> in_flight{0};
  std::mutex mu;
  std::vector<std::weak_ptr<class Session>> waiting;  // forwarders that found it full
  bool full() const { return in_flight.load(std::memory_order_relaxed) >= limit; }
};

// What the router delivers to, and takes Sends from: a peer's link, the broker itself as a
// sender (no link), or a forwarder towards another broker. Which one is a type (`Kind`), not a
// pattern of null fields; the delivery window below is common to all three.
class Session : public std::enable_shared_from_this<Session> {
 public:
  using Clock = std::chrono::steady_clock;
  using Sink = std::function<void(mesh::v1::Frame)>;
  using Forward = std::function<void(Session&, uint64_t link_seq, const mesh::v1::StoredEnvelope&)>;

  // An authenticated peer link: Deliver frames go out on it.
  struct PeerLink {
    std::shared_ptr<peer::Link> link;
  };
  // The broker sending as itself: frames meant for it go to `sink`.
  struct Local {
    Sink sink;
  };
  // Stands in for a recipient whose mailbox goes to another broker.
  struct Forwarder {
    std::string next_hop;  // a node ID
    Forward forward;
    std::weak_ptr<void> carrier;            // what carries its messages (the cluster link)
    std::shared_ptr<ForwardWindow> window;  // shared by every forwarder on that link
  };

  explicit Session(std::shared_ptr<peer::Link> link, std::string remote_address = {});
  // A sender without a link, for messages the broker sends as itself (the control plane's
  // SendMessage): frames meant for it go to `sink`, on whichever thread produced them. It is
  // never attached to a mailbox and not rate limited.
  Session(const crypto::PeerId& id, Sink sink);
  // A forwarder (DESIGN §5): stands in for a recipient whose mailbox goes to another broker
  // (`next_hop`, a node ID). The router delivers to it like to a peer, but each delivery goes to
  // `forward` (under the recipient's stripe lock) instead of a Deliver frame, and the next hop's
  // acks come back through Router::OnForwardAcks. Refills run on `executor`.
  // `carrier` is what carries its messages (the cluster link), for the placement to check.
  Session(const crypto::PeerId& recipient, std::string next_hop, Forward forward,
          std::weak_ptr<void> carrier, std::shared_ptr<ForwardWindow> link_window,
          peer::Link::Socket::executor_type executor, uint64_t window);

  // Thread-safe: frames go out in the order queued, flushed on the link's executor in batches.
  void Queue(mesh::v1::Frame frame);
  // Thread-safe: GoAway with `reason`, then close.
  void GoAwayAndClose(mesh::v1::GoAway::Reason reason);

  const std::string& peer() const { return peer_; }  // 32 raw bytes
  const crypto::PeerId& peer_id() const { return id_; }
  peer::Link::Socket::executor_type executor() const { return executor_; }
  // A peer's link (rate limited, counted as connected), not the broker itself or a forwarder.
  bool peer_link() const { return std::holds_alternative<PeerLink>(kind_); }
  bool forwarder() const { return std::holds_alternative<Forwarder>(kind_); }
  // Null unless a forwarder.
  const Forwarder* forwarding() const { return std::get_if<Forwarder>(&kind_); }
  // The cluster link's window of a forwarder; null for the other kinds.
  ForwardWindow* window() const {
    const Forwarder* f = forwarding();
    return f != nullptr ? f->window.get() : nullptr;
  }
  const std::string& remote_address() const { return remote_address_; }
  Clock::time_point connected_at() const { return connected_at_; }

 private:
  friend class Router;
  void Flush();
  bool OnLinkThread() const;

  const std::variant<PeerLink, Local, Forwarder> kind_;
  const peer::Link::Socket::executor_type executor_;
  const crypto::PeerId id_;
  const std::string peer_;
  const std::string remote_address_;
  const Clock::time_point connected_at_ = Clock::now();
  std::mutex out_mu_;
  std::vector<mesh::v1::Frame> out_;
  bool flush_scheduled_ = false;
  bool close_requested_ = false;

  // Guarded by the router's stripe lock for this peer: the delivery window.
  bool attached_ = false;
  uint64_t credit_ = 0;         // sum of Credit frames
  uint64_t next_link_seq_ = 1;  // Deliver.seq on this link
  uint64_t in_flight_bytes_ = 0;
  struct InFlight {
    uint64_t mailbox_seq;
    uint64_t bytes;
  };
  absl::flat_hash_map<uint64_t, InFlight> in_flight_;  // link seq -> mailbox seq
  bool refill_scheduled_ = false;
};

}  // namespace mesh::broker
