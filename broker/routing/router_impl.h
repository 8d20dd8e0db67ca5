// Router::Impl: the router's state and its operations, defined in router.cc (sends, acks,
// delivery, sessions) and mailbox_store.cc (writes, reads back, expiry, recovery). Internal to
// broker/routing/.
#pragma once

#include <condition_variable>
#include <thread>

#include "broker/routing/mailbox.h"
#include "broker/routing/router.h"
#include "peer/rate_limiter.h"

namespace mesh::broker {

struct Router::Impl {
  using Clock = routing::Clock;
  using Entry = routing::Entry;
  using Mailbox = routing::Mailbox;
  using Pending = routing::Pending;
  using PendingKey = routing::PendingKey;
  using SendAck = mesh::v1::SendAck;
  using Stripe = routing::Stripe;
  using Waiter = routing::Waiter;

  Impl(const RouterConfig& config, RouterStats& stats, EventHub& events, store::Store& store,
       const std::atomic<bool>& refusing)
      : config(config), stats(stats), events(events), store(store), refusing(refusing) {}

  const RouterConfig& config;
  RouterStats& stats;
  EventHub& events;
  store::Store& store;
  const std::atomic<bool>& refusing;  // Router::RefuseNewMessages
  std::array<Stripe, routing::kStripes> stripes;
  routing::SenderLedger ledger;
  // Send rate per peer ID, across its links (a reconnect does not refill it); Pings too.
  peer::RateLimiter rates{config.send_rate, config.send_burst};
  Clock::time_point next_sweep = Clock::now();
  // The walker: a thread of its own for the expiry sweep and the walk of the mailboxes at rest,
  // which read the store at length; on the tick's thread they held links up (a p99 of 5 ms
  // while a million messages expired). Both state blocks below are its own.
  std::thread walker;
  std::mutex walker_mu;
  std::condition_variable walker_wake;
  std::atomic<bool> walker_stop{false};
  std::atomic<bool> sweep_requested{false};
  void WalkerLoop();
  void WakeWalker() {
    { std::lock_guard lock(walker_mu); }  // a waiter between its check and its wait sees it
    walker_wake.notify_one();
  }
  void StopWalker() {
    walker_stop.store(true);
    WakeWalker();
    if (walker.joinable()) walker.join();
  }

  // An expiry sweep under way: it walks the store's expiry index from the floor: below it the
  // index holds only the tombstones of earlier sweeps, which a walk from the start would step
  // over one by one (a million of them: 100 ms).
  bool sweeping = false;
  store::Cursor sweep_cursor;
  uint64_t sweep_until_ms = 0;
  uint64_t sweep_floor_ms = 0;
  uint64_t sweep_left_ms = UINT64_MAX;  // the earliest expiry this round left in place
  // The earliest expiry written since the round began (forwarded messages keep theirs).
  std::atomic<uint64_t> written_expiry_ms{UINT64_MAX};
  Clock::time_point next_prune = Clock::now();
  Placement* placement = nullptr;
  std::atomic<uint64_t> placement_epoch{1};
  std::atomic<int64_t> mailbox_count{0};   // mailboxes in memory, across the stripes
  std::atomic<int64_t> held_mailboxes{0};  // mailboxes holding messages, in memory or at rest
  // A walk of the mailboxes at rest asking the placement where each goes (RebindAll): it reads
  // the store's counts, a slice per tick.
  std::atomic<bool> walk_requested{false};
  bool walking = false;
  store::Cursor walk_cursor;
  // Queued bytes reached store_max_bytes; cleared by Tick below 90% of it, so readiness does
  // not flap with every message at the mark.
  std::atomic<bool> over_max_bytes{false};
  // Set with it, cleared by the one who reports it: a full spell shorter than a tick is told.
  std::atomic<bool> went_over_max_bytes{false};

  Stripe& StripeOf(std::string_view peer) {
    return stripes[absl::HashOf(peer) % routing::kStripes];
  }

