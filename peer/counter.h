// A statistics counter that many threads add to on the hot path without sharing a cache line:
// each thread adds to its own slot, a read sums the slots. A drop-in for a std::atomic counter
// updated with relaxed order (fetch_add/fetch_sub return nothing). Reads are for logs and
// metrics scrapes; they see every add that happened before them.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
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

// A latency histogram many threads observe into, on the same fixed buckets everywhere: 10 µs to
// 10 s in 1-2.5-5 steps, which fits a handshake, a store write and a delivery alike. Each
// bucket is a ShardedCounter, so observing is one uncontended add (two with the sum).
class LatencyHistogram {
 public:
  static constexpr std::array<uint64_t, 19> kBoundsMicros = {
      10,     25,     50,      100,     250,     500,       1'000,     2'500,     5'000,     10'000,
      25'000, 50'000, 100'000, 250'000, 500'000, 1'000'000, 2'500'000, 5'000'000, 10'000'000};
  static constexpr size_t kBuckets = kBoundsMicros.size() + 1;  // the last one is +Inf

  void Observe(std::chrono::microseconds latency) {
    const auto micros = static_cast<uint64_t>(std::max<int64_t>(0, latency.count()));
    const size_t bucket =
        static_cast<size_t>(std::lower_bound(kBoundsMicros.begin(), kBoundsMicros.end(), micros) -
                            kBoundsMicros.begin());
    buckets_[bucket].fetch_add(1);
    sum_micros_.fetch_add(micros);
  }

  struct Snapshot {
    std::array<uint64_t, kBuckets> counts{};  // per bucket, not cumulative
    uint64_t sum_micros = 0;
  };
  Snapshot Load() const {
    Snapshot snapshot;
    for (size_t i = 0; i < kBuckets; ++i) snapshot.counts[i] = buckets_[i].load();
    snapshot.sum_micros = sum_micros_.load();
    return snapshot;
  }

 private:
  std::array<ShardedCounter<uint64_t>, kBuckets> buckets_;
  ShardedCounter<uint64_t> sum_micros_;
};

}  // namespace mesh
