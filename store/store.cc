#include "store/store.h"

#include <rocksdb/compaction_filter.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/merge_operator.h>
#include <rocksdb/slice_transform.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "store/store_testing.h"

namespace mesh::store {
namespace {

std::chrono::microseconds MicrosSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() -
                                                               start);
}

using Clock = std::chrono::steady_clock;

// After a failed write: the first DB::Resume this long after it, then twice as long each time.
constexpr std::chrono::milliseconds kResumeFirst{100};
constexpr std::chrono::milliseconds kResumeMax{5000};
// A full volume counts as free again only with this much more of it free than the mark asks.
constexpr double kFreeHysteresis = 0.01;

constexpr char kFormatKey[] = "format";
constexpr char kFormatVersion[] = "2";
constexpr char kFormatBeforeCounts[] = "1";  // no counts in meta, no expiry index: migrated

// Prefixes of the counts in meta (store.h).
constexpr char kMailboxCounts = 'c';
constexpr char kHeldCounts = 'h';
constexpr char kSenderCounts = 'l';
constexpr char kMailboxHead = 'p';
constexpr size_t kCountsSize = 24;
constexpr size_t kExpiryKeySize = 8 + kIdSize + 8;
constexpr size_t kExpiryValueSize = kIdSize + 8;

uint64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void AppendBigEndian(std::string& out, uint64_t value) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>(value >> shift));
}

uint64_t ReadBigEndian(const char* p) {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value = (value << 8) | static_cast<uint8_t>(p[i]);
  return value;
}

absl::Status FromRocks(const rocksdb::Status& status, std::string_view during) {
  if (status.ok()) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("store ", std::string(during), ": ", status.ToString()));
}

// Drops dedup entries whose window has passed, so the family does not grow without bound.
class ExpiredDedupFilter : public rocksdb::CompactionFilter {
 public:
  bool Filter(int, const rocksdb::Slice&, const rocksdb::Slice& value, std::string*,
              bool*) const override {
    mesh::v1::DedupRecord record;
    if (!record.ParseFromArray(value.data(), static_cast<int>(value.size()))) return false;
    return record.expire_at_ms() <= NowMs();
  }
  const char* Name() const override { return "mesh.ExpiredDedupFilter"; }
};

// Messages and bytes as two's-complement deltas (a delete adds -1), the last seq as a maximum.
std::string EncodeCounts(uint64_t messages, uint64_t bytes, uint64_t last_seq) {
  std::string out(kCountsSize, '\0');
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<char>(messages >> (8 * i));
    out[8 + i] = static_cast<char>(bytes >> (8 * i));
    out[16 + i] = static_cast<char>(last_seq >> (8 * i));
  }
  return out;
}

std::optional<Counts> DecodeCounts(rocksdb::Slice value) {
  if (value.size() != kCountsSize) return std::nullopt;
  auto field = [&](size_t at) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(value.data()[at + i]);
    return v;
  };
  return Counts{field(0), field(8), field(16)};
}

// Sums counts (a put's +1 and a delete's -1 alike) and keeps the highest seq: the order of
// the operands does not matter, so the writer may add up a write group's before writing them.
class CountsMerge : public rocksdb::AssociativeMergeOperator {
 public:
  bool Merge(const rocksdb::Slice&, const rocksdb::Slice* existing, const rocksdb::Slice& value,
             std::string* merged, rocksdb::Logger*) const override {
    const auto add = DecodeCounts(value);
    if (!add) return false;  // a corrupt operand: RocksDB reports it rather than guess
    Counts sum = *add;
    if (existing != nullptr) {
      const auto base = DecodeCounts(*existing);
      if (!base) return false;
      sum.messages += base->messages;
      sum.bytes += base->bytes;
      sum.last_seq = std::max(sum.last_seq, base->last_seq);
    }
    *merged = EncodeCounts(sum.messages, sum.bytes, sum.last_seq);
    return true;
  }
  const char* Name() const override { return "mesh.CountsMerge"; }
};

// Forgets counts that came down to zero: a mailbox emptied, a sender that holds nothing. A
// mailbox made again later starts its seqs above the clock's, never below its old ones.
class ZeroCountsFilter : public rocksdb::CompactionFilter {
 public:
  bool Filter(int, const rocksdb::Slice& key, const rocksdb::Slice& value, std::string*,
              bool*) const override {
    if (key.empty() ||
        (key[0] != kMailboxCounts && key[0] != kHeldCounts && key[0] != kSenderCounts)) {
      return false;
    }
    const auto counts = DecodeCounts(value);
    return counts && counts->messages == 0 && counts->bytes == 0;
  }
  const char* Name() const override { return "mesh.ZeroCountsFilter"; }
};

std::string CountsKey(char kind, std::string_view first, std::string_view second = {}) {
  std::string key;
  key.reserve(1 + first.size() + second.size());
  key.push_back(kind);
  key.append(first).append(second);
  return key;
}

