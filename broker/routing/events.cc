#include "broker/routing/events.h"

namespace mesh::broker {

std::optional<mesh::v1::Event> EventWatcher::PopLocked() {
  if (lost_ > 0) {
    mesh::v1::Event event;
    event.mutable_lost()->set_n(lost_);
    lost_ = 0;
    return event;
  }
  if (queue_.empty()) return std::nullopt;
  mesh::v1::Event event = std::move(queue_.front());
  queue_.pop_front();
  return event;
}

std::optional<mesh::v1::Event> EventWatcher::Next(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  ready_.wait_for(lock, timeout, [&] { return cancelled_ || lost_ > 0 || !queue_.empty(); });
  if (cancelled_) return std::nullopt;
  return PopLocked();
}

std::optional<mesh::v1::Event> EventWatcher::TryNext() {
  std::lock_guard lock(mu_);
  if (cancelled_) return std::nullopt;
  return PopLocked();
}

void EventWatcher::OnReady(std::function<void()> notify) {
  std::lock_guard lock(mu_);
  notify_ = std::move(notify);
}

void EventWatcher::Cancel() {
  {
    std::lock_guard lock(mu_);
    cancelled_ = true;
  }
  ready_.notify_all();
}

bool EventWatcher::cancelled() const {
  std::lock_guard lock(mu_);
  return cancelled_;
}

bool EventWatcher::Push(const mesh::v1::Event& event) {
  std::function<void()> notify;
  {
    std::lock_guard lock(mu_);
    if (cancelled_) return false;
    if (queue_.size() >= capacity_) {
      ++lost_;
    } else {
      queue_.push_back(event);
    }
    notify = notify_;
  }
  ready_.notify_one();
  if (notify) notify();
  return true;
}

std::shared_ptr<EventWatcher> EventHub::Watch(size_t capacity) {
  auto watcher = std::make_shared<EventWatcher>(capacity);
  std::lock_guard lock(mu_);
  watchers_.push_back(watcher);
  watchers_count_.store(watchers_.size(), std::memory_order_relaxed);
  return watcher;
}

void EventHub::Publish(mesh::v1::Event event) {
  if (!has_watchers()) return;
  event.set_at_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count());
  std::vector<std::shared_ptr<EventWatcher>> live;
  {
    std::lock_guard lock(mu_);
    std::erase_if(watchers_, [&](const std::weak_ptr<EventWatcher>& weak) {
      auto watcher = weak.lock();
      if (!watcher || watcher->cancelled()) return true;
      live.push_back(std::move(watcher));
      return false;
    });
    watchers_count_.store(watchers_.size(), std::memory_order_relaxed);
  }
  for (auto& watcher : live) watcher->Push(event);
}

}  // namespace mesh::broker
