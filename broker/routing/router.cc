#include "broker/routing/router.h"

#include <boost/asio/post.hpp>
#include <deque>
#include <map>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "broker/log.h"

namespace mesh::broker {
namespace {

using Clock = std::chrono::steady_clock;
using mesh::v1::SendAck;

constexpr int kStripes = 64;
constexpr size_t kRefillBatch = 256;
constexpr size_t kRefillBytes = size_t{4} << 20;
constexpr size_t kSweepBatch = 1024;
// Key + the envelope's fields around the payload: what a stored message costs beyond its payload.
constexpr uint64_t kEnvelopeOverhead = 160;

// What a message counts against quotas; the same at accept, reload, expiry and recovery.
uint64_t AccountedBytes(size_t payload) { return kEnvelopeOverhead + payload; }

uint64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

uint64_t WallMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string_view AsText(const crypto::Fingerprint& f) {
  return {reinterpret_cast<const char*>(f.data()), f.size()};
}

crypto::ByteSpan AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Key of Mailbox::pending: from ‖ id, inline (no allocation per message).
using PendingKey = std::array<char, store::kIdSize + store::kMessageIdSize>;

PendingKey PendingKeyOf(std::string_view from, std::string_view id) {
  PendingKey key{};
  std::copy_n(from.begin(), std::min(from.size(), store::kIdSize), key.begin());
  std::copy_n(id.begin(), std::min(id.size(), store::kMessageIdSize), key.begin() + store::kIdSize);
  return key;
}

PendingKey PendingKeyOf(const mesh::v1::StoredEnvelope& envelope) {
  return PendingKeyOf(envelope.from(), envelope.id());
}

// A sender waiting for the SendAck of a message not yet owned (written or acknowledged).
struct Waiter {
  std::weak_ptr<Session> session;
  std::string id;
  SendAck::Status status;  // what to say once owned: ACCEPTED, or DUPLICATE for a retry
};

enum class State : uint8_t {
  kWriting,  // commit queued, not yet covered by the sync policy
  kStored,   // in the store
  kFast,     // delivered, not written: owned once acknowledged, else written at the deadline
};

// A message of a mailbox held in memory: recent arrivals for an online peer, or read back.
struct Entry {
  mesh::v1::StoredEnvelope envelope;
  uint64_t bytes = 0;  // as counted against quotas
  State state = State::kWriting;
  bool acked = false;     // acknowledged while its write was in progress
  uint64_t link_seq = 0;  // in flight on the current session; 0 = not delivered
  Clock::time_point accepted;
};

// A message not yet owned; a retry with the same (from, id) joins its waiters.
struct Pending {
  uint64_t seq = 0;
  // Of (to, payload), taken when the message is first written. Until then its entry is in
  // `loaded` with its payload, so a retry is compared with that; most online messages are
  // acknowledged before any write and never need a digest.
  std::optional<crypto::Fingerprint> digest;
  std::vector<Waiter> waiters;
};

crypto::Fingerprint DigestOf(std::string_view to, std::string_view payload) {
  return crypto::FingerprintOf({AsBytes(to), AsBytes(payload)});
}

// One recipient's queue. Every message it holds is either in `loaded` or in the store at a seq
// >= spill_seq (while `spilled`), never only in neither.
struct Mailbox {
  std::string recipient;
  uint64_t next_seq = 0;
  uint64_t count = 0;  // messages accepted and not yet acknowledged or expired
  uint64_t bytes = 0;
  std::map<uint64_t, Entry> loaded;
  bool spilled = false;
  uint64_t spill_seq = 0;
  uint64_t deliver_from = 0;  // no undelivered loaded entry has a lower seq
  uint64_t writes_in_flight = 0;
  uint64_t min_expire_ms = UINT64_MAX;
  absl::flat_hash_map<std::string, uint64_t> per_sender;
  absl::flat_hash_map<PendingKey, Pending> pending;
  std::shared_ptr<Session> session;