std::string ExpiryKey(uint64_t expire_at_ms, std::string_view recipient, uint64_t seq) {
  std::string key;
  key.reserve(kExpiryKeySize);
  AppendBigEndian(key, expire_at_ms);
  key.append(recipient);
  AppendBigEndian(key, seq);
  return key;
}

std::string ExpiryValue(std::string_view from, uint64_t bytes) {
  std::string value(from);
  value.resize(kIdSize, '\0');
  AppendBigEndian(value, bytes);
  return value;
}

std::string DedupKey(std::string_view from, std::string_view id) {
  std::string key;
  key.reserve(from.size() + id.size());
  key.append(from).append(id);
  return key;
}

}  // namespace

Cursor ExpiryCursorAt(uint64_t expire_at_ms) {
  Cursor cursor;
  AppendBigEndian(cursor.key, expire_at_ms);  // sorts before every full key of that time
  return cursor;
}

std::string MailboxKey(std::string_view recipient, uint64_t seq) {
  std::string key(recipient);
  AppendBigEndian(key, seq);
  return key;
}

absl::StatusOr<SyncPolicy> ParseSyncPolicy(std::string_view name) {
  if (name == "always") return SyncPolicy::kAlways;
  if (name == "batch") return SyncPolicy::kBatch;
  if (name == "none") return SyncPolicy::kNone;
  return absl::InvalidArgumentError(
      absl::StrCat("store sync policy '", std::string(name), "' is not always, batch or none"));
}

const char* SyncPolicyName(SyncPolicy policy) {
  switch (policy) {
    case SyncPolicy::kAlways:
      return "always";
    case SyncPolicy::kBatch:
      return "batch";
    case SyncPolicy::kNone:
      return "none";
  }
  return "?";
}

size_t Batch::PutMessage(std::string_view recipient, uint64_t seq,
                         const mesh::v1::StoredEnvelope& envelope) {
  Op op{Family::kMailbox, false, MailboxKey(recipient, seq), {}};
  envelope.SerializeToString(&op.value);
  const size_t size = op.key.size() + op.value.size();
  ops_.push_back(std::move(op));
  const MessageRef message = MessageRef::Of(envelope);
  ops_.push_back({Family::kExpiry, false, ExpiryKey(message.expire_at_ms, recipient, seq),
                  ExpiryValue(message.from, message.bytes)});
  Count(recipient, seq, message, +1);
  return size;
}

void Batch::DeleteMessage(std::string_view recipient, uint64_t seq, const MessageRef& message) {
  ops_.push_back({Family::kMailbox, true, MailboxKey(recipient, seq), {}});
  ops_.push_back({Family::kExpiry, true, ExpiryKey(message.expire_at_ms, recipient, seq), {}});
  Count(recipient, 0, message, -1);
}

void Batch::PutHead(std::string_view recipient, uint64_t seq) {
  std::string value;
  AppendBigEndian(value, seq);
  ops_.push_back({Family::kMeta, false, CountsKey(kMailboxHead, recipient), std::move(value)});
}

void Batch::DeleteHead(std::string_view recipient) {
  ops_.push_back({Family::kMeta, true, CountsKey(kMailboxHead, recipient), {}});
}

void Batch::Count(std::string_view recipient, uint64_t seq, const MessageRef& message,
                  int64_t sign) {
  const int64_t bytes = sign * static_cast<int64_t>(message.bytes);
  AddCount(kMailboxCounts, recipient, {}, sign, bytes, seq);
  AddCount(kHeldCounts, recipient, message.from, sign, bytes, 0);
  AddCount(kSenderCounts, message.from, {}, sign, bytes, 0);
}

// A batch's deltas on one key are added up here: the deletes of one DeliverAck share their
// mailbox and mostly a few senders.
void Batch::AddCount(char kind, std::string_view first, std::string_view second, int64_t messages,
                     int64_t bytes, uint64_t last_seq) {
  CountDelta delta{};
  delta.key[0] = kind;
  const size_t first_size = std::min(first.size(), kIdSize);
  const size_t second_size = std::min(second.size(), kIdSize);
  std::copy_n(first.data(), first_size, delta.key.data() + 1);
  std::copy_n(second.data(), second_size, delta.key.data() + 1 + first_size);
  delta.key_size = static_cast<uint8_t>(1 + first_size + second_size);
  constexpr size_t kSearched = 32;  // the last few: a large batch's keys are mostly distinct
  for (size_t i = counts_.size(), seen = 0; i > 0 && seen < kSearched; --i, ++seen) {
    CountDelta& same = counts_[i - 1];
    if (same.Key() != delta.Key()) continue;
    same.messages += messages;
    same.bytes += bytes;
    same.last_seq = std::max(same.last_seq, last_seq);
    return;
  }
  delta.messages = messages;
  delta.bytes = bytes;
  delta.last_seq = last_seq;
  counts_.push_back(delta);
}

