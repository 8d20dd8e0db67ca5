// A full disk under the store (DESIGN §4): writes fail, the store turns unavailable, and once
// space returns it resumes by itself (RocksDB's DB::Resume, retried by the writer) and takes
// writes again; deletes committed meanwhile wait for it instead of being lost.
//
// The store runs on a DiskFullFileSystem: while its switch is on, every append, allocation and
// new file fails with NoSpace, marked retryable as RocksDB's own file system marks ENOSPC, and
// the free space reads 0. RocksDB then starts its own recovery, which waits for free space and
// answers the store's DB::Resume with Busy meanwhile: a resume takes a few seconds here.
#include <gtest/gtest.h>
#include <rocksdb/file_system.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "store/store.h"
#include "store/store_testing.h"

namespace mesh::store {
namespace {

using rocksdb::FileOptions;
using rocksdb::FSWritableFile;
using rocksdb::IODebugContext;
using rocksdb::IOOptions;
using rocksdb::IOStatus;
using rocksdb::Slice;

constexpr auto kDeadline = std::chrono::seconds(20);

class DiskFullFileSystem : public rocksdb::FileSystemWrapper {
 public:
  DiskFullFileSystem() : FileSystemWrapper(rocksdb::FileSystem::Default()) {}

  static const char* kClassName() { return "MeshDiskFullFileSystem"; }
  const char* Name() const override { return kClassName(); }

  void SetFull(bool full) { full_.store(full); }
  bool full() const { return full_.load(); }

  static IOStatus NoSpace() {
    IOStatus status = IOStatus::NoSpace("no space left on device (test)");
    status.SetRetryable(true);
    return status;
  }

  IOStatus NewWritableFile(const std::string& fname, const FileOptions& options,
                           std::unique_ptr<FSWritableFile>* result, IODebugContext* dbg) override {
    if (full()) return NoSpace();
    return Wrap(target()->NewWritableFile(fname, options, result, dbg), result);
  }
  IOStatus ReopenWritableFile(const std::string& fname, const FileOptions& options,
                              std::unique_ptr<FSWritableFile>* result,
                              IODebugContext* dbg) override {
    if (full()) return NoSpace();
    return Wrap(target()->ReopenWritableFile(fname, options, result, dbg), result);
  }
  IOStatus ReuseWritableFile(const std::string& fname, const std::string& old_fname,
                             const FileOptions& options, std::unique_ptr<FSWritableFile>* result,
                             IODebugContext* dbg) override {
    if (full()) return NoSpace();
    return Wrap(target()->ReuseWritableFile(fname, old_fname, options, result, dbg), result);
  }
  // RocksDB's own recovery from NoSpace waits for free space it reads here.
  IOStatus GetFreeSpace(const std::string& path, const IOOptions& options, uint64_t* free,
                        IODebugContext* dbg) override {
    if (full()) {
      *free = 0;
      return IOStatus::OK();
    }
    return target()->GetFreeSpace(path, options, free, dbg);
  }

 private:
  // A file open for writing: what would take space fails while the disk is full.
  class File : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    File(DiskFullFileSystem& fs, std::unique_ptr<FSWritableFile> file)
        : FSWritableFileOwnerWrapper(std::move(file)), fs_(fs) {}

    IOStatus Append(const Slice& data, const IOOptions& options, IODebugContext* dbg) override {
      if (fs_.full()) return NoSpace();
      return target()->Append(data, options, dbg);
    }
    IOStatus Append(const Slice& data, const IOOptions& options,
                    const rocksdb::DataVerificationInfo& info, IODebugContext* dbg) override {
      if (fs_.full()) return NoSpace();
      return target()->Append(data, options, info, dbg);
    }
    IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& options,
                              IODebugContext* dbg) override {
      if (fs_.full()) return NoSpace();
      return target()->PositionedAppend(data, offset, options, dbg);
    }
    IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& options,
                              const rocksdb::DataVerificationInfo& info,
                              IODebugContext* dbg) override {
      if (fs_.full()) return NoSpace();
      return target()->PositionedAppend(data, offset, options, info, dbg);
    }
    IOStatus Allocate(uint64_t offset, uint64_t len, const IOOptions& options,
                      IODebugContext* dbg) override {
      if (fs_.full()) return NoSpace();
      return target()->Allocate(offset, len, options, dbg);
    }

