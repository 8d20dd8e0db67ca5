// The store module's front door: mailboxes, dedup entries and outboxes in one RocksDB
// (DESIGN §4). Nothing of RocksDB shows here, so broker/ depends on this interface only.
//
// Layout (column families), format 2:
//   mailbox  recipient(32) ‖ seq(u64 BE)  -> StoredEnvelope
//   outbox   next hop(32) ‖ seq(u64 BE)   -> StoredEnvelope   (the mesh's, DESIGN §5)
//   dedup    from(32) ‖ id(16)            -> DedupRecord      (dropped by compaction once expired)
//   expiry   expire_at_ms(u64 BE) ‖ recipient(32) ‖ seq(u64 BE) -> from(32) ‖ bytes(u64 BE)
//   meta     "format"                     -> "2"
//            'c' ‖ recipient(32)          -> Counts of the mailbox (messages, bytes, last seq)
//            'h' ‖ recipient(32) ‖ from(32) -> Counts of what one sender holds in it
//            'l' ‖ from(32)               -> Counts of what one sender holds in all mailboxes
//            'p' ‖ recipient(32)          -> head: no stored message of it has a lower seq
//
// The counts and the expiry index change in the very write batches that put and delete the
// messages (the counts as merge operands, summed), so they are exact after any crash: a start
// reads them, never the payloads, and an expiry sweep reads only what expires. Format 1 (no
// counts, no index) is migrated when it is opened.
//
// Writes go through one group-commit writer thread: every Commit() made while the previous write
// was in progress lands in the next RocksDB write, and `done` runs once the sync policy covers it.
// After a failed write (disk full, I/O error) the store is unavailable until RocksDB resumes: the
// writer thread retries DB::Resume with backoff, and resumes by itself once space returns.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "mesh/v1/store.pb.h"

namespace mesh::store {

inline constexpr size_t kIdSize = 32;  // peer and node IDs
inline constexpr size_t kMessageIdSize = 16;
inline constexpr uint32_t kEnvelopeVersion = 1;
// Key + the envelope's fields around the payload: what a stored message costs beyond its payload.
inline constexpr uint64_t kEnvelopeOverhead = 160;

// What a message counts against quotas; the same at accept, reload, expiry and recovery.
inline uint64_t AccountedBytes(size_t payload) { return kEnvelopeOverhead + payload; }

// A stored message as the counts and the expiry index know it: what a delete takes out of
// them, without reading the message back.
struct MessageRef {
  std::string_view from;
  uint64_t bytes = 0;  // AccountedBytes of its payload
  uint64_t expire_at_ms = 0;

  static MessageRef Of(const mesh::v1::StoredEnvelope& envelope) {
    return {envelope.from(), AccountedBytes(envelope.payload().size()), envelope.expire_at_ms()};
  }
};

// Messages and bytes held (of a mailbox, or of a sender), and the highest seq a mailbox used.
struct Counts {
  uint64_t messages = 0;
  uint64_t bytes = 0;
  uint64_t last_seq = 0;
};

// A message whose expiry time has come, as the expiry index holds it.
struct ExpiringMessage {
  std::string recipient;
  uint64_t seq = 0;
  std::string from;
  uint64_t bytes = 0;
  uint64_t expire_at_ms = 0;