  void Spill(uint64_t seq) {
    spill_seq = spilled ? std::min(spill_seq, seq) : seq;
    spilled = true;
  }
  bool Idle() const {
    return count == 0 && pending.empty() && !session && loaded.empty() && writes_in_flight == 0;
  }
};

struct FastDeadline {
  Clock::time_point at;
  std::array<char, store::kIdSize> recipient;  // inline: one per online message
  uint64_t seq;
};

struct Stripe {
  std::mutex mu;
  absl::flat_hash_map<std::string, std::unique_ptr<Mailbox>> mailboxes;
  std::deque<FastDeadline> fast;  // in deadline order: one ack window after delivery
};

// Messages each sender holds across all mailboxes, for the sender quota.
class SenderLedger {
 public:
  bool TryAdd(const std::string& sender, uint64_t limit) {
    Part& part = PartOf(sender);
    std::lock_guard lock(part.mu);
    uint64_t& n = part.counts[sender];
    if (n >= limit) return false;
    ++n;
    return true;
  }
  void Add(const std::string& sender) {
    Part& part = PartOf(sender);
    std::lock_guard lock(part.mu);
    ++part.counts[sender];
  }
  void Remove(const std::string& sender) {
    Part& part = PartOf(sender);
    std::lock_guard lock(part.mu);
    auto it = part.counts.find(sender);
    if (it != part.counts.end() && --it->second == 0) part.counts.erase(it);
  }

 private:
  struct Part {
    std::mutex mu;
    absl::flat_hash_map<std::string, uint64_t> counts;
  };
  Part& PartOf(const std::string& sender) { return parts_[absl::HashOf(sender) % kStripes]; }
  std::array<Part, kStripes> parts_;
};

}  // namespace

struct Router::Impl {
  Impl(const RouterConfig& config, RouterStats& stats, store::Store& store)
      : config(config), stats(stats), store(store) {}

  const RouterConfig& config;
  RouterStats& stats;
  store::Store& store;
  std::array<Stripe, kStripes> stripes;
  SenderLedger ledger;
  Clock::time_point next_sweep = Clock::now();

  Stripe& StripeOf(std::string_view peer) { return stripes[absl::HashOf(peer) % kStripes]; }

  Mailbox* Find(Stripe& stripe, std::string_view recipient) {
    auto it = stripe.mailboxes.find(absl::string_view(recipient.data(), recipient.size()));
    return it == stripe.mailboxes.end() ? nullptr : it->second.get();
  }

  Mailbox& Get(Stripe& stripe, const std::string& recipient) {
    auto& slot = stripe.mailboxes[recipient];
    if (!slot) {
      slot = std::make_unique<Mailbox>();
      slot->recipient = recipient;
      // Seqs of a new mailbox start above any an earlier one with this recipient used, so its
      // keys never land among that one's tombstones.
      slot->next_seq = WallMicros();
    }
    return *slot;
  }

  void MaybeErase(Stripe& stripe, Mailbox& mailbox) {
    if (mailbox.Idle()) stripe.mailboxes.erase(mailbox.recipient);
  }

  // ---- SendAck ----

  void Ack(Session& session, std::string id, SendAck::Status status, std::string_view detail = {}) {
    mesh::v1::Frame frame;
    auto* ack = frame.mutable_send_ack();
    ack->set_id(std::move(id));
    ack->set_status(status);
    if (!detail.empty()) ack->set_detail(std::string(detail));
    session.Queue(std::move(frame));
    stats.acks[status].fetch_add(1, std::memory_order_relaxed);
  }

  void Notify(std::vector<Waiter>& waiters, std::optional<SendAck::Status> override_status,
              std::string_view detail = {}) {
    for (auto& waiter : waiters) {
      if (auto session = waiter.session.lock()) {
        Ack(*session, std::move(waiter.id), override_status.value_or(waiter.status), detail);
      }
    }
    waiters.clear();
  }

  // ---- accounting ----

  void Account(Mailbox& mailbox, const std::string& from, uint64_t bytes, uint64_t expire_ms) {
    ++mailbox.count;
    mailbox.bytes += bytes;
    ++mailbox.per_sender[from];
    mailbox.min_expire_ms = std::min(mailbox.min_expire_ms, expire_ms);
    stats.queued.fetch_add(1, std::memory_order_relaxed);
    stats.queued_bytes.fetch_add(static_cast<int64_t>(bytes), std::memory_order_relaxed);
  }

  void Release(Mailbox& mailbox, const std::string& from, uint64_t bytes) {
    --mailbox.count;
    mailbox.bytes -= bytes;
    auto it = mailbox.per_sender.find(from);
    if (it != mailbox.per_sender.end() && --it->second == 0) mailbox.per_sender.erase(it);
    ledger.Remove(from);
    stats.queued.fetch_sub(1, std::memory_order_relaxed);
    stats.queued_bytes.fetch_sub(static_cast<int64_t>(bytes), std::memory_order_relaxed);
  }

