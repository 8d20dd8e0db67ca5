// A drain: readiness off, GoAway{DRAINING} to every peer, new links refused, and in a mesh
// every mailbox and outbox entry handed to its home among the other members. It ends when
// nothing is held here, no member is left to take what is, or the drain timeout passes; then
// <data-dir>/DRAINED says whether the store is empty. One state machine serves SIGTERM (the
// broker then stops) and the control plane's Drain (the process stays up).
#pragma once

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "broker/cluster/cluster.h"
#include "broker/routing/router.h"
#include "mesh/v1/control.pb.h"

namespace mesh::broker {

struct DrainOptions {
  std::string data_dir;  // where DRAINED is written
  std::chrono::milliseconds timeout{120'000};
  std::string node_id;  // as text, recorded in DRAINED
};

class Drain {
 public:
  // `cluster` is null for a broker alone. `stopping` ends the wait early (the broker stops).
  // Runs its wait on `io`; the others must outlive it.
  Drain(DrainOptions options, boost::asio::io_context& io, Router& router, Cluster* cluster,
        const ClusterStats& cluster_stats, const std::atomic<bool>& stopping);

  // Starts the drain once; a second call answers that one is under way. `on_finished` runs on
  // `io` after DRAINED is written. The answer says what this drain will do with what is held.
  mesh::v1::DrainResponse Start(std::function<void()> on_finished);

  bool draining() const { return started_.load(); }

 private:
  boost::asio::awaitable<void> HandOff(std::function<void()> on_finished, uint64_t handed_before);
  size_t MembersToTakeOver() const;
  void WriteDrained(int64_t left, uint64_t handed) const;

  const DrainOptions options_;
  boost::asio::io_context& io_;
  Router& router_;
  Cluster* const cluster_;
  const ClusterStats& cluster_stats_;
  const std::atomic<bool>& stopping_;
  std::atomic<bool> started_{false};
};

// A DRAINED left by an earlier run describes a store that this run is about to change: it is
// removed (durably) before the store opens, or a later crash would leave "empty" beside mail.
absl::Status RemoveDrained(const std::string& data_dir);

}  // namespace mesh::broker
