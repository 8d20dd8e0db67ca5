// The store against plain RocksDB doing the same writes and reads, so its overhead (Batch ops,
// the group-commit writer thread, completion callbacks) reads as a ratio per sync policy: enqueue
// (a message and its dedup entry) and drain (read a mailbox in order, delete what was read). Then
// one ReadMailbox after a million deletes, from seq 0 and from the head: why the broker seeks
// from the head of a mailbox rather than from its start.
#include <benchmark/benchmark.h>
#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "store/store.h"
#include "store/store_testing.h"

namespace {

using mesh::store::Batch;
using mesh::store::MailboxKey;
using mesh::store::MessageRef;
using mesh::store::Store;
using mesh::store::StoreOptions;
using mesh::store::SyncPolicy;

constexpr size_t kPayloadSize = 256;
// Enqueue: messages spread over this many mailboxes, as the broker's writes are.
constexpr uint64_t kMailboxes = 64;
// Enqueue: messages written per benchmark iteration, and the commits the store is kept fed
// with. The raw baseline puts MESH_RAW_WRITE_SIZE messages (default 64) in one RocksDB write,
// a stand-in for one group commit. The store forms its own writes from whatever is in flight:
// its msgs_per_write counter says how large they came out, and scripts/bench-offline.sh runs
// the baseline at the size a broker's own run produced.
constexpr uint64_t kEnqueueMessages = 16384;
constexpr uint64_t kWindow = 1024;

uint64_t RawWriteSize() {
  static const uint64_t size = [] {
    const char* text = std::getenv("MESH_RAW_WRITE_SIZE");
    const uint64_t n = text != nullptr ? std::strtoull(text, nullptr, 10) : 0;
    return n > 0 ? std::min(n, kEnqueueMessages) : uint64_t{64};
  }();
  return size;
}
// Drain: one mailbox of this many messages, read and deleted kChunk at a time.
constexpr uint64_t kDrainMessages = 100000;
constexpr size_t kChunk = 256;
constexpr size_t kChunkBytes = size_t{4} << 20;
// Seek: entries written and then deleted before the timed read. Filling and deleting them
// through the store takes ~3.5 s on the reference VM (the fill_s counter).
constexpr uint64_t kSeekEntries = 1000000;
// Fills (outside timing): entries per commit, and commits in flight.
constexpr uint64_t kFillBatch = 1000;
constexpr uint64_t kFillWindow = 16;

uint64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// `size` bytes: `tag`, then n big-endian in the last 8.
std::string NumberedId(size_t size, char tag, uint64_t n) {
  std::string id(size, tag);
  for (size_t i = 0; i < 8; ++i) id[size - 1 - i] = static_cast<char>(n >> (8 * i));
  return id;
}

std::string Recipient(uint64_t n) { return NumberedId(mesh::store::kIdSize, 'r', n); }
std::string MessageId(uint64_t n) { return NumberedId(mesh::store::kMessageIdSize, 'i', n); }
const std::string kSender(mesh::store::kIdSize, 's');

mesh::v1::StoredEnvelope Envelope(const std::string& recipient, uint64_t n) {
  mesh::v1::StoredEnvelope envelope;
  envelope.set_version(mesh::store::kEnvelopeVersion);
  envelope.set_from(kSender);
  envelope.set_to(recipient);
  envelope.set_id(MessageId(n));
  envelope.set_payload(std::string(kPayloadSize, '\xab'));
  envelope.set_sent_at_ms(WallMs());
  envelope.set_expire_at_ms(WallMs() + 3600 * 1000);
  envelope.set_ingress_node(std::string(mesh::store::kIdSize, 'n'));
  return envelope;
}

mesh::v1::DedupRecord Dedup() {
  mesh::v1::DedupRecord record;
  record.set_digest(std::string(16, '\x5d'));  // a crypto::Fingerprint
  record.set_expire_at_ms(WallMs() + 3600 * 1000);
  return record;
}

// The enqueue benchmarks' messages: message n is entry n / kMailboxes of mailbox n % kMailboxes.
class MessageStream {
 public:
  MessageStream() {
    for (uint64_t i = 0; i < kMailboxes; ++i) recipients_.push_back(Recipient(i));
  }
  // Makes envelope() message n.
  void Prepare(uint64_t n) {
    envelope_.set_to(recipient(n));
    envelope_.set_id(MessageId(n));
  }
  const std::string& recipient(uint64_t n) const { return recipients_[n % kMailboxes]; }
  static uint64_t seq(uint64_t n) { return n / kMailboxes; }
  const mesh::v1::StoredEnvelope& envelope() const { return envelope_; }
  const mesh::v1::DedupRecord& dedup() const { return dedup_; }

