// What happens on the broker, for control-plane watchers (WatchEvents over gRPC and SSE):
// routing publishes peer and message events, the broker drain events. Every watcher has a
// bounded queue; one that falls behind loses events (it is told how many, with a Lost event)
// instead of slowing the broker. Publishing with nobody watching costs one atomic load.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "mesh/v1/control.pb.h"

namespace mesh::broker {

class EventWatcher {
 public:
  explicit EventWatcher(size_t capacity) : capacity_(capacity) {}

  // The next event, waiting up to `timeout`; nullopt on timeout or once cancelled. Events
  // dropped because the queue was full come first as one Lost{n}.
  std::optional<mesh::v1::Event> Next(std::chrono::milliseconds timeout);
  // Without waiting.
  std::optional<mesh::v1::Event> TryNext();
  // Called (on the publishing thread, outside any lock of the hub) whenever an event is
  // queued; must be quick, e.g. a post to the watcher's executor.
  void OnReady(std::function<void()> notify);
  void Cancel();
  bool cancelled() const;

 private:
  friend class EventHub;
  bool Push(const mesh::v1::Event& event);  // false if cancelled
  std::optional<mesh::v1::Event> PopLocked();

  const size_t capacity_;
  mutable std::mutex mu_;
  std::condition_variable ready_;
  std::deque<mesh::v1::Event> queue_;
  uint64_t lost_ = 0;
  bool cancelled_ = false;
  std::function<void()> notify_;
};

class EventHub {
 public:
  std::shared_ptr<EventWatcher> Watch(size_t capacity = 1024);
  // Stamps at_ms and hands the event to every watcher.
  void Publish(mesh::v1::Event event);
  bool has_watchers() const { return watchers_count_.load(std::memory_order_relaxed) > 0; }

 private:
  std::mutex mu_;
  std::vector<std::weak_ptr<EventWatcher>> watchers_;
  std::atomic<size_t> watchers_count_{0};
};

}  // namespace mesh::broker