void Batch::PutDedup(std::string_view from, std::string_view id,
                     const mesh::v1::DedupRecord& record) {
  Op op{Family::kDedup, false, DedupKey(from, id), {}};
  record.SerializeToString(&op.value);
  ops_.push_back(std::move(op));
}

void Batch::DeleteDedup(std::string_view from, std::string_view id) {
  ops_.push_back({Family::kDedup, true, DedupKey(from, id), {}});
}

namespace {

// Opens the store's RocksDB with its options and families (default, mailbox, outbox, dedup,
// meta). Store::Open and the raw baseline of benchmarks (store_testing.h) both open it here.
rocksdb::Status OpenRocks(const StoreOptions& options, rocksdb::Env* env,
                          const rocksdb::CompactionFilter* dedup_filter,
                          std::vector<rocksdb::ColumnFamilyHandle*>* handles, rocksdb::DB** db) {
  rocksdb::DBOptions db_options;
  if (env != nullptr) db_options.env = env;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = 2;
  db_options.keep_log_file_num = 4;
  // Memory and restarts independent of what the store holds: memtables of all families share
  // one budget, and the WAL a restart after a crash replays is bounded (a clean stop flushes).
  db_options.db_write_buffer_size = options.memtable_bytes;
  db_options.max_total_wal_size = 2 * options.memtable_bytes;

  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  rocksdb::ColumnFamilyOptions mailbox_options;
  // Seeks stay inside one mailbox: a prefix bloom filter skips files without it.
  mailbox_options.prefix_extractor.reset(rocksdb::NewFixedPrefixTransform(kIdSize));
  mailbox_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  rocksdb::ColumnFamilyOptions dedup_options;
  dedup_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  dedup_options.compaction_filter = dedup_filter;
  // Nearly every lookup is for a key that is not there (a first Send): a memtable bloom
  // answers those without walking the skiplist.
  dedup_options.memtable_prefix_bloom_size_ratio = 0.05;
  dedup_options.memtable_whole_key_filtering = true;
  rocksdb::ColumnFamilyOptions plain;
  rocksdb::ColumnFamilyOptions expiry_options;
  // Expiry times arrive nearly in order: the memtable inserts each from where the last went,
  // not from the top. (The top half of a time in ms changes every 50 days: one hint, not one
  // per mailbox or sender, which would cost memtable space per key at rest.)
  expiry_options.memtable_insert_with_hint_prefix_extractor.reset(
      rocksdb::NewFixedPrefixTransform(4));
  static const ZeroCountsFilter zero_counts;
  rocksdb::ColumnFamilyOptions meta_options;
  meta_options.merge_operator = std::make_shared<CountsMerge>();
  meta_options.compaction_filter = &zero_counts;
  meta_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));

  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, plain},
      {"mailbox", mailbox_options},
      {"outbox", mailbox_options},
      {"dedup", dedup_options},
      {"meta", meta_options},
      {"expiry", expiry_options}};
  return rocksdb::DB::Open(db_options, options.path, families, handles, db);
}

}  // namespace

struct Store::Db {
  // A test's file system (store_testing.h) wrapped as an Env; null on RocksDB's default.
  // Declared before `db`, so it is destroyed after the database that uses it.
  std::unique_ptr<rocksdb::Env> env;
  std::unique_ptr<rocksdb::DB> db;
  rocksdb::ColumnFamilyHandle* mailbox = nullptr;
  rocksdb::ColumnFamilyHandle* outbox = nullptr;
  rocksdb::ColumnFamilyHandle* dedup = nullptr;
  rocksdb::ColumnFamilyHandle* meta = nullptr;
  rocksdb::ColumnFamilyHandle* expiry = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  ExpiredDedupFilter dedup_filter;

  // A write group's count deltas, added up per key: one merge per mailbox and sender in a
  // write, not one per message.
  using CountSums = absl::flat_hash_map<std::string, Counts>;

  // Appends `batch`'s changes to `out`, in order; its count deltas go to `sums` if given (to
  // be written with `out` by WriteCounts), else straight into `out`.
  void Add(const Batch& batch, rocksdb::WriteBatch& out, CountSums* sums) const {
    for (const auto& op : batch.ops_) {
      auto* family = op.family == Batch::Family::kMailbox ? mailbox
                     : op.family == Batch::Family::kDedup ? dedup
                     : op.family == Batch::Family::kMeta  ? meta
                                                          : expiry;
      if (op.is_delete) {
        out.Delete(family, op.key);
      } else {
        out.Put(family, op.key, op.value);
      }
    }
    for (const auto& delta : batch.counts_) {
      if (sums == nullptr) {
        out.Merge(meta, rocksdb::Slice(delta.Key().data(), delta.Key().size()),
                  EncodeCounts(static_cast<uint64_t>(delta.messages),
                               static_cast<uint64_t>(delta.bytes), delta.last_seq));
        continue;
      }
      Counts& sum = (*sums)[absl::string_view(delta.Key().data(), delta.Key().size())];
      sum.messages += static_cast<uint64_t>(delta.messages);
      sum.bytes += static_cast<uint64_t>(delta.bytes);
      sum.last_seq = std::max(sum.last_seq, delta.last_seq);
    }
  }

