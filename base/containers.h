// Hash tables never give back the capacity they grew to: a table that held 200,000 peers for
// a minute would keep the memory for them until the process ends. Tables that follow a
// churning population (presence, rate buckets) shrink once mostly empty.
#pragma once

#include <cstddef>

namespace mesh::base {

// Rehashes `table` to fit when it uses less than a quarter of a capacity above `floor`: the
// cost of the rehash (its size) is paid at most once per four-fold shrink.
template <typename Table>
void ShrinkIfSparse(Table& table, size_t floor = 1024) {
  if (table.capacity() > floor && table.size() < table.capacity() / 4) table.rehash(0);
}

}  // namespace mesh::base
