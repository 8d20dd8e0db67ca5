#include "peer/rate_limiter.h"

#include <algorithm>

#include "absl/hash/hash.h"
#include "base/containers.h"

namespace mesh::peer {

RateLimiter::Part& RateLimiter::PartOf(std::string_view key) {
  return parts_[absl::HashOf(absl::string_view(key.data(), key.size())) % kParts];
}

bool RateLimiter::Take(std::string_view key, Clock::time_point now) {
  if (rate_ <= 0) return true;
  Part& part = PartOf(key);
  std::lock_guard lock(part.mu);
  auto [it, added] =
      part.buckets.try_emplace(absl::string_view(key.data(), key.size()), Bucket{burst_, now});
  Bucket& bucket = it->second;
  if (!added) {
    const double elapsed = std::chrono::duration<double>(now - bucket.at).count();
    bucket.tokens = std::min(burst_, bucket.tokens + std::max(0.0, elapsed) * rate_);
    bucket.at = now;
  }
  if (bucket.tokens < 1) return false;
  bucket.tokens -= 1;
  return true;
}

void RateLimiter::Prune(Clock::time_point now) {
  for (Part& part : parts_) {
    std::lock_guard lock(part.mu);
    absl::erase_if(part.buckets, [&](const auto& entry) {
      const double elapsed = std::chrono::duration<double>(now - entry.second.at).count();
      return entry.second.tokens + elapsed * rate_ >= burst_;
    });
    base::ShrinkIfSparse(part.buckets);
  }
}

size_t RateLimiter::size() const {
  size_t n = 0;
  for (const Part& part : parts_) {
    std::lock_guard lock(part.mu);
    n += part.buckets.size();
  }
  return n;
}

}  // namespace mesh::peer