  void WriteCounts(CountSums& sums, rocksdb::WriteBatch& out) const {
    for (const auto& [key, sum] : sums) {
      if (sum.messages == 0 && sum.bytes == 0 && sum.last_seq == 0) continue;  // came and went
      out.Merge(meta, key, EncodeCounts(sum.messages, sum.bytes, sum.last_seq));
    }
    sums.clear();
  }

  // Format 1 kept no counts and no expiry index: both are built from the messages, once.
  // Every write is a Put of a total, so a migration cut short by a crash is simply done again.
  absl::Status MigrateFromFormatOne();

  // The writer's queue: commits append to `open`; the writer swaps it out and writes it.
  std::mutex mu;
  std::condition_variable wake;
  rocksdb::WriteBatch open;
  CountSums open_counts;
  struct Waiter {
    Durability durability;
    Done done;
    Batch batch;  // lazy commits only: written again if the store resumes after a failed write
  };
  std::vector<Waiter> open_waiters;
  bool stopping = false;
  std::thread writer;
};

Store::Store(const StoreOptions& options) : options_(options), db_(std::make_unique<Db>()) {}

namespace internal {

struct StoreOpener {
  // `fs` null: RocksDB's default file system (Store::Open).
  static absl::StatusOr<std::unique_ptr<Store>> Open(const StoreOptions& options,
                                                     std::shared_ptr<rocksdb::FileSystem> fs);
};

absl::StatusOr<std::unique_ptr<Store>> StoreOpener::Open(const StoreOptions& options,
                                                         std::shared_ptr<rocksdb::FileSystem> fs) {
  std::unique_ptr<Store> store(new Store(options));
  Store::Db& d = *store->db_;

  if (fs) d.env = rocksdb::NewCompositeEnv(fs);
  rocksdb::DB* raw = nullptr;
  auto status = OpenRocks(options, d.env.get(), &d.dedup_filter, &d.handles, &raw);
  if (!status.ok()) return FromRocks(status, absl::StrCat("open ", options.path));
  d.db.reset(raw);
  d.mailbox = d.handles[1];
  d.outbox = d.handles[2];
  d.dedup = d.handles[3];
  d.meta = d.handles[4];
  d.expiry = d.handles[5];

  std::string format;
  status = d.db->Get(rocksdb::ReadOptions(), d.meta, kFormatKey, &format);
  if (status.IsNotFound()) {
    rocksdb::WriteOptions sync;
    sync.sync = true;
    status = d.db->Put(sync, d.meta, kFormatKey, kFormatVersion);
    if (!status.ok()) return FromRocks(status, "write format version");
  } else if (!status.ok()) {
    return FromRocks(status, "read format version");
  } else if (format == kFormatBeforeCounts) {
    if (absl::Status migrated = d.MigrateFromFormatOne(); !migrated.ok()) return migrated;
  } else if (format != kFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "store ", options.path, " has format ", format, "; this broker reads ", kFormatVersion));
  }
  store->CheckSpace();
  d.writer = std::thread([s = store.get()] { s->WriterLoop(); });
  return store;
}

}  // namespace internal

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const StoreOptions& options) {
  return internal::StoreOpener::Open(options, nullptr);
}

absl::StatusOr<std::unique_ptr<Store>> testing::OpenWithFileSystem(
    const StoreOptions& options, std::shared_ptr<rocksdb::FileSystem> fs) {
  return internal::StoreOpener::Open(options, std::move(fs));
}

Store::~Store() {
  if (!db_->db) return;
  {
    std::lock_guard lock(db_->mu);
    db_->stopping = true;
  }
  db_->wake.notify_one();
  if (db_->writer.joinable()) db_->writer.join();
  // The next start then replays no WAL: it reads counts, whatever the payloads written.
  if (available()) {
    rocksdb::FlushOptions flush;
    flush.allow_write_stall = true;
    db_->db->Flush(flush, db_->handles);
  }
  for (auto* handle : db_->handles) db_->db->DestroyColumnFamilyHandle(handle);
  db_->db->Close();
}

void Store::Commit(Batch batch, Durability durability, Done done) {
  Db& d = *db_;
  {
    std::lock_guard lock(d.mu);
    d.Add(batch, d.open, &d.open_counts);
    d.open_waiters.push_back({durability, std::move(done),
                              durability == Durability::kLazy ? std::move(batch) : Batch{}});
  }
  stats_.commits.fetch_add(1, std::memory_order_relaxed);
  if (durability == Durability::kDurable) {
    stats_.durable_commits.fetch_add(1, std::memory_order_relaxed);
  }
  d.wake.notify_one();
}

