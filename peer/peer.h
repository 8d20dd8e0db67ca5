// The peer module's front door: one authenticated, encrypted link over TCP or a WebSocket
// (DESIGN §3).
// A Link lives on the executor of its socket (one shard's io_context); every method but the
// static constructors must be called there. Cross-thread callers post to get_executor().
#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "crypto/crypto.h"
#include "mesh/v1/cluster.pb.h"
#include "mesh/v1/wire.pb.h"
#include "peer/counter.h"
#include "peer/listener.h"
#include "peer/memory_budget.h"
#include "peer/proxy_protocol.h"
#include "peer/record.h"
#include "peer/stream.h"
#include "peer/wire.h"

namespace mesh::peer {

using boost::asio::awaitable;
using Clock = std::chrono::steady_clock;

struct LinkConfig {
  std::chrono::milliseconds handshake_timeout = kDefaultHandshakeTimeout;
  std::chrono::milliseconds heartbeat_interval = kDefaultHeartbeatInterval;
  std::chrono::milliseconds frame_timeout = kDefaultFrameTimeout;
  size_t max_payload = kDefaultMaxPayload;
  MemoryBudget* frame_budget = nullptr;  // borrowed; null means unbounded
  std::string budget_owner;              // whose share of frame_budget a link draws on
  // Cluster links (DESIGN §5): the cluster secret, mixed in as Noise_XXpsk3's PSK. Borrowed.
  const crypto::Secret<crypto::kKeySize>* psk = nullptr;
  // A responder also accepts this one (the next secret, while it is rotated in). Borrowed.
  const crypto::Secret<crypto::kKeySize>* psk_next = nullptr;

  // Replies queued for a link that does not read them: over this, the link stops reading
  // (so it earns no more) until its writes drain; 0 means 2 x max_frame. A link stuck over it
  // for frame_timeout is closed STALLED.
  size_t max_queued_bytes = 0;
  // Whether a peer's Ping is answered: the broker charges it to the peer's rate, so a Ping
  // flood costs what a Send flood does. Null answers every Ping. Borrowed by the links.
  std::function<bool(const crypto::PeerId&)> ping_allowed;

  size_t max_frame() const { return max_payload + kFrameOverhead; }
  size_t max_queued() const { return max_queued_bytes > 0 ? max_queued_bytes : 2 * max_frame(); }
};

// What the links of one listener (or one client) did, as plain counters; broker/ exports them.
struct LinkStats {
  static constexpr int kReasons = mesh::v1::ErrorCode_ARRAYSIZE;

  std::atomic<uint64_t> handshakes_started{0};
  std::atomic<uint64_t> handshakes_completed{0};
  LatencyHistogram handshake_duration;  // of completed handshakes
  std::atomic<int64_t> links_open{0};
  ShardedCounter<uint64_t> frames_received;  // per frame or read: sharded
  ShardedCounter<uint64_t> frames_sent;      // per frame or read: sharded
  ShardedCounter<uint64_t> bytes_received;   // per frame or read: sharded
  ShardedCounter<uint64_t> bytes_sent;       // per frame or read: sharded
  // Links ended by a protocol violation or failure, by reason (index = ErrorCode).
  std::array<std::atomic<uint64_t>, kReasons> failures{};

  void CountFailure(mesh::v1::ErrorCode code);
};

// When Connect failed because the other side refused the preamble: the suites it speaks
// (bit (suite id - 1)), so the caller may retry once with the best common one.
std::optional<uint8_t> RefusedSuites(const absl::Status& status);

class Link : public std::enable_shared_from_this<Link> {
 public:
  using Socket = boost::asio::ip::tcp::socket;
  // Called for each frame but Ping (answered here); a non-OK status closes the link with it.
  using FrameHandler = std::function<absl::Status(mesh::v1::Frame&)>;
  // The same for a cluster link, which carries ClusterFrames only.
  using ClusterHandler = std::function<absl::Status(mesh::v1::ClusterFrame&)>;
  // An initiator's check of the responder: its proven static key and the Hello of message 2.
  // A non-OK status ends the handshake before message 3, which carries the initiator's static
  // key and Hello, so a refused responder never learns who dialled it.
  using RemoteVerifier =
      std::function<absl::Status(const crypto::PeerId& remote, const mesh::v1::Hello& hello)>;

  // Responder: reads the preamble (answering a refused one), runs the handshake, sending `hello`
  // in message 2. On failure the socket is closed and the status carries the reason.
  static awaitable<absl::StatusOr<std::shared_ptr<Link>>> Accept(
      Socket socket, const crypto::KeyPair& key, mesh::v1::Hello hello, LinkKind kind,
      const LinkConfig& config, LinkStats& stats);
  // The same over any transport (a WebSocket: DESIGN §3).
  static awaitable<absl::StatusOr<std::shared_ptr<Link>>> Accept(
      std::unique_ptr<ByteStream> stream, const crypto::KeyPair& key, mesh::v1::Hello hello,
      LinkKind kind, const LinkConfig& config, LinkStats& stats);
  // Initiator: sends the preamble and `hello` in message 3. The heartbeat interval becomes the
  // one the responder announces. A refused preamble fails with the refusal in the message.
  // A cluster link (kind kCluster) needs config.psk, and so does its responder. `verify`, when
  // set, runs between messages 2 and 3; its refusal is Connect's status.
  static awaitable<absl::StatusOr<std::shared_ptr<Link>>> Connect(
      Socket socket, const crypto::KeyPair& key, mesh::v1::Hello hello, crypto::CipherSuite suite,
      const LinkConfig& config, LinkStats& stats, LinkKind kind = LinkKind::kPeer,
      RemoteVerifier verify = {});
  static awaitable<absl::StatusOr<std::shared_ptr<Link>>> Connect(
      std::unique_ptr<ByteStream> stream, const crypto::KeyPair& key, mesh::v1::Hello hello,
      crypto::CipherSuite suite, const LinkConfig& config, LinkStats& stats,
      LinkKind kind = LinkKind::kPeer, RemoteVerifier verify = {});
  ~Link();

