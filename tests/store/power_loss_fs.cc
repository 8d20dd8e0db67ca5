#include "tests/store/power_loss_fs.h"

#include <algorithm>
#include <filesystem>
#include <system_error>
#include <utility>

namespace mesh::store::testing {

using rocksdb::DataVerificationInfo;
using rocksdb::FileOptions;
using rocksdb::FSDirectory;
using rocksdb::FSWritableFile;
using rocksdb::IODebugContext;
using rocksdb::IOOptions;
using rocksdb::IOStatus;
using rocksdb::Slice;

// A file open for writing: every change goes through the power switch and into its FileState.
// The file system outlives it (the Env that holds the file system outlives the database).
class PowerLossFileSystem::TrackedFile : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  TrackedFile(PowerLossFileSystem& fs, std::unique_ptr<FSWritableFile> file,
              std::shared_ptr<FileState> state)
      : FSWritableFileOwnerWrapper(std::move(file)), fs_(fs), state_(std::move(state)) {}
  ~TrackedFile() override {
    std::lock_guard lock(fs_.mu_);
    --fs_.open_files_;
  }

  IOStatus Append(const Slice& data, const IOOptions& options, IODebugContext* dbg) override {
    if (fs_.power_off()) return fs_.PowerIsOff("Append", "");
    IOStatus status = target()->Append(data, options, dbg);
    if (status.ok()) Grow(data.size());
    return status;
  }
  IOStatus Append(const Slice& data, const IOOptions& options, const DataVerificationInfo& info,
                  IODebugContext* dbg) override {
    if (fs_.power_off()) return fs_.PowerIsOff("Append", "");
    IOStatus status = target()->Append(data, options, info, dbg);
    if (status.ok()) Grow(data.size());
    return status;
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& options,
                            IODebugContext* dbg) override {
    if (fs_.power_off()) return fs_.PowerIsOff("PositionedAppend", "");
    IOStatus status = target()->PositionedAppend(data, offset, options, dbg);
    if (status.ok()) GrowTo(offset + data.size());
    return status;
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& options,
                            const DataVerificationInfo& info, IODebugContext* dbg) override {
    if (fs_.power_off()) return fs_.PowerIsOff("PositionedAppend", "");
    IOStatus status = target()->PositionedAppend(data, offset, options, info, dbg);
    if (status.ok()) GrowTo(offset + data.size());
    return status;
  }
  IOStatus Truncate(uint64_t size, const IOOptions& options, IODebugContext* dbg) override {
    if (fs_.power_off()) return fs_.PowerIsOff("Truncate", "");
    IOStatus status = target()->Truncate(size, options, dbg);
    if (status.ok()) {
      std::lock_guard lock(fs_.mu_);
      state_->size = size;
      state_->synced = std::min(state_->synced, size);
    }
    return status;
  }
  // Flush hands the data to the kernel: it is no more durable than before.
  IOStatus Flush(const IOOptions& options, IODebugContext* dbg) override {
    if (fs_.power_off()) return fs_.PowerIsOff("Flush", "");
    return target()->Flush(options, dbg);
  }
  IOStatus Sync(const IOOptions& options, IODebugContext* dbg) override {
    if (fs_.power_off()) return fs_.PowerIsOff("Sync", "");
    return Synced(target()->Sync(options, dbg), SizeNow());
  }
  IOStatus Fsync(const IOOptions& options, IODebugContext* dbg) override {
    if (fs_.power_off()) return fs_.PowerIsOff("Fsync", "");
    return Synced(target()->Fsync(options, dbg), SizeNow());
  }
  // sync_file_range only starts write-back and does not wait for it: nothing becomes durable.
  IOStatus RangeSync(uint64_t offset, uint64_t nbytes, const IOOptions& options,
                     IODebugContext* dbg) override {
    if (fs_.power_off()) return fs_.PowerIsOff("RangeSync", "");
    return target()->RangeSync(offset, nbytes, options, dbg);
  }
  IOStatus Allocate(uint64_t offset, uint64_t len, const IOOptions& options,
                    IODebugContext* dbg) override {
    if (fs_.power_off()) return fs_.PowerIsOff("Allocate", "");
    return target()->Allocate(offset, len, options, dbg);
  }
  // Close still runs after the cut, so the descriptor is released; whatever it would have put
  // on disk is undone by DropUnsyncedData.