void Store::WriterLoop() {
  Db& d = *db_;
  const bool sync_each_write = options_.sync == SyncPolicy::kAlways;
  const bool batch_sync = options_.sync == SyncPolicy::kBatch;
  std::vector<Db::Waiter> unsynced;  // batch policy: written, waiting for the fsync
  Clock::time_point last_sync{};
  rocksdb::WriteBatch writing;
  Db::CountSums counts;
  std::vector<Db::Waiter> waiters;
  // Lazy commits of failed writes and those made since: written once the store resumes.
  std::vector<Db::Waiter> held;
  std::chrono::milliseconds backoff = kResumeFirst;
  Clock::time_point next_resume{};

  auto finish = [](std::vector<Db::Waiter>& list, const absl::Status& status) {
    for (auto& waiter : list) waiter.done(status);
    list.clear();
  };
  // A write or sync failed: unavailable until a DB::Resume succeeds.
  auto failed = [&] {
    stats_.failed_writes.fetch_add(1, std::memory_order_relaxed);
    if (!available()) return;
    const auto now = Clock::now();
    unavailable_since_ns_.store(
        std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count(),
        std::memory_order_relaxed);
    available_.store(false, std::memory_order_relaxed);
    backoff = kResumeFirst;
    next_resume = now + backoff;
  };
  // Durable commits get `status` (their senders still own the messages); lazy ones wait.
  auto refuse = [&](std::vector<Db::Waiter>& list, const absl::Status& status) {
    for (auto& waiter : list) {
      if (waiter.durability == Durability::kLazy) {
        held.push_back(std::move(waiter));
      } else {
        waiter.done(status);
      }
    }
    list.clear();
  };
  auto write = [&](rocksdb::WriteBatch& batch, const rocksdb::WriteOptions& write_options) {
    const auto write_started = Clock::now();
    absl::Status status = FromRocks(d.db->Write(write_options, &batch), "write");
    if (options_.on_write) options_.on_write(MicrosSince(write_started));
    stats_.writes.fetch_add(1, std::memory_order_relaxed);
    if (sync_each_write) stats_.syncs.fetch_add(1, std::memory_order_relaxed);
    batch.Clear();
    return status;
  };

  for (;;) {
    bool stopping = false;
    {
      std::unique_lock lock(d.mu);
      auto ready = [&] {
        return d.stopping || d.open.Count() > 0 || !d.open_waiters.empty() ||
               !d.open_counts.empty();
      };
      std::optional<Clock::time_point> until;
      if (!unsynced.empty()) until = last_sync + options_.sync_interval;
      if (!available()) until = std::min(until.value_or(next_resume), next_resume);
      if (until) {
        d.wake.wait_until(lock, *until, ready);
      } else {
        d.wake.wait(lock, ready);
      }
      stopping = d.stopping;
      if (stopping && d.open_waiters.empty() && unsynced.empty()) {
        lock.unlock();
        finish(held, absl::UnavailableError("store closed before it could write again"));
        return;
      }
      std::swap(writing, d.open);
      std::swap(waiters, d.open_waiters);
      std::swap(counts, d.open_counts);
    }
    d.WriteCounts(counts, writing);
    const auto started = Clock::now();
    if (!available() && started >= next_resume) {
      // Flushes the memtables and clears RocksDB's background error; Busy while RocksDB's own
      // recovery (which it starts for a full disk) is under way.
      if (d.db->Resume().ok()) {
        available_.store(true, std::memory_order_relaxed);
        stats_.resumes.fetch_add(1, std::memory_order_relaxed);
      } else {
        backoff = std::min(backoff * 2, kResumeMax);
        next_resume = Clock::now() + backoff;
      }
    }
    rocksdb::WriteOptions write_options;
    write_options.sync = sync_each_write;
    if (available() && !held.empty()) {
      // Before anything newer, so deletes keep their order with the writes after them.
      rocksdb::WriteBatch retry;
      for (const auto& waiter : held) d.Add(waiter.batch, retry, nullptr);
      if (absl::Status status = write(retry, write_options); status.ok()) {
        finish(held, status);
      } else {
        failed();
        finish(unsynced, status);
      }
    }
    if (!available()) {
      writing.Clear();
      refuse(waiters, absl::UnavailableError(
                          "store unavailable: a write failed; writing again once it resumes"));
      continue;
    }
    if (!waiters.empty()) {
      absl::Status status = absl::OkStatus();
      if (writing.Count() > 0) status = write(writing, write_options);
      writing.Clear();
      if (!status.ok()) {
        failed();
        finish(unsynced, status);
        refuse(waiters, status);
        continue;
      }
      for (auto& waiter : waiters) {
        if (batch_sync && waiter.durability == Durability::kDurable) {
          unsynced.push_back(std::move(waiter));
        } else {
          waiter.done(absl::OkStatus());
        }
      }
      waiters.clear();
    }
    const auto now = Clock::now();
    if (!unsynced.empty() && (now >= last_sync + options_.sync_interval || stopping)) {
      const auto sync_started = Clock::now();
      absl::Status status = FromRocks(d.db->SyncWAL(), "sync");
      stats_.syncs.fetch_add(1, std::memory_order_relaxed);
      last_sync = Clock::now();
      if (options_.on_sync) options_.on_sync(MicrosSince(sync_started));
      if (!status.ok()) failed();
      finish(unsynced, status);
    }
    stats_.write_micros.fetch_add(
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started).count(),
        std::memory_order_relaxed);
  }
}

