// Routing in memory: Send -> SendAck, delivery under credit, DeliverAck, sessions.
#include "broker/routing/router.h"

#include <boost/asio/post.hpp>

#include "absl/strings/str_cat.h"
#include "broker/log.h"
#include "broker/routing/router_impl.h"

namespace mesh::broker {

using namespace routing;  // NOLINT(google-build-using-namespace): this module's own internals

void Router::Impl::Ack(Session& session, std::string id, SendAck::Status status,
                       std::string_view detail) {
  mesh::v1::Frame frame;
  auto* ack = frame.mutable_send_ack();
  ack->set_id(std::move(id));
  ack->set_status(status);
  if (!detail.empty()) ack->set_detail(std::string(detail));
  session.Queue(std::move(frame));
  stats.acks[status].fetch_add(1, std::memory_order_relaxed);
  if (status != SendAck::ACCEPTED && status != SendAck::DUPLICATE && events.has_watchers()) {
    mesh::v1::Event event;
    auto* rejected = event.mutable_message_rejected();
    rejected->set_from(session.peer_id().ToString());
    rejected->set_status(status);
    rejected->set_detail(std::string(detail));
    events.Publish(std::move(event));
  }
}

void Router::Impl::Notify(std::vector<Waiter>& waiters,
                          std::optional<SendAck::Status> override_status, std::string_view detail) {
  for (auto& waiter : waiters) {
    if (auto session = waiter.session.lock()) {
      Ack(*session, std::move(waiter.id), override_status.value_or(waiter.status), detail);
    }
  }
  waiters.clear();
}

void Router::Impl::Account(Mailbox& mailbox, const std::string& from, uint64_t bytes) {
  if (mailbox.count++ == 0) held_mailboxes.fetch_add(1, std::memory_order_relaxed);
  mailbox.bytes += bytes;
  Mailbox::Held& held = mailbox.per_sender[from];
  ++held.messages;
  held.bytes += bytes;
  stats.queued.fetch_add(1, std::memory_order_relaxed);
  stats.queued_bytes.fetch_add(static_cast<int64_t>(bytes), std::memory_order_relaxed);
}

void Router::Impl::Release(Mailbox& mailbox, const std::string& from, uint64_t bytes) {
  if (--mailbox.count == 0) held_mailboxes.fetch_sub(1, std::memory_order_relaxed);
  mailbox.bytes -= bytes;
  auto it = mailbox.per_sender.find(from);
  if (it != mailbox.per_sender.end()) {
    it->second.bytes -= std::min(it->second.bytes, bytes);
    if (--it->second.messages == 0) mailbox.per_sender.erase(it);
  }
  ledger.Remove(from);
  stats.queued.fetch_sub(1, std::memory_order_relaxed);
  stats.queued_bytes.fetch_sub(static_cast<int64_t>(bytes), std::memory_order_relaxed);
}

bool Router::Impl::HasCapacity(const Session& session) const {
  if (const ForwardWindow* window = session.window(); window != nullptr && window->full()) {
    return false;
  }
  const uint64_t window = std::min<uint64_t>(session.credit_, config.max_in_flight);
  return session.in_flight_.size() < window &&
         (session.in_flight_bytes_ < config.max_in_flight_bytes || session.in_flight_.empty());
}

void Router::Impl::DeliverEntry(Session& session, uint64_t seq, Entry& entry) {
  const uint64_t link_seq = session.next_link_seq_++;
  entry.link_seq = link_seq;
  const uint64_t size = entry.envelope.payload().size();
  session.in_flight_[link_seq] = {seq, size};
  session.in_flight_bytes_ += size;
  if (const Session::Forwarder* forwarder = session.forwarding()) {
    if (forwarder->window) forwarder->window->in_flight.fetch_add(1);
    forwarder->forward(session, link_seq, entry.envelope);
    stats.forwarded_out.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  mesh::v1::Frame frame;
  auto* deliver = frame.mutable_deliver();
  deliver->set_seq(link_seq);
  deliver->set_id(entry.envelope.id());
  deliver->set_from(entry.envelope.from());
  deliver->set_payload(entry.envelope.payload());
  deliver->set_sent_at_ms(entry.envelope.sent_at_ms());
  session.Queue(std::move(frame));
  stats.delivered.fetch_add(1, std::memory_order_relaxed);
}

// Delivers loaded entries in seq order while the session has room; asks for a read from the
// store when the loaded ones are all out and more wait there.
void Router::Impl::TryDeliver(Mailbox& mailbox) {
  if (!mailbox.session) return;
  Session& session = *mailbox.session;
  const uint64_t now_ms = WallMs();
  auto it = mailbox.loaded.lower_bound(mailbox.deliver_from);
  while (it != mailbox.loaded.end() && HasCapacity(session)) {
    Entry& entry = it->second;
    if (entry.link_seq != 0 || entry.acked) {
      ++it;
      continue;
    }
    if (entry.envelope.expire_at_ms() <= now_ms) {
      if (entry.state == State::kStored) {
        it = DropExpired(mailbox, it);
      } else {
        ++it;  // the sweep reclaims it once its write completes
      }
      continue;
    }
    DeliverEntry(session, it->first, entry);
    mailbox.deliver_from = it->first + 1;
    ++it;
  }
  if (it == mailbox.loaded.end() && mailbox.spilled && HasCapacity(session)) {
    ScheduleRefill(mailbox);
  }
  if (ForwardWindow* window = session.window(); window != nullptr && window->full()) {
    // The link's window stopped this forwarder: it is woken when acks open the window again.
    {
      std::lock_guard lock(window->mu);
      window->waiting.push_back(mailbox.session);
    }
    // Acks that opened the window between the check and the registration woke nobody: look
    // again, or with nothing left in flight no ack would ever wake it.
    WakeForwarders(*window);
  }
}

// Acks opened a cluster link's window: the forwarders it stopped go on, each on its executor.
void Router::Impl::WakeForwarders(ForwardWindow& window) {
  if (window.in_flight.load() > window.limit / 2) return;
  std::vector<std::weak_ptr<Session>> waiting;
  {
    std::lock_guard lock(window.mu);
    waiting.swap(window.waiting);
  }
  for (auto& weak : waiting) {
    auto session = weak.lock();
    if (!session) continue;
    boost::asio::post(session->executor(), [this, session] { Refill(session->peer(), *session); });
  }
}

std::map<uint64_t, Entry>::iterator Router::Impl::DropExpired(
    Mailbox& mailbox, std::map<uint64_t, Entry>::iterator it) {
  DeleteStored(mailbox, it->first, it->second.ref());
  Release(mailbox, it->second.envelope.from(), it->second.bytes);
  stats.expired.fetch_add(1, std::memory_order_relaxed);
  return mailbox.loaded.erase(it);
}

bool Router::Impl::UndeliveredLoaded(const Mailbox& mailbox) const {
  for (auto it = mailbox.loaded.lower_bound(mailbox.deliver_from); it != mailbox.loaded.end();
       ++it) {
    if (it->second.link_seq == 0 && !it->second.acked) return true;
  }
  return false;
}

void Router::Impl::ScheduleRefill(Mailbox& mailbox) {
  Session& session = *mailbox.session;
  if (session.refill_scheduled_) return;
  session.refill_scheduled_ = true;
  boost::asio::post(session.executor(), [this, weak = std::weak_ptr<Session>(mailbox.session),
                                         recipient = mailbox.recipient] {
    if (auto session = weak.lock()) Refill(recipient, *session);
  });
}

// Whether a retried Send carries the message its pending (from, id) stands for.
bool Router::Impl::SameMessage(const Mailbox& mailbox, const Pending& pending,
                               const mesh::v1::StoredEnvelope& message) {
  if (pending.digest) return *pending.digest == DigestOf(message.to(), message.payload());
  auto it = mailbox.loaded.find(pending.seq);
  if (it == mailbox.loaded.end()) return false;  // cannot happen: see Pending::digest
  return it->second.envelope.to() == message.to() &&
         it->second.envelope.payload() == message.payload();
}

void Router::Impl::OnSend(Session& sender, mesh::v1::Send& send) {
  stats.sends.fetch_add(1, std::memory_order_relaxed);
  const std::string& id = send.id();
  // First: every Send earns an answer, so an invalid one costs the sender a token as well.
  if (sender.peer_link() && !rates.Take(sender.peer())) {
    return Ack(sender, id, SendAck::RATE_LIMITED,
               absl::StrCat("over ", config.send_rate, " messages/s"));
  }
  if (id.size() != store::kMessageIdSize) {
    return Ack(sender, id, SendAck::INVALID, "id must be 16 bytes");
  }
  if (send.to().size() != store::kIdSize || !crypto::IsCanonicalPublicKey(AsBytes(send.to()))) {
    return Ack(sender, id, SendAck::INVALID, "to is not a peer ID (a canonical X25519 key)");
  }
  if (send.payload().size() > config.max_payload) {
    return Ack(sender, id, SendAck::TOO_LARGE,
               absl::StrCat("payload of ", send.payload().size(), " bytes is over max_payload ",
                            config.max_payload));
  }
  if (send.ttl_s() > static_cast<uint64_t>(config.max_ttl.count())) {
    return Ack(
        sender, id, SendAck::INVALID,
        absl::StrCat("ttl_s ", send.ttl_s(), " is over the maximum ", config.max_ttl.count()));
  }
  const uint64_t now_ms = WallMs();
  const uint64_t ttl_s = send.ttl_s() == 0 ? config.default_ttl.count() : send.ttl_s();
  mesh::v1::StoredEnvelope envelope;
  envelope.set_version(store::kEnvelopeVersion);
  envelope.set_from(sender.peer());
  envelope.set_allocated_to(send.release_to());
  envelope.set_id(id);
  envelope.set_allocated_payload(send.release_payload());
  envelope.set_sent_at_ms(now_ms);
  envelope.set_expire_at_ms(now_ms + ttl_s * 1000);
  Admit(sender, id, std::move(envelope));
}

void Router::Impl::OnForward(Session& sender, mesh::v1::StoredEnvelope envelope,
                             std::string ack_ref) {
  stats.forwarded_in.fetch_add(1, std::memory_order_relaxed);
  if (envelope.id().size() != store::kMessageIdSize || envelope.from().size() != store::kIdSize ||
      envelope.to().size() != store::kIdSize ||
      !crypto::IsCanonicalPublicKey(AsBytes(envelope.to()))) {
    return Ack(sender, std::move(ack_ref), SendAck::INVALID, "malformed forwarded message");
  }
  if (envelope.payload().size() > config.max_payload) {
    return Ack(sender, std::move(ack_ref), SendAck::TOO_LARGE, "payload over max_payload");
  }
  envelope.set_version(store::kEnvelopeVersion);
  Admit(sender, std::move(ack_ref), std::move(envelope));
}

// Takes ownership of a validated message: dedup, quotas, then the recipient's mailbox, where it
// is delivered at once (fast path), or written first. `ack_id` is what the sender's SendAck
// names.
// A Send of a message this broker is still taking in (its write in flight, or delivered on
// the fast path and not yet acked): the sender hears when the first copy is owned.
void Router::Impl::AdmitAgain(Session& sender, std::string ack_id,
                              const mesh::v1::StoredEnvelope& envelope, Mailbox& mailbox,
                              Pending& pending) {
  if (!SameMessage(mailbox, pending, envelope)) {
    return Ack(sender, std::move(ack_id), SendAck::INVALID,
               "id reused with another recipient or payload");
  }
  auto entry = mailbox.loaded.find(pending.seq);
  if (entry != mailbox.loaded.end() && entry->second.handed_off) {
    // Handed to another broker while its write here was in flight, and now back (a home that
    // moved away and back): owned here again, or both copies would be deleted.
    entry->second.acked = false;
    entry->second.handed_off = false;
    entry->second.envelope.set_payload(envelope.payload());  // cleared when it was acked
    mailbox.deliver_from = std::min(mailbox.deliver_from, entry->first);
    pending.waiters.push_back({sender.weak_from_this(), std::move(ack_id), SendAck::ACCEPTED});
    TryDeliver(mailbox);
    return;
  }
  pending.waiters.push_back({sender.weak_from_this(), std::move(ack_id), SendAck::DUPLICATE});
}

void Router::Impl::Admit(Session& sender, std::string ack_id, mesh::v1::StoredEnvelope envelope) {
  const std::string& from = envelope.from();
  const std::string& id = envelope.id();
  const PendingKey key = PendingKeyOf(from, id);
  const uint64_t now_ms = WallMs();

  Stripe& stripe = StripeOf(envelope.to());
  std::unique_lock lock(stripe.mu, std::defer_lock);
  absl::StatusOr<std::optional<mesh::v1::DedupRecord>> dedup;
  Mailbox* admitting = nullptr;
  for (int attempt = 0;; ++attempt) {
    // The dedup entry is read with the stripe unlocked, and trusted only if no write or delete
    // of a dedup entry of this stripe settled meanwhile (the pending or dedup_deleting entry
    // that stood for it gone before the lock): after a few lost races, under the lock.
    const uint64_t seen = stripe.dedup_settled.load(std::memory_order_acquire);
    const bool unlocked = attempt < kLoadAttempts;
    if (unlocked) dedup = store.GetDedup(from, id, now_ms);
    lock.lock();
    if (!unlocked) dedup = store.GetDedup(from, id, now_ms);
    if (refusing.load(std::memory_order_relaxed)) {
      return Ack(sender, std::move(ack_id), SendAck::STORE_UNAVAILABLE,
                 "this broker has drained: send to another one");
    }
    auto loaded = Load(stripe, lock, envelope.to());
    if (!loaded.ok()) {
      return Ack(sender, std::move(ack_id), SendAck::STORE_UNAVAILABLE,
                 std::string(loaded.status().message()));
    }
    Mailbox& mailbox = **loaded;
    if (auto it = mailbox.pending.find(key); it != mailbox.pending.end()) {
      return AdmitAgain(sender, std::move(ack_id), envelope, mailbox, it->second);
    }
    if (!store.available()) {
      MaybeErase(stripe, mailbox);
      return Ack(sender, std::move(ack_id), SendAck::STORE_UNAVAILABLE, "the store cannot write");
    }
    if (!unlocked || stripe.dedup_settled.load(std::memory_order_relaxed) == seen) {
      admitting = &mailbox;
      break;
    }
    MaybeErase(stripe, mailbox);
    lock.unlock();
  }
  Mailbox& mailbox = *admitting;
  if (!dedup.ok()) {
    MaybeErase(stripe, mailbox);
    return Ack(sender, std::move(ack_id), SendAck::STORE_UNAVAILABLE,
               std::string(dedup.status().message()));
  }
  // A dedup entry whose delete is on its way is stale: its message went to another broker.
  if (dedup->has_value() && !mailbox.dedup_deleting.contains(key)) {
    MaybeErase(stripe, mailbox);
    if ((*dedup)->digest() != AsText(DigestOf(envelope.to(), envelope.payload()))) {
      return Ack(sender, std::move(ack_id), SendAck::INVALID,
                 "id reused with another recipient or payload");
    }
    return Ack(sender, std::move(ack_id), SendAck::DUPLICATE);
  }
  const uint64_t bytes = AccountedBytes(envelope.payload().size());
  if (auto rejection = CheckQuotas(mailbox, from, bytes); rejection.first != SendAck::ACCEPTED) {
    MaybeErase(stripe, mailbox);
    return Ack(sender, std::move(ack_id), rejection.first, rejection.second);
  }

  const uint64_t seq = mailbox.next_seq++;
  Entry entry;
  entry.envelope = std::move(envelope);
  entry.bytes = bytes;
  entry.accepted = Clock::now();
  Account(mailbox, entry.envelope.from(), bytes);
  Pending& pending = mailbox.pending[key];
  pending.seq = seq;
  pending.waiters.push_back({sender.weak_from_this(), std::move(ack_id), SendAck::ACCEPTED});

  Place(mailbox);
  Session* recipient = mailbox.session.get();
  const bool fast = config.ack_window.count() > 0 && recipient != nullptr && !mailbox.spilled &&
                    HasCapacity(*recipient) && !UndeliveredLoaded(mailbox);
  if (fast) {
    entry.state = State::kFast;
    auto& stored = mailbox.loaded.emplace(seq, std::move(entry)).first->second;
    DeliverEntry(*recipient, seq, stored);
    mailbox.deliver_from = seq + 1;
    FastDeadline deadline{Clock::now() + config.ack_window, {}, seq};
    std::copy_n(mailbox.recipient.begin(), deadline.recipient.size(), deadline.recipient.begin());
    stripe.fast.push_back(deadline);
    return;
  }
  Persist(mailbox, seq, entry.envelope);
  if (recipient != nullptr && !mailbox.spilled && mailbox.loaded.size() < config.max_loaded) {
    mailbox.loaded.emplace(seq, std::move(entry));
    TryDeliver(mailbox);
  } else {
    mailbox.Spill(seq);
  }
}

// A mailbox without a session asks the placement where it goes (once per placement epoch, so
// a mailbox kept here costs one question, not one per message).
void Router::Impl::Place(Mailbox& mailbox) {
  if (placement == nullptr || mailbox.session) return;
  const uint64_t epoch = placement_epoch.load(std::memory_order_relaxed);
  if (mailbox.placed_epoch == epoch) return;
  mailbox.placed_epoch = epoch;
  const std::string next = placement->NextHop(mailbox.recipient);
  mailbox.outbound = !next.empty();
  Stripe& stripe = StripeOf(mailbox.recipient);
  if (mailbox.outbound) {
    stripe.outbound.insert(&mailbox);
  } else {
    stripe.outbound.erase(&mailbox);
  }
  if (next.empty()) return;
  std::shared_ptr<Session> forwarder = placement->Forwarder(mailbox.recipient, next);
  if (forwarder) {
    Bind(mailbox, std::move(forwarder));
  } else {
    stripe.unplaced.insert(mailbox.recipient);
  }
}

void Router::Impl::Bind(Mailbox& mailbox, std::shared_ptr<Session> session) {
  mailbox.session = std::move(session);
  mailbox.session->attached_ = true;
  mailbox.deliver_from = 0;
  if (!mailbox.session->forwarder()) {
    StripeOf(mailbox.recipient).connected.insert(&mailbox);
    stats.sessions.fetch_add(1, std::memory_order_relaxed);
    stats.sessions_total.fetch_add(1, std::memory_order_relaxed);
  }
  TryDeliver(mailbox);
}

// Asks the placement again for a mailbox without a local session: a forwarder whose next hop
// or link changed is let go (what it had in flight stays here) and another bound.
void Router::Impl::Replace(Stripe& stripe, Mailbox& mailbox) {
  if (placement == nullptr) return;
  if (mailbox.session) {
    if (!mailbox.session->forwarder()) return;
    const std::string next = placement->NextHop(mailbox.recipient);
    if (next == mailbox.session->forwarding()->next_hop && placement->Usable(*mailbox.session)) {
      return;
    }
    Unbind(mailbox);
  }
  mailbox.placed_epoch = 0;
  Place(mailbox);
  MaybeErase(stripe, mailbox);
}

std::pair<SendAck::Status, std::string> Router::Impl::CheckQuotas(Mailbox& mailbox,
                                                                  const std::string& from,
                                                                  uint64_t bytes) {
  if (mailbox.count >= config.mailbox_max_messages ||
      mailbox.bytes + bytes > config.mailbox_max_bytes) {
    return {SendAck::MAILBOX_FULL, absl::StrCat("the recipient's mailbox holds ", mailbox.count,
                                                " messages, ", mailbox.bytes, " bytes")};
  }
  const auto share_of = [&](uint64_t limit) {
    return std::max<uint64_t>(
        1, static_cast<uint64_t>(config.sender_share * static_cast<double>(limit)));
  };
  const uint64_t message_share = share_of(config.mailbox_max_messages);
  const uint64_t byte_share = share_of(config.mailbox_max_bytes);
  const auto it = mailbox.per_sender.find(from);
  const Mailbox::Held held = it == mailbox.per_sender.end() ? Mailbox::Held{} : it->second;
  if (held.messages >= message_share) {
    return {SendAck::SENDER_QUOTA, absl::StrCat("this sender holds its share (", message_share,
                                                " messages) of the recipient's mailbox")};
  }
  if (held.bytes + bytes > byte_share) {
    return {SendAck::SENDER_QUOTA, absl::StrCat("this sender holds its share (", byte_share,
                                                " bytes) of the recipient's mailbox")};
  }
  if (store.full()) {
    return {SendAck::STORE_FULL,
            "the broker's volume is at its high-water mark (--store-min-free-percent)"};
  }
  if (config.store_max_bytes > 0 &&
      static_cast<uint64_t>(stats.queued_bytes.load(std::memory_order_relaxed)) + bytes >
          config.store_max_bytes) {
    over_max_bytes.store(true, std::memory_order_relaxed);
    went_over_max_bytes.store(true, std::memory_order_relaxed);
    return {SendAck::STORE_FULL,
            "the broker's store is at its high-water mark (--store-max-bytes)"};
  }
  if (!ledger.TryAdd(from, config.sender_max_messages)) {
    return {SendAck::SENDER_QUOTA, absl::StrCat("this sender has ", config.sender_max_messages,
                                                " messages waiting across all mailboxes")};
  }
  return {SendAck::ACCEPTED, {}};
}

void Router::Impl::OnDeliverAck(Session& session, std::span<const uint64_t> link_seqs) {
  Stripe& stripe = StripeOf(session.peer());
  std::lock_guard lock(stripe.mu);
  Mailbox* mailbox = Find(stripe, session.peer());
  if (mailbox == nullptr || mailbox->session.get() != &session) return;
  const auto now = Clock::now();
  store::Batch deletes;  // one commit for the whole ack, not one per message
  std::vector<uint64_t> deleted;
  std::vector<PendingKey> handed;  // their dedup entries go too
  const bool forwarded = session.forwarder();
  ForwardWindow* const window = session.window();
  for (uint64_t link_seq : link_seqs) {
    auto flight = session.in_flight_.find(link_seq);
    if (flight == session.in_flight_.end()) continue;  // a repeated ack
    if (window != nullptr) window->in_flight.fetch_sub(1);
    const uint64_t seq = flight->second.mailbox_seq;
    session.in_flight_bytes_ -= flight->second.bytes;
    session.in_flight_.erase(flight);
    auto it = mailbox->loaded.find(seq);
    if (it == mailbox->loaded.end()) continue;
    Entry& entry = it->second;
    if (forwarded) {
      stats.forward_acked.fetch_add(1, std::memory_order_relaxed);
    } else {
      stats.acked.fetch_add(1, std::memory_order_relaxed);
      const auto latency =
          std::chrono::duration_cast<std::chrono::microseconds>(now - entry.accepted);
      (entry.state == State::kFast ? stats.delivery_latency_fast : stats.delivery_latency_stored)
          .Observe(latency);
    }
    switch (entry.state) {
      case State::kFast: {
        // Owned now: the recipient has it. No write at all.
        auto node = mailbox->pending.extract(PendingKeyOf(entry.envelope));
        if (node) Notify(node.mapped().waiters, std::nullopt);
        stats.fast_path.fetch_add(1, std::memory_order_relaxed);
        Release(*mailbox, entry.envelope.from(), entry.bytes);
        mailbox->loaded.erase(it);
        break;
      }
      case State::kStored:
        deletes.DeleteMessage(mailbox->recipient, seq, entry.ref());
        deleted.push_back(seq);
        // Handed to the next hop, which keeps its own dedup entry: one left here would answer
        // DUPLICATE if the message ever came back (a home moving back) and it would be lost.
        if (forwarded) {
          deletes.DeleteDedup(entry.envelope.from(), entry.envelope.id());
          handed.push_back(PendingKeyOf(entry.envelope));
        }
        Release(*mailbox, entry.envelope.from(), entry.bytes);
        mailbox->loaded.erase(it);
        break;
      case State::kWriting:
        entry.acked = true;  // deleted once the write completes
        entry.handed_off = forwarded;
        entry.link_seq = 0;
        entry.envelope.clear_payload();
        break;
    }
  }
  if (!deletes.empty()) {
    CommitDeletes(*mailbox, std::move(deletes), std::move(deleted), std::move(handed));
  }
  TryDeliver(*mailbox);
  if (window != nullptr) WakeForwarders(*window);
  if (forwarded) MaybeErase(stripe, *mailbox);  // all handed on: the forwarder goes too
}

void Router::Impl::OnCredit(Session& session, uint32_t n) {
  Stripe& stripe = StripeOf(session.peer());
  std::lock_guard lock(stripe.mu);
  session.credit_ += n;
  Mailbox* mailbox = Find(stripe, session.peer());
  if (mailbox != nullptr && mailbox->session.get() == &session) TryDeliver(*mailbox);
}

// The mailbox's session goes: what it had in flight returns to the queue, fast-path messages
// are written, and stored ones leave memory until the next session reads them back.
void Router::Impl::Unbind(Mailbox& mailbox) {
  Session& session = *mailbox.session;
  session.attached_ = false;
  if (ForwardWindow* window = session.window()) {
    window->in_flight.fetch_sub(static_cast<int64_t>(session.in_flight_.size()));
  }
  session.in_flight_.clear();
  session.in_flight_bytes_ = 0;
  for (auto it = mailbox.loaded.begin(); it != mailbox.loaded.end();) {
    Entry& entry = it->second;
    entry.link_seq = 0;
    if (entry.state == State::kFast) {
      entry.state = State::kWriting;
      Persist(mailbox, it->first, entry.envelope);
    }
    if (entry.acked) {
      ++it;  // kept until its write completes, so the delete follows it
      continue;
    }
    if (entry.state == State::kWriting) mailbox.unloaded_writes.insert(it->first);
    mailbox.Spill(it->first);
    it = mailbox.loaded.erase(it);
  }
  mailbox.deliver_from = 0;
  if (!session.forwarder()) {
    stats.sessions.fetch_sub(1, std::memory_order_relaxed);
    StripeOf(mailbox.recipient).connected.erase(&mailbox);
  }
  mailbox.session.reset();
}

absl::StatusOr<std::shared_ptr<Session>> Router::Impl::Attach(std::shared_ptr<peer::Link> link,
                                                              std::string remote_address) {
  auto session = std::make_shared<Session>(std::move(link), std::move(remote_address));
  Stripe& stripe = StripeOf(session->peer());
  std::shared_ptr<Session> replaced;
  {
    std::unique_lock lock(stripe.mu);
    auto loaded = Load(stripe, lock, session->peer());
    if (!loaded.ok()) return loaded.status();
    Mailbox& mailbox = **loaded;
    if (mailbox.session) {
      replaced = mailbox.session;
      Unbind(mailbox);
      if (!replaced->forwarder()) stats.replaced.fetch_add(1, std::memory_order_relaxed);
    }
    Bind(mailbox, session);
  }
  if (replaced) replaced->GoAwayAndClose(mesh::v1::GoAway::REPLACED);
  if (placement != nullptr) placement->OnSession(session->peer_id(), true);
  if (events.has_watchers()) {
    mesh::v1::Event event;
    event.mutable_peer_connected()->set_peer(session->peer_id().ToString());
    event.mutable_peer_connected()->set_remote_address(session->remote_address());
    events.Publish(std::move(event));
  }
  return session;
}

void Router::Impl::Detach(Session& session, std::string_view reason) {
  {
    Stripe& stripe = StripeOf(session.peer());
    std::lock_guard lock(stripe.mu);
    Mailbox* mailbox = Find(stripe, session.peer());
    if (mailbox == nullptr || mailbox->session.get() != &session) return;  // replaced earlier
    Unbind(*mailbox);
    // A forwarder let go stays unbound until the next PlaceUnbound (its next hop refused).
    if (session.forwarder()) {
      stripe.unplaced.insert(mailbox->recipient);
    } else {
      mailbox->placed_epoch = 0;
      Place(*mailbox);
    }
    MaybeErase(stripe, *mailbox);
  }
  if (session.forwarder()) return;
  if (placement != nullptr) placement->OnSession(session.peer_id(), false);
  if (events.has_watchers()) {
    mesh::v1::Event event;
    event.mutable_peer_disconnected()->set_peer(session.peer_id().ToString());
    event.mutable_peer_disconnected()->set_reason(std::string(reason));
    events.Publish(std::move(event));
  }
}

PeerView Router::Impl::ViewOf(const Mailbox& mailbox) const {
  PeerView view;
  view.id = mailbox.recipient;
  view.mailbox_messages = mailbox.count;
  view.mailbox_bytes = mailbox.bytes;
  if (const Session* session = mailbox.session.get(); session && !session->forwarder()) {
    view.connected = true;
    view.remote_address = session->remote_address();
    view.connected_at = session->connected_at();
    view.in_flight = session->in_flight_.size();
    view.credit = session->credit_;
  }
  return view;
}

Router::Router(RouterConfig config, store::Store& store) : config_(std::move(config)) {
  impl_ = std::make_unique<Impl>(config_, stats_, events_, store, refusing_);
  impl_->walker = std::thread([impl = impl_.get()] { impl->WalkerLoop(); });
}

std::vector<PeerView> Router::ListPeers(std::string_view after, size_t limit) const {
  std::vector<PeerView> peers;
  impl_->ForEachConnected([&](const Mailbox& mailbox) {
    if (std::string_view(mailbox.recipient) > after) peers.push_back(impl_->ViewOf(mailbox));
  });
  std::sort(peers.begin(), peers.end(),
            [](const PeerView& a, const PeerView& b) { return a.id < b.id; });
  if (peers.size() > limit) peers.resize(limit);
  return peers;
}

std::optional<PeerView> Router::GetPeer(std::string_view id) const {
  {
    auto& stripe = impl_->StripeOf(id);
    std::lock_guard lock(stripe.mu);
    if (const Mailbox* mailbox = impl_->Find(stripe, id)) return impl_->ViewOf(*mailbox);
  }
  // At rest, or nothing at all: the store's counts say which.
  auto counts = impl_->store.MailboxCounts(id);
  if (!counts.ok() || counts->messages == 0) return std::nullopt;
  PeerView view;
  view.id = std::string(id);
  view.mailbox_messages = counts->messages;
  view.mailbox_bytes = counts->bytes;
  return view;
}

bool Router::Disconnect(std::string_view id, mesh::v1::GoAway::Reason reason) {
  std::shared_ptr<Session> session;
  {
    auto& stripe = impl_->StripeOf(id);
    std::lock_guard lock(stripe.mu);
    if (const Mailbox* mailbox = impl_->Find(stripe, id)) session = mailbox->session;
  }
  if (!session || session->forwarder()) return false;
  session->GoAwayAndClose(reason);
  return true;
}

size_t Router::GoAwayAll(mesh::v1::GoAway::Reason reason) {
  std::vector<std::shared_ptr<Session>> sessions;
  impl_->ForEachConnected([&](const Mailbox& mailbox) { sessions.push_back(mailbox.session); });
  for (auto& session : sessions) session->GoAwayAndClose(reason);
  return sessions.size();
}

uint64_t Router::OutboxMessages() const {
  uint64_t count = 0;
  for (Stripe& stripe : impl_->stripes) {
    std::lock_guard lock(stripe.mu);
    for (const Mailbox* mailbox : stripe.outbound) {
      const bool local = mailbox->session && !mailbox->session->forwarder();
      if (!local) count += mailbox->count;
    }
  }
  return count;
}

size_t Router::GoAwaySome(size_t n, mesh::v1::GoAway::Reason reason) {
  std::vector<std::shared_ptr<Session>> sessions;
  impl_->ForEachConnected([&](const Mailbox& mailbox) { sessions.push_back(mailbox.session); });
  const size_t count = std::min(n, sessions.size());
  std::partial_sort(
      sessions.begin(), sessions.begin() + static_cast<std::ptrdiff_t>(count), sessions.end(),
      [](const auto& a, const auto& b) { return a->connected_at() < b->connected_at(); });
  for (size_t i = 0; i < count; ++i) sessions[i]->GoAwayAndClose(reason);
  return count;
}

size_t Router::MailboxCount() const {
  return static_cast<size_t>(
      std::max<int64_t>(0, impl_->held_mailboxes.load(std::memory_order_relaxed)));
}

size_t Router::MailboxesInMemory() const {
  return static_cast<size_t>(
      std::max<int64_t>(0, impl_->mailbox_count.load(std::memory_order_relaxed)));
}

bool Router::TakeWentFull() {
  return impl_->went_over_max_bytes.exchange(false, std::memory_order_relaxed);
}

bool Router::Full() const {
  return impl_->store.full() || impl_->over_max_bytes.load(std::memory_order_relaxed);
}

absl::StatusOr<uint64_t> Router::PurgeMailbox(std::string_view id) {
  return impl_->PurgeMailbox(id);
}

Router::~Router() { impl_->StopWalker(); }

absl::Status Router::Recover() { return impl_->Recover(); }

absl::StatusOr<std::shared_ptr<Session>> Router::Attach(std::shared_ptr<peer::Link> link,
                                                        std::string remote_address) {
  return impl_->Attach(std::move(link), std::move(remote_address));
}

absl::Status Router::OnFrame(Session& session, mesh::v1::Frame& frame) {
  switch (frame.body_case()) {
    case mesh::v1::Frame::kSend:
      impl_->OnSend(session, *frame.mutable_send());
      return absl::OkStatus();
    case mesh::v1::Frame::kDeliverAck:
      impl_->OnDeliverAck(session, {frame.deliver_ack().seqs().data(),
                                    static_cast<size_t>(frame.deliver_ack().seqs().size())});
      return absl::OkStatus();
    case mesh::v1::Frame::kCredit:
      impl_->OnCredit(session, frame.credit().n());
      return absl::OkStatus();
    case mesh::v1::Frame::kPong:
      return absl::OkStatus();
    default:
      return peer::LinkError(
          mesh::v1::UNEXPECTED_FRAME,
          absl::StrCat("frame '", peer::FrameName(frame), "' is not accepted from a peer"));
  }
}

bool Router::TakeRateToken(std::string_view peer) { return impl_->rates.Take(peer); }

void Router::Detach(Session& session, std::string_view reason) { impl_->Detach(session, reason); }

void Router::SetPlacement(Placement* placement) { impl_->placement = placement; }

void Router::RebindAll() { impl_->ReplaceAll(); }

void Router::PlaceUnbound() { impl_->PlaceUnbound(); }

// Mailboxes in memory at once; those at rest by the walker's walk of the store (WalkSome).
void Router::Impl::ReplaceAll() {
  placement_epoch.fetch_add(1, std::memory_order_relaxed);
  walk_requested.store(true, std::memory_order_relaxed);
  WakeWalker();
  for (Stripe& stripe : stripes) {
    std::lock_guard lock(stripe.mu);
    std::vector<Mailbox*> mailboxes;
    mailboxes.reserve(stripe.mailboxes.size());
    for (auto& [id, mailbox] : stripe.mailboxes) mailboxes.push_back(mailbox.get());
    for (Mailbox* mailbox : mailboxes) Replace(stripe, *mailbox);  // may erase it
  }
}

// On the walker, a batch of reads at a time. A mailbox at rest is placed here: only one whose
// next hop is now another broker is read back, to be bound to its forwarder.
void Router::Impl::WalkSome() {
  if (walk_requested.exchange(false, std::memory_order_relaxed)) {
    walking = placement != nullptr;
    walk_cursor = {};
  }
  const auto started = Clock::now();
  while (walking && placement != nullptr && Clock::now() - started < kSweepSlice) {
    auto ids = store.ReadMailboxIds(walk_cursor, kWalkBatch);
    if (!ids.ok()) {
      Log(spdlog::level::err, "placement_walk_failed",
          {{"error", std::string(ids.status().message())}});
      walking = false;
      break;
    }
    if (ids->empty()) walking = false;
    for (const std::string& recipient : *ids) {
      if (!placement->NextHop(recipient).empty()) Rebind(recipient);
    }
  }
}

void Router::Impl::Rebind(std::string_view recipient) {
  Stripe& stripe = StripeOf(recipient);
  std::unique_lock lock(stripe.mu);
  auto mailbox = Load(stripe, lock, recipient);
  if (!mailbox.ok()) {
    Log(spdlog::level::err, "mailbox_read_failed",
        {{"error", std::string(mailbox.status().message())}});
    return;
  }
  Replace(stripe, **mailbox);
}

// Costs what waits for a next hop, not what the broker holds: mailboxes homed here for
// offline peers are never in `unplaced`.
void Router::Impl::PlaceUnbound() {
  for (Stripe& stripe : stripes) {
    std::lock_guard lock(stripe.mu);
    if (stripe.unplaced.empty()) continue;
    absl::flat_hash_set<std::string> waiting;
    waiting.swap(stripe.unplaced);
    for (const std::string& recipient : waiting) {
      Mailbox* mailbox = Find(stripe, recipient);
      if (mailbox != nullptr && !mailbox->session) Replace(stripe, *mailbox);  // may re-add it
    }
  }
}

void Router::Rebind(std::string_view recipient) { impl_->Rebind(recipient); }

void Router::OnForward(Session& sender, mesh::v1::StoredEnvelope envelope, std::string ack_ref) {
  impl_->OnForward(sender, std::move(envelope), std::move(ack_ref));
}

void Router::OnForwardAcks(Session& forwarder, const std::vector<uint64_t>& link_seqs, bool owned) {
  if (owned) {
    impl_->OnDeliverAck(forwarder, link_seqs);
  } else {
    impl_->Detach(forwarder, "refused");
  }
}

void Router::Tick() { impl_->Tick(); }

void Router::StopBackground() { impl_->StopWalker(); }

}  // namespace mesh::broker
