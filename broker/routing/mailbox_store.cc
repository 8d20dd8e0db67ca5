// Routing and the store: writing messages, reading spilled mailboxes back, expiry, recovery.
#include <boost/asio/post.hpp>

#include "absl/strings/str_cat.h"
#include "broker/log.h"
#include "broker/routing/router_impl.h"

namespace mesh::broker {

using namespace routing;  // NOLINT(google-build-using-namespace): this module's own internals

// Writes a message to its mailbox; its waiters get their SendAck once the sync policy covers
// it.
void Router::Impl::Persist(Mailbox& mailbox, uint64_t seq, mesh::v1::StoredEnvelope& envelope) {
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
  for (uint64_t earliest = written_expiry_ms.load(std::memory_order_relaxed);
       envelope.expire_at_ms() < earliest &&
       !written_expiry_ms.compare_exchange_weak(earliest, envelope.expire_at_ms());) {
  }
  mesh::v1::DedupRecord dedup;
  dedup.set_digest(std::string(AsText(digest)));
  dedup.set_expire_at_ms(WallMs() + std::chrono::milliseconds(config.dedup_window).count());
  batch.PutDedup(envelope.from(), envelope.id(), dedup);
  ++mailbox.writes_in_flight;
  stats.stored.fetch_add(1, std::memory_order_relaxed);
  store.Commit(std::move(batch), store::Store::Durability::kDurable,
               [this, recipient = mailbox.recipient, seq, key](const absl::Status& status) {
                 OnWritten(recipient, seq, key, status);
               });
}

void Router::Impl::DeleteStored(Mailbox& mailbox, uint64_t seq, const store::MessageRef& message) {
  store::Batch batch;
  batch.DeleteMessage(mailbox.recipient, seq, message);
  CommitDeletes(mailbox, std::move(batch), {seq});
}

// Deletes are not waited for: one lost to a crash means a redelivery, never a loss. Until one
// is applied a read still returns the message: `deleting` keeps refills from loading it again.
void Router::Impl::CommitDeletes(Mailbox& mailbox, store::Batch batch, std::vector<uint64_t> seqs,
                                 std::vector<PendingKey> handed) {
  mailbox.deleting.insert(seqs.begin(), seqs.end());
  mailbox.dedup_deleting.insert(handed.begin(), handed.end());
  std::vector<Released> released;
  released.push_back({mailbox.recipient, std::move(seqs), std::move(handed)});
  CommitReleased(std::move(batch), std::move(released));
}

void Router::Impl::CommitReleased(store::Batch batch, std::vector<Released> released) {
  store.Commit(std::move(batch), store::Store::Durability::kLazy,
               [this, released = std::move(released)](const absl::Status& status) {
                 if (!status.ok()) return;  // the store closed before it resumed
                 for (const Released& one : released) {
                   Stripe& stripe = StripeOf(one.recipient);
                   std::lock_guard lock(stripe.mu);
                   Mailbox* mailbox = Find(stripe, one.recipient);
                   if (mailbox == nullptr) continue;
                   ++mailbox->disk_changes;
                   for (uint64_t seq : one.seqs) mailbox->deleting.erase(seq);
                   for (const PendingKey& key : one.handed) mailbox->dedup_deleting.erase(key);
                   if (!one.handed.empty()) {
                     stripe.dedup_settled.fetch_add(1, std::memory_order_release);
                   }
                   MaybeErase(stripe, *mailbox);
                 }
               });
}

// On the store's writer thread, once a Persist is durable (or failed).
void Router::Impl::OnWritten(const std::string& recipient, uint64_t seq, const PendingKey& key,
                             const absl::Status& status) {
  Stripe& stripe = StripeOf(recipient);
  std::lock_guard lock(stripe.mu);
  Mailbox* mailbox = Find(stripe, recipient);
  if (mailbox == nullptr) return;  // cannot happen: writes_in_flight keeps it
  --mailbox->writes_in_flight;
  ++mailbox->disk_changes;
  mailbox->unloaded_writes.erase(seq);
  std::vector<Waiter> waiters;
  if (auto node = mailbox->pending.extract(key)) waiters = std::move(node.mapped().waiters);
  stripe.dedup_settled.fetch_add(1, std::memory_order_release);
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
        store::Batch batch;
        batch.DeleteMessage(mailbox->recipient, seq, it->second.ref());
        std::vector<PendingKey> handed;
        if (it->second.handed_off) {
          batch.DeleteDedup(it->second.envelope.from(), it->second.envelope.id());
          handed.push_back(key);
        }
        CommitDeletes(*mailbox, std::move(batch), {seq}, std::move(handed));
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

// On the session's executor: reads the next messages of a spilled mailbox from the store.
// The store is read with the stripe unlocked; what was read counts only if, meanwhile, the
// mailbox kept its session and head and no write or delete of it landed (`disk_changes`),
// else it is read again (after a few lost races, under the lock).
void Router::Impl::Refill(const std::string& recipient, Session& session) {
  Stripe& stripe = StripeOf(recipient);
  std::unique_lock lock(stripe.mu);
  Mailbox* mailbox = Find(stripe, recipient);
  if (mailbox == nullptr || mailbox->session.get() != &session) return;
  session.refill_scheduled_ = false;
  // A message Unbind wrote late is not readable yet: its OnWritten schedules the refill.
  if (!mailbox->unloaded_writes.empty()) return;
  const uint64_t now_ms = WallMs();
  int lost_races = 0;
  while (mailbox->spilled && HasCapacity(session) && !UndeliveredLoaded(*mailbox) &&
         mailbox->loaded.size() < config.max_loaded) {
    const size_t want = std::min(kRefillBatch, config.max_loaded - mailbox->loaded.size());
    const uint64_t from_seq = mailbox->spill_seq;
    const uint64_t changes = mailbox->disk_changes;
    const bool unlocked = lost_races < kLoadAttempts;
    if (unlocked) lock.unlock();
    auto read = store.ReadMailbox(recipient, from_seq, want, kRefillBytes);
    if (unlocked) {
      lock.lock();
      mailbox = Find(stripe, recipient);
      if (mailbox == nullptr || mailbox->session.get() != &session) return;
      if (mailbox->spill_seq != from_seq || mailbox->disk_changes != changes ||
          !mailbox->unloaded_writes.empty()) {
        ++lost_races;
        if (!mailbox->unloaded_writes.empty()) return;  // its OnWritten schedules the refill
        continue;
      }
    }
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
      if (mailbox->deleting.contains(message.seq)) continue;  // released: its delete is on its way
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

void Router::Impl::Tick() {
  if (config.store_max_bytes > 0) {
    const auto queued = static_cast<uint64_t>(
        std::max<int64_t>(0, stats.queued_bytes.load(std::memory_order_relaxed)));
    if (queued >= config.store_max_bytes) {
      over_max_bytes.store(true, std::memory_order_relaxed);
    } else if (queued <= config.store_max_bytes / 10 * 9) {
      over_max_bytes.store(false, std::memory_order_relaxed);
    }
  }
  const auto now = Clock::now();
  // A new round of expiry once the interval has passed (and the walker is done with the last).
  if (now >= next_sweep) {
    next_sweep = now + config.expiry_sweep_interval;
    sweep_requested.store(true);
    WakeWalker();
  }
  if (now >= next_prune) {
    // Rate buckets refilled since are as good as none: memory follows the peers sending now.
    next_prune = now + std::chrono::seconds(1);
    rates.Prune(now);
  }
  for (Stripe& stripe : stripes) {
    std::lock_guard lock(stripe.mu);
    EvictRested(stripe, now);
    while (!stripe.fast.empty() && stripe.fast.front().at <= now) {
      const FastDeadline deadline = stripe.fast.front();
      stripe.fast.pop_front();
      Mailbox* mailbox = Find(stripe, {deadline.recipient.data(), deadline.recipient.size()});
      if (mailbox == nullptr) continue;
      auto it = mailbox->loaded.find(deadline.seq);
      if (it == mailbox->loaded.end() || it->second.state != State::kFast) continue;
      it->second.state = State::kWriting;
      Persist(*mailbox, deadline.seq, it->second.envelope);
    }
  }
}

void Router::Impl::WalkerLoop() {
  while (!walker_stop.load()) {
    {
      std::unique_lock lock(walker_mu);
      walker_wake.wait(lock, [&] {
        return walker_stop.load() || sweep_requested.load() || walk_requested.load();
      });
    }
    if (!sweeping && sweep_requested.exchange(false)) {
      sweeping = true;
      written_expiry_ms.store(UINT64_MAX);  // before the walk: a write during it lowers it
      sweep_cursor = store::ExpiryCursorAt(sweep_floor_ms);
      sweep_left_ms = UINT64_MAX;
      sweep_until_ms = WallMs();
    }
    SweepSome();
    WalkSome();
    while (!walker_stop.load() && (sweeping || walking || walk_requested.load())) {
      SweepSome();
      WalkSome();
    }
  }
}

void Router::Impl::EvictRested(Stripe& stripe, Clock::time_point now) {
  while (!stripe.resting.empty() && stripe.resting.front().at + kRestGrace <= now) {
    const Stripe::Rested rested = std::move(stripe.resting.front());
    stripe.resting.pop_front();
    Mailbox* mailbox = Find(stripe, rested.recipient);
    if (mailbox == nullptr || mailbox->rested_at != rested.at) continue;  // a later entry stands
    if (mailbox->AtRest()) {
      Erase(stripe, *mailbox);
    } else {
      mailbox->rested_at = {};  // active since: its next rest starts a grace of its own
    }
  }
}

absl::StatusOr<Mailbox*> Router::Impl::Load(Stripe& stripe, std::unique_lock<std::mutex>& lock,
                                            std::string_view recipient,
                                            std::optional<uint64_t> holding) {
  for (int attempt = 0;; ++attempt) {
    if (Mailbox* mailbox = Find(stripe, recipient)) return mailbox;
    // Read unlocked, good if no mailbox of the stripe went meanwhile (one that did may have
    // been this one, its disk half changed); after a few lost races, under the lock.
    const uint64_t evictions = stripe.evictions;
    const bool unlocked = attempt < kLoadAttempts;
    if (unlocked) lock.unlock();
    absl::StatusOr<bool> stored = true;
    if (holding) stored = store.HasMessage(recipient, *holding);
    auto counts = store.MailboxCounts(recipient);
    absl::StatusOr<store::Store::HeldBySender> held = store::Store::HeldBySender{};
    absl::StatusOr<uint64_t> head = 0;
    if (counts.ok() && counts->messages > 0) {
      held = store.HeldIn(recipient);
      head = store.MailboxHead(recipient);
    }
    if (unlocked) lock.lock();
    if (!stored.ok()) return stored.status();
    if (!counts.ok()) return counts.status();
    if (!held.ok()) return held.status();
    if (!head.ok()) return head.status();
    if (Mailbox* mailbox = Find(stripe, recipient)) return mailbox;  // loaded by another
    if (stripe.evictions != evictions) continue;
    if (!*stored) return nullptr;
    Mailbox& mailbox = Get(stripe, std::string(recipient));
    if (counts->messages > 0) {
      mailbox.count = counts->messages;
      mailbox.bytes = counts->bytes;
      mailbox.next_seq = std::max(mailbox.next_seq, counts->last_seq + 1);
      mailbox.spilled = true;
      mailbox.spill_seq = *head;
      mailbox.had_head = *head > 0;
      for (auto& [from, sender] : *held) {
        mailbox.per_sender[std::move(from)] = {sender.messages, sender.bytes};
      }
    }
    return &mailbox;
  }
}

// On the walker, for up to kSweepSlice: walks the expiry index, so a sweep costs what expires.
// What is due meanwhile is never delivered: delivery skips expired messages itself. The index
// is read without a lock; each message is then judged under its stripe's.
void Router::Impl::SweepSome() {
  const auto started = Clock::now();
  while (sweeping && Clock::now() - started < kSweepSlice) {
    auto due = store.ReadExpired(sweep_until_ms, sweep_cursor, kExpiryBatch);
    if (!due.ok()) {
      Log(spdlog::level::err, "expiry_sweep_failed",
          {{"error", std::string(due.status().message())}});
      sweeping = false;
      break;
    }
    if (due->empty()) {
      sweeping = false;
      sweep_floor_ms = std::min({sweep_left_ms, sweep_until_ms + 1, written_expiry_ms.load()});
    }
    // One commit for what this read found expired, not one per message.
    store::Batch deletes;
    std::vector<Released> released;
    for (const store::ExpiringMessage& message : *due) SweepOne(message, deletes, released);
    if (!deletes.empty()) CommitReleased(std::move(deletes), std::move(released));
  }
}

void Router::Impl::SweepOne(const store::ExpiringMessage& message, store::Batch& deletes,
                            std::vector<Released>& released) {
  Stripe& stripe = StripeOf(message.recipient);
  std::unique_lock lock(stripe.mu);
  Mailbox* mailbox = Find(stripe, message.recipient);
  if (mailbox == nullptr) {
    // At rest, or the entry was read just before its delete landed: Load reads the message's
    // key with the counts and takes the mailbox back only if it is still stored.
    auto loaded = Load(stripe, lock, message.recipient, message.seq);
    if (!loaded.ok()) {
      sweep_left_ms = std::min(sweep_left_ms, message.expire_at_ms);  // the next sweep tries
      return;
    }
    if (*loaded == nullptr) return;  // deleted meanwhile
    mailbox = *loaded;
  }
  if (auto it = mailbox->loaded.find(message.seq); it != mailbox->loaded.end()) {
    const Entry& entry = it->second;
    // In flight, acknowledged, or its write's callback still to come: a later sweep sees it.
    if (entry.state != State::kStored || entry.link_seq != 0 || entry.acked) {
      sweep_left_ms = std::min(sweep_left_ms, message.expire_at_ms);
      return;
    }
    mailbox->loaded.erase(it);
  } else {
    // Not loaded: in the store at or above spill_seq, unless released (its delete on the way).
    if (!mailbox->spilled || message.seq < mailbox->spill_seq) return;
    if (mailbox->deleting.contains(message.seq)) return;
  }
  deletes.DeleteMessage(mailbox->recipient, message.seq, message.ref());
  mailbox->deleting.insert(message.seq);
  Release(*mailbox, message.from, message.bytes);
  stats.expired.fetch_add(1, std::memory_order_relaxed);
  if (released.empty() || released.back().recipient != mailbox->recipient) {
    released.push_back({mailbox->recipient, {}, {}});
  }
  released.back().seqs.push_back(message.seq);
  MaybeErase(stripe, *mailbox);
}

// Deletes every message of a mailbox that is not in flight, in memory and in the store.
// Returns how many went.
uint64_t Router::Impl::DropAll(Mailbox& mailbox) {
  uint64_t dropped = 0;
  store::Batch batch;
  std::vector<uint64_t> seqs;
  for (auto it = mailbox.loaded.begin(); it != mailbox.loaded.end();) {
    const Entry& entry = it->second;
    if (entry.state == State::kStored && entry.link_seq == 0 && !entry.acked) {
      batch.DeleteMessage(mailbox.recipient, it->first, entry.ref());
      seqs.push_back(it->first);
      Release(mailbox, entry.envelope.from(), entry.bytes);
      it = mailbox.loaded.erase(it);
      ++dropped;
      continue;
    }
    ++it;
  }
  // The head moves past what was read, so later reads skip the new tombstones.
  std::optional<uint64_t> first_left;
  uint64_t next_seq = mailbox.spill_seq;
  for (uint64_t from_seq = mailbox.spill_seq; mailbox.spilled;) {
    auto read = store.ReadMailbox(mailbox.recipient, from_seq, kSweepBatch, SIZE_MAX);
    if (!read.ok()) break;
    for (const auto& message : *read) {
      next_seq = message.seq + 1;
      if (mailbox.loaded.contains(message.seq)) {
        if (!first_left) first_left = message.seq;
        continue;
      }
      if (mailbox.deleting.contains(message.seq)) continue;  // released, its delete on its way
      const store::MessageRef ref = store::MessageRef::Of(message.envelope);
      batch.DeleteMessage(mailbox.recipient, message.seq, ref);
      seqs.push_back(message.seq);
      Release(mailbox, message.envelope.from(), ref.bytes);
      ++dropped;
    }
    if (read->size() < kSweepBatch) break;
    from_seq = read->back().seq + 1;
  }
  // A write in flight may land below what was read (a fast-path message written late).
  if (mailbox.spilled && mailbox.writes_in_flight == 0) {
    mailbox.spill_seq = first_left.value_or(next_seq);
  }
  if (!batch.empty()) CommitDeletes(mailbox, std::move(batch), std::move(seqs));
  return dropped;
}

absl::StatusOr<uint64_t> Router::Impl::PurgeMailbox(std::string_view id) {
  Stripe& stripe = StripeOf(id);
  std::unique_lock lock(stripe.mu);
  if (!store.available()) return absl::UnavailableError("the store cannot write");
  auto loaded = Load(stripe, lock, id);
  if (!loaded.ok()) return loaded.status();
  Mailbox* mailbox = *loaded;
  const uint64_t purged = DropAll(*mailbox);
  MaybeErase(stripe, *mailbox);
  return purged;
}

// Totals from the store's counts, never a payload, and no mailbox in memory: each is read
// back when a session, a send, a sweep or the placement needs it.
absl::Status Router::Impl::Recover() {
  uint64_t messages = 0;
  store::Store::CountVisitors visit;
  visit.mailbox = [&](std::string_view, const store::Counts& counts) {
    held_mailboxes.fetch_add(1, std::memory_order_relaxed);
    stats.queued.fetch_add(counts.messages, std::memory_order_relaxed);
    stats.queued_bytes.fetch_add(static_cast<int64_t>(counts.bytes), std::memory_order_relaxed);
    messages += counts.messages;
  };
  visit.sender = [&](std::string_view from, const store::Counts& counts) {
    ledger.Add(std::string(from), counts.messages);
  };
  if (absl::Status status = store.ForEachCount(visit); !status.ok()) return status;
  Log(spdlog::level::info, "store_recovered",
      {{"messages", messages},
       {"bytes", stats.queued_bytes.load()},
       {"mailboxes", held_mailboxes.load(std::memory_order_relaxed)}});
  return absl::OkStatus();
}

}  // namespace mesh::broker