std::chrono::steady_clock::duration Store::UnavailableFor() const {
  if (available()) return {};
  const auto since = Clock::time_point(
      std::chrono::nanoseconds(unavailable_since_ns_.load(std::memory_order_relaxed)));
  return std::max(Clock::now() - since, Clock::duration::zero());
}

void Store::CheckSpace() {
  if (options_.min_free_fraction <= 0) return;
  struct statvfs volume {};
  // Unreadable (the path went away?): the last answer stands.
  if (statvfs(options_.path.c_str(), &volume) != 0 || volume.f_blocks == 0) return;
  const double free = static_cast<double>(volume.f_bavail) / static_cast<double>(volume.f_blocks);
  const double mark = options_.min_free_fraction + (full() ? kFreeHysteresis : 0.0);
  full_.store(free < mark, std::memory_order_relaxed);
}

absl::StatusOr<std::vector<StoredMessage>> Store::ReadMailbox(std::string_view recipient,
                                                              uint64_t from_seq, size_t max_count,
                                                              size_t max_bytes) const {
  std::vector<StoredMessage> out;
  const std::string lower = MailboxKey(recipient, from_seq);
  const std::string upper = MailboxKey(recipient, UINT64_MAX);
  rocksdb::Slice lower_slice(lower), upper_slice(upper);
  rocksdb::ReadOptions read;
  read.iterate_lower_bound = &lower_slice;
  read.iterate_upper_bound = &upper_slice;
  read.prefix_same_as_start = true;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(read, db_->mailbox));
  size_t bytes = 0;
  for (it->Seek(lower_slice); it->Valid() && out.size() < max_count; it->Next()) {
    const rocksdb::Slice key = it->key();
    const rocksdb::Slice value = it->value();
    const size_t size = key.size() + value.size();
    if (!out.empty() && bytes + size > max_bytes) break;
    StoredMessage message;
    message.seq = ReadBigEndian(key.data() + kIdSize);
    message.stored_bytes = size;
    if (!message.envelope.ParseFromArray(value.data(), static_cast<int>(value.size())) ||
        message.envelope.version() != kEnvelopeVersion) {
      return absl::DataLossError(
          absl::StrCat("stored envelope at seq ", message.seq, " cannot be read"));
    }
    bytes += size;
    out.push_back(std::move(message));
  }
  if (!it->status().ok()) return FromRocks(it->status(), "read mailbox");
  stats_.messages_read.fetch_add(out.size(), std::memory_order_relaxed);
  return out;
}

absl::StatusOr<std::optional<mesh::v1::DedupRecord>> Store::GetDedup(std::string_view from,
                                                                     std::string_view id,
                                                                     uint64_t now_ms) const {
  const std::string key = DedupKey(from, id);
  rocksdb::PinnableSlice value;
  auto status = db_->db->Get(rocksdb::ReadOptions(), db_->dedup, key, &value);
  if (status.IsNotFound()) return std::nullopt;
  if (!status.ok()) return FromRocks(status, "read dedup");
  mesh::v1::DedupRecord record;
  if (!record.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
    return absl::DataLossError("stored dedup entry cannot be read");
  }
  if (record.expire_at_ms() <= now_ms) return std::nullopt;
  return record;
}

absl::Status Store::ForEachMessage(const Visitor& visit) const {
  rocksdb::ReadOptions read;
  read.total_order_seek = true;  // across mailboxes, not within one prefix
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(read, db_->mailbox));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const rocksdb::Slice key = it->key();
    if (key.size() != kIdSize + 8) return absl::DataLossError("malformed mailbox key");
    StoredMessage message;
    message.seq = ReadBigEndian(key.data() + kIdSize);
    message.stored_bytes = key.size() + it->value().size();
    if (!message.envelope.ParseFromArray(it->value().data(),
                                         static_cast<int>(it->value().size())) ||
        message.envelope.version() != kEnvelopeVersion) {
      return absl::DataLossError(
          absl::StrCat("stored envelope at seq ", message.seq, " cannot be read"));
    }
    stats_.messages_read.fetch_add(1, std::memory_order_relaxed);
    visit(std::string_view(key.data(), kIdSize), message);
  }
  return FromRocks(it->status(), "scan mailboxes");
}