 private:
  std::vector<std::string> recipients_;
  mesh::v1::StoredEnvelope envelope_ = Envelope(Recipient(0), 0);
  const mesh::v1::DedupRecord dedup_ = Dedup();
};

// A fresh directory under /tmp, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string pattern = "/tmp/store_bench.XXXXXX";
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }  // empty if it could not be made

 private:
  std::string path_;
};

// Counts a store's finished commits, so the benchmark thread can bound those in flight and wait
// for the last. Declared before the Store it counts for: the writer thread's callbacks use it
// until the Store is gone.
class Completions {
 public:
  // The `done` of the next commit.
  Store::Done Next() {
    ++submitted_;
    return [this](absl::Status status) {
      std::lock_guard lock(mu_);
      if (!status.ok() && error_.ok()) error_ = status;
      if (++done_ >= wake_at_) wake_.notify_one();
    };
  }
  // Until no more than `in_flight` commits are unfinished.
  void WaitBelow(uint64_t in_flight) {
    if (submitted_ <= in_flight) return;
    std::unique_lock lock(mu_);
    wake_at_ = submitted_ - in_flight;
    wake_.wait(lock, [&] { return done_ >= wake_at_; });
    wake_at_ = UINT64_MAX;
  }
  // Until all are, then the first error.
  absl::Status WaitAll() {
    WaitBelow(0);
    std::lock_guard lock(mu_);
    return error_;
  }

 private:
  uint64_t submitted_ = 0;  // benchmark thread only
  std::mutex mu_;
  std::condition_variable wake_;
  uint64_t done_ = 0;              // guarded by mu_
  uint64_t wake_at_ = UINT64_MAX;  // guarded by mu_
  absl::Status error_;             // guarded by mu_
};

absl::StatusOr<std::unique_ptr<Store>> OpenStore(const TempDir& dir, SyncPolicy sync) {
  if (dir.path().empty()) return absl::InternalError("cannot make a directory under /tmp");
  StoreOptions options;
  options.path = dir.path();
  options.sync = sync;
  return Store::Open(options);
}

// Benchmark argument -> policy: 0 none, 1 batch, 2 always.
SyncPolicy PolicyOf(int64_t arg) {
  return arg == 0 ? SyncPolicy::kNone : arg == 1 ? SyncPolicy::kBatch : SyncPolicy::kAlways;
}

// Puts entries [0, count) of `recipient`'s mailbox, or deletes them, through the store, and waits.
absl::Status FillMailbox(Store& store, Completions& completions, const std::string& recipient,
                         uint64_t count, bool remove) {
  mesh::v1::StoredEnvelope envelope = Envelope(recipient, 0);
  for (uint64_t first = 0; first < count; first += kFillBatch) {
    Batch batch;
    for (uint64_t seq = first; seq < first + kFillBatch && seq < count; ++seq) {
      if (remove) {
        batch.DeleteMessage(recipient, seq, MessageRef::Of(envelope));
      } else {
        envelope.set_id(MessageId(seq));
        batch.PutMessage(recipient, seq, envelope);
      }
    }
    completions.WaitBelow(kFillWindow);
    store.Commit(std::move(batch), Store::Durability::kLazy, completions.Next());
  }
  return completions.WaitAll();
}

// ---- plain RocksDB ----

// The store's own RocksDB, with its options and families (store_testing.h), written directly.
class RawDb {
 public:
  absl::Status Open(const TempDir& dir) {
    if (dir.path().empty()) return absl::InternalError("cannot make a directory under /tmp");
    StoreOptions options;
    options.path = dir.path();
    auto db = mesh::store::testing::RawStoreDb::Open(options);
    if (!db.ok()) return db.status();
    db_ = *std::move(db);
    return absl::OkStatus();
  }

  rocksdb::DB* db() const { return db_->db(); }
  rocksdb::ColumnFamilyHandle* mailbox() const { return db_->mailbox(); }
  rocksdb::ColumnFamilyHandle* dedup() const { return db_->dedup(); }

 private:
  std::unique_ptr<mesh::store::testing::RawStoreDb> db_;
};

absl::Status FromRocks(const rocksdb::Status& status) {
  return status.ok() ? absl::OkStatus() : absl::UnavailableError(status.ToString());
}

void Skip(benchmark::State& state, const absl::Status& status) {
  state.SkipWithError(std::string(status.message()).c_str());
}

// ---- enqueue ----