  MessageRef ref() const { return {from, bytes, expire_at_ms}; }
};

// Where a walk (of the expiry index, of the mailboxes) stands: the next read starts after
// `key`.
struct Cursor {
  std::string key;
};

// A walk of the expiry index from the messages that expire at `expire_at_ms` on.
Cursor ExpiryCursorAt(uint64_t expire_at_ms);

// always: every write is fsynced before it is acknowledged. batch: writes go to the WAL at
// once and an fsync covers all written since the last one, at most one per sync interval.
// none: no fsync; survives a process crash (the WAL is in the kernel), not a power loss.
enum class SyncPolicy { kAlways, kBatch, kNone };
absl::StatusOr<SyncPolicy> ParseSyncPolicy(std::string_view name);
const char* SyncPolicyName(SyncPolicy policy);

struct StoreOptions {
  std::string path;  // the RocksDB directory (created on first open)
  SyncPolicy sync = SyncPolicy::kBatch;
  std::chrono::microseconds sync_interval{2000};
  size_t block_cache_bytes = size_t{32} << 20;
  // All memtables together (RocksDB's db_write_buffer_size); the WAL is kept to twice this.
  size_t memtable_bytes = size_t{32} << 20;
  // The volume's high-water mark: full() once less than this fraction of the volume under `path`
  // is free (statfs). 0: none.
  double min_free_fraction = 0.10;
  // Called on the writer thread with how long each RocksDB write (fsync included under
  // `always`) and each batch fsync took: the broker keeps the histograms.
  std::function<void(std::chrono::microseconds)> on_write;
  std::function<void(std::chrono::microseconds)> on_sync;
};

// Counters the broker exports as metrics.
struct StoreStats {
  std::atomic<uint64_t> commits{0};          // Commit() calls
  std::atomic<uint64_t> durable_commits{0};  // of which kDurable
  std::atomic<uint64_t> writes{0};           // RocksDB writes (each holds one or more commits)
  std::atomic<uint64_t> syncs{0};
  std::atomic<uint64_t> write_micros{0};  // summed over writes, sync included
  std::atomic<uint64_t> failed_writes{0};
  std::atomic<uint64_t> resumes{0};  // DB::Resume calls that made the store available again
  // Messages read back from disk (mailbox reads and scans): a start reads none.
  std::atomic<uint64_t> messages_read{0};
};

struct StoredMessage {
  uint64_t seq = 0;
  mesh::v1::StoredEnvelope envelope;
  size_t stored_bytes = 0;  // key + value, what quotas count
};

// A set of changes applied atomically, in the order they were added.
class Batch {
 public:
  // `envelope` is serialized here; the returned size is what the entry takes on disk. The
  // mailbox's and the sender's counts and the expiry index follow in the same batch.
  size_t PutMessage(std::string_view recipient, uint64_t seq,
                    const mesh::v1::StoredEnvelope& envelope);
  // `message` says what the put counted. Delete each stored message once: a second delete
  // would take it out of the counts twice.
  void DeleteMessage(std::string_view recipient, uint64_t seq, const MessageRef& message);
  void PutDedup(std::string_view from, std::string_view id, const mesh::v1::DedupRecord& record);
  // A message handed to another broker takes its dedup duty along: that broker writes its own.
  void DeleteDedup(std::string_view from, std::string_view id);
  // A mailbox let go from memory keeps where its reads start (so they seek past the
  // tombstones of what was delivered): a seq no stored message of it is below. Any head once
  // written stays a valid lower bound, so a late or lost write costs reads, never a message.
  void PutHead(std::string_view recipient, uint64_t seq);
  void DeleteHead(std::string_view recipient);
  bool empty() const { return ops_.empty(); }

 private:
  friend class Store;
  enum class Family : uint8_t { kMailbox, kDedup, kExpiry, kMeta };
  struct Op {
    Family family;
    bool is_delete;
    std::string key;
    std::string value;
  };
  struct CountDelta {
    std::array<char, 1 + 2 * kIdSize> key;  // in meta; inline, not allocated per message
    uint8_t key_size;
    int64_t messages;
    int64_t bytes;
    uint64_t last_seq;
    std::string_view Key() const { return {key.data(), key_size}; }
  };
  void AddCount(char kind, std::string_view first, std::string_view second, int64_t messages,
                int64_t bytes, uint64_t last_seq);
  void Count(std::string_view recipient, uint64_t seq, const MessageRef& message, int64_t sign);
  std::vector<Op> ops_;
  std::vector<CountDelta> counts_;
};

namespace internal {
struct StoreOpener;  // store.cc: opens a Store on RocksDB's file system or a test's
                     // (store_testing.h)
}  // namespace internal

class Store {
 public:
  // durable: `done` waits for the sync policy (a message a sender will be told is owned).
  // lazy: `done` runs once the write is applied (deletes: losing one redelivers, loses nothing).
  enum class Durability { kDurable, kLazy };
  using Done = std::function<void(absl::Status)>;

  static absl::StatusOr<std::unique_ptr<Store>> Open(const StoreOptions& options);
  ~Store();  // finishes pending commits, then closes
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Queues `batch` for the writer thread. `done` runs on that thread, in commit order. A durable
  // commit gets an error if its write failed or the store is unavailable. A lazy one (deletes,
  // which free space) is kept while the store is unavailable and written once it resumes; it
  // gets an error only if the store closes first.
  void Commit(Batch batch, Durability durability, Done done);

