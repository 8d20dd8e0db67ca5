// The client library for applications: a long-lived session with a broker that reconnects with
// backoff, keeps unacknowledged sends in a pending queue and retries them with the same id, hands
// each received message to the application once (dedup by (from, id), optionally across
// restarts) and acknowledges it after the handler returns (DESIGN §3, delivery guarantee).
#pragma once

#include <array>
#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "client/client.h"
#include "crypto/crypto.h"
#include "mesh/v1/wire.pb.h"

namespace mesh::client {

using MessageId = std::array<uint8_t, 16>;

// The longest wait before reconnecting that a broker's GoAway can ask for: retry_after_ms goes
// up to 49 days, and one broken or malicious broker must not park its clients that long.
inline constexpr std::chrono::milliseconds kMaxGoAwayRetry{60'000};

// The wait a GoAway's retry_after_ms asks for, at most kMaxGoAwayRetry.
std::chrono::milliseconds GoAwayRetryDelay(uint32_t retry_after_ms);

struct SessionOptions {
  std::vector<std::string> brokers;      // HOST:PORT, tried in turn
  const crypto::KeyPair* key = nullptr;  // borrowed; must outlive the session
  std::optional<crypto::CipherSuite> suite;
  peer::LinkConfig link;
  std::string agent = "mesh-client/0.1";
  std::chrono::milliseconds connect_timeout{10'000};
  BrokerTrust trust;  // a broker that fails it counts as unreachable
  std::chrono::milliseconds backoff_min{100};
  std::chrono::milliseconds backoff_max{5'000};
  uint32_t credit = 256;  // deliveries in flight at once
  // Hand at most this many messages to the application (0: no limit). Later deliveries are
  // neither handed on nor acknowledged, so the broker keeps them for the next session; the
  // credit never exceeds what is still wanted, so few of them are sent at all.
  uint64_t max_messages = 0;
  // A send not acknowledged within this is reported failed (the broker's dedup window).
  std::chrono::seconds give_up_after{600};
  // Received (from, id) pairs are remembered this long; with dedup_file, across restarts.
  std::chrono::seconds dedup_window{600};
  std::string dedup_file;
  // Messages expected within one dedup window, if known: the dedup set is sized for them up
  // front instead of growing (each growth rehashes it at once, a pause of milliseconds at
  // 10^5 entries).
  size_t dedup_expected = 0;
  // Seal payloads to the recipient's key and open sealed deliveries (crypto_box, DESIGN §3).
  bool seal = false;
  // A GoAway{REPLACED} says a newer session with this key exists. By default the session comes
  // back after `replaced_retry`: a member of the mesh that claimed the peer falsely, or a
  // session left behind, costs a blip and not the session for good. An application that runs
  // one key on several devices at once sets stop_when_replaced, or they would take turns.
  bool stop_when_replaced = false;
  std::chrono::milliseconds replaced_retry{1000};
};

struct SendResult {
  MessageId id{};
  mesh::v1::SendAck::Status status = mesh::v1::SendAck::STATUS_UNSPECIFIED;
  std::string detail;
  bool ok() const {
    return status == mesh::v1::SendAck::ACCEPTED || status == mesh::v1::SendAck::DUPLICATE;
  }
};

struct Message {
  crypto::PeerId from;
  MessageId id{};
  std::string payload;  // opened, when the session seals
  uint64_t sent_at_ms = 0;
  absl::Status sealed_status;  // with seal: why the payload could not be opened, else OK
};

struct SessionStats {
  uint64_t connects = 0;
  uint64_t sends = 0;
  uint64_t resent = 0;
  uint64_t received = 0;
  uint64_t duplicates_dropped = 0;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  using MessageHandler = std::function<void(const Message&)>;
  using SendCallback = std::function<void(const SendResult&)>;
  // connected, and the reason the last link ended (or the last dial failed).
  using StateHandler = std::function<void(bool connected, const absl::Status& why)>;

  // The executor must be single-threaded (one io_context run by one thread): the handlers run
  // on it. Everything public is thread-safe.
  static std::shared_ptr<Session> Create(boost::asio::any_io_executor executor,
                                         SessionOptions options);
  ~Session();

  // Set before Start().
  void OnMessage(MessageHandler handler) { on_message_ = std::move(handler); }
  // connected = false with an AlreadyExists status: replaced by a newer session with this key
  // (the session reconnects unless stop_when_replaced).
  void OnState(StateHandler handler) { on_state_ = std::move(handler); }
  absl::Status Start();  // loads the dedup file, then connects in the background

  // Queues a message; `done` runs on the executor with the broker's SendAck, or a local
  // refusal (TOO_LARGE over the broker's max_payload, INVALID after give_up_after).
  void Send(const crypto::PeerId& to, std::string payload, SendCallback done, uint32_t ttl_s = 0);
  std::future<SendResult> Send(const crypto::PeerId& to, std::string payload, uint32_t ttl_s = 0);

  // Stops: no reconnects, the link closes, pending sends fail with STATUS_UNSPECIFIED.
  void Close();

  // Read on the executor.
  const SessionStats& stats() const { return stats_; }
  bool connected() const { return link_ != nullptr; }

 private:
  struct PendingSend;
  struct Dedup;
  Session(boost::asio::any_io_executor executor, SessionOptions options);

  boost::asio::awaitable<void> ConnectLoop();
  boost::asio::awaitable<void> GiveUpLoop();
  absl::Status OnFrame(mesh::v1::Frame& frame);
  void OnDeliver(mesh::v1::Deliver& deliver);
  void FlushAcks();
  void Transmit(const PendingSend& send);
  void Finish(const MessageId& id, mesh::v1::SendAck::Status status, std::string detail);
  MessageId NextId();

  boost::asio::any_io_executor executor_;
  SessionOptions options_;
  MessageHandler on_message_;
  StateHandler on_state_;
  std::shared_ptr<peer::Link> link_;
  size_t max_payload_;
  bool closed_ = false;
  std::chrono::milliseconds retry_hint_{0};
  bool replaced_ = false;  // the link ended with GoAway{REPLACED}
  uint64_t next_order_ = 0;
  uint64_t handed_ = 0;  // messages handed to the application, against max_messages
  std::map<uint64_t, PendingSend> pending_;  // in send order
  absl::flat_hash_map<MessageId, uint64_t> pending_by_id_;
  std::vector<uint64_t> acks_;  // DeliverAck seqs not yet sent
  std::unique_ptr<Dedup> dedup_;
  SessionStats stats_;
  // Message ids: 8 random bytes drawn once per session, then a counter. Unique per key in
  // practice (two sessions of one key collide with chance 2^-64), without a getrandom call
  // per message.
  std::array<uint8_t, 8> id_prefix_{};
  std::atomic<uint64_t> id_counter_{0};
  std::shared_ptr<boost::asio::steady_timer> wake_;  // cut the backoff short on Close()
  std::shared_ptr<boost::asio::steady_timer> give_up_timer_;
};

}  // namespace mesh::client