// Per iteration: kEnqueueMessages messages, each a mailbox entry plus its dedup entry as the
// router's Persist writes them, RawWriteSize() to a RocksDB write. sync 0: no fsync; 1: SyncWAL
// after each write; 2: WriteOptions.sync.
void BM_RawPut(benchmark::State& state) {
  const SyncPolicy policy = PolicyOf(state.range(0));
  TempDir dir;
  RawDb db;
  if (absl::Status status = db.Open(dir); !status.ok()) return Skip(state, status);
  rocksdb::WriteOptions write_options;
  write_options.sync = policy == SyncPolicy::kAlways;
  MessageStream stream;
  rocksdb::WriteBatch batch;
  std::string value;
  uint64_t next = 0;
  auto write = [&]() -> absl::Status {
    batch.Clear();
    for (uint64_t i = 0; i < RawWriteSize(); ++i, ++next) {
      stream.Prepare(next);
      stream.envelope().SerializeToString(&value);
      batch.Put(db.mailbox(), MailboxKey(stream.recipient(next), MessageStream::seq(next)), value);
      stream.dedup().SerializeToString(&value);
      batch.Put(db.dedup(), absl::StrCat(stream.envelope().from(), stream.envelope().id()), value);
    }
    absl::Status status = FromRocks(db.db()->Write(write_options, &batch));
    if (status.ok() && policy == SyncPolicy::kBatch) status = FromRocks(db.db()->SyncWAL());
    return status;
  };
  for (auto _ : state) {
    absl::Status status;
    for (uint64_t written = 0; written < kEnqueueMessages && status.ok();
         written += RawWriteSize()) {
      status = write();
    }
    if (!status.ok()) {
      Skip(state, status);
      break;
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kEnqueueMessages));
  state.counters["msgs_per_write"] = static_cast<double>(RawWriteSize());
}
BENCHMARK(BM_RawPut)->Arg(0)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

// Per iteration: the same messages through Store::Commit, one Batch (PutMessage + PutDedup) per
// message, kDurable, at most kWindow in flight; the iteration ends when the last is durable.
// sync 0/1/2: the store's none/batch/always.
void BM_StoreEnqueue(benchmark::State& state) {
  TempDir dir;
  Completions completions;
  auto store = OpenStore(dir, PolicyOf(state.range(0)));
  if (!store.ok()) return Skip(state, store.status());
  MessageStream stream;
  uint64_t next = 0;
  for (auto _ : state) {
    for (uint64_t i = 0; i < kEnqueueMessages; ++i, ++next) {
      stream.Prepare(next);
      Batch batch;
      batch.PutMessage(stream.recipient(next), MessageStream::seq(next), stream.envelope());
      batch.PutDedup(stream.envelope().from(), stream.envelope().id(), stream.dedup());
      completions.WaitBelow(kWindow - 1);
      (*store)->Commit(std::move(batch), Store::Durability::kDurable, completions.Next());
    }
    if (absl::Status status = completions.WaitAll(); !status.ok()) {
      Skip(state, status);
      break;
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kEnqueueMessages));
  const auto& stats = (*store)->stats();
  const auto per = [&](uint64_t count) {
    return static_cast<double>(stats.commits.load()) /
           static_cast<double>(std::max<uint64_t>(count, 1));
  };
  state.counters["msgs_per_write"] = per(stats.writes.load());
  if (stats.syncs.load() > 0) state.counters["msgs_per_sync"] = per(stats.syncs.load());
}
BENCHMARK(BM_StoreEnqueue)->Arg(0)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

// ---- drain ----

// Per iteration, timed after an untimed fill of a fresh mailbox with kDrainMessages: one
// iterator over the mailbox (bounds and prefix as ReadMailbox sets them), each envelope parsed,
// and a WriteBatch deleting the last kChunk read (no fsync: a lost delete only redelivers).
void BM_RawDrain(benchmark::State& state) {
  TempDir dir;
  RawDb db;
  if (absl::Status status = db.Open(dir); !status.ok()) return Skip(state, status);
  uint64_t mailbox = 0;
  for (auto _ : state) {
    state.PauseTiming();
    const std::string recipient = Recipient(mailbox++);
    mesh::v1::StoredEnvelope envelope = Envelope(recipient, 0);
    absl::Status status;
    rocksdb::WriteBatch batch;
    std::string value;
    for (uint64_t seq = 0; seq < kDrainMessages && status.ok(); ++seq) {
      envelope.set_id(MessageId(seq));
      envelope.SerializeToString(&value);
      batch.Put(db.mailbox(), MailboxKey(recipient, seq), value);
      if (batch.Count() == kFillBatch || seq + 1 == kDrainMessages) {
        status = FromRocks(db.db()->Write(rocksdb::WriteOptions(), &batch));
        batch.Clear();
      }
    }
    if (!status.ok()) {
      Skip(state, status);
      break;
    }
    state.ResumeTiming();

    const std::string lower = MailboxKey(recipient, 0);
    const std::string upper = MailboxKey(recipient, UINT64_MAX);
    rocksdb::Slice lower_slice(lower), upper_slice(upper);
    rocksdb::ReadOptions read;
    read.iterate_lower_bound = &lower_slice;
    read.iterate_upper_bound = &upper_slice;
    read.prefix_same_as_start = true;
    std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(read, db.mailbox()));
    uint64_t drained = 0;
    for (it->Seek(lower_slice); it->Valid() && status.ok(); it->Next()) {
      if (!envelope.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())) ||
          envelope.version() != mesh::store::kEnvelopeVersion) {
        status = absl::DataLossError("an envelope cannot be read");
      }
      benchmark::DoNotOptimize(envelope);
      batch.Delete(db.mailbox(), it->key());
      if (++drained % kChunk == 0) {
        status.Update(FromRocks(db.db()->Write(rocksdb::WriteOptions(), &batch)));
        batch.Clear();
      }
    }
    if (status.ok()) status = FromRocks(it->status());
    if (status.ok() && batch.Count() > 0) {
      status = FromRocks(db.db()->Write(rocksdb::WriteOptions(), &batch));
    }
    if (status.ok() && drained != kDrainMessages) {
      status = absl::InternalError(absl::StrCat("drained ", drained, " of ", kDrainMessages));
    }
    if (!status.ok()) {
      Skip(state, status);
      break;
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kDrainMessages));
}
BENCHMARK(BM_RawDrain)->UseRealTime()->Unit(benchmark::kMillisecond);

