// Presence (DESIGN §5): for every peer connected anywhere in the mesh, the node its newest
// session is on. A session's epoch is (wall-clock ms at its broker, node ID), made greater than
// any epoch seen for the peer (a hybrid logical clock), so a stale delta never wins.
//
// What a member may say is bounded: only its own sessions, with epochs no later than this
// node's clock plus `max_skew`; epochs saturate instead of wrapping. Disconnected peers stay as
// tombstones for `grace` (so a delayed stale delta still loses), then are forgotten: the table
// holds connected peers and recent departures, never every key ever seen.
//
// A plain class: the cluster holds it under its lock. Times are passed in (wall-clock ms).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "mesh/v1/cluster.pb.h"

namespace mesh::broker {

struct PresenceLimits {
  // How far ahead of this node's clock a member's epoch may be (clocks are NTP-synced).
  std::chrono::milliseconds max_skew{10'000};
  // How long a disconnected peer's epoch is remembered; at least twice max_skew, so an epoch
  // made after the grace is greater than any the forgotten entry could have held.
  std::chrono::milliseconds grace{60'000};
};

class PresenceTable {
 public:
  PresenceTable(std::string self, PresenceLimits limits);

  // A session began or ended on this node: the delta to announce, or nothing when the ended
  // session had already been replaced elsewhere.
  std::optional<mesh::v1::PresenceEntry> Local(std::string_view peer, bool connected,
                                               uint64_t now_ms);

  struct Applied {
    std::vector<std::string> changed;        // peers whose node changed: re-place their mail
    std::vector<std::string> replaced_here;  // local sessions a newer one elsewhere replaces
    size_t refused = 0;  // entries for another node's sessions, or epochs in the future
  };
  // Deltas, or the whole table (`full`), from member `from`.
  Applied Apply(const std::string& from, const mesh::v1::Presence& presence, uint64_t now_ms);

  // A member left the mesh: its sessions end (as tombstones). Returns the peers that changed.
  std::vector<std::string> ForgetNode(const std::string& node, uint64_t now_ms);
  // Forgets tombstones older than the grace; costs what it forgets.
  void Prune(uint64_t now_ms);

  // The node the peer is connected to, or null.
  const std::string* NodeOf(std::string_view peer) const;
  // This node's sessions, as the full table a member gets when its link comes up.
  mesh::v1::Presence OwnTable() const;
  size_t connected() const { return connected_; }
  size_t ConnectedOn(const std::string& node) const;
  // Entries held, tombstones included.
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::string node;
    uint64_t epoch_ms = 0;
    bool connected = false;
  };
  using Map = absl::flat_hash_map<std::string, Entry>;

  void Connect(Entry& entry, const std::string& node, uint64_t epoch_ms);
  // Ends the entry's session, if it has one, and remembers it as a tombstone.
  void Bury(const std::string& peer, Entry& entry, uint64_t now_ms);
  void Uncount(const std::string& node);
  bool Newer(const Entry& known, const std::string& node, uint64_t epoch_ms) const;

  const std::string self_;
  const PresenceLimits limits_;
  Map entries_;  // peer (raw) -> where it is, or was until recently
  size_t connected_ = 0;
  absl::flat_hash_map<std::string, size_t> connected_by_node_;
  struct Tombstone {
    uint64_t at_ms;
    std::string peer;
    uint64_t epoch_ms;
  };
  std::deque<Tombstone> tombstones_;  // in the order they were made
};

}  // namespace mesh::broker