  Mailbox* Find(Stripe& stripe, std::string_view recipient) {
    auto it = stripe.mailboxes.find(absl::string_view(recipient.data(), recipient.size()));
    return it == stripe.mailboxes.end() ? nullptr : it->second.get();
  }

  Mailbox& Get(Stripe& stripe, const std::string& recipient) {
    auto& slot = stripe.mailboxes[recipient];
    if (!slot) {
      mailbox_count.fetch_add(1, std::memory_order_relaxed);
      slot = std::make_unique<Mailbox>();
      slot->recipient = recipient;
      // Seqs of a new mailbox start above any an earlier one with this recipient used, so its
      // keys never land among that one's tombstones.
      slot->next_seq = routing::WallMicros();
    }
    return *slot;
  }

  // Lets the mailbox go once it holds nothing; one at rest (its counts are in the store) goes
  // after kRestGrace, by the tick (EvictRested).
  void MaybeErase(Stripe& stripe, Mailbox& mailbox) {
    if (mailbox.AtRest()) {
      if (mailbox.rested_at == Clock::time_point{}) {
        mailbox.rested_at = Clock::now();
        stripe.resting.push_back({mailbox.rested_at, mailbox.recipient});
      }
      return;
    }
    if (!mailbox.Idle()) return;
    Erase(stripe, mailbox);
  }

  void Erase(Stripe& stripe, Mailbox& mailbox) {
    // Where its reads start goes with it (a read from seq 0 would step over every tombstone
    // of what it delivered); an emptied mailbox needs none.
    if (mailbox.count > 0 && mailbox.spilled && mailbox.spill_seq > 0) {
      store::Batch head;
      head.PutHead(mailbox.recipient, mailbox.spill_seq);
      store.Commit(std::move(head), store::Store::Durability::kLazy, [](const absl::Status&) {});
    } else if (mailbox.count == 0 && mailbox.had_head) {
      store::Batch head;
      head.DeleteHead(mailbox.recipient);
      store.Commit(std::move(head), store::Store::Durability::kLazy, [](const absl::Status&) {});
    }
    stripe.connected.erase(&mailbox);
    stripe.outbound.erase(&mailbox);
    mailbox_count.fetch_sub(1, std::memory_order_relaxed);
    ++stripe.evictions;
    stripe.mailboxes.erase(mailbox.recipient);
  }

  // The recipient's mailbox, read back from the store if it is at rest (made if it has none).
  // `lock` holds the stripe's mutex on entry and on return; the store is read with it
  // released. With `holding`: null, rather than a mailbox read back, if that seq is no longer
  // stored.
  absl::StatusOr<Mailbox*> Load(Stripe& stripe, std::unique_lock<std::mutex>& lock,
                                std::string_view recipient,
                                std::optional<uint64_t> holding = std::nullopt);

  // Visits the mailboxes with a peer's session here (not the forwarders), each under its
  // stripe's lock: O(connected peers), whatever the mailboxes at rest.
  template <typename Visit>
  void ForEachConnected(Visit visit) {
    for (Stripe& stripe : stripes) {
      std::lock_guard lock(stripe.mu);
      for (Mailbox* mailbox : stripe.connected) visit(*mailbox);
    }
  }

  void Ack(Session& session, std::string id, SendAck::Status status, std::string_view detail = {});

  void Notify(std::vector<Waiter>& waiters, std::optional<SendAck::Status> override_status,
              std::string_view detail = {});

  void Account(Mailbox& mailbox, const std::string& from, uint64_t bytes);

  void Release(Mailbox& mailbox, const std::string& from, uint64_t bytes);

  // Writes a message to its mailbox; its waiters get their SendAck once the sync policy covers
  // it.
  void Persist(Mailbox& mailbox, uint64_t seq, mesh::v1::StoredEnvelope& envelope);