  // Messages of one mailbox with seq >= from_seq, in seq order: at most max_count, and no more
  // than max_bytes (at least one is returned if any exists). Seeks straight to from_seq, so the
  // deleted entries below it (tombstones) cost nothing.
  absl::StatusOr<std::vector<StoredMessage>> ReadMailbox(std::string_view recipient,
                                                         uint64_t from_seq, size_t max_count,
                                                         size_t max_bytes) const;
  // The dedup entry for (from, id), unless absent or expired at now_ms.
  absl::StatusOr<std::optional<mesh::v1::DedupRecord>> GetDedup(std::string_view from,
                                                                std::string_view id,
                                                                uint64_t now_ms) const;
  // Visits every stored message, mailbox by mailbox in seq order (reads every payload: tests
  // and tools, never a start).
  using Visitor = std::function<void(std::string_view recipient, const StoredMessage&)>;
  absl::Status ForEachMessage(const Visitor& visit) const;

  // The counts kept in meta, without a payload read: each mailbox's, each sender's in each
  // mailbox (skipped unread when `held` is empty), and each sender's in all. Entries counted
  // down to zero are skipped.
  struct CountVisitors {
    std::function<void(std::string_view recipient, const Counts&)> mailbox;
    std::function<void(std::string_view recipient, std::string_view from, const Counts&)> held;
    std::function<void(std::string_view from, const Counts&)> sender;
  };
  absl::Status ForEachCount(const CountVisitors& visit) const;
  // The counts of one mailbox (zero if it holds nothing), and what each sender holds in it:
  // what the router reads to take a mailbox at rest back into memory.
  absl::StatusOr<Counts> MailboxCounts(std::string_view recipient) const;
  using HeldBySender = std::vector<std::pair<std::string, Counts>>;
  absl::StatusOr<HeldBySender> HeldIn(std::string_view recipient) const;
  // The head PutHead left (0 if none).
  absl::StatusOr<uint64_t> MailboxHead(std::string_view recipient) const;
  // Whether the message is stored (a key lookup; the value is not parsed or counted as read).
  absl::StatusOr<bool> HasMessage(std::string_view recipient, uint64_t seq) const;
  // Up to max_count mailboxes that hold messages, in key order after `cursor`, which moves
  // past them. An empty answer: the walk is done.
  absl::StatusOr<std::vector<std::string>> ReadMailboxIds(Cursor& cursor, size_t max_count) const;

  // Up to max_count messages with expire_at_ms <= until_ms, in expiry order, after `cursor`,
  // which moves past them. An empty answer: the walk is done.
  absl::StatusOr<std::vector<ExpiringMessage>> ReadExpired(uint64_t until_ms, Cursor& cursor,
                                                           size_t max_count) const;

  // False from a failed write (disk full, I/O error) until RocksDB resumes: the broker answers
  // STORE_UNAVAILABLE meanwhile.
  bool available() const { return available_.load(std::memory_order_relaxed); }
  // How long the store has been unavailable without a successful resume; zero while available.
  std::chrono::steady_clock::duration UnavailableFor() const;
  // Whether the volume has less free than StoreOptions::min_free_fraction, as of the last
  // CheckSpace(). It stays full until one more percent of the volume is free, so that it does
  // not flap at the mark.
  bool full() const { return full_.load(std::memory_order_relaxed); }
  // Reads the volume's free space (statfs, a system call): call it on a timer, not per message.
  // Thread-safe; Open calls it once.
  void CheckSpace();
  const StoreStats& stats() const { return stats_; }
  const StoreOptions& options() const { return options_; }
  // Estimated bytes of live data on disk (RocksDB's own estimate).
  uint64_t EstimatedLiveBytes() const;

 private:
  friend struct internal::StoreOpener;
  struct Db;
  explicit Store(const StoreOptions& options);
  void WriterLoop();

  StoreOptions options_;
  std::unique_ptr<Db> db_;
  mutable StoreStats stats_;  // reads count too
  std::atomic<bool> available_{true};
  std::atomic<int64_t> unavailable_since_ns_{0};  // steady clock; meaningful while unavailable
  std::atomic<bool> full_{false};
};

// recipient ‖ seq big-endian: keys sort by mailbox, then by arrival.
std::string MailboxKey(std::string_view recipient, uint64_t seq);

}  // namespace mesh::store