absl::Status Store::ForEachCount(const CountVisitors& visit) const {
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), db_->meta));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const rocksdb::Slice key = it->key();
    if (key.empty()) continue;
    const char kind = key[0];
    if (kind == kHeldCounts && !visit.held) {
      it->Seek(std::string(1, kHeldCounts + 1));  // past every sender-in-mailbox count
      if (!it->Valid()) break;
      it->Prev();
      continue;
    }
    const size_t expected = kind == kHeldCounts ? 1 + 2 * kIdSize : 1 + kIdSize;
    if (kind != kMailboxCounts && kind != kHeldCounts && kind != kSenderCounts) continue;
    const auto counts = DecodeCounts(it->value());
    if (key.size() != expected || !counts) {
      return absl::DataLossError("malformed count in the store's meta family");
    }
    if (counts->messages == 0 && counts->bytes == 0) continue;
    const std::string_view first(key.data() + 1, kIdSize);
    if (kind == kMailboxCounts && visit.mailbox) visit.mailbox(first, *counts);
    if (kind == kHeldCounts && visit.held) {
      visit.held(first, std::string_view(key.data() + 1 + kIdSize, kIdSize), *counts);
    }
    if (kind == kSenderCounts && visit.sender) visit.sender(first, *counts);
  }
  return FromRocks(it->status(), "scan counts");
}

absl::StatusOr<Counts> Store::MailboxCounts(std::string_view recipient) const {
  std::string value;
  auto status =
      db_->db->Get(rocksdb::ReadOptions(), db_->meta, CountsKey(kMailboxCounts, recipient), &value);
  if (status.IsNotFound()) return Counts{};
  if (!status.ok()) return FromRocks(status, "read counts");
  const auto counts = DecodeCounts(value);
  if (!counts) return absl::DataLossError("malformed mailbox count");
  return *counts;
}

absl::StatusOr<Store::HeldBySender> Store::HeldIn(std::string_view recipient) const {
  HeldBySender out;
  const std::string prefix = CountsKey(kHeldCounts, recipient);
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), db_->meta));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    const auto counts = DecodeCounts(it->value());
    if (it->key().size() != prefix.size() + kIdSize || !counts) {
      return absl::DataLossError("malformed count in the store's meta family");
    }
    if (counts->messages == 0 && counts->bytes == 0) continue;
    out.emplace_back(std::string(it->key().data() + prefix.size(), kIdSize), *counts);
  }
  if (!it->status().ok()) return FromRocks(it->status(), "read counts");
  return out;
}

absl::StatusOr<uint64_t> Store::MailboxHead(std::string_view recipient) const {
  std::string value;
  auto status =
      db_->db->Get(rocksdb::ReadOptions(), db_->meta, CountsKey(kMailboxHead, recipient), &value);
  if (status.IsNotFound()) return 0;
  if (!status.ok()) return FromRocks(status, "read mailbox head");
  if (value.size() != 8) return absl::DataLossError("malformed mailbox head");
  return ReadBigEndian(value.data());
}

absl::StatusOr<bool> Store::HasMessage(std::string_view recipient, uint64_t seq) const {
  rocksdb::PinnableSlice value;
  auto status =
      db_->db->Get(rocksdb::ReadOptions(), db_->mailbox, MailboxKey(recipient, seq), &value);
  if (status.IsNotFound()) return false;
  if (!status.ok()) return FromRocks(status, "read mailbox");
  return true;
}

absl::StatusOr<std::vector<std::string>> Store::ReadMailboxIds(Cursor& cursor,
                                                               size_t max_count) const {
  std::vector<std::string> out;
  const std::string upper(1, kMailboxCounts + 1);
  rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions read;
  read.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(read, db_->meta));
  it->Seek(cursor.key.empty() ? std::string(1, kMailboxCounts) : cursor.key);
  if (it->Valid() && !cursor.key.empty() && it->key() == rocksdb::Slice(cursor.key)) it->Next();
  for (; it->Valid() && out.size() < max_count; it->Next()) {
    const auto counts = DecodeCounts(it->value());
    if (it->key().size() != 1 + kIdSize || !counts) {
      return absl::DataLossError("malformed count in the store's meta family");
    }
    cursor.key = it->key().ToString();
    if (counts->messages == 0 && counts->bytes == 0) continue;
    out.emplace_back(it->key().data() + 1, kIdSize);
  }
  if (!it->status().ok()) return FromRocks(it->status(), "read counts");
  return out;
}