 private:
  void Grow(uint64_t bytes) {
    std::lock_guard lock(fs_.mu_);
    state_->size += bytes;
  }
  void GrowTo(uint64_t size) {
    std::lock_guard lock(fs_.mu_);
    state_->size = std::max(state_->size, size);
  }
  uint64_t SizeNow() {
    std::lock_guard lock(fs_.mu_);
    return state_->size;
  }
  // A sync makes durable what had been written when it began (read before calling the target).
  IOStatus Synced(IOStatus status, uint64_t size_before) {
    if (status.ok()) {
      std::lock_guard lock(fs_.mu_);
      state_->synced = std::max(state_->synced, std::min(size_before, state_->size));
    }
    return status;
  }

  PowerLossFileSystem& fs_;
  std::shared_ptr<FileState> state_;
};

// Directory fsyncs fail after the cut like every other sync; before it they are passed on (what
// they make durable is not modelled, see the header).
class PowerLossFileSystem::Directory : public rocksdb::FSDirectoryWrapper {
 public:
  Directory(PowerLossFileSystem& fs, std::unique_ptr<FSDirectory> dir)
      : FSDirectoryWrapper(std::move(dir)), fs_(fs) {}

  IOStatus Fsync(const IOOptions& options, IODebugContext* dbg) override {
    if (fs_.power_off()) return fs_.PowerIsOff("Fsync (directory)", "");
    return FSDirectoryWrapper::Fsync(options, dbg);
  }
  IOStatus FsyncWithDirOptions(const IOOptions& options, IODebugContext* dbg,
                               const rocksdb::DirFsyncOptions& dir_options) override {
    if (fs_.power_off()) return fs_.PowerIsOff("Fsync (directory)", "");
    return FSDirectoryWrapper::FsyncWithDirOptions(options, dbg, dir_options);
  }

 private:
  PowerLossFileSystem& fs_;
};

PowerLossFileSystem::PowerLossFileSystem() : FileSystemWrapper(rocksdb::FileSystem::Default()) {}

void PowerLossFileSystem::CutPower() { power_off_.store(true); }

IOStatus PowerLossFileSystem::PowerIsOff(const char* op, const std::string& path) {
  {
    std::lock_guard lock(mu_);
    ++rejected_[op];
  }
  return IOStatus::IOError("power is off", path.empty() ? op : std::string(op) + " " + path);
}

std::string PowerLossFileSystem::RejectedOperations() const {
  std::lock_guard lock(mu_);
  std::string out;
  for (const auto& [op, count] : rejected_) {
    if (!out.empty()) out += ", ";
    out += op + " x" + std::to_string(count);
  }
  return out.empty() ? "none" : out;
}

std::unique_ptr<FSWritableFile> PowerLossFileSystem::Track(std::unique_ptr<FSWritableFile> file,
                                                           std::shared_ptr<FileState> state) {
  {
    std::lock_guard lock(mu_);
    ++open_files_;
  }
  return std::make_unique<TrackedFile>(*this, std::move(file), std::move(state));
}

uint64_t PowerLossFileSystem::SizeOnDisk(const std::string& fname) {
  uint64_t size = 0;
  if (!target()->GetFileSize(fname, IOOptions(), &size, nullptr).ok()) return 0;
  return size;
}

