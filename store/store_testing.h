// Test-only ways into the store; the broker never calls them. The RocksDB type below is only
// declared, so including this header does not need RocksDB's headers.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "store/store.h"

namespace rocksdb {
class FileSystem;
}  // namespace rocksdb

namespace mesh::store::testing {

// Store::Open with every file RocksDB touches going through `fs` (e.g. a wrapper that fails or
// drops writes). The Store keeps `fs` alive for as long as its database is open.
absl::StatusOr<std::unique_ptr<Store>> OpenWithFileSystem(const StoreOptions& options,
                                                          std::shared_ptr<rocksdb::FileSystem> fs);

}  // namespace mesh::store::testing
