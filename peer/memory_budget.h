// Bytes of partly received frames, shared by every link of a process: when it is spent, links
// pause reading rather than memory growing (DESIGN §3). A link holds at most one frame's
// reservation, and the links of one owner (a source address) at most `per_owner_limit`
// together, so one host's links cannot pin all of it while other hosts wait. Thread-safe.
#pragma once

#include <atomic>
#include <cstddef>
#include <mutex>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"

namespace mesh::peer {

class MemoryBudget {
 public:
  // `per_owner_limit` 0: one owner may take the whole limit.
  explicit MemoryBudget(size_t limit, size_t per_owner_limit = 0)
      : limit_(limit), per_owner_limit_(per_owner_limit) {}

  bool TryAcquire(size_t bytes, std::string_view owner = {});
  // Gives back what TryAcquire(bytes, owner) took.
  void Release(size_t bytes, std::string_view owner = {});

  size_t used() const { return used_.load(std::memory_order_relaxed); }
  size_t limit() const { return limit_; }
  // Owners holding a reservation now.
  size_t owners() const;

 private:
  const size_t limit_;
  const size_t per_owner_limit_;
  std::atomic<size_t> used_{0};
  // Only owners holding a reservation are here. Taken once per frame of several records (a
  // frame of one record is never charged), so one lock costs nothing next to the frame.
  mutable std::mutex owners_mu_;
  absl::flat_hash_map<std::string, size_t> by_owner_;
};

}  // namespace mesh::peer
