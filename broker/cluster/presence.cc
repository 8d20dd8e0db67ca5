#include "broker/cluster/presence.h"

#include <algorithm>
#include <limits>

#include "absl/container/flat_hash_set.h"
#include "base/containers.h"
#include "crypto/crypto.h"

namespace mesh::broker {
namespace {

uint64_t SaturatingNext(uint64_t epoch_ms) {
  return epoch_ms == std::numeric_limits<uint64_t>::max() ? epoch_ms : epoch_ms + 1;
}

absl::string_view Key(std::string_view peer) { return {peer.data(), peer.size()}; }

// A grace shorter than twice the skew could let a forgotten epoch exceed a fresh one, and a
// stale delta win; the broker's flags refuse such a pair, and a table never runs with one.
PresenceLimits Checked(PresenceLimits limits) {
  limits.grace = std::max(limits.grace, limits.max_skew * 2);
  return limits;
}

}  // namespace

PresenceTable::PresenceTable(std::string self, PresenceLimits limits)
    : self_(std::move(self)), limits_(Checked(limits)) {}

bool PresenceTable::Newer(const Entry& known, const std::string& node, uint64_t epoch_ms) const {
  return epoch_ms > known.epoch_ms || (epoch_ms == known.epoch_ms && node > known.node);
}

void PresenceTable::Uncount(const std::string& node) {
  --connected_;
  auto it = connected_by_node_.find(node);
  if (it != connected_by_node_.end() && --it->second == 0) connected_by_node_.erase(it);
}

void PresenceTable::Connect(Entry& entry, const std::string& node, uint64_t epoch_ms) {
  if (entry.connected) Uncount(entry.node);
  entry = {node, epoch_ms, true};
  ++connected_;
  ++connected_by_node_[node];
}

void PresenceTable::Bury(const std::string& peer, Entry& entry, uint64_t now_ms) {
  if (entry.connected) Uncount(entry.node);
  entry.connected = false;
  tombstones_.push_back({now_ms, peer, entry.epoch_ms});
}

std::optional<mesh::v1::PresenceEntry> PresenceTable::Local(std::string_view peer, bool connected,
                                                            uint64_t now_ms) {
  const std::string raw(peer);
  auto it = entries_.find(Key(peer));
  if (connected) {
    if (it == entries_.end()) it = entries_.emplace(raw, Entry{}).first;
    Connect(it->second, self_, std::max(now_ms, SaturatingNext(it->second.epoch_ms)));
  } else {
    // Replaced elsewhere meanwhile: that session's broker speaks for the peer now.
    if (it == entries_.end() || it->second.node != self_ || !it->second.connected) {
      return std::nullopt;
    }
    Bury(raw, it->second, now_ms);
  }
  mesh::v1::PresenceEntry delta;
  delta.set_peer(raw);
  delta.set_node(self_);
  delta.set_epoch_ms(it->second.epoch_ms);
  delta.set_connected(connected);
  return delta;
}

PresenceTable::Applied PresenceTable::Apply(const std::string& from,
                                            const mesh::v1::Presence& presence, uint64_t now_ms) {
  Applied applied;
  const uint64_t latest = now_ms + static_cast<uint64_t>(limits_.max_skew.count());
  absl::flat_hash_set<std::string> listed;
  for (const auto& e : presence.entries()) {
    if (e.peer().size() != crypto::kKeySize) continue;
    // A member speaks for its own sessions only, and not for the future.
    if (e.node() != from || e.epoch_ms() > latest) {
      ++applied.refused;
      continue;
    }
    if (presence.full()) listed.insert(e.peer());
    auto [it, added] = entries_.try_emplace(e.peer());
    Entry& known = it->second;
    if (e.connected()) {
      if (!added && !Newer(known, from, e.epoch_ms())) continue;
      if (!added && known.node == self_ && known.connected)
        applied.replaced_here.push_back(e.peer());
      Connect(known, from, e.epoch_ms());
      applied.changed.push_back(e.peer());
    } else if (added) {
      // Remembered as a tombstone, so a delayed older "connected" loses.
      known = {from, e.epoch_ms(), false};
      Bury(e.peer(), known, now_ms);
    } else if (known.connected && known.node == from && known.epoch_ms == e.epoch_ms()) {
      Bury(e.peer(), known, now_ms);
      applied.changed.push_back(e.peer());
    }
  }
  if (presence.full() && ConnectedOn(from) > listed.size()) {
    for (auto& [peer, entry] : entries_) {
      if (entry.connected && entry.node == from && !listed.contains(peer)) {
        Bury(peer, entry, now_ms);
        applied.changed.push_back(peer);
      }
    }
  }
  return applied;
}

std::vector<std::string> PresenceTable::ForgetNode(const std::string& node, uint64_t now_ms) {
  std::vector<std::string> changed;
  if (ConnectedOn(node) == 0) return changed;
  for (auto& [peer, entry] : entries_) {
    if (entry.connected && entry.node == node) {
      Bury(peer, entry, now_ms);
      changed.push_back(peer);
    }
  }
  return changed;
}

void PresenceTable::Prune(uint64_t now_ms) {
  const auto grace = static_cast<uint64_t>(limits_.grace.count());
  while (!tombstones_.empty() && tombstones_.front().at_ms + grace <= now_ms) {
    const Tombstone& stone = tombstones_.front();
    auto it = entries_.find(stone.peer);
    // Still the same departure: a peer that came back since is kept.
    if (it != entries_.end() && !it->second.connected && it->second.epoch_ms == stone.epoch_ms) {
      entries_.erase(it);
    }
    tombstones_.pop_front();
  }
  base::ShrinkIfSparse(entries_);
}

const std::string* PresenceTable::NodeOf(std::string_view peer) const {
  auto it = entries_.find(Key(peer));
  if (it == entries_.end() || !it->second.connected) return nullptr;
  return &it->second.node;
}

mesh::v1::Presence PresenceTable::OwnTable() const {
  mesh::v1::Presence table;
  table.set_full(true);
  if (ConnectedOn(self_) == 0) return table;
  for (const auto& [peer, entry] : entries_) {
    if (!entry.connected || entry.node != self_) continue;
    auto* e = table.add_entries();
    e->set_peer(peer);
    e->set_node(self_);
    e->set_epoch_ms(entry.epoch_ms);
    e->set_connected(true);
  }
  return table;
}

size_t PresenceTable::ConnectedOn(const std::string& node) const {
  auto it = connected_by_node_.find(node);
  return it == connected_by_node_.end() ? 0 : it->second;
}

}  // namespace mesh::broker
