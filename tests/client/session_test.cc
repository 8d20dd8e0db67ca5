// The client session's pure parts, without a broker.
#include "client/session.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>

namespace mesh::client {
namespace {

using namespace std::chrono_literals;

TEST(GoAwayRetryDelayTest, KeepsAReasonableHintAndClampsAHugeOne) {
  EXPECT_EQ(GoAwayRetryDelay(0), 0ms);
  EXPECT_EQ(GoAwayRetryDelay(250), 250ms);
  EXPECT_EQ(GoAwayRetryDelay(60'000), kMaxGoAwayRetry);
  EXPECT_EQ(GoAwayRetryDelay(60'001), kMaxGoAwayRetry);
  // The most a broker can send: about 49 days.
  EXPECT_EQ(GoAwayRetryDelay(std::numeric_limits<uint32_t>::max()), kMaxGoAwayRetry);
  EXPECT_EQ(kMaxGoAwayRetry, 60s);
}

}  // namespace
}  // namespace mesh::client
