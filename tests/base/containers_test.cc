#include "base/containers.h"

#include <gtest/gtest.h>

#include "absl/container/flat_hash_map.h"

namespace mesh::base {
namespace {

TEST(ContainersTest, ATableThatEmptiedGivesItsCapacityBack) {
  absl::flat_hash_map<int, int> table;
  for (int i = 0; i < 100'000; ++i) table[i] = i;
  const size_t grown = table.capacity();
  for (int i = 0; i < 99'000; ++i) table.erase(i);
  EXPECT_EQ(table.capacity(), grown) << "erasing alone keeps the capacity";
  ShrinkIfSparse(table);
  EXPECT_LT(table.capacity(), grown / 16);
  EXPECT_EQ(table.size(), 1'000u);
  EXPECT_EQ(table.at(99'999), 99'999);
}

TEST(ContainersTest, ATableStillInUseOrSmallIsLeftAlone) {
  absl::flat_hash_map<int, int> busy;
  for (int i = 0; i < 10'000; ++i) busy[i] = i;
  for (int i = 0; i < 5'000; ++i) busy.erase(i);
  const size_t capacity = busy.capacity();
  ShrinkIfSparse(busy);
  EXPECT_EQ(busy.capacity(), capacity) << "half full: not worth a rehash";
  absl::flat_hash_map<int, int> small;
  for (int i = 0; i < 500; ++i) small[i] = i;
  for (int i = 0; i < 499; ++i) small.erase(i);
  const size_t small_capacity = small.capacity();
  ShrinkIfSparse(small);
  EXPECT_EQ(small.capacity(), small_capacity) << "below the floor";
}

}  // namespace
}  // namespace mesh::base
