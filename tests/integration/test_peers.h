// Peers for data-plane tests against the running broker: a hand-driven one (every frame chosen
// by the test, over the real record layer) and one built on the real client library.
#pragma once

#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "client/session.h"
#include "tests/integration/raw_peer.h"

namespace mesh::testing {

std::string RandomId();  // 16 random bytes
std::string Raw(const crypto::PeerId& id);

// A peer that speaks frame by frame: Send waits for its SendAck, Deliver frames are read and
// acknowledged only when the test says so.
class FramePeer {
 public:
  explicit FramePeer(uint16_t port, crypto::KeyPair key = crypto::KeyPair::Generate());

  // Handshake, then Credit(credit) unless it is 0.
  ::testing::AssertionResult Connect(uint32_t credit = 1000);
  // Sends and returns the SendAck for this id (Deliver frames read meanwhile are kept).
  std::optional<mesh::v1::SendAck> Send(const crypto::PeerId& to, std::string payload,
                                        std::string id = RandomId(), uint32_t ttl_s = 0);
  // Sends without waiting; AwaitAck collects the answer.
  bool SendNoWait(const crypto::PeerId& to, std::string payload, std::string id,
                  uint32_t ttl_s = 0);
  std::optional<mesh::v1::SendAck> AwaitAck(const std::string& id);
  std::optional<mesh::v1::Deliver> NextDeliver(std::chrono::milliseconds timeout = kTestDeadline);
  // The next frame that is not a Ping, Deliver or SendAck kept aside (GoAway, Error...).
  std::optional<mesh::v1::Frame> NextOtherFrame();
  bool Ack(const std::vector<uint64_t>& seqs);
  bool Credit(uint32_t n);
  // A Ping/Pong round trip: once it returns, the broker has handled every frame sent before.
  bool Sync();
  bool WaitClosed() { return conn_.WaitClosed(); }

  const crypto::PeerId& id() const { return noise_.key().public_key; }
  const crypto::KeyPair& key() const { return noise_.key(); }

 private:
  std::optional<mesh::v1::Frame> Read(std::chrono::milliseconds timeout = kTestDeadline);

  RawConnection conn_;
  RawNoiseClient noise_;
  std::deque<mesh::v1::Deliver> delivers_;
  std::deque<mesh::v1::SendAck> acks_;
  std::deque<mesh::v1::Frame> others_;
  uint64_t next_nonce_ = 1;
};

// A peer on the real client library, with its own io_context thread.
class LibraryPeer {
 public:
  explicit LibraryPeer(std::vector<std::string> brokers,
                       crypto::KeyPair key = crypto::KeyPair::Generate(),
                       std::function<void(client::SessionOptions&)> tweak = {});
  ~LibraryPeer();

  client::SendResult Send(const crypto::PeerId& to, std::string payload, uint32_t ttl_s = 0);
  // Waits until at least n messages have arrived; returns them all.
  std::vector<client::Message> WaitForMessages(size_t n,
                                               std::chrono::milliseconds timeout = kTestDeadline);
  bool WaitConnected(std::chrono::milliseconds timeout = kTestDeadline);
  void Close();

  const crypto::PeerId& id() const { return key_.public_key; }
  client::Session& session() { return *session_; }

 private:
  crypto::KeyPair key_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::shared_ptr<client::Session> session_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::vector<client::Message> messages_;
  bool connected_ = false;
  std::atomic<bool> finished_{false};
};

}  // namespace mesh::testing