  // ---- writes ----

  // Writes a message to its mailbox; its waiters get their SendAck once the sync policy covers
  // it. With keep_loaded false the mailbox forgets it until it reads it back from the store.
  void Persist(Mailbox& mailbox, uint64_t seq, mesh::v1::StoredEnvelope& envelope) {
    // Set here, not at accept: most online messages are never written.
    envelope.set_ingress_node(config.node_id);
    const PendingKey key = PendingKeyOf(envelope);
    // Every message not yet owned has its pending entry, which keeps the digest once taken.
    crypto::Fingerprint digest;
    if (auto pending = mailbox.pending.find(key); pending != mailbox.pending.end()) {
      if (!pending->second.digest) {
        pending->second.digest = DigestOf(envelope.to(), envelope.payload());
      }
      digest = *pending->second.digest;
    } else {
      digest = DigestOf(envelope.to(), envelope.payload());
    }
    store::Batch batch;
    batch.PutMessage(mailbox.recipient, seq, envelope);
    mesh::v1::DedupRecord dedup;
    dedup.set_digest(std::string(AsText(digest)));
    dedup.set_expire_at_ms(WallMs() + std::chrono::milliseconds(config.dedup_window).count());
    batch.PutDedup(envelope.from(), envelope.id(), dedup);
    ++mailbox.writes_in_flight;
    stats.stored.fetch_add(1, std::memory_order_relaxed);
    store.Commit(std::move(batch), store::Store::Durability::kDurable,
                 [this, recipient = mailbox.recipient, seq, key](absl::Status status) {
                   OnWritten(recipient, seq, key, status);
                 });
  }

  void DeleteStored(Mailbox& mailbox, uint64_t seq) {
    store::Batch batch;
    batch.DeleteMessage(mailbox.recipient, seq);
    store.Commit(std::move(batch), store::Store::Durability::kLazy, [](absl::Status) {});
  }

  // On the store's writer thread, once a Persist is durable (or failed).
  void OnWritten(const std::string& recipient, uint64_t seq, const PendingKey& key,
                 absl::Status status) {
    Stripe& stripe = StripeOf(recipient);
    std::lock_guard lock(stripe.mu);
    Mailbox* mailbox = Find(stripe, recipient);
    if (mailbox == nullptr) return;  // cannot happen: writes_in_flight keeps it
    --mailbox->writes_in_flight;
    std::vector<Waiter> waiters;
    if (auto node = mailbox->pending.extract(key)) waiters = std::move(node.mapped().waiters);
    auto it = mailbox->loaded.find(seq);
    if (!status.ok()) {
      // Not owned: nobody was told otherwise, so the senders may retry elsewhere or later.
      if (it != mailbox->loaded.end()) {
        Release(*mailbox, it->second.envelope.from(), it->second.bytes);
        mailbox->loaded.erase(it);
      }
      Notify(waiters, SendAck::STORE_UNAVAILABLE, std::string(status.message()));
    } else {
      if (it != mailbox->loaded.end()) {
        if (it->second.acked) {
          DeleteStored(*mailbox, seq);
          Release(*mailbox, it->second.envelope.from(), it->second.bytes);
          mailbox->loaded.erase(it);
        } else {
          it->second.state = State::kStored;
        }
      }
      Notify(waiters, std::nullopt);
    }
    if (mailbox->session && mailbox->spilled) ScheduleRefill(*mailbox);
    MaybeErase(stripe, *mailbox);
  }

  // ---- delivery ----

  bool HasCapacity(const Session& session) const {
    const uint64_t window = std::min<uint64_t>(session.credit_, config.max_in_flight);
    return session.in_flight_.size() < window &&
           (session.in_flight_bytes_ < config.max_in_flight_bytes || session.in_flight_.empty());
  }

