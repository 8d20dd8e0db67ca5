// Routing's state, shared by router.cc (sends, acks, delivery, sessions) and mailbox_store.cc
// (writes, reads back, expiry, recovery): one recipient's Mailbox and what it holds, the
// stripes that guard them, and the sender ledger. Internal to broker/routing/.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "broker/routing/session.h"
#include "crypto/crypto.h"
#include "store/store.h"

namespace mesh::broker::routing {

using Clock = std::chrono::steady_clock;
using mesh::v1::SendAck;

constexpr int kStripes = 64;
constexpr size_t kRefillBatch = 256;
constexpr size_t kRefillBytes = size_t{4} << 20;
constexpr size_t kSweepBatch = 1024;
constexpr size_t kExpiryBatch = 256;  // expiry index entries read at a time, within a slice
constexpr size_t kWalkBatch = 256;    // mailboxes at rest re-placed at a time, within a slice
// Reads of a mailbox at rest made with its stripe unlocked before one is made under the lock.
constexpr int kLoadAttempts = 3;
// How long a mailbox stays in memory once at rest: a burst of sends to it (a fill, a chat)
// reads it back from the store once, not once per message.
constexpr std::chrono::seconds kRestGrace{1};
// How long the walker sweeps or walks before it looks at the other (and at a stop).
constexpr std::chrono::milliseconds kSweepSlice{2};
using store::AccountedBytes;

inline uint64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

inline uint64_t WallMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

inline std::string_view AsText(const crypto::Fingerprint& f) {
  return {reinterpret_cast<const char*>(f.data()), f.size()};
}

inline crypto::ByteSpan AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Key of Mailbox::pending: from ‖ id, inline (no allocation per message).
using PendingKey = std::array<char, store::kIdSize + store::kMessageIdSize>;

inline PendingKey PendingKeyOf(std::string_view from, std::string_view id) {
  PendingKey key{};
  std::copy_n(from.begin(), std::min(from.size(), store::kIdSize), key.begin());
  std::copy_n(id.begin(), std::min(id.size(), store::kMessageIdSize), key.begin() + store::kIdSize);
  return key;
}

inline PendingKey PendingKeyOf(const mesh::v1::StoredEnvelope& envelope) {
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
  bool acked = false;       // acknowledged while its write was in progress
  bool handed_off = false;  // acked by a next hop (its dedup entry goes with the message)
  uint64_t link_seq = 0;    // in flight on the current session; 0 = not delivered
  Clock::time_point accepted;

  // What its write counted in the store (the payload may be gone: see OnDeliverAck).
  store::MessageRef ref() const { return {envelope.from(), bytes, envelope.expire_at_ms()}; }
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

inline crypto::Fingerprint DigestOf(std::string_view to, std::string_view payload) {
  return crypto::FingerprintOf({AsBytes(to), AsBytes(payload)});
}

// One recipient's queue, in memory while it is active: a session or a forwarder on it, sends
// not yet owned, messages loaded or in flight, writes or deletes not yet applied. At rest it
// is let go (its disk half, counts included, is in the store) and read back on demand. Every
// message it holds is either in `loaded` or in the store at a seq >= spill_seq (while
// `spilled`), never only in neither.
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
  // Writes and deletes of it applied so far: a read made with the stripe unlocked (Refill) is
  // good only if none landed meanwhile.
  uint64_t disk_changes = 0;
  // Seqs whose write is in flight and whose entry Unbind dropped from memory: not in `loaded`
  // and not yet readable from the store. A refill waits for them, or it would read the
  // messages after them and move spill_seq past them, leaving them on disk unread.
  std::set<uint64_t> unloaded_writes;
  // Seqs released here whose delete is committed but not yet applied: a read may still return
  // them, and a refill must not load (deliver, release) them a second time.
  absl::flat_hash_set<uint64_t> deleting;
  // Messages handed to another broker whose dedup entry here is being deleted: until the delete
  // is applied the entry is still read, and must not answer DUPLICATE if the message comes back
  // (a home that moved away and back), or both brokers would drop it.
  absl::flat_hash_set<PendingKey> dedup_deleting;
  // What each sender holds here, for the fair share: messages and bytes alike, or one sender's
  // few large messages would fill the mailbox for every other.
  struct Held {
    uint64_t messages = 0;
    uint64_t bytes = 0;
  };
  absl::flat_hash_map<std::string, Held> per_sender;
  absl::flat_hash_map<PendingKey, Pending> pending;
  std::shared_ptr<Session> session;  // a peer's link, or a forwarder to another broker
  uint64_t placed_epoch = 0;         // the placement epoch it was last placed in
  Clock::time_point rested_at{};     // when it last came to rest (Stripe::resting)
  bool had_head = false;             // read back with a head from the store (PutHead)
  bool outbound = false;             // placed towards another broker (an outbox)

  void Spill(uint64_t seq) {
    spill_seq = spilled ? std::min(spill_seq, seq) : seq;
    spilled = true;
  }
  // Nothing held and no peer on it (a forwarder with nothing to forward goes with it).
  bool Idle() const { return count == 0 && (!session || session->forwarder()) && Settled(); }
  // Holds messages, all of them in the store and placed here, with nothing under way: what
  // memory knows of it the store knows too (its counts), so it can go.
  bool AtRest() const { return count > 0 && !session && !outbound && Settled(); }
  bool Settled() const {
    return pending.empty() && loaded.empty() && writes_in_flight == 0 && unloaded_writes.empty() &&
           deleting.empty() && dedup_deleting.empty();
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
  // Mailboxes placed towards another broker that have no forwarder (no link up, or the next
  // hop refused): the only ones PlaceUnbound asks about again. May name mailboxes since bound
  // or erased; those are skipped.
  absl::flat_hash_set<std::string> unplaced;
  // The active few the control plane and the mesh ask about, so that they cost what is
  // active, never what is held at rest: mailboxes with a peer's session here, and mailboxes
  // placed towards another broker (outboxes). Erased with their mailbox.
  absl::flat_hash_set<Mailbox*> connected;
  absl::flat_hash_set<Mailbox*> outbound;
  // Mailboxes let go so far: a read of one at rest made with the stripe unlocked is good only
  // if none went meanwhile (its disk half may have changed and settled in between).
  uint64_t evictions = 0;
  // Dedup entries of this stripe's mailboxes that became what the store says: a write that
  // landed (its pending entry gone) or a delete that did (its dedup_deleting entry gone). An
  // Admit reads the dedup entry with the stripe unlocked and trusts it only if none settled
  // meanwhile. Changed under `mu`, read before it is taken.
  std::atomic<uint64_t> dedup_settled{0};
  // Mailboxes that came to rest, in that order, let go by the tick after kRestGrace if still
  // at rest then. May name mailboxes since active, rested again (a later entry) or erased.
  struct Rested {
    Clock::time_point at;
    std::string recipient;
  };
  std::deque<Rested> resting;
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
  void Add(const std::string& sender, uint64_t n = 1) {
    Part& part = PartOf(sender);
    std::lock_guard lock(part.mu);
    part.counts[sender] += n;
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

}  // namespace mesh::broker::routing
