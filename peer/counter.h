// A statistics counter that many threads add to on the hot path without sharing a cache line:
// each thread adds to its own slot, a read sums the slots. A drop-in for a std::atomic counter
// updated with relaxed order (fetch_add/fetch_sub return nothing). Reads are for logs and
// metrics scrapes; they see every add that happened before them.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace mesh {

template <typename T>
class ShardedCounter {
 public:
  void fetch_add(T n, std::memory_order = std::memory_order_relaxed) {
    slots_[SlotOfThisThread()].value.fetch_add(n, std::memory_order_relaxed);
  }
  void fetch_sub(T n, std::memory_order = std::memory_order_relaxed) {
    slots_[SlotOfThisThread()].value.fetch_sub(n, std::memory_order_relaxed);
  }
  T load(std::memory_order = std::memory_order_relaxed) const {
    T sum = 0;
    for (const auto& slot : slots_) sum += slot.value.load(std::memory_order_relaxed);
    return sum;
  }

 private:
  static constexpr size_t kSlots = 16;  // threads beyond this share slots, still correctly
  struct alignas(64) Slot {
    std::atomic<T> value{0};
  };

  static size_t SlotOfThisThread() {
    static std::atomic<size_t> next{0};
    thread_local const size_t slot = next.fetch_add(1, std::memory_order_relaxed) % kSlots;
    return slot;
  }

  std::array<Slot, kSlots> slots_{};
};

}  // namespace mesh