  void DeliverEntry(Session& session, uint64_t seq, Entry& entry) {
    const uint64_t link_seq = session.next_link_seq_++;
    entry.link_seq = link_seq;
    const uint64_t size = entry.envelope.payload().size();
    session.in_flight_[link_seq] = {seq, size};
    session.in_flight_bytes_ += size;
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
  void TryDeliver(Mailbox& mailbox) {
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
  }

  std::map<uint64_t, Entry>::iterator DropExpired(Mailbox& mailbox,
                                                  std::map<uint64_t, Entry>::iterator it) {
    DeleteStored(mailbox, it->first);
    Release(mailbox, it->second.envelope.from(), it->second.bytes);
    stats.expired.fetch_add(1, std::memory_order_relaxed);
    return mailbox.loaded.erase(it);
  }

  bool UndeliveredLoaded(const Mailbox& mailbox) const {
    for (auto it = mailbox.loaded.lower_bound(mailbox.deliver_from); it != mailbox.loaded.end();
         ++it) {
      if (it->second.link_seq == 0 && !it->second.acked) return true;
    }
    return false;
  }

  void ScheduleRefill(Mailbox& mailbox) {
    Session& session = *mailbox.session;
    if (session.refill_scheduled_) return;
    session.refill_scheduled_ = true;
    boost::asio::post(session.executor(), [this, weak = std::weak_ptr<Session>(mailbox.session),
                                           recipient = mailbox.recipient] {
      if (auto session = weak.lock()) Refill(recipient, *session);
    });
  }

  // On the session's executor: reads the next messages of a spilled mailbox from the store.
  void Refill(const std::string& recipient, Session& session) {
    Stripe& stripe = StripeOf(recipient);
    std::lock_guard lock(stripe.mu);
    Mailbox* mailbox = Find(stripe, recipient);
    if (mailbox == nullptr || mailbox->session.get() != &session) return;
    session.refill_scheduled_ = false;
    const uint64_t now_ms = WallMs();
    while (mailbox->spilled && HasCapacity(session) && !UndeliveredLoaded(*mailbox) &&
           mailbox->loaded.size() < config.max_loaded) {
      const size_t want = std::min(kRefillBatch, config.max_loaded - mailbox->loaded.size());
      auto read = store.ReadMailbox(recipient, mailbox->spill_seq, want, kRefillBytes);
      if (!read.ok()) {
        Log(spdlog::level::err, "mailbox_read_failed",
            {{"error", std::string(read.status().message())}});
        return;
      }
      if (read->empty()) {
        // Everything written is loaded; a write still in progress calls back when done.
        if (mailbox->writes_in_flight == 0) mailbox->spilled = false;
        break;
      }
      for (auto& message : *read) {
        mailbox->spill_seq = message.seq + 1;
        if (mailbox->loaded.contains(message.seq)) continue;
        Entry entry;
        entry.envelope = std::move(message.envelope);
        entry.bytes = AccountedBytes(entry.envelope.payload().size());
        entry.state = State::kStored;
        entry.accepted = Clock::now();
        auto it = mailbox->loaded.emplace(message.seq, std::move(entry)).first;
        if (it->second.envelope.expire_at_ms() <= now_ms) DropExpired(*mailbox, it);
      }
      mailbox->deliver_from = std::min(mailbox->deliver_from, read->front().seq);
      TryDeliver(*mailbox);
    }
    TryDeliver(*mailbox);
  }

  // ---- frames ----

  bool TakeToken(Session& session) {
    if (config.send_rate <= 0) return true;
    const auto now = Clock::now();
    if (session.tokens_ < 0) {
      session.tokens_ = config.send_burst;
    } else {
      const double elapsed = std::chrono::duration<double>(now - session.tokens_at_).count();
      session.tokens_ = std::min(config.send_burst, session.tokens_ + elapsed * config.send_rate);
    }
    session.tokens_at_ = now;
    if (session.tokens_ < 1) return false;
    session.tokens_ -= 1;
    return true;
  }

  // Whether a retried Send carries the message its pending (from, id) stands for.
  bool SameMessage(const Mailbox& mailbox, const Pending& pending, const mesh::v1::Send& send) {
    if (pending.digest) return *pending.digest == DigestOf(send.to(), send.payload());
    auto it = mailbox.loaded.find(pending.seq);
    if (it == mailbox.loaded.end()) return false;  // cannot happen: see Pending::digest
    return it->second.envelope.to() == send.to() && it->second.envelope.payload() == send.payload();
  }

  void OnSend(Session& sender, mesh::v1::Send& send) {
    stats.sends.fetch_add(1, std::memory_order_relaxed);
    const std::string& id = send.id();
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
    if (!TakeToken(sender)) {
      return Ack(sender, id, SendAck::RATE_LIMITED,
                 absl::StrCat("over ", config.send_rate, " messages/s"));
    }
    const std::string& from = sender.peer();
    const PendingKey key = PendingKeyOf(from, id);
    const uint64_t now_ms = WallMs();

    Stripe& stripe = StripeOf(send.to());
    std::lock_guard lock(stripe.mu);
    Mailbox& mailbox = Get(stripe, send.to());
    if (auto it = mailbox.pending.find(key); it != mailbox.pending.end()) {
      if (!SameMessage(mailbox, it->second, send)) {
        return Ack(sender, id, SendAck::INVALID, "id reused with another recipient or payload");
      }
      it->second.waiters.push_back({sender.weak_from_this(), id, SendAck::DUPLICATE});
      return;
    }
    if (!store.available()) {
      MaybeErase(stripe, mailbox);
      return Ack(sender, id, SendAck::STORE_UNAVAILABLE, "the store cannot write");
    }
    auto dedup = store.GetDedup(from, id, now_ms);
    if (!dedup.ok()) {
      MaybeErase(stripe, mailbox);
      return Ack(sender, id, SendAck::STORE_UNAVAILABLE, std::string(dedup.status().message()));
    }
    if (dedup->has_value()) {
      MaybeErase(stripe, mailbox);
      if ((*dedup)->digest() != AsText(DigestOf(send.to(), send.payload()))) {
        return Ack(sender, id, SendAck::INVALID, "id reused with another recipient or payload");
      }
      return Ack(sender, id, SendAck::DUPLICATE);
    }
    const uint64_t bytes = AccountedBytes(send.payload().size());
    if (auto rejection = CheckQuotas(mailbox, from, bytes); rejection.first != SendAck::ACCEPTED) {
      MaybeErase(stripe, mailbox);
      return Ack(sender, id, rejection.first, rejection.second);
    }

    const uint64_t seq = mailbox.next_seq++;
    const uint64_t ttl_s = send.ttl_s() == 0 ? config.default_ttl.count() : send.ttl_s();
    Entry entry;
    entry.envelope.set_version(store::kEnvelopeVersion);
    entry.envelope.set_from(from);
    entry.envelope.set_to(send.to());
    entry.envelope.set_id(id);
    entry.envelope.set_allocated_payload(send.release_payload());
    entry.envelope.set_sent_at_ms(now_ms);
    entry.envelope.set_expire_at_ms(now_ms + ttl_s * 1000);
    entry.bytes = bytes;
    entry.accepted = Clock::now();
    Account(mailbox, from, bytes, entry.envelope.expire_at_ms());
    Pending& pending = mailbox.pending[key];
    pending.seq = seq;
    pending.waiters.push_back({sender.weak_from_this(), id, SendAck::ACCEPTED});

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

  std::pair<SendAck::Status, std::string> CheckQuotas(Mailbox& mailbox, const std::string& from,
                                                      uint64_t bytes) {
    if (mailbox.count >= config.mailbox_max_messages ||
        mailbox.bytes + bytes > config.mailbox_max_bytes) {
      return {SendAck::MAILBOX_FULL, absl::StrCat("the recipient's mailbox holds ", mailbox.count,
                                                  " messages, ", mailbox.bytes, " bytes")};
    }
    const auto share = static_cast<uint64_t>(config.sender_share *
                                             static_cast<double>(config.mailbox_max_messages));
    auto held = mailbox.per_sender.find(from);
    if (held != mailbox.per_sender.end() && held->second >= std::max<uint64_t>(1, share)) {
      return {SendAck::SENDER_QUOTA,
              absl::StrCat("this sender holds its share (", share, ") of the recipient's mailbox")};
    }
    if (config.store_max_bytes > 0 &&
        static_cast<uint64_t>(stats.queued_bytes.load(std::memory_order_relaxed)) + bytes >
            config.store_max_bytes) {
      return {SendAck::STORE_FULL, "the broker's store is at its high-water mark"};
    }
    if (!ledger.TryAdd(from, config.sender_max_messages)) {
      return {SendAck::SENDER_QUOTA, absl::StrCat("this sender has ", config.sender_max_messages,
                                                  " messages waiting across all mailboxes")};
    }
    return {SendAck::ACCEPTED, {}};
  }

  void OnDeliverAck(Session& session, const mesh::v1::DeliverAck& ack) {
    Stripe& stripe = StripeOf(session.peer());
    std::lock_guard lock(stripe.mu);
    Mailbox* mailbox = Find(stripe, session.peer());
    if (mailbox == nullptr || mailbox->session.get() != &session) return;
    const auto now = Clock::now();
    store::Batch deletes;  // one commit for the whole ack, not one per message
    for (uint64_t link_seq : ack.seqs()) {
      auto flight = session.in_flight_.find(link_seq);
      if (flight == session.in_flight_.end()) continue;  // a repeated ack
      const uint64_t seq = flight->second.mailbox_seq;
      session.in_flight_bytes_ -= flight->second.bytes;
      session.in_flight_.erase(flight);
      auto it = mailbox->loaded.find(seq);
      if (it == mailbox->loaded.end()) continue;
      Entry& entry = it->second;
      stats.acked.fetch_add(1, std::memory_order_relaxed);
      stats.delivery_micros.fetch_add(
          std::chrono::duration_cast<std::chrono::microseconds>(now - entry.accepted).count(),
          std::memory_order_relaxed);
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
          deletes.DeleteMessage(mailbox->recipient, seq);
          Release(*mailbox, entry.envelope.from(), entry.bytes);
          mailbox->loaded.erase(it);
          break;
        case State::kWriting:
          entry.acked = true;  // deleted once the write completes
          entry.link_seq = 0;
          entry.envelope.clear_payload();
          break;
      }
    }
    if (!deletes.empty()) {
      store.Commit(std::move(deletes), store::Store::Durability::kLazy, [](absl::Status) {});
    }
    TryDeliver(*mailbox);
  }

  void OnCredit(Session& session, uint32_t n) {
    Stripe& stripe = StripeOf(session.peer());
    std::lock_guard lock(stripe.mu);
    session.credit_ += n;
    Mailbox* mailbox = Find(stripe, session.peer());
    if (mailbox != nullptr && mailbox->session.get() == &session) TryDeliver(*mailbox);
  }

  // ---- sessions ----

  // The mailbox's session goes: what it had in flight returns to the queue, fast-path messages
  // are written, and stored ones leave memory until the next session reads them back.
  void Unbind(Mailbox& mailbox) {
    Session& session = *mailbox.session;
    session.attached_ = false;
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
      mailbox.Spill(it->first);
      it = mailbox.loaded.erase(it);
    }
    mailbox.deliver_from = 0;
    mailbox.session.reset();
    stats.sessions.fetch_sub(1, std::memory_order_relaxed);
  }

