#include "peer/memory_budget.h"

#include <gtest/gtest.h>

namespace mesh::peer {
namespace {

TEST(MemoryBudgetTest, TheWholeLimitAndNoMore) {
  MemoryBudget budget(/*limit=*/100);
  EXPECT_TRUE(budget.TryAcquire(60, "a"));
  EXPECT_FALSE(budget.TryAcquire(41, "b"));
  EXPECT_TRUE(budget.TryAcquire(40, "a")) << "no share: one owner may take it all";
  EXPECT_EQ(budget.used(), 100u);
  budget.Release(60, "a");
  EXPECT_EQ(budget.used(), 40u);
  EXPECT_EQ(budget.owners(), 0u) << "owners are only tracked when there is a share";
}

TEST(MemoryBudgetTest, OneOwnerGetsItsShareAndOthersTheRest) {
  MemoryBudget budget(/*limit=*/100, /*per_owner_limit=*/40);
  EXPECT_TRUE(budget.TryAcquire(30, "host-a"));
  EXPECT_FALSE(budget.TryAcquire(11, "host-a")) << "over host-a's share";
  EXPECT_TRUE(budget.TryAcquire(10, "host-a"));
  EXPECT_TRUE(budget.TryAcquire(40, "host-b"));
  EXPECT_FALSE(budget.TryAcquire(21, "host-c")) << "over the whole limit";
  EXPECT_TRUE(budget.TryAcquire(20, "host-c"));
  EXPECT_EQ(budget.owners(), 3u);
  EXPECT_EQ(budget.used(), 100u);
}

TEST(MemoryBudgetTest, ARefusalTakesNothingAndReleaseForgetsEmptyOwners) {
  MemoryBudget budget(/*limit=*/50, /*per_owner_limit=*/40);
  EXPECT_TRUE(budget.TryAcquire(30, "host-a"));
  EXPECT_TRUE(budget.TryAcquire(15, "host-b"));
  EXPECT_FALSE(budget.TryAcquire(10, "host-b")) << "the whole limit refuses";
  EXPECT_EQ(budget.used(), 45u);
  budget.Release(30, "host-a");
  EXPECT_EQ(budget.owners(), 1u);
  EXPECT_TRUE(budget.TryAcquire(25, "host-b")) << "host-b's failed try did not count";
  budget.Release(40, "host-b");
  EXPECT_EQ(budget.used(), 0u);
  EXPECT_EQ(budget.owners(), 0u);
}

}  // namespace
}  // namespace mesh::peer
