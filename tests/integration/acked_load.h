// Load whose every acknowledged message must arrive once: senders (real client library) send to
// a set of recipients until stopped, and the ids that got SendAck ACCEPTED or DUPLICATE are
// kept per recipient. The crash tests run brokers through kills, restarts and drains under it.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/test_peers.h"

namespace mesh::testing {

class AcknowledgedLoad {
 public:
  // Each sender thread sleeps 1 ms after every `burst` sends. The senders are owned here, so
  // their last callbacks still find this object.
  AcknowledgedLoad(std::vector<std::unique_ptr<LibraryPeer>> senders,
                   std::vector<crypto::PeerId> recipients, int burst)
      : recipients_(std::move(recipients)),
        accepted_(recipients_.size()),
        senders_(std::move(senders)) {
    for (size_t s = 0; s < senders_.size(); ++s) {
      threads_.emplace_back([this, s, burst] { Send(*senders_[s], s, burst); });
    }
  }
  ~AcknowledgedLoad() { Stop(); }

  // Stops sending, then waits (60 s at most) for every send's answer: pending sends are
  // retried until a broker answers. Reports refusals as failures.
  ::testing::AssertionResult StopAndWaitForAnswers() {
    Stop();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (answered_ < sent_ && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::lock_guard lock(mu_);
    for (const auto& [why, n] : refusals_) ADD_FAILURE() << n << " sends refused: " << why;
    if (answered_ != sent_) {
      return ::testing::AssertionFailure() << answered_ << " of " << sent_ << " sends answered";
    }
    return ::testing::AssertionSuccess();
  }

  // Checks that recipient `r` (its peer: `peer`) got every acknowledged id, none twice to the
  // application; returns how many were acknowledged. `context` goes into a failure's message.
  // `context` is asked only on a loss (e.g. the brokers' logs as they are then).
  size_t ExpectDelivered(size_t r, LibraryPeer& peer,
                         const std::function<std::string()>& context = {}) {
    std::set<std::string> expected;
    {
      std::lock_guard lock(mu_);
      expected = accepted_[r];
    }
    auto messages = peer.WaitForMessages(expected.size(), std::chrono::seconds(60));
    std::set<std::string> received;
    for (const auto& message : messages) {
      EXPECT_TRUE(received.insert(Key(message.id)).second) << "shown twice to the application";
    }
    size_t lost = 0;
    for (const auto& id : expected) lost += !received.contains(id);
    EXPECT_EQ(lost, 0u) << "recipient " << r << " lost acknowledged messages of " << expected.size()
                        << (lost > 0 && context ? context() : std::string());
    return expected.size();
  }

  int sent() const { return sent_; }

 private:
  static std::string Key(const client::MessageId& id) { return {id.begin(), id.end()}; }

  void Stop() {
    done_ = true;
    for (auto& thread : threads_) {
      if (thread.joinable()) thread.join();
    }
  }

  void Send(LibraryPeer& sender, size_t s, int burst) {
    for (int m = 0; !done_; ++m) {
      ++sent_;
      const size_t to = (s + m) % recipients_.size();
      sender.session().Send(
          recipients_[to], "m" + std::to_string(m), [this, to](const client::SendResult& result) {
            std::lock_guard lock(mu_);
            if (result.ok()) {
              accepted_[to].insert(Key(result.id));
            } else {
              ++refusals_[mesh::v1::SendAck::Status_Name(result.status) + " " + result.detail];
            }
            ++answered_;
          });
      if (m % burst == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

  const std::vector<crypto::PeerId> recipients_;
  std::mutex mu_;
  std::vector<std::set<std::string>> accepted_;
  std::map<std::string, int> refusals_;
  std::atomic<int> sent_{0}, answered_{0};
  std::atomic<bool> done_{false};
  std::vector<std::unique_ptr<LibraryPeer>> senders_;  // destroyed before the state above
  std::vector<std::thread> threads_;
};

}  // namespace mesh::testing