// Per iteration, timed after an untimed fill of a fresh mailbox with kDrainMessages: ReadMailbox
// of kChunk (at most kChunkBytes) from the seq after the last read, each chunk deleted by one
// Batch committed kLazy; ends when the last delete is applied. Store sync policy batch.
void BM_StoreDrain(benchmark::State& state) {
  TempDir dir;
  Completions completions;
  auto store = OpenStore(dir, SyncPolicy::kBatch);
  if (!store.ok()) return Skip(state, store.status());
  uint64_t mailbox = 0;
  for (auto _ : state) {
    state.PauseTiming();
    const std::string recipient = Recipient(mailbox++);
    absl::Status status = FillMailbox(**store, completions, recipient, kDrainMessages, false);
    if (!status.ok()) {
      Skip(state, status);
      break;
    }
    state.ResumeTiming();

    uint64_t from_seq = 0, drained = 0;
    for (;;) {
      auto messages = (*store)->ReadMailbox(recipient, from_seq, kChunk, kChunkBytes);
      if (!messages.ok()) {
        status = messages.status();
        break;
      }
      if (messages->empty()) break;
      Batch batch;
      for (const auto& message : *messages) {
        batch.DeleteMessage(recipient, message.seq, MessageRef::Of(message.envelope));
      }
      from_seq = messages->back().seq + 1;
      drained += messages->size();
      (*store)->Commit(std::move(batch), Store::Durability::kLazy, completions.Next());
    }
    status.Update(completions.WaitAll());
    if (status.ok() && drained != kDrainMessages) {
      status = absl::InternalError(absl::StrCat("drained ", drained, " of ", kDrainMessages));
    }
    if (!status.ok()) {
      Skip(state, status);
      break;
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kDrainMessages));
}
BENCHMARK(BM_StoreDrain)->UseRealTime()->Unit(benchmark::kMillisecond);

// ---- seek ----

// Untimed: kSeekEntries put into one mailbox through the store, then all deleted (store sync
// none). Timed, per iteration: one ReadMailbox of that empty mailbox. from_head 0: from seq 0,
// so the iterator steps over every tombstone (and the entries they shadow) before finding
// nothing; 1: from seq kSeekEntries, the mailbox's head, as the broker reads.
void BM_SeekAfterDrain(benchmark::State& state) {
  const bool from_head = state.range(0) != 0;
  TempDir dir;
  Completions completions;
  auto store = OpenStore(dir, SyncPolicy::kNone);
  if (!store.ok()) return Skip(state, store.status());
  const std::string recipient = Recipient(0);
  const auto fill_started = std::chrono::steady_clock::now();
  absl::Status status = FillMailbox(**store, completions, recipient, kSeekEntries, false);
  status.Update(FillMailbox(**store, completions, recipient, kSeekEntries, true));
  if (!status.ok()) return Skip(state, status);
  const std::chrono::duration<double> fill = std::chrono::steady_clock::now() - fill_started;

  const uint64_t from_seq = from_head ? kSeekEntries : 0;
  for (auto _ : state) {
    auto messages = (*store)->ReadMailbox(recipient, from_seq, kChunk, kChunkBytes);
    if (!messages.ok() || !messages->empty()) {
      Skip(state,
           messages.ok() ? absl::InternalError("deleted entries were read") : messages.status());
      break;
    }
    benchmark::DoNotOptimize(messages);
  }
  state.counters["fill_s"] = fill.count();
}
BENCHMARK(BM_SeekAfterDrain)
    ->Arg(0)
    ->Arg(1)
    ->Iterations(5)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