IOStatus PowerLossFileSystem::NewWritableFile(const std::string& fname, const FileOptions& options,
                                              std::unique_ptr<FSWritableFile>* result,
                                              IODebugContext* dbg) {
  if (power_off()) return PowerIsOff("NewWritableFile", fname);
  std::unique_ptr<FSWritableFile> file;
  IOStatus status = target()->NewWritableFile(fname, options, &file, dbg);
  if (!status.ok()) return status;
  // Created or truncated: nothing in it is durable yet.
  auto state = std::make_shared<FileState>();
  {
    std::lock_guard lock(mu_);
    files_[fname] = state;
  }
  *result = Track(std::move(file), std::move(state));
  return status;
}

IOStatus PowerLossFileSystem::ReopenWritableFile(const std::string& fname,
                                                 const FileOptions& options,
                                                 std::unique_ptr<FSWritableFile>* result,
                                                 IODebugContext* dbg) {
  if (power_off()) return PowerIsOff("ReopenWritableFile", fname);
  const uint64_t size = SizeOnDisk(fname);
  std::unique_ptr<FSWritableFile> file;
  IOStatus status = target()->ReopenWritableFile(fname, options, &file, dbg);
  if (!status.ok()) return status;
  std::shared_ptr<FileState> state;
  {
    std::lock_guard lock(mu_);
    auto& slot = files_[fname];
    if (!slot) {
      // Written before this file system saw it: on disk already.
      slot = std::make_shared<FileState>();
      slot->synced = size;
    }
    slot->size = size;
    slot->synced = std::min(slot->synced, size);
    state = slot;
  }
  *result = Track(std::move(file), std::move(state));
  return status;
}

IOStatus PowerLossFileSystem::ReuseWritableFile(const std::string& fname,
                                                const std::string& old_fname,
                                                const FileOptions& options,
                                                std::unique_ptr<FSWritableFile>* result,
                                                IODebugContext* dbg) {
  if (power_off()) return PowerIsOff("ReuseWritableFile", fname);
  std::unique_ptr<FSWritableFile> file;
  IOStatus status = target()->ReuseWritableFile(fname, old_fname, options, &file, dbg);
  if (!status.ok()) return status;
  // The old file renamed and written again from the start: its old bytes count as lost (RocksDB
  // does not rely on them; a recycled WAL's old records are skipped by their log number).
  auto state = std::make_shared<FileState>();
  {
    std::lock_guard lock(mu_);
    files_.erase(old_fname);
    files_[fname] = state;
  }
  *result = Track(std::move(file), std::move(state));
  return status;
}

IOStatus PowerLossFileSystem::NewRandomRWFile(const std::string& fname, const FileOptions& options,
                                              std::unique_ptr<rocksdb::FSRandomRWFile>* result,
                                              IODebugContext* dbg) {
  if (power_off()) return PowerIsOff("NewRandomRWFile", fname);
  return target()->NewRandomRWFile(fname, options, result, dbg);
}

IOStatus PowerLossFileSystem::NewMemoryMappedFileBuffer(
    const std::string& fname, std::unique_ptr<rocksdb::MemoryMappedFileBuffer>* result) {
  if (power_off()) return PowerIsOff("NewMemoryMappedFileBuffer", fname);
  return target()->NewMemoryMappedFileBuffer(fname, result);
}

IOStatus PowerLossFileSystem::NewDirectory(const std::string& name, const IOOptions& options,
                                           std::unique_ptr<FSDirectory>* result,
                                           IODebugContext* dbg) {
  std::unique_ptr<FSDirectory> dir;
  IOStatus status = target()->NewDirectory(name, options, &dir, dbg);
  if (!status.ok()) return status;
  *result = std::make_unique<Directory>(*this, std::move(dir));
  return status;
}

IOStatus PowerLossFileSystem::DeleteFile(const std::string& fname, const IOOptions& options,
                                         IODebugContext* dbg) {
  if (power_off()) return PowerIsOff("DeleteFile", fname);
  IOStatus status = target()->DeleteFile(fname, options, dbg);
  if (status.ok()) {
    std::lock_guard lock(mu_);
    files_.erase(fname);
  }
  return status;
}

