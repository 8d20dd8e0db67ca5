#include "broker/cluster/homes.h"

#include <gtest/gtest.h>
#include <openssl/sha.h>

#include <map>

namespace mesh::broker {
namespace {

std::string Id(int i, char fill) {
  std::string id(32, fill);
  id[0] = static_cast<char>(i);
  id[1] = static_cast<char>(i >> 8);
  return id;
}

TEST(HomesTest, TheScoreIsTheFirstEightBytesOfSha256OfNodeAndPeer) {
  const std::string node = Id(7, 'n');
  const std::string peer = Id(9, 'p');
  const std::string joined = node + peer;
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(joined.data()), joined.size(), digest);
  uint64_t expected = 0;
  for (int i = 0; i < 8; ++i) expected = (expected << 8) | digest[i];
  EXPECT_EQ(HomeScore(node, peer), expected);
}

TEST(HomesTest, NoNodesNoHome) { EXPECT_EQ(HomeOf(Id(1, 'p'), {}), ""); }

TEST(HomesTest, TheHomeIsTheHighestScoreWhateverTheOrderOfNodes) {
  std::vector<std::string> nodes;
  for (int i = 0; i < 5; ++i) nodes.push_back(Id(i, 'n'));
  for (int p = 0; p < 200; ++p) {
    const std::string peer = Id(p, 'p');
    const std::string home = HomeOf(peer, nodes);
    for (const auto& node : nodes) EXPECT_GE(HomeScore(home, peer), HomeScore(node, peer));
    std::vector<std::string> reversed(nodes.rbegin(), nodes.rend());
    EXPECT_EQ(HomeOf(peer, reversed), home);
  }
}

TEST(HomesTest, AJoinMovesAboutOneNthOfTheHomesAllToTheNewcomer) {
  std::vector<std::string> nodes;
  for (int i = 0; i < 4; ++i) nodes.push_back(Id(i, 'n'));
  constexpr int kPeers = 10'000;
  std::map<std::string, std::string> before;
  for (int p = 0; p < kPeers; ++p) before[Id(p, 'p')] = HomeOf(Id(p, 'p'), nodes);
  const std::string newcomer = Id(99, 'n');
  nodes.push_back(newcomer);
  int moved = 0;
  for (const auto& [peer, home] : before) {
    const std::string now = HomeOf(peer, nodes);
    if (now == home) continue;
    ++moved;
    EXPECT_EQ(now, newcomer) << "a home moves only to the node that joined";
  }
  // 1/5 of the homes expected; a binomial spread of ±40 around 2,000.
  EXPECT_GT(moved, kPeers / 5 - 300);
  EXPECT_LT(moved, kPeers / 5 + 300);
}

}  // namespace
}  // namespace mesh::broker
