#include "tests/integration/test_peers.h"

#include <gtest/gtest.h>

namespace mesh::testing {

std::string RandomId() {
  std::string id(16, '\0');
  randombytes_buf(id.data(), id.size());
  return id;
}

std::string Raw(const crypto::PeerId& id) {
  return std::string(reinterpret_cast<const char*>(id.bytes.data()), id.bytes.size());
}

FramePeer::FramePeer(uint16_t port, crypto::KeyPair key) : conn_(port), noise_(std::move(key)) {}

::testing::AssertionResult FramePeer::Connect(uint32_t credit) {
  if (!conn_.connected()) return ::testing::AssertionFailure() << "cannot connect";
  if (auto status = noise_.Handshake(conn_); !status.ok()) {
    return ::testing::AssertionFailure() << "handshake: " << status;
  }
  if (credit > 0 && !Credit(credit)) return ::testing::AssertionFailure() << "credit not sent";
  return ::testing::AssertionSuccess();
}

bool FramePeer::SendNoWait(const crypto::PeerId& to, std::string payload, std::string id,
                           uint32_t ttl_s) {
  mesh::v1::Frame frame;
  auto* send = frame.mutable_send();
  send->set_id(std::move(id));
  send->set_to(Raw(to));
  send->set_payload(std::move(payload));
  send->set_ttl_s(ttl_s);
  return noise_.SendFrame(conn_, frame);
}

std::optional<mesh::v1::SendAck> FramePeer::Send(const crypto::PeerId& to, std::string payload,
                                                 std::string id, uint32_t ttl_s) {
  if (!SendNoWait(to, std::move(payload), id, ttl_s)) return std::nullopt;
  return AwaitAck(id);
}

std::optional<mesh::v1::Frame> FramePeer::Read(std::chrono::milliseconds timeout) {
  auto frame = noise_.ReadFrame(conn_, true, timeout);
  if (!frame) return std::nullopt;
  if (frame->has_deliver()) {
    delivers_.push_back(frame->deliver());
  } else if (frame->has_send_ack()) {
    acks_.push_back(frame->send_ack());
  } else {
    others_.push_back(*frame);
  }
  return frame;
}

std::optional<mesh::v1::SendAck> FramePeer::AwaitAck(const std::string& id) {
  for (;;) {
    for (auto it = acks_.begin(); it != acks_.end(); ++it) {
      if (it->id() == id) {
        auto ack = *it;
        acks_.erase(it);
        return ack;
      }
    }
    if (!Read()) return std::nullopt;
  }
}

std::optional<mesh::v1::Deliver> FramePeer::NextDeliver(std::chrono::milliseconds timeout) {
  while (delivers_.empty()) {
    if (!Read(timeout)) return std::nullopt;
  }
  auto deliver = delivers_.front();
  delivers_.pop_front();
  return deliver;
}

std::optional<mesh::v1::Frame> FramePeer::NextOtherFrame() {
  while (others_.empty()) {
    if (!Read()) return std::nullopt;
  }
  auto frame = others_.front();
  others_.pop_front();
  return frame;
}

bool FramePeer::Ack(const std::vector<uint64_t>& seqs) {
  mesh::v1::Frame frame;
  for (uint64_t seq : seqs) frame.mutable_deliver_ack()->add_seqs(seq);
  return noise_.SendFrame(conn_, frame);
}

bool FramePeer::Sync() {
  const uint64_t nonce = next_nonce_++;
  mesh::v1::Frame ping;
  ping.mutable_ping()->set_nonce(nonce);
  if (!noise_.SendFrame(conn_, ping)) return false;
  for (;;) {
    for (auto it = others_.begin(); it != others_.end(); ++it) {
      if (it->has_pong() && it->pong().nonce() == nonce) {
        others_.erase(it);
        return true;
      }
    }
    if (!Read()) return false;
  }
}

bool FramePeer::Credit(uint32_t n) {
  mesh::v1::Frame frame;
  frame.mutable_credit()->set_n(n);
  return noise_.SendFrame(conn_, frame);
}

LibraryPeer::LibraryPeer(std::vector<std::string> brokers, crypto::KeyPair key,
                         std::function<void(client::SessionOptions&)> tweak)
    : key_(std::move(key)), work_(boost::asio::make_work_guard(io_)) {
  client::SessionOptions options;
  options.brokers = std::move(brokers);
  options.key = &key_;
  options.agent = "mesh-test";
  options.backoff_max = std::chrono::milliseconds(500);
  if (tweak) tweak(options);
  session_ = client::Session::Create(io_.get_executor(), options);
  session_->OnMessage([this](const client::Message& message) {
    std::lock_guard lock(mu_);
    messages_.push_back(message);
    changed_.notify_all();
  });
  session_->OnState([this](bool connected, const absl::Status&) {
    std::lock_guard lock(mu_);
    connected_ = connected;
    changed_.notify_all();
  });
  EXPECT_TRUE(session_->Start().ok());
  thread_ = std::thread([this] {
    io_.run();
    finished_ = true;
  });
}

LibraryPeer::~LibraryPeer() {
  // Let the session close its link (DeliverAcks flushed) and end on its own; stop it only if
  // that takes longer than a test deadline.
  Close();
  work_.reset();
  const auto deadline = std::chrono::steady_clock::now() + kTestDeadline;
  while (!finished_ && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  io_.stop();
  thread_.join();
}

void LibraryPeer::Close() { session_->Close(); }

client::SendResult LibraryPeer::Send(const crypto::PeerId& to, std::string payload,
                                     uint32_t ttl_s) {
  auto future = session_->Send(to, std::move(payload), ttl_s);
  if (future.wait_for(kTestDeadline) != std::future_status::ready) return {};
  return future.get();
}

std::vector<client::Message> LibraryPeer::WaitForMessages(size_t n,
                                                          std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  changed_.wait_for(lock, timeout, [&] { return messages_.size() >= n; });
  return messages_;
}

bool LibraryPeer::WaitConnected(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return changed_.wait_for(lock, timeout, [&] { return connected_; });
}

}  // namespace mesh::testing