IOStatus PowerLossFileSystem::Truncate(const std::string& fname, size_t size,
                                       const IOOptions& options, IODebugContext* dbg) {
  if (power_off()) return PowerIsOff("Truncate", fname);
  IOStatus status = target()->Truncate(fname, size, options, dbg);
  if (status.ok()) {
    std::lock_guard lock(mu_);
    if (auto it = files_.find(fname); it != files_.end()) {
      it->second->size = size;
      it->second->synced = std::min<uint64_t>(it->second->synced, size);
    }
  }
  return status;
}

IOStatus PowerLossFileSystem::CreateDir(const std::string& dirname, const IOOptions& options,
                                        IODebugContext* dbg) {
  if (power_off()) return PowerIsOff("CreateDir", dirname);
  return target()->CreateDir(dirname, options, dbg);
}

IOStatus PowerLossFileSystem::CreateDirIfMissing(const std::string& dirname,
                                                 const IOOptions& options, IODebugContext* dbg) {
  if (power_off()) return PowerIsOff("CreateDirIfMissing", dirname);
  return target()->CreateDirIfMissing(dirname, options, dbg);
}

IOStatus PowerLossFileSystem::DeleteDir(const std::string& dirname, const IOOptions& options,
                                        IODebugContext* dbg) {
  if (power_off()) return PowerIsOff("DeleteDir", dirname);
  return target()->DeleteDir(dirname, options, dbg);
}

IOStatus PowerLossFileSystem::RenameFile(const std::string& src, const std::string& target_name,
                                         const IOOptions& options, IODebugContext* dbg) {
  if (power_off()) return PowerIsOff("RenameFile", src);
  IOStatus status = target()->RenameFile(src, target_name, options, dbg);
  if (status.ok()) {
    std::lock_guard lock(mu_);
    auto it = files_.find(src);
    if (it == files_.end()) {
      files_.erase(target_name);  // replaced by a file written before we saw it
    } else {
      files_[target_name] = std::move(it->second);
      files_.erase(it);
    }
  }
  return status;
}

IOStatus PowerLossFileSystem::LinkFile(const std::string& src, const std::string& target_name,
                                       const IOOptions& options, IODebugContext* dbg) {
  if (power_off()) return PowerIsOff("LinkFile", src);
  IOStatus status = target()->LinkFile(src, target_name, options, dbg);
  if (status.ok()) {
    std::lock_guard lock(mu_);
    if (auto it = files_.find(src); it != files_.end()) files_[target_name] = it->second;
  }
  return status;
}

IOStatus PowerLossFileSystem::LockFile(const std::string& fname, const IOOptions& options,
                                       rocksdb::FileLock** lock, IODebugContext* dbg) {
  if (power_off()) return PowerIsOff("LockFile", fname);
  return target()->LockFile(fname, options, lock, dbg);
}

IOStatus PowerLossFileSystem::NewLogger(const std::string& fname, const IOOptions& options,
                                        std::shared_ptr<rocksdb::Logger>* result,
                                        IODebugContext* dbg) {
  if (power_off()) return PowerIsOff("NewLogger", fname);
  return target()->NewLogger(fname, options, result, dbg);
}

IOStatus PowerLossFileSystem::DropUnsyncedData(uint64_t* dropped_bytes) {
  std::lock_guard lock(mu_);
  if (open_files_ != 0) {
    return IOStatus::InvalidArgument("DropUnsyncedData with files still open for writing",
                                     std::to_string(open_files_));
  }
  uint64_t dropped = 0;
  for (const auto& [path, state] : files_) {
    std::error_code error;
    const uint64_t size = std::filesystem::file_size(path, error);
    if (error) continue;  // gone (removed by hand, or a directory entry we do not model)
    if (size <= state->synced) continue;
    std::filesystem::resize_file(path, state->synced, error);
    if (error) return IOStatus::IOError("truncate " + path, error.message());
    dropped += size - state->synced;
    state->size = state->synced;
  }
  if (dropped_bytes != nullptr) *dropped_bytes = dropped;
  return IOStatus::OK();
}

}  // namespace mesh::store::testing