  std::shared_ptr<Session> Attach(std::shared_ptr<peer::Link> link) {
    auto session = std::make_shared<Session>(std::move(link));
    Stripe& stripe = StripeOf(session->peer());
    std::shared_ptr<Session> replaced;
    {
      std::lock_guard lock(stripe.mu);
      Mailbox& mailbox = Get(stripe, session->peer());
      if (mailbox.session) {
        replaced = mailbox.session;
        Unbind(mailbox);
        stats.replaced.fetch_add(1, std::memory_order_relaxed);
      }
      mailbox.session = session;
      session->attached_ = true;
      mailbox.deliver_from = 0;
      stats.sessions.fetch_add(1, std::memory_order_relaxed);
      stats.sessions_total.fetch_add(1, std::memory_order_relaxed);
    }
    if (replaced) replaced->GoAwayAndClose(mesh::v1::GoAway::REPLACED);
    return session;
  }

  void Detach(Session& session) {
    Stripe& stripe = StripeOf(session.peer());
    std::lock_guard lock(stripe.mu);
    Mailbox* mailbox = Find(stripe, session.peer());
    if (mailbox == nullptr || mailbox->session.get() != &session) return;  // replaced earlier
    Unbind(*mailbox);
    MaybeErase(stripe, *mailbox);
  }