absl::StatusOr<std::vector<ExpiringMessage>> Store::ReadExpired(uint64_t until_ms, Cursor& cursor,
                                                                size_t max_count) const {
  std::vector<ExpiringMessage> out;
  // Keys sort by expiry time first: everything due lies below (until_ms + 1) ‖ ...
  std::string upper;
  AppendBigEndian(upper, until_ms + 1);
  rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions read;
  read.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(read, db_->expiry));
  it->Seek(cursor.key);
  if (it->Valid() && !cursor.key.empty() && it->key() == rocksdb::Slice(cursor.key)) it->Next();
  for (; it->Valid() && out.size() < max_count; it->Next()) {
    const rocksdb::Slice key = it->key();
    const rocksdb::Slice value = it->value();
    if (key.size() != kExpiryKeySize || value.size() != kExpiryValueSize) {
      return absl::DataLossError("malformed expiry index entry");
    }
    ExpiringMessage message;
    message.expire_at_ms = ReadBigEndian(key.data());
    message.recipient.assign(key.data() + 8, kIdSize);
    message.seq = ReadBigEndian(key.data() + 8 + kIdSize);
    message.from.assign(value.data(), kIdSize);
    message.bytes = ReadBigEndian(value.data() + kIdSize);
    cursor.key = key.ToString();
    out.push_back(std::move(message));
  }
  if (!it->status().ok()) return FromRocks(it->status(), "read expiry index");
  return out;
}

absl::Status Store::Db::MigrateFromFormatOne() {
  CountSums totals;
  rocksdb::WriteBatch batch;
  rocksdb::WriteOptions write_options;
  auto flush = [&]() -> absl::Status {
    if (batch.Count() == 0) return absl::OkStatus();
    absl::Status status = FromRocks(db->Write(write_options, &batch), "migrate");
    batch.Clear();
    return status;
  };
  rocksdb::ReadOptions read;
  read.total_order_seek = true;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(read, mailbox));
  uint64_t messages = 0;
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const rocksdb::Slice key = it->key();
    mesh::v1::StoredEnvelope envelope;
    if (key.size() != kIdSize + 8 ||
        !envelope.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError("a format 1 message cannot be read: not migrated");
    }
    const std::string_view recipient(key.data(), kIdSize);
    const uint64_t seq = ReadBigEndian(key.data() + kIdSize);
    const MessageRef message = MessageRef::Of(envelope);
    for (std::string counts_key :
         {CountsKey(kMailboxCounts, recipient), CountsKey(kHeldCounts, recipient, message.from),
          CountsKey(kSenderCounts, message.from)}) {
      Counts& sum = totals[std::move(counts_key)];
      ++sum.messages;
      sum.bytes += message.bytes;
    }
    Counts& mailbox_sum = totals[CountsKey(kMailboxCounts, recipient)];
    mailbox_sum.last_seq = std::max(mailbox_sum.last_seq, seq);
    batch.Put(expiry, ExpiryKey(message.expire_at_ms, recipient, seq),
              ExpiryValue(message.from, message.bytes));
    if (++messages % 4096 == 0) {
      if (absl::Status status = flush(); !status.ok()) return status;
    }
  }
  if (!it->status().ok()) return FromRocks(it->status(), "migrate");
  for (const auto& [key, sum] : totals) {
    batch.Put(meta, key, EncodeCounts(sum.messages, sum.bytes, sum.last_seq));
    if (batch.Count() >= 4096) {
      if (absl::Status status = flush(); !status.ok()) return status;
    }
  }
  // Last, and synced: until the version says 2 the migration is done again from the start.
  batch.Put(meta, kFormatKey, kFormatVersion);
  write_options.sync = true;
  return flush();
}

uint64_t Store::EstimatedLiveBytes() const {
  // Flushed data alone reads 0 until the first memtable flush: memtables count too.
  uint64_t on_disk = 0;
  uint64_t in_memory = 0;
  db_->db->GetIntProperty(db_->mailbox, "rocksdb.estimate-live-data-size", &on_disk);
  db_->db->GetIntProperty(db_->mailbox, "rocksdb.cur-size-all-mem-tables", &in_memory);
  return on_disk + in_memory;
}

namespace testing {

struct RawStoreDb::Impl {
  ExpiredDedupFilter dedup_filter;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  std::unique_ptr<rocksdb::DB> db;
};

absl::StatusOr<std::unique_ptr<RawStoreDb>> RawStoreDb::Open(const StoreOptions& options) {
  std::unique_ptr<RawStoreDb> raw(new RawStoreDb);
  raw->impl_ = std::make_unique<Impl>();
  rocksdb::DB* db = nullptr;
  auto status = OpenRocks(options, nullptr, &raw->impl_->dedup_filter, &raw->impl_->handles, &db);
  if (!status.ok()) return FromRocks(status, absl::StrCat("open ", options.path));
  raw->impl_->db.reset(db);
  return raw;
}

RawStoreDb::~RawStoreDb() {
  if (!impl_ || !impl_->db) return;
  for (auto* handle : impl_->handles) impl_->db->DestroyColumnFamilyHandle(handle);
  impl_->db->Close();
}

rocksdb::DB* RawStoreDb::db() const { return impl_->db.get(); }
rocksdb::ColumnFamilyHandle* RawStoreDb::mailbox() const { return impl_->handles[1]; }
rocksdb::ColumnFamilyHandle* RawStoreDb::dedup() const { return impl_->handles[3]; }

}  // namespace testing

}  // namespace mesh::store