  void DeleteStored(Mailbox& mailbox, uint64_t seq, const store::MessageRef& message);
  // Commits `batch`: deletes of the messages `seqs` of `mailbox` (already released) and of the
  // dedup entries `handed` (messages another broker owns now).
  void CommitDeletes(Mailbox& mailbox, store::Batch batch, std::vector<uint64_t> seqs,
                     std::vector<routing::PendingKey> handed = {});
  // Messages (and dedup entries) released from several mailboxes, their deletes in `batch`
  // and already in each mailbox's `deleting`: cleared there once the batch is applied.
  struct Released {
    std::string recipient;
    std::vector<uint64_t> seqs;
    std::vector<routing::PendingKey> handed;
  };
  void CommitReleased(store::Batch batch, std::vector<Released> released);

  // On the store's writer thread, once a Persist is durable (or failed).
  void OnWritten(const std::string& recipient, uint64_t seq, const PendingKey& key,
                 const absl::Status& status);

  bool HasCapacity(const Session& session) const;

  void DeliverEntry(Session& session, uint64_t seq, Entry& entry);

  // Delivers loaded entries in seq order while the session has room; asks for a read from the
  // store when the loaded ones are all out and more wait there.
  void TryDeliver(Mailbox& mailbox);

  std::map<uint64_t, Entry>::iterator DropExpired(Mailbox& mailbox,
                                                  std::map<uint64_t, Entry>::iterator it);

  bool UndeliveredLoaded(const Mailbox& mailbox) const;

  void ScheduleRefill(Mailbox& mailbox);
  void WakeForwarders(ForwardWindow& window);

  // On the session's executor: reads the next messages of a spilled mailbox from the store.
  void Refill(const std::string& recipient, Session& session);

  // Whether a retried Send carries the message its pending (from, id) stands for.
  bool SameMessage(const Mailbox& mailbox, const Pending& pending,
                   const mesh::v1::StoredEnvelope& message);

  void OnSend(Session& sender, mesh::v1::Send& send);
  void OnForward(Session& sender, mesh::v1::StoredEnvelope envelope, std::string ack_ref);
  void Admit(Session& sender, std::string ack_id, mesh::v1::StoredEnvelope envelope);
  void AdmitAgain(Session& sender, std::string ack_id, const mesh::v1::StoredEnvelope& envelope,
                  Mailbox& mailbox, Pending& pending);

  // The mesh: binds a mailbox without a session to the forwarder its placement names.
  void Place(Mailbox& mailbox);
  void Bind(Mailbox& mailbox, std::shared_ptr<Session> session);
  void Replace(Stripe& stripe, Mailbox& mailbox);
  // Every mailbox without a local session, asked again under a new placement epoch.
  void ReplaceAll();
  void PlaceUnbound();
  void SweepSome();
  // Lets go the mailboxes of `stripe` at rest for kRestGrace.
  void EvictRested(Stripe& stripe, Clock::time_point now);
  // Re-places mailboxes at rest for a slice of the tick, after RebindAll.
  void WalkSome();
  void Rebind(std::string_view recipient);
  // One message the expiry index says is due: its delete goes to `deletes` (and `released`)
  // unless it is in flight or no longer stored.
  void SweepOne(const store::ExpiringMessage& message, store::Batch& deletes,
                std::vector<Released>& released);

  std::pair<SendAck::Status, std::string> CheckQuotas(Mailbox& mailbox, const std::string& from,
                                                      uint64_t bytes);

  void OnDeliverAck(Session& session, std::span<const uint64_t> link_seqs);

  void OnCredit(Session& session, uint32_t n);

  // The mailbox's session goes: what it had in flight returns to the queue, fast-path messages
  // are written, and stored ones leave memory until the next session reads them back.
  void Unbind(Mailbox& mailbox);

  absl::StatusOr<std::shared_ptr<Session>> Attach(std::shared_ptr<peer::Link> link,
                                                  std::string remote_address);

  void Detach(Session& session, std::string_view reason);
  PeerView ViewOf(const Mailbox& mailbox) const;
  absl::StatusOr<uint64_t> PurgeMailbox(std::string_view id);

  void Tick();

  // Deletes every message of a mailbox that is not in flight (a purge); returns how many.
  uint64_t DropAll(Mailbox& mailbox);

  absl::Status Recover();
};

}  // namespace mesh::broker