   private:
    DiskFullFileSystem& fs_;
  };

  IOStatus Wrap(IOStatus status, std::unique_ptr<FSWritableFile>* result) {
    if (status.ok()) *result = std::make_unique<File>(*this, std::move(*result));
    return status;
  }

  std::atomic<bool> full_{false};
};

std::string Recipient() { return std::string(kIdSize, 'r'); }

mesh::v1::StoredEnvelope Envelope(uint64_t seq) {
  mesh::v1::StoredEnvelope envelope;
  envelope.set_version(kEnvelopeVersion);
  envelope.set_from(std::string(kIdSize, 'f'));
  envelope.set_to(Recipient());
  envelope.set_id(std::string(kMessageIdSize, static_cast<char>('0' + seq)));
  envelope.set_payload(std::string(1000, 'p'));
  envelope.set_expire_at_ms(UINT64_MAX);
  return envelope;
}

Batch Message(uint64_t seq) {
  Batch batch;
  batch.PutMessage(Recipient(), seq, Envelope(seq));
  return batch;
}

class DiskFullTest : public ::testing::TestWithParam<SyncPolicy> {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("mesh-disk-full-test-" + std::to_string(getpid()) + "-" +
            std::to_string(static_cast<int>(GetParam())));
    std::filesystem::remove_all(dir_);
    fs_ = std::make_shared<DiskFullFileSystem>();
    StoreOptions options;
    options.path = dir_.string();
    options.sync = GetParam();
    auto store = testing::OpenWithFileSystem(options, fs_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  std::future<absl::Status> Commit(Batch batch, Store::Durability durability) {
    auto done = std::make_shared<std::promise<absl::Status>>();
    auto future = done->get_future();
    store_->Commit(std::move(batch), durability, [done](absl::Status s) { done->set_value(s); });
    return future;
  }
  absl::Status CommitAndWait(Batch batch) {
    return Commit(std::move(batch), Store::Durability::kDurable).get();
  }
  std::vector<uint64_t> StoredSeqs() {
    auto read = store_->ReadMailbox(Recipient(), 0, 100, SIZE_MAX);
    EXPECT_TRUE(read.ok()) << read.status();
    std::vector<uint64_t> seqs;
    if (read.ok()) {
      for (const auto& message : *read) seqs.push_back(message.seq);
    }
    return seqs;
  }

  std::filesystem::path dir_;
  std::shared_ptr<DiskFullFileSystem> fs_;
  std::unique_ptr<Store> store_;
};

TEST_P(DiskFullTest, StoreResumesOnceSpaceReturnsAndKeepsTheDeletesMadeMeanwhile) {
  ASSERT_TRUE(CommitAndWait(Message(1)).ok());
  ASSERT_TRUE(store_->available());

  fs_->SetFull(true);
  const absl::Status refused = CommitAndWait(Message(2));
  EXPECT_FALSE(refused.ok());
  EXPECT_FALSE(store_->available());
  // Unavailable: a durable commit is refused at once, a delete waits for the store.
  EXPECT_FALSE(CommitAndWait(Message(3)).ok());
  Batch delete_first;
  delete_first.DeleteMessage(Recipient(), 1, MessageRef::Of(Envelope(1)));
  auto deleted = Commit(std::move(delete_first), Store::Durability::kLazy);

  // Resume is retried while the disk stays full, and fails.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_FALSE(store_->available());
  EXPECT_GE(store_->UnavailableFor(), std::chrono::seconds(1));
  EXPECT_EQ(deleted.wait_for(std::chrono::seconds(0)), std::future_status::timeout);

  fs_->SetFull(false);
  const auto deadline = std::chrono::steady_clock::now() + kDeadline;
  while (!store_->available() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(store_->available()) << "the store did not resume once space returned";
  EXPECT_EQ(store_->UnavailableFor(), std::chrono::steady_clock::duration::zero());
  EXPECT_GE(store_->stats().resumes.load(), 1u);

  ASSERT_EQ(deleted.wait_for(kDeadline), std::future_status::ready);
  EXPECT_TRUE(deleted.get().ok());
  ASSERT_TRUE(CommitAndWait(Message(4)).ok());
  EXPECT_EQ(StoredSeqs(), std::vector<uint64_t>{4});
}

// `none` fails as `batch` does: at the WAL append, before any sync.
INSTANTIATE_TEST_SUITE_P(SyncPolicies, DiskFullTest,
                         ::testing::Values(SyncPolicy::kAlways, SyncPolicy::kBatch),
                         [](const auto& info) { return std::string(SyncPolicyName(info.param)); });

}  // namespace
}  // namespace mesh::store
