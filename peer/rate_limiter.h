// Token buckets by key (a peer ID, a source address), shared by every link of a process, so
// that a rate holds across reconnects: a new link starts with what its key left, not a full
// bucket. Thread-safe (striped locks). Memory follows the keys active within one refill time:
// a bucket that has refilled is as good as none, and Prune forgets it.
#pragma once

#include <array>
#include <chrono>
#include <mutex>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"

namespace mesh::peer {

class RateLimiter {
 public:
  using Clock = std::chrono::steady_clock;

  // `rate` per second, up to `burst` at once; a rate <= 0 allows everything.
  RateLimiter(double rate, double burst) : rate_(rate), burst_(burst) {}

  // Takes one token from `key`'s bucket; false when it is empty.
  bool Take(std::string_view key, Clock::time_point now = Clock::now());
  // Forgets the buckets that are full again. Call about once per refill time.
  void Prune(Clock::time_point now = Clock::now());
  size_t size() const;

 private:
  struct Bucket {
    double tokens;
    Clock::time_point at;
  };
  struct Part {
    mutable std::mutex mu;
    absl::flat_hash_map<std::string, Bucket> buckets;
  };
  static constexpr size_t kParts = 16;

  Part& PartOf(std::string_view key);

  const double rate_;
  const double burst_;
  std::array<Part, kParts> parts_;
};

}  // namespace mesh::peer
