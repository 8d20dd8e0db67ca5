#include "peer/rate_limiter.h"

#include <gtest/gtest.h>

namespace mesh::peer {
namespace {

using namespace std::chrono_literals;
using Clock = RateLimiter::Clock;

TEST(RateLimiterTest, ABucketGivesItsBurstThenItsRatePerKey) {
  RateLimiter limiter(/*rate=*/2, /*burst=*/3);
  const Clock::time_point t0 = Clock::now();
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(limiter.Take("a", t0));
  EXPECT_FALSE(limiter.Take("a", t0));
  EXPECT_TRUE(limiter.Take("b", t0)) << "another key has its own bucket";
  EXPECT_TRUE(limiter.Take("a", t0 + 500ms)) << "one token back after 1/rate";
  EXPECT_FALSE(limiter.Take("a", t0 + 500ms));
}

TEST(RateLimiterTest, PruneForgetsOnlyBucketsThatRefilled) {
  RateLimiter limiter(/*rate=*/1, /*burst=*/2);
  const Clock::time_point t0 = Clock::now();
  EXPECT_TRUE(limiter.Take("spent", t0));
  EXPECT_TRUE(limiter.Take("spent", t0));
  EXPECT_TRUE(limiter.Take("later", t0 + 1500ms));
  limiter.Prune(t0 + 1500ms);  // "spent" holds 1.5 of 2 tokens: still remembered
  EXPECT_EQ(limiter.size(), 2u);
  limiter.Prune(t0 + 2500ms);  // "spent" full again; "later" holds 1 + 1 = 2: full too
  EXPECT_EQ(limiter.size(), 0u);
}

TEST(RateLimiterTest, ARateOfZeroAllowsEverything) {
  RateLimiter limiter(0, 1);
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(limiter.Take("a"));
  EXPECT_EQ(limiter.size(), 0u);
}

}  // namespace
}  // namespace mesh::peer
