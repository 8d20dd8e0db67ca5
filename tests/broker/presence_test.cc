#include "broker/cluster/presence.h"

#include <gtest/gtest.h>

#include <limits>

namespace mesh::broker {
namespace {

using namespace std::chrono_literals;

const std::string kSelf(32, 'S');
const std::string kB(32, 'B');
const std::string kC(32, 'C');
constexpr uint64_t kNow = 1'700'000'000'000;  // wall-clock ms
const PresenceLimits kLimits{/*max_skew=*/10s, /*grace=*/60s};

std::string PeerKey(int i) {
  std::string key(32, 'p');
  key[0] = static_cast<char>(i);
  key[1] = static_cast<char>(i >> 8);
  key[2] = static_cast<char>(i >> 16);
  return key;
}

mesh::v1::Presence Delta(const std::string& peer, const std::string& node, uint64_t epoch_ms,
                         bool connected) {
  mesh::v1::Presence presence;
  auto* e = presence.add_entries();
  e->set_peer(peer);
  e->set_node(node);
  e->set_epoch_ms(epoch_ms);
  e->set_connected(connected);
  return presence;
}

TEST(PresenceTest, ALocalSessionGetsAnEpochAboveAnySeenForThePeer) {
  PresenceTable table(kSelf, kLimits);
  const std::string peer = PeerKey(1);
  ASSERT_EQ(table.Apply(kB, Delta(peer, kB, kNow + 5000, true), kNow).changed.size(), 1u);
  auto delta = table.Local(peer, true, kNow);
  ASSERT_TRUE(delta.has_value());
  EXPECT_EQ(delta->epoch_ms(), kNow + 5001) << "greater than B's, though B's clock is ahead";
  EXPECT_EQ(delta->node(), kSelf);
  ASSERT_NE(table.NodeOf(peer), nullptr);
  EXPECT_EQ(*table.NodeOf(peer), kSelf);
  EXPECT_EQ(table.ConnectedOn(kB), 0u);
  EXPECT_EQ(table.ConnectedOn(kSelf), 1u);
}

TEST(PresenceTest, AMemberSpeaksOnlyForItsOwnSessions) {
  PresenceTable table(kSelf, kLimits);
  const std::string peer = PeerKey(1);
  ASSERT_TRUE(table.Local(peer, true, kNow));
  // B claims C's session, and one of ours: neither is B's to announce.
  auto applied = table.Apply(kB, Delta(peer, kC, kNow + 1, true), kNow);
  EXPECT_EQ(applied.refused, 1u);
  applied = table.Apply(kB, Delta(peer, kSelf, kNow + 1, false), kNow);
  EXPECT_EQ(applied.refused, 1u);
  EXPECT_TRUE(applied.replaced_here.empty());
  ASSERT_NE(table.NodeOf(peer), nullptr);
  EXPECT_EQ(*table.NodeOf(peer), kSelf);
}

TEST(PresenceTest, AnEpochInTheFutureIsRefusedAndNothingWraps) {
  PresenceTable table(kSelf, kLimits);
  const std::string peer = PeerKey(1);
  ASSERT_TRUE(table.Local(peer, true, kNow));
  for (uint64_t epoch : {kNow + 10'001, std::numeric_limits<uint64_t>::max()}) {
    auto applied = table.Apply(kB, Delta(peer, kB, epoch, true), kNow);
    EXPECT_EQ(applied.refused, 1u) << epoch;
    EXPECT_TRUE(applied.replaced_here.empty()) << epoch;
  }
  EXPECT_EQ(*table.NodeOf(peer), kSelf);
  // Within the skew, a newer session elsewhere replaces ours, and ours can come back after it.
  auto applied = table.Apply(kB, Delta(peer, kB, kNow + 10'000, true), kNow);
  ASSERT_EQ(applied.replaced_here.size(), 1u);
  EXPECT_EQ(*table.NodeOf(peer), kB);
  auto again = table.Local(peer, true, kNow + 1);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->epoch_ms(), kNow + 10'001);
}

TEST(PresenceTest, AStaleDeltaNeverWins) {
  PresenceTable table(kSelf, kLimits);
  const std::string peer = PeerKey(1);
  ASSERT_TRUE(table.Local(peer, true, kNow));
  auto applied = table.Apply(kB, Delta(peer, kB, kNow - 1, true), kNow);
  EXPECT_TRUE(applied.changed.empty());
  EXPECT_TRUE(applied.replaced_here.empty());
  // A disconnect of an older session of B's does not end ours either.
  applied = table.Apply(kB, Delta(peer, kB, kNow - 1, false), kNow);
  EXPECT_TRUE(applied.changed.empty());
  EXPECT_EQ(*table.NodeOf(peer), kSelf);
  EXPECT_EQ(table.connected(), 1u);
}

TEST(PresenceTest, TheEndOfASessionReplacedElsewhereIsNotAnnounced) {
  PresenceTable table(kSelf, kLimits);
  const std::string peer = PeerKey(1);
  ASSERT_TRUE(table.Local(peer, true, kNow));
  ASSERT_EQ(table.Apply(kB, Delta(peer, kB, kNow + 1, true), kNow).replaced_here.size(), 1u);
  EXPECT_FALSE(table.Local(peer, false, kNow + 2).has_value());
  EXPECT_EQ(*table.NodeOf(peer), kB);
}

TEST(PresenceTest, ATombstoneOutlivesStaleDeltasThenIsForgotten) {
  PresenceTable table(kSelf, kLimits);
  const std::string peer = PeerKey(1);
  table.Apply(kB, Delta(peer, kB, kNow, true), kNow);
  auto applied = table.Apply(kB, Delta(peer, kB, kNow, false), kNow + 100);
  ASSERT_EQ(applied.changed.size(), 1u);
  EXPECT_EQ(table.NodeOf(peer), nullptr);
  EXPECT_EQ(table.size(), 1u) << "kept as a tombstone";
  // A delayed "connected" of an older session loses against the tombstone.
  EXPECT_TRUE(table.Apply(kB, Delta(peer, kB, kNow - 5, true), kNow + 200).changed.empty());
  EXPECT_EQ(table.NodeOf(peer), nullptr);
  table.Prune(kNow + 100 + 59'999);
  EXPECT_EQ(table.size(), 1u);
  table.Prune(kNow + 100 + 60'000);
  EXPECT_EQ(table.size(), 0u);
}

TEST(PresenceTest, AReturnAfterADepartureIsNotPrunedWithIt) {
  PresenceTable table(kSelf, kLimits);
  const std::string peer = PeerKey(1);
  ASSERT_TRUE(table.Local(peer, true, kNow));
  ASSERT_TRUE(table.Local(peer, false, kNow + 10));
  ASSERT_TRUE(table.Local(peer, true, kNow + 20));
  table.Prune(kNow + 10 + 60'000);
  ASSERT_NE(table.NodeOf(peer), nullptr);
  EXPECT_EQ(table.connected(), 1u);
}

TEST(PresenceTest, KeysThatConnectedOnceAreForgottenAfterTheGrace) {
  PresenceTable table(kSelf, kLimits);
  constexpr int kKeys = 10'000;
  for (int i = 0; i < kKeys; ++i) {
    const uint64_t at = kNow + static_cast<uint64_t>(i);
    ASSERT_TRUE(table.Local(PeerKey(i), true, at));
    ASSERT_TRUE(table.Local(PeerKey(i), false, at));
    table.Apply(kB, Delta(PeerKey(kKeys + i), kB, at, true), at);
    table.Apply(kB, Delta(PeerKey(kKeys + i), kB, at, false), at);
  }
  EXPECT_EQ(table.size(), 2u * kKeys);
  EXPECT_EQ(table.connected(), 0u);
  table.Prune(kNow + kKeys + 60'000);
  EXPECT_EQ(table.size(), 0u);
}

TEST(PresenceTest, AFullTableEndsTheMembersUnlistedSessionsAndAGoneMemberEndsAll) {
  PresenceTable table(kSelf, kLimits);
  for (int i = 0; i < 3; ++i) table.Apply(kB, Delta(PeerKey(i), kB, kNow, true), kNow);
  table.Apply(kC, Delta(PeerKey(10), kC, kNow, true), kNow);
  EXPECT_EQ(table.ConnectedOn(kB), 3u);
  mesh::v1::Presence full = Delta(PeerKey(0), kB, kNow, true);
  full.set_full(true);
  auto applied = table.Apply(kB, full, kNow + 1);
  EXPECT_EQ(applied.changed.size(), 2u);
  EXPECT_EQ(table.ConnectedOn(kB), 1u);
  EXPECT_EQ(table.ForgetNode(kB, kNow + 2).size(), 1u);
  EXPECT_EQ(table.ConnectedOn(kB), 0u);
  EXPECT_EQ(table.connected(), 1u) << "C's session stays";
}

TEST(PresenceTest, OwnTableListsOnlyThisNodesSessions) {
  PresenceTable table(kSelf, kLimits);
  ASSERT_TRUE(table.Local(PeerKey(1), true, kNow));
  ASSERT_TRUE(table.Local(PeerKey(2), true, kNow));
  ASSERT_TRUE(table.Local(PeerKey(2), false, kNow));
  table.Apply(kB, Delta(PeerKey(3), kB, kNow, true), kNow);
  const mesh::v1::Presence own = table.OwnTable();
  EXPECT_TRUE(own.full());
  ASSERT_EQ(own.entries_size(), 1);
  EXPECT_EQ(own.entries(0).peer(), PeerKey(1));
  EXPECT_EQ(own.entries(0).node(), kSelf);
}

}  // namespace
}  // namespace mesh::broker