  // Reads frames until the link ends, answers Ping, pings when idle and closes a link silent
  // for kMissedHeartbeats intervals. Returns why the link ended (OK: the other side closed).
  awaitable<absl::Status> Run(FrameHandler on_frame);
  // Run for a cluster link.
  awaitable<absl::Status> RunCluster(ClusterHandler on_frame);
  // Queues a frame; frames go out in order, coalesced into few writes.
  void Send(const mesh::v1::Frame& frame);
  void Send(const mesh::v1::ClusterFrame& frame);
  // Ends the link: an Error frame first when `reason` carries a protocol violation, then close.
  void Close(absl::Status reason);

  const crypto::PeerId& remote_id() const { return remote_id_; }
  const mesh::v1::Hello& remote_hello() const { return remote_hello_; }
  crypto::CipherSuite suite() const { return send_.suite(); }
  size_t queued_bytes() const { return out_.size() + in_flight_.size(); }
  bool closed() const { return closing_; }
  ByteStream::Executor get_executor() { return stream_->get_executor(); }

 private:
  Link(std::unique_ptr<ByteStream> stream, const LinkConfig& config, LinkStats& stats);

  awaitable<absl::Status> Handshake(const crypto::KeyPair& key, mesh::v1::Hello hello,
                                    bool initiator, crypto::CipherSuite suite, LinkKind kind,
                                    const RemoteVerifier& verify = {});
  awaitable<absl::Status> ReadPreamble(LinkKind kind, crypto::CipherSuite& suite);
  awaitable<absl::StatusOr<crypto::Bytes>> ReadHandshakeMessage();
  awaitable<absl::Status> WriteHandshakeMessage(const crypto::Bytes& message);
  awaitable<absl::Status> ReadLoop(FrameHandler& on_frame);
  // Why reading stopped for a while: the shared frame budget is spent, or replies wait unread.
  enum class Pause { kNone, kBudget, kOutput };
  absl::Status ProcessRecords(FrameHandler& on_frame, size_t& consumed, bool& completed_frame,
                              Pause& pause);

  absl::Status Dispatch(crypto::ByteSpan frame_bytes, FrameHandler& on_frame);
  absl::Status DispatchCluster(crypto::ByteSpan frame_bytes);
  void SendMessage(const google::protobuf::MessageLite& frame);
  absl::Status AppendFrame(const google::protobuf::MessageLite& frame);
  awaitable<void> WriteLoop();
  awaitable<void> Watchdog();
  // The reason an I/O error ended the link: a deadline the watchdog enforced, or the error.
  absl::Status IoFailure(const boost::system::error_code& ec, absl::string_view during);
  void CloseSocket();
  void WakeWriter();
  void ReleaseFrameBudget();

  std::unique_ptr<ByteStream> stream_;
  LinkConfig config_;
  LinkStats& stats_;
  LinkKind kind_ = LinkKind::kPeer;
  ClusterHandler on_cluster_;  // set by RunCluster
  crypto::CipherState send_;
  crypto::CipherState receive_;
  crypto::PeerId remote_id_;
  mesh::v1::Hello remote_hello_;
  bool established_ = false;
  bool closing_ = false;
  absl::Status close_reason_;  // set by Close() or the watchdog
  Clock::time_point started_;  // link accepted or dialled: the handshake deadline runs from it
  Clock::time_point last_received_;
  Clock::time_point last_sent_;
  std::optional<Clock::time_point> partial_since_;  // a record or frame is half received
  std::optional<Clock::time_point> write_started_;
  std::optional<Clock::time_point> close_started_;

  std::unique_ptr<uint8_t[]> read_buffer_;  // kReadBufferSize bytes while data is pending
  size_t read_size_ = 0;
  FrameAssembler assembler_;
  size_t budget_held_ = 0;
  bool head_decrypted_ = false;  // the record at the front of read_buffer_ waits for budget
  crypto::Bytes scratch_;
  crypto::Bytes out_;                  // records queued, not yet handed to the socket
  bool pack_records_ = false;          // the other side's Hello says it reads packed records
  std::optional<size_t> open_record_;  // where in out_ the packed record being filled starts
  crypto::Bytes in_flight_;            // records being written
  boost::asio::steady_timer watchdog_timer_;
  boost::asio::steady_timer write_signal_;  // cancelled to wake the writer
  bool writer_waiting_ = false;             // the writer sleeps on write_signal_
  boost::asio::steady_timer read_signal_;   // cancelled to wake a reader paused on output
  bool reader_waiting_ = false;
};

}  // namespace mesh::peer
