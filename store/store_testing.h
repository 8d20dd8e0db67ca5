// Test-only ways into the store; the broker never calls them. The RocksDB type below is only
// declared, so including this header does not need RocksDB's headers.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "store/store.h"

namespace rocksdb {
class ColumnFamilyHandle;
class DB;
class FileSystem;
}  // namespace rocksdb

namespace mesh::store::testing {

// Store::Open with every file RocksDB touches going through `fs` (e.g. a wrapper that fails or
// drops writes). The Store keeps `fs` alive for as long as its database is open.
absl::StatusOr<std::unique_ptr<Store>> OpenWithFileSystem(const StoreOptions& options,
                                                          std::shared_ptr<rocksdb::FileSystem> fs);

// The store's RocksDB opened directly, with the very options and families Store::Open uses,
// for baselines that bypass the Store (bench/store_bench's raw puts and drains).
class RawStoreDb {
 public:
  static absl::StatusOr<std::unique_ptr<RawStoreDb>> Open(const StoreOptions& options);
  ~RawStoreDb();
  RawStoreDb(const RawStoreDb&) = delete;
  RawStoreDb& operator=(const RawStoreDb&) = delete;

  rocksdb::DB* db() const;
  rocksdb::ColumnFamilyHandle* mailbox() const;
  rocksdb::ColumnFamilyHandle* dedup() const;

 private:
  RawStoreDb() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mesh::store::testing
