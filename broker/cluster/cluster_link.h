// One cluster link (DESIGN §5, "Routing a Send") and its outgoing queue, which any thread may
// fill: frames, forwards (cut into batches) and acks go out together on the link's executor,
// in the order they were queued. A forward is numbered per link; the next hop's ack for that
// number settles it, and only then does the forwarder's mailbox let the message go.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "broker/routing/session.h"
#include "mesh/v1/cluster.pb.h"
#include "peer/peer.h"

namespace mesh::broker {

// Deliveries in flight over one cluster link, whatever the number of forwarders riding it.
inline constexpr int64_t kLinkWindow = 8192;
// A forward batch is cut at this many payload bytes, so frames stay well under max_frame.
inline constexpr size_t kBatchBytes = size_t{256} << 10;

// A forward's number as the id of the SendAck the receiving router answers with, and back.
std::string SeqRef(uint64_t seq);
std::optional<uint64_t> SeqOf(std::string_view ref);

class ClusterLink : public std::enable_shared_from_this<ClusterLink> {
 public:
  using Clock = std::chrono::steady_clock;

  // `dialed`: the address this node dialled; empty when the link was accepted.
  ClusterLink(std::shared_ptr<peer::Link> link, bool initiator, std::string dialed);

  peer::Link& link() { return *link_; }
  bool initiator() const { return initiator_; }
  const std::string& dialed() const { return dialed_; }
  const std::string& node() const { return node_; }  // the member's ID, proven by the handshake
  std::atomic<bool> up{false};
  std::atomic<bool> closed{false};
  const std::shared_ptr<ForwardWindow> window = std::make_shared<ForwardWindow>(kLinkWindow);
  std::shared_ptr<Session> acks;  // collects the SendAcks of messages forwarded to us

  // Keeps the order of everything queued: forwards and acks batched so far go out before this
  // frame. A presence delta must not overtake the ack of a delivery that preceded it, or the
  // sender's broker sees the recipient leave with the message still unacknowledged and hands
  // it on to be delivered a second time.
  void Queue(mesh::v1::ClusterFrame frame);
  // `self`: this node, the ingress of an envelope that names none.
  void QueueForward(Session& forwarder, uint64_t link_seq, const mesh::v1::StoredEnvelope& envelope,
                    const std::string& self);
  void QueueAck(uint64_t seq, mesh::v1::SendAck::Status status, std::string detail);

  // The forwarders and their link seqs that these acks settle, grouped by forwarder; `owned`
  // or refused. Observes the forward latency of the owned ones.
  struct Settled {
    std::shared_ptr<Session> forwarder;
    std::vector<uint64_t> link_seqs;
    bool owned;
  };
  std::vector<Settled> Settle(const mesh::v1::ForwardAckBatch& batch, LatencyHistogram& latency);

 private:
  struct Sent {
    std::weak_ptr<Session> forwarder;
    uint64_t link_seq;
    Clock::time_point at;
  };

  void CutBatch();
  void ScheduleFlush();
  // Moves the batched forwards and acks into frames_, behind what is queued there already.
  void CutPending();
  void Flush();

  const std::shared_ptr<peer::Link> link_;
  const bool initiator_;
  const std::string dialed_;
  const std::string node_;
  std::mutex mu_;  // a leaf: nothing else is taken under it
  std::vector<mesh::v1::ClusterFrame> frames_;
  mesh::v1::ForwardBatch forwards_;
  size_t batch_bytes_ = 0;
  mesh::v1::ForwardAckBatch acks_;
  bool flush_scheduled_ = false;
  uint64_t next_seq_ = 1;
  absl::flat_hash_map<uint64_t, Sent> sent_;
};

}  // namespace mesh::broker