  // ---- periodic ----

  void Tick() {
    const auto now = Clock::now();
    const bool sweep = now >= next_sweep;
    if (sweep) next_sweep = now + config.expiry_sweep_interval;
    const uint64_t now_ms = WallMs();
    for (Stripe& stripe : stripes) {
      std::lock_guard lock(stripe.mu);
      while (!stripe.fast.empty() && stripe.fast.front().at <= now) {
        FastDeadline deadline = std::move(stripe.fast.front());
        stripe.fast.pop_front();
        Mailbox* mailbox = Find(stripe, {deadline.recipient.data(), deadline.recipient.size()});
        if (mailbox == nullptr) continue;
        auto it = mailbox->loaded.find(deadline.seq);
        if (it == mailbox->loaded.end() || it->second.state != State::kFast) continue;
        it->second.state = State::kWriting;
        Persist(*mailbox, deadline.seq, it->second.envelope);
      }
      if (!sweep) continue;
      std::vector<Mailbox*> due;
      for (auto& [recipient, mailbox] : stripe.mailboxes) {
        if (mailbox->min_expire_ms <= now_ms) due.push_back(mailbox.get());
      }
      for (Mailbox* mailbox : due) {
        Sweep(*mailbox, now_ms);
        MaybeErase(stripe, *mailbox);
      }
    }
  }

