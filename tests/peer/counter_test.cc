#include "peer/counter.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace mesh {
namespace {

TEST(ShardedCounterTest, SumsWhatEveryThreadAdded) {
  ShardedCounter<uint64_t> counter;
  // More threads than slots, so some share one: the sum must still be exact.
  constexpr int kThreads = 24;
  constexpr uint64_t kAdds = 10'000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (uint64_t i = 0; i < kAdds; ++i) counter.fetch_add(1);
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(counter.load(), kThreads * kAdds);
}

TEST(ShardedCounterTest, AGaugeGoesDownOnAnotherThreadThanItWentUp) {
  ShardedCounter<int64_t> gauge;
  std::thread up([&] { gauge.fetch_add(5); });
  up.join();
  std::thread down([&] { gauge.fetch_sub(3); });
  down.join();
  EXPECT_EQ(gauge.load(), 2);
}

}  // namespace
}  // namespace mesh
