#include "broker/cluster/cluster_link.h"

#include <boost/asio/post.hpp>

namespace mesh::broker {

std::string SeqRef(uint64_t seq) {
  std::string ref(8, '\0');
  for (int i = 0; i < 8; ++i) ref[i] = static_cast<char>(seq >> (56 - 8 * i));
  return ref;
}

std::optional<uint64_t> SeqOf(std::string_view ref) {
  if (ref.size() != 8) return std::nullopt;
  uint64_t seq = 0;
  for (char c : ref) seq = (seq << 8) | static_cast<uint8_t>(c);
  return seq;
}

ClusterLink::ClusterLink(std::shared_ptr<peer::Link> link, bool initiator, std::string dialed)
    : link_(std::move(link)),
      initiator_(initiator),
      dialed_(std::move(dialed)),
      node_(link_->remote_id().Raw()) {}

void ClusterLink::Queue(mesh::v1::ClusterFrame frame) {
  std::lock_guard lock(mu_);
  CutPending();
  frames_.push_back(std::move(frame));
  ScheduleFlush();
}

void ClusterLink::QueueForward(Session& forwarder, uint64_t link_seq,
                               const mesh::v1::StoredEnvelope& envelope, const std::string& self) {
  std::lock_guard lock(mu_);
  const uint64_t seq = next_seq_++;
  sent_[seq] = {forwarder.weak_from_this(), link_seq, Clock::now()};
  if (batch_bytes_ + envelope.payload().size() > kBatchBytes && forwards_.messages_size() > 0) {
    CutBatch();
  }
  auto* message = forwards_.add_messages();
  message->set_seq(seq);
  message->set_from(envelope.from());
  message->set_to(envelope.to());
  message->set_id(envelope.id());
  message->set_payload(envelope.payload());
  message->set_sent_at_ms(envelope.sent_at_ms());
  message->set_expire_at_ms(envelope.expire_at_ms());
  message->set_ingress_node(envelope.ingress_node().empty() ? self : envelope.ingress_node());
  batch_bytes_ += envelope.payload().size();
  ScheduleFlush();
}

void ClusterLink::QueueAck(uint64_t seq, mesh::v1::SendAck::Status status, std::string detail) {
  std::lock_guard lock(mu_);
  auto* ack = acks_.add_acks();
  ack->set_seq(seq);
  ack->set_status(status);
  if (!detail.empty()) ack->set_detail(std::move(detail));
  ScheduleFlush();
}

std::vector<ClusterLink::Settled> ClusterLink::Settle(const mesh::v1::ForwardAckBatch& batch,
                                                      LatencyHistogram& latency) {
  std::vector<Settled> settled;
  std::lock_guard lock(mu_);
  const auto now = Clock::now();
  for (const auto& ack : batch.acks()) {
    auto it = sent_.find(ack.seq());
    if (it == sent_.end()) continue;
    const Sent sent = it->second;
    sent_.erase(it);
    auto forwarder = sent.forwarder.lock();
    if (!forwarder) continue;
    const bool owned =
        ack.status() == mesh::v1::SendAck::ACCEPTED || ack.status() == mesh::v1::SendAck::DUPLICATE;
    if (owned) {
      latency.Observe(std::chrono::duration_cast<std::chrono::microseconds>(now - sent.at));
    }
    if (settled.empty() || settled.back().forwarder != forwarder || settled.back().owned != owned) {
      settled.push_back({forwarder, {}, owned});
    }
    settled.back().link_seqs.push_back(sent.link_seq);
  }
  return settled;
}

void ClusterLink::CutBatch() {
  mesh::v1::ClusterFrame frame;
  frame.mutable_forward()->Swap(&forwards_);
  frames_.push_back(std::move(frame));
  batch_bytes_ = 0;
}

void ClusterLink::ScheduleFlush() {
  if (flush_scheduled_) return;
  flush_scheduled_ = true;
  boost::asio::post(link_->get_executor(), [self = shared_from_this()] { self->Flush(); });
}

void ClusterLink::CutPending() {
  if (forwards_.messages_size() > 0) CutBatch();
  if (acks_.acks_size() > 0) {
    mesh::v1::ClusterFrame frame;
    frame.mutable_acks()->Swap(&acks_);
    frames_.push_back(std::move(frame));
  }
}

void ClusterLink::Flush() {
  std::vector<mesh::v1::ClusterFrame> frames;
  {
    std::lock_guard lock(mu_);
    flush_scheduled_ = false;
    CutPending();
    frames.swap(frames_);
  }
  for (const auto& frame : frames) link_->Send(frame);
}

}  // namespace mesh::broker
