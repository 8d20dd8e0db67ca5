// A rocksdb::FileSystem on which the power can go out, for tests of what a sync policy keeps.
//
// It wraps RocksDB's default file system and remembers, for every file it opens for writing,
// how many bytes were appended and how many of them a Sync or Fsync has made durable (Flush
// only hands data to the kernel and RangeSync only starts write-back: neither makes it durable).
// CutPower() turns the machine off: from then on every operation that would change the disk
// fails with an IOError, so nothing RocksDB does afterwards (writes, syncs, new files, renames,
// deletions) reaches it. Once the store is closed, DropUnsyncedData() leaves the files as a power
// cut would: each one cut back to its size at its last sync, and to nothing if it never had one.
//
// Not modelled: the durability of directory entries. A real power cut can also forget a file
// that was created, renamed or deleted without an fsync of its directory; here every such change
// made before the cut is kept. Files written through an untracked path (RocksDB's info LOG, which
// its logger writes directly, and NewRandomRWFile, which the store does not use) are left as they
// are: recovery does not read them.
#pragma once

#include <rocksdb/file_system.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace mesh::store::testing {

class PowerLossFileSystem : public rocksdb::FileSystemWrapper {
 public:
  PowerLossFileSystem();  // on rocksdb::FileSystem::Default()

  static const char* kClassName() { return "MeshPowerLossFileSystem"; }
  const char* Name() const override { return kClassName(); }

  // From now on every mutating operation fails. An operation already under way completes, as
  // a write the disk had already been handed might.
  void CutPower();
  bool power_off() const { return power_off_.load(); }

  // Truncates every file written through this file system to its last synced size. Only once
  // every such file is closed (the store destroyed): refuses otherwise. `dropped_bytes` (if not
  // null) gets the number of bytes removed.
  rocksdb::IOStatus DropUnsyncedData(uint64_t* dropped_bytes);

  // What RocksDB tried after the cut, as "operation×count, ..." (for the test's log).
  std::string RejectedOperations() const;

  // Creating, replacing and removing files and directories.
  rocksdb::IOStatus NewWritableFile(const std::string& fname, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReopenWritableFile(const std::string& fname,
                                       const rocksdb::FileOptions& options,
                                       std::unique_ptr<rocksdb::FSWritableFile>* result,
                                       rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReuseWritableFile(const std::string& fname, const std::string& old_fname,
                                      const rocksdb::FileOptions& options,
                                      std::unique_ptr<rocksdb::FSWritableFile>* result,
                                      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewRandomRWFile(const std::string& fname, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSRandomRWFile>* result,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewMemoryMappedFileBuffer(
      const std::string& fname, std::unique_ptr<rocksdb::MemoryMappedFileBuffer>* result) override;
  rocksdb::IOStatus NewDirectory(const std::string& name, const rocksdb::IOOptions& options,
                                 std::unique_ptr<rocksdb::FSDirectory>* result,
                                 rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus DeleteFile(const std::string& fname, const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus Truncate(const std::string& fname, size_t size,
                             const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus CreateDir(const std::string& dirname, const rocksdb::IOOptions& options,
                              rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus CreateDirIfMissing(const std::string& dirname,
                                       const rocksdb::IOOptions& options,
                                       rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus DeleteDir(const std::string& dirname, const rocksdb::IOOptions& options,
                              rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus RenameFile(const std::string& src, const std::string& target,
                               const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus LinkFile(const std::string& src, const std::string& target,
                             const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus LockFile(const std::string& fname, const rocksdb::IOOptions& options,
                             rocksdb::FileLock** lock, rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewLogger(const std::string& fname, const rocksdb::IOOptions& options,
                              std::shared_ptr<rocksdb::Logger>* result,
                              rocksdb::IODebugContext* dbg) override;
  // UnlockFile is not overridden: a machine that lost power holds no locks, and the test reopens
  // the directory in the same process.

 private:
  class TrackedFile;
  class Directory;

  // Bytes written to one file and how many of them are durable. Shared by hard links.
  struct FileState {
    uint64_t size = 0;
    uint64_t synced = 0;
  };

  // The error every mutating operation gets once the power is off (and counts it under `op`).
  rocksdb::IOStatus PowerIsOff(const char* op, const std::string& path);
  // Wraps a file just opened for writing; `state` follows its size from here on.
  std::unique_ptr<rocksdb::FSWritableFile> Track(std::unique_ptr<rocksdb::FSWritableFile> file,
                                                 std::shared_ptr<FileState> state);
  // The size of `fname` on disk, 0 if it does not exist.
  uint64_t SizeOnDisk(const std::string& fname);

  std::atomic<bool> power_off_{false};
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<FileState>> files_;  // by path
  int open_files_ = 0;                                       // tracked files not yet closed
  std::map<std::string, uint64_t> rejected_;                 // operation -> count, after the cut
};

}  // namespace mesh::store::testing