  // Deletes a mailbox's expired messages, in memory and in the store, keeping counts right.
  void Sweep(Mailbox& mailbox, uint64_t now_ms) {
    uint64_t next_min = UINT64_MAX;
    for (auto it = mailbox.loaded.begin(); it != mailbox.loaded.end();) {
      const Entry& entry = it->second;
      if (entry.envelope.expire_at_ms() <= now_ms && entry.state == State::kStored &&
          entry.link_seq == 0) {
        it = DropExpired(mailbox, it);
        continue;
      }
      next_min = std::min(next_min, entry.envelope.expire_at_ms());
      ++it;
    }
    if (mailbox.spilled) {
      store::Batch batch;
      uint64_t from_seq = mailbox.spill_seq;
      for (;;) {
        auto read = store.ReadMailbox(mailbox.recipient, from_seq, kSweepBatch, SIZE_MAX);
        if (!read.ok()) break;
        for (const auto& message : *read) {
          if (mailbox.loaded.contains(message.seq)) continue;
          if (message.envelope.expire_at_ms() <= now_ms) {
            batch.DeleteMessage(mailbox.recipient, message.seq);
            Release(mailbox, message.envelope.from(),
                    AccountedBytes(message.envelope.payload().size()));
            stats.expired.fetch_add(1, std::memory_order_relaxed);
          } else {
            next_min = std::min(next_min, message.envelope.expire_at_ms());
          }
        }
        if (read->size() < kSweepBatch) break;
        from_seq = read->back().seq + 1;
      }
      if (!batch.empty()) {
        store.Commit(std::move(batch), store::Store::Durability::kLazy, [](absl::Status) {});
      }
    }
    // Writes in progress are not visible yet: look again at the next sweep.
    mailbox.min_expire_ms = mailbox.writes_in_flight > 0 ? now_ms : next_min;
  }

  // ---- recovery ----

  absl::Status Recover() {
    uint64_t messages = 0;
    auto status =
        store.ForEachMessage([&](std::string_view recipient, const store::StoredMessage& message) {
          Stripe& stripe = StripeOf(recipient);
          Mailbox& mailbox = Get(stripe, std::string(recipient));
          if (!mailbox.spilled) {
            mailbox.spilled = true;
            mailbox.spill_seq = message.seq;  // the head: seeks start here, above the tombstones
          }
          mailbox.next_seq = std::max(mailbox.next_seq, message.seq + 1);
          const uint64_t bytes = AccountedBytes(message.envelope.payload().size());
          Account(mailbox, message.envelope.from(), bytes, message.envelope.expire_at_ms());
          ledger.Add(message.envelope.from());
          ++messages;
        });
    if (!status.ok()) return status;
    Log(spdlog::level::info, "store_recovered",
        {{"messages", messages},
         {"bytes", stats.queued_bytes.load()},
         {"mailboxes", [&] {
            size_t n = 0;
            for (auto& stripe : stripes) n += stripe.mailboxes.size();
            return n;
          }()}});
    return absl::OkStatus();
  }
};

Router::Router(RouterConfig config, store::Store& store) : config_(std::move(config)) {
  impl_ = std::make_unique<Impl>(config_, stats_, store);
}

Router::~Router() = default;

absl::Status Router::Recover() { return impl_->Recover(); }

std::shared_ptr<Session> Router::Attach(std::shared_ptr<peer::Link> link) {
  return impl_->Attach(std::move(link));
}

absl::Status Router::OnFrame(Session& session, mesh::v1::Frame& frame) {
  switch (frame.body_case()) {
    case mesh::v1::Frame::kSend:
      impl_->OnSend(session, *frame.mutable_send());
      return absl::OkStatus();
    case mesh::v1::Frame::kDeliverAck:
      impl_->OnDeliverAck(session, frame.deliver_ack());
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

void Router::Detach(Session& session) { impl_->Detach(session); }

void Router::Tick() { impl_->Tick(); }

}  // namespace mesh::broker
