#include "peer/memory_budget.h"

#include <algorithm>

namespace mesh::peer {

bool MemoryBudget::TryAcquire(size_t bytes, std::string_view owner) {
  std::unique_lock<std::mutex> lock(owners_mu_, std::defer_lock);
  size_t* owned = nullptr;
  if (per_owner_limit_ > 0) {
    lock.lock();
    auto it = by_owner_.find(absl::string_view(owner.data(), owner.size()));
    const size_t held = it == by_owner_.end() ? 0 : it->second;
    if (held + bytes > per_owner_limit_) return false;
    if (it != by_owner_.end()) owned = &it->second;
  }
  size_t used = used_.load(std::memory_order_relaxed);
  do {
    if (used + bytes > limit_) return false;
  } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
  if (per_owner_limit_ > 0) {
    if (owned == nullptr) owned = &by_owner_[std::string(owner)];
    *owned += bytes;
  }
  return true;
}

void MemoryBudget::Release(size_t bytes, std::string_view owner) {
  used_.fetch_sub(bytes, std::memory_order_relaxed);
  if (per_owner_limit_ == 0) return;
  std::lock_guard<std::mutex> lock(owners_mu_);
  auto it = by_owner_.find(absl::string_view(owner.data(), owner.size()));
  if (it == by_owner_.end()) return;
  it->second -= std::min(bytes, it->second);
  if (it->second == 0) by_owner_.erase(it);
}

size_t MemoryBudget::owners() const {
  std::lock_guard<std::mutex> lock(owners_mu_);
  return by_owner_.size();
}

}  // namespace mesh::peer
