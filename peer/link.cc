// One link: preamble, Noise XX handshake, record-layer reads and coalesced writes, heartbeats
// and deadlines. Three coroutines share the link on its executor: the reader (Run), the writer
// and the watchdog, which enforces every deadline and sends heartbeats.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cstring>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "peer/peer.h"

namespace mesh::peer {
namespace {

namespace asio = boost::asio;
using asio::redirect_error;
using asio::use_awaitable;
using boost::system::error_code;
using mesh::v1::ErrorCode;

// Room for one whole transport message and its length prefix.
constexpr size_t kReadBufferSize = kLengthPrefixSize + kMaxNoiseMessage;
// Buffers above this are given back once drained, so idle links stay small.
constexpr size_t kKeepBufferSize = size_t{16} * 1024;
// How long a closing link may take to flush its Error frame.
constexpr std::chrono::milliseconds kCloseGrace{2000};
// How often a link paused by the frame memory budget retries.
constexpr std::chrono::milliseconds kBudgetRetry{5};
constexpr char kRefusedSuitesUrl[] = "type.mesh/refused-suites";

// Read buffers recycled per thread: a busy link returns its buffer each time it has consumed
// everything (so idle links hold none) and takes one again microseconds later.
class ReadBufferPool {
 public:
  std::unique_ptr<uint8_t[]> Take() {
    if (free_.empty()) return std::unique_ptr<uint8_t[]>(new uint8_t[kReadBufferSize]);
    auto buffer = std::move(free_.back());
    free_.pop_back();
    return buffer;
  }
  void Give(std::unique_ptr<uint8_t[]> buffer) {
    if (buffer && free_.size() < kMaxCached) free_.push_back(std::move(buffer));
  }

 private:
  static constexpr size_t kMaxCached = 16;
  std::vector<std::unique_ptr<uint8_t[]>> free_;
};

thread_local ReadBufferPool read_buffers;

void ShrinkIfLarge(crypto::Bytes& buffer) {
  if (buffer.capacity() > kKeepBufferSize) crypto::Bytes().swap(buffer);
}

// A crypto failure while reading a handshake message, as a protocol-violation reason.
absl::Status HandshakeFailure(const absl::Status& status, int message) {
  ErrorCode code = status.code() == absl::StatusCode::kPermissionDenied
                       ? mesh::v1::BAD_KEY
                       : mesh::v1::HANDSHAKE_FAILED;
  return LinkError(code, absl::StrCat("handshake message ", message, ": ", status.message()));
}

absl::Status RefusalError(const Refusal& refusal) {
  ErrorCode code = mesh::v1::WRONG_LINK_KIND;
  std::string what = "link kind not served on this port";
  if (refusal.reason == RefusalReason::kVersion) {
    code = mesh::v1::UNSUPPORTED_VERSION;
    what = "protocol version not spoken";
  } else if (refusal.reason == RefusalReason::kSuite) {
    code = mesh::v1::UNSUPPORTED_SUITE;
    what = "cipher suite not spoken";
  }
  absl::Status status =
      LinkError(code, absl::StrCat("the other side refused the preamble: ", what,
                                   " (suites it speaks: mask ", refusal.suites, ")"));
  status.SetPayload(kRefusedSuitesUrl, absl::Cord(std::to_string(refusal.suites)));
  return status;
}

}  // namespace

std::optional<uint8_t> RefusedSuites(const absl::Status& status) {
  auto payload = status.GetPayload(kRefusedSuitesUrl);
  int mask = 0;
  if (!payload || !absl::SimpleAtoi(std::string(*payload), &mask)) return std::nullopt;
  return static_cast<uint8_t>(mask);
}

void LinkStats::CountFailure(ErrorCode code) {
  if (code != mesh::v1::ERROR_CODE_UNSPECIFIED)
    failures[code].fetch_add(1, std::memory_order_relaxed);
}

Link::Link(std::unique_ptr<ByteStream> stream, const LinkConfig& config, LinkStats& stats)
    : stream_(std::move(stream)),
      config_(config),
      stats_(stats),
      assembler_(config.max_frame()),
      watchdog_timer_(stream_->get_executor()),
      write_signal_(stream_->get_executor()),
      read_signal_(stream_->get_executor()) {
  started_ = last_received_ = last_sent_ = Clock::now();
  write_signal_.expires_at(Clock::time_point::max());
  read_signal_.expires_at(Clock::time_point::max());
}

Link::~Link() { CloseSocket(); }

awaitable<absl::StatusOr<std::shared_ptr<Link>>> Link::Accept(Socket socket,
                                                              const crypto::KeyPair& key,
                                                              mesh::v1::Hello hello, LinkKind kind,
                                                              const LinkConfig& config,
                                                              LinkStats& stats) {
  co_return co_await Accept(TcpStream(std::move(socket)), key, std::move(hello), kind, config,
                            stats);
}

awaitable<absl::StatusOr<std::shared_ptr<Link>>> Link::Accept(std::unique_ptr<ByteStream> stream,
                                                              const crypto::KeyPair& key,
                                                              mesh::v1::Hello hello, LinkKind kind,
                                                              const LinkConfig& config,
                                                              LinkStats& stats) {
  std::shared_ptr<Link> link(new Link(std::move(stream), config, stats));
  absl::Status status = co_await link->Handshake(key, std::move(hello), /*initiator=*/false,
                                                 crypto::CipherSuite::kAesGcm, kind);
  if (!status.ok()) co_return status;
  co_return link;
}

awaitable<absl::StatusOr<std::shared_ptr<Link>>> Link::Connect(
    Socket socket, const crypto::KeyPair& key, mesh::v1::Hello hello, crypto::CipherSuite suite,
    const LinkConfig& config, LinkStats& stats, LinkKind kind, RemoteVerifier verify) {
  co_return co_await Connect(TcpStream(std::move(socket)), key, std::move(hello), suite, config,
                             stats, kind, std::move(verify));
}

awaitable<absl::StatusOr<std::shared_ptr<Link>>> Link::Connect(
    std::unique_ptr<ByteStream> stream, const crypto::KeyPair& key, mesh::v1::Hello hello,
    crypto::CipherSuite suite, const LinkConfig& config, LinkStats& stats, LinkKind kind,
    RemoteVerifier verify) {
  std::shared_ptr<Link> link(new Link(std::move(stream), config, stats));
  absl::Status status =
      co_await link->Handshake(key, std::move(hello), /*initiator=*/true, suite, kind, verify);
  if (!status.ok()) co_return status;
  co_return link;
}

awaitable<absl::Status> Link::Handshake(const crypto::KeyPair& key, mesh::v1::Hello hello,
                                        bool initiator, crypto::CipherSuite suite, LinkKind kind,
                                        const RemoteVerifier& verify) {
  stats_.handshakes_started.fetch_add(1, std::memory_order_relaxed);
  kind_ = kind;
  asio::co_spawn(stream_->get_executor(), Watchdog(), asio::detached);
  absl::Status status = co_await [&]() -> awaitable<absl::Status> {
    Preamble preamble = EncodePreamble(suite, kind);
    if (!initiator) {
      if (auto st = co_await ReadPreamble(kind, suite); !st.ok()) co_return st;
      preamble = EncodePreamble(suite, kind);
    }
    crypto::HandshakeConfig hs_config;
    hs_config.suite = suite;
    hs_config.initiator = initiator;
    hs_config.prologue.assign(preamble.begin(), preamble.end());
    hs_config.static_key = &key;
    if (kind == LinkKind::kCluster) {
      if (config_.psk == nullptr) {
        co_return LinkError(mesh::v1::INTERNAL, "a cluster link needs the cluster secret");
      }
      hs_config.pattern = crypto::Pattern::kXXpsk3;
      hs_config.psk = *config_.psk;
    }
    auto hs = crypto::HandshakeState::Create(std::move(hs_config));
    if (!hs.ok()) co_return LinkError(mesh::v1::UNSUPPORTED_SUITE, hs.status().message());

    hello.set_packed_records(true);  // ProcessRecords reads them
    const std::string hello_bytes = hello.SerializeAsString();
    const crypto::ByteSpan hello_span(reinterpret_cast<const uint8_t*>(hello_bytes.data()),
                                      hello_bytes.size());
    crypto::Bytes message, payload;
    auto parse_hello = [&]() -> absl::Status {
      if (!remote_hello_.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
        return LinkError(mesh::v1::MALFORMED_FRAME, "handshake payload is not a mesh.v1.Hello");
      }
      return absl::OkStatus();
    };
    auto read_step = [&](int number) -> awaitable<absl::Status> {
      auto received = co_await ReadHandshakeMessage();
      if (!received.ok()) co_return received.status();
      if (auto st = hs->ReadMessage(*received, payload); !st.ok()) {
        co_return HandshakeFailure(st, number);
      }
      co_return absl::OkStatus();
    };
    if (initiator) {
      message.assign(preamble.begin(), preamble.end());
      message.resize(kPreambleSize + kLengthPrefixSize);  // length filled below
      if (auto st = hs->WriteMessage({}, message); !st.ok())
        co_return LinkError(mesh::v1::INTERNAL, st.message());
      const size_t length = message.size() - kPreambleSize - kLengthPrefixSize;
      message[kPreambleSize] = static_cast<uint8_t>(length >> 8);
      message[kPreambleSize + 1] = static_cast<uint8_t>(length);
      error_code ec;
      co_await stream_->Write(asio::buffer(message), kPreambleSize, ec);
      if (ec) co_return IoFailure(ec, "handshake message 1");
      if (auto st = co_await read_step(2); !st.ok()) co_return st;
      if (auto st = parse_hello(); !st.ok()) co_return st;
      // The responder is checked before message 3 reveals who we are.
      if (verify) {
        if (auto st = verify(*hs->remote_static(), remote_hello_); !st.ok()) co_return st;
      }
      message.clear();
      if (auto st = hs->WriteMessage(hello_span, message); !st.ok())
        co_return LinkError(mesh::v1::INTERNAL, st.message());
      if (auto st = co_await WriteHandshakeMessage(message); !st.ok()) co_return st;
    } else {
      if (auto st = co_await read_step(1); !st.ok()) co_return st;
      if (!payload.empty()) {
        co_return LinkError(mesh::v1::HANDSHAKE_FAILED,
                            "handshake message 1 must carry no payload");
      }
      if (auto st = hs->WriteMessage(hello_span, message); !st.ok())
        co_return LinkError(mesh::v1::INTERNAL, st.message());
      if (auto st = co_await WriteHandshakeMessage(message); !st.ok()) co_return st;
      if (kind == LinkKind::kCluster && config_.psk_next != nullptr) {
        // Message 3 mixes the PSK in: a copy taken before it tries the next secret.
        crypto::HandshakeState next = hs->CloneWithPsk(*config_.psk_next);
        auto received = co_await ReadHandshakeMessage();
        if (!received.ok()) co_return received.status();
        if (!hs->ReadMessage(*received, payload).ok()) {
          payload.clear();
          if (auto st = next.ReadMessage(*received, payload); !st.ok()) {
            co_return HandshakeFailure(st, 3);
          }
          *hs = std::move(next);
        }
      } else if (auto st = co_await read_step(3); !st.ok()) {
        co_return st;
      }
      if (auto st = parse_hello(); !st.ok()) co_return st;
    }
    crypto::TransportCiphers ciphers = hs->Split();
    send_ = std::move(ciphers.send);
    receive_ = std::move(ciphers.receive);
    remote_id_ = *hs->remote_static();
    pack_records_ = remote_hello_.packed_records();
    co_return absl::OkStatus();
  }();

  if (!status.ok()) {
    stats_.CountFailure(ErrorCodeOf(status));
    if (close_reason_.ok()) close_reason_ = status;  // the transport closes saying why
    CloseSocket();
    co_return status;
  }
  if (initiator && remote_hello_.limits().heartbeat_interval_ms() > 0) {
    config_.heartbeat_interval =
        std::chrono::milliseconds(remote_hello_.limits().heartbeat_interval_ms());
  }
  established_ = true;
  last_received_ = last_sent_ = Clock::now();
  stats_.handshakes_completed.fetch_add(1, std::memory_order_relaxed);
  const auto handshake =
      std::chrono::duration_cast<std::chrono::microseconds>(last_received_ - started_);
  stats_.handshake_duration.Observe(handshake);
  stats_.links_open.fetch_add(1, std::memory_order_relaxed);
  watchdog_timer_.cancel();  // the handshake deadline is over; heartbeats start
  asio::co_spawn(stream_->get_executor(), WriteLoop(), asio::detached);
  co_return absl::OkStatus();
}

awaitable<absl::Status> Link::ReadPreamble(LinkKind kind, crypto::CipherSuite& suite) {
  Preamble preamble;
  error_code ec;
  co_await ReadExact(*stream_, asio::buffer(preamble), ec);
  if (ec) co_return IoFailure(ec, "the preamble");
  if (!std::equal(kMagic.begin(), kMagic.end(), preamble.begin()) || preamble[7] != 0) {
    co_return LinkError(mesh::v1::BAD_PREAMBLE, "connection does not start with a MESH preamble");
  }
  std::optional<RefusalReason> refusal;
  absl::Status status;
  const uint8_t suite_id = preamble[5];
  if (preamble[4] != kProtocolVersion) {
    refusal = RefusalReason::kVersion;
    status = LinkError(mesh::v1::UNSUPPORTED_VERSION,
                       absl::StrCat("protocol version ", preamble[4], " is not spoken here"));
  } else if ((suite_id != 1 && suite_id != 2) ||
             !crypto::SuiteAvailable(static_cast<crypto::CipherSuite>(suite_id))) {
    refusal = RefusalReason::kSuite;
    status = LinkError(mesh::v1::UNSUPPORTED_SUITE,
                       absl::StrCat("cipher suite ", suite_id, " is not spoken here"));
  } else if (preamble[6] != static_cast<uint8_t>(kind)) {
    refusal = RefusalReason::kLinkKind;
    status = LinkError(mesh::v1::WRONG_LINK_KIND,
                       absl::StrCat("link kind ", preamble[6], " is not served on this port"));
  }
  if (refusal) {
    Preamble answer = EncodeRefusal(*refusal);
    co_await stream_->Write(asio::buffer(answer), answer.size(), ec);
    co_return status;
  }
  suite = static_cast<crypto::CipherSuite>(suite_id);
  co_return absl::OkStatus();
}

awaitable<absl::StatusOr<crypto::Bytes>> Link::ReadHandshakeMessage() {
  uint8_t prefix[kLengthPrefixSize];
  error_code ec;
  co_await ReadExact(*stream_, asio::buffer(prefix), ec);
  if (ec) co_return IoFailure(ec, "a handshake message");
  if (prefix[0] == kMagic[0] && prefix[1] == kMagic[1]) {
    // A refusal: "ME" cannot start a handshake message, whose length is at most 1 KiB.
    Preamble answer{prefix[0], prefix[1]};
    co_await ReadExact(*stream_, asio::buffer(answer.data() + 2, kPreambleSize - 2), ec);
    if (auto refusal = ParseRefusal(answer); !ec && refusal) co_return RefusalError(*refusal);
  }
  const size_t length = (size_t{prefix[0]} << 8) | prefix[1];
  if (length > kMaxHandshakeMessage) {
    co_return LinkError(
        mesh::v1::HANDSHAKE_TOO_LARGE,
        absl::StrCat("handshake message of ", length, " bytes exceeds ", kMaxHandshakeMessage));
  }
  crypto::Bytes message(length);
  co_await ReadExact(*stream_, asio::buffer(message), ec);
  if (ec) co_return IoFailure(ec, "a handshake message");
  co_return message;
}

awaitable<absl::Status> Link::WriteHandshakeMessage(const crypto::Bytes& message) {
  crypto::Bytes prefixed(kLengthPrefixSize + message.size());
  prefixed[0] = static_cast<uint8_t>(message.size() >> 8);
  prefixed[1] = static_cast<uint8_t>(message.size());
  std::copy(message.begin(), message.end(), prefixed.begin() + kLengthPrefixSize);
  error_code ec;
  co_await stream_->Write(asio::buffer(prefixed), 0, ec);
  if (ec) co_return IoFailure(ec, "writing a handshake message");
  co_return absl::OkStatus();
}

awaitable<absl::Status> Link::Run(FrameHandler on_frame) {
  auto self = shared_from_this();
  absl::Status status = co_await ReadLoop(on_frame);
  Close(status);
  stats_.CountFailure(ErrorCodeOf(close_reason_));
  co_return close_reason_;
}

awaitable<absl::Status> Link::ReadLoop(FrameHandler& on_frame) {
  asio::steady_timer budget_retry(stream_->get_executor());
  Pause pause = Pause::kNone;
  while (!closing_) {
    if (pause == Pause::kBudget) {
      budget_retry.expires_after(kBudgetRetry);
      error_code ec;
      co_await budget_retry.async_wait(redirect_error(use_awaitable, ec));
    } else if (pause == Pause::kOutput) {
      // The writer wakes us once the queue is under the cap; the watchdog's STALLED deadline
      // runs meanwhile, as the write that does not finish is what keeps the queue full.
      reader_waiting_ = true;
      error_code ec;
      co_await read_signal_.async_wait(redirect_error(use_awaitable, ec));
      reader_waiting_ = false;
    } else {
      error_code ec;
      size_t n = 0;
      bool have_read = false;
      if (read_size_ == 0) {
        // A busy link finds the next bytes already there: one non-blocking read. Only when
        // none are waiting does it park without a buffer (idle links hold none) on a
        // readiness wait, which costs asio an epoll_ctl each time.
        if (read_buffer_) {
          n = stream_->TryRead(asio::buffer(read_buffer_.get(), kReadBufferSize), ec);
          have_read = ec != asio::error::would_block;
        }
        if (!have_read) {
          read_buffers.Give(std::move(read_buffer_));
          ec.clear();
          co_await stream_->WaitReadable(ec);
          if (ec) co_return IoFailure(ec, "reading");
        }
      }
      if (!have_read) {
        if (!read_buffer_) read_buffer_ = read_buffers.Take();  // not zero-filled
        n = co_await stream_->ReadSome(
            asio::buffer(read_buffer_.get() + read_size_, kReadBufferSize - read_size_), ec);
      }
      if (ec == asio::error::eof && read_size_ == 0 && !assembler_.in_progress()) {
        co_return absl::OkStatus();  // the other side closed between frames
      }
      if (ec) co_return IoFailure(ec, "reading");
      read_size_ += n;
      last_received_ = Clock::now();
      stats_.bytes_received.fetch_add(n, std::memory_order_relaxed);
    }
    size_t consumed = 0;
    bool completed_frame = false;
    pause = Pause::kNone;
    absl::Status status = ProcessRecords(on_frame, consumed, completed_frame, pause);
    if (consumed > 0) {
      std::memmove(read_buffer_.get(), read_buffer_.get() + consumed, read_size_ - consumed);
      read_size_ -= consumed;
    }
    if (!status.ok()) co_return status;
    if (read_size_ > 0 || assembler_.in_progress()) {
      // The deadline runs from when the oldest incomplete frame began; the watchdog may be
      // asleep until a later deadline, so a newly begun frame wakes it.
      if (!partial_since_) watchdog_timer_.cancel();
      if (!partial_since_ || completed_frame) partial_since_ = Clock::now();
    } else {
      partial_since_.reset();
    }
  }
  co_return close_reason_;
}

absl::Status Link::ProcessRecords(FrameHandler& on_frame, size_t& consumed, bool& completed_frame,
                                  Pause& pause) {
  while (read_size_ - consumed >= kLengthPrefixSize && !closing_) {
    uint8_t* p = read_buffer_.get() + consumed;
    const size_t length = (size_t{p[0]} << 8) | p[1];
    if (length < kRecordOverhead) {
      return LinkError(mesh::v1::BAD_RECORD, absl::StrCat("transport message of ", length,
                                                          " bytes cannot hold flags and tag"));
    }
    if (read_size_ - consumed < kLengthPrefixSize + length) break;
    // A peer that does not read what it is sent earns no more replies: stop taking its frames
    // until the writer has drained the queue (the socket's own buffers then fill, not ours).
    if (queued_bytes() > config_.max_queued()) {
      pause = Pause::kOutput;
      break;
    }
    uint8_t* message = p + kLengthPrefixSize;
    if (!head_decrypted_ && !receive_.DecryptWithAd({}, {message, length}, message).ok()) {
      return LinkError(mesh::v1::DECRYPT_FAILED, "a transport message failed authentication");
    }
    // A frame of several records reserves max_frame from the shared budget as it begins (its
    // first record has no FIN), so once begun it completes without waiting for budget again:
    // frames that each held part of it could otherwise starve one another. A link holds at
    // most one reservation; frames of one record are taken from the read buffer, uncharged.
    const bool begins_long_frame = !assembler_.in_progress() && (message[0] & kFlagFin) == 0;
    if (begins_long_frame && config_.frame_budget != nullptr && budget_held_ == 0) {
      if (!config_.frame_budget->TryAcquire(config_.max_frame(), config_.budget_owner)) {
        head_decrypted_ = true;  // decrypted in place: the nonce has moved on
        pause = Pause::kBudget;
        break;
      }
      budget_held_ = config_.max_frame();
    }
    head_decrypted_ = false;
    consumed += kLengthPrefixSize + length;
    if ((message[0] & kFlagPacked) != 0) {
      if (assembler_.in_progress()) {
        return LinkError(mesh::v1::BAD_RECORD, "a packed record inside a frame of several");
      }
      completed_frame = true;
      auto status = ForEachPackedFrame(
          {message, length - crypto::kTagSize}, config_.max_frame(), [&](crypto::ByteSpan frame) {
            return closing_ ? absl::OkStatus() : Dispatch(frame, on_frame);
          });
      if (!status.ok()) return status;
      continue;
    }
    auto frame = assembler_.Push({message, length - crypto::kTagSize});
    if (!frame.ok()) return frame.status();
    if (!frame->has_value()) continue;
    absl::Status status = Dispatch(**frame, on_frame);
    if (assembler_.buffered() > 0) assembler_.Reset();  // give a multi-record frame's memory back
    ReleaseFrameBudget();
    completed_frame = true;
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status Link::Dispatch(crypto::ByteSpan frame_bytes, FrameHandler& on_frame) {
  if (kind_ == LinkKind::kCluster) return DispatchCluster(frame_bytes);
  auto frame = ParseFrame(frame_bytes);
  if (!frame.ok()) return frame.status();
  stats_.frames_received.fetch_add(1, std::memory_order_relaxed);
  switch (frame->body_case()) {
    case mesh::v1::Frame::kPing: {
      if (config_.ping_allowed && !config_.ping_allowed(remote_id_)) {
        return absl::OkStatus();  // over the peer's rate: no Pong
      }
      mesh::v1::Frame pong;
      pong.mutable_pong()->set_nonce(frame->ping().nonce());
      Send(pong);
      return absl::OkStatus();
    }
    case mesh::v1::Frame::kError:
      return absl::AbortedError(absl::StrCat("the other side reported ",
                                             ReasonName(frame->error().code()), ": ",
                                             frame->error().message()));
    default:
      return on_frame(*frame);
  }
}

absl::Status Link::DispatchCluster(crypto::ByteSpan frame_bytes) {
  mesh::v1::ClusterFrame frame;
  if (!frame.ParseFromArray(frame_bytes.data(), static_cast<int>(frame_bytes.size())) ||
      frame.body_case() == mesh::v1::ClusterFrame::BODY_NOT_SET) {
    return LinkError(mesh::v1::MALFORMED_FRAME, "record payload is not a mesh.v1.ClusterFrame");
  }
  stats_.frames_received.fetch_add(1, std::memory_order_relaxed);
  switch (frame.body_case()) {
    case mesh::v1::ClusterFrame::kPing: {
      mesh::v1::ClusterFrame pong;
      pong.mutable_pong()->set_nonce(frame.ping().nonce());
      Send(pong);
      return absl::OkStatus();
    }
    case mesh::v1::ClusterFrame::kPong:
      return absl::OkStatus();
    case mesh::v1::ClusterFrame::kError:
      return absl::AbortedError(absl::StrCat("the other side reported ",
                                             ReasonName(frame.error().code()), ": ",
                                             frame.error().message()));
    default:
      return on_cluster_ ? on_cluster_(frame)
                         : LinkError(mesh::v1::UNEXPECTED_FRAME, "no cluster handler");
  }
}

awaitable<absl::Status> Link::RunCluster(ClusterHandler on_frame) {
  on_cluster_ = std::move(on_frame);
  co_return co_await Run([](mesh::v1::Frame&) {
    return LinkError(mesh::v1::UNEXPECTED_FRAME, "a peer frame on a cluster link");
  });
}

void Link::Send(const mesh::v1::Frame& frame) { SendMessage(frame); }

void Link::Send(const mesh::v1::ClusterFrame& frame) { SendMessage(frame); }

void Link::SendMessage(const google::protobuf::MessageLite& frame) {
  if (closing_) return;
  if (send_.nonce() >= kNonceLimit) {
    Close(LinkError(mesh::v1::NONCE_EXHAUSTED, "send nonce limit reached; reconnect"));
    return;
  }
  if (auto status = AppendFrame(frame); !status.ok()) {
    Close(status);
    return;
  }
  stats_.frames_sent.fetch_add(1, std::memory_order_relaxed);
  WakeWriter();
}

// Frames a writer finds queued together go out packed into as few records as fit, when the
// other side reads packed records: one AEAD call and one transport message for many small
// frames (a WebSocket pays per message).
absl::Status Link::AppendFrame(const google::protobuf::MessageLite& frame) {
  absl::Status status = pack_records_
                            ? AppendPackedFrame(frame, send_, scratch_, out_, open_record_)
                            : AppendFrameRecords(frame, send_, scratch_, out_);
  ShrinkIfLarge(scratch_);
  return status;
}

// Cancelling the timer takes the reactor's lock: only done when the writer sleeps on it.
void Link::WakeWriter() {
  if (writer_waiting_) write_signal_.cancel();
}

void Link::Close(absl::Status reason) {
  if (closing_) return;
  closing_ = true;
  close_reason_ = std::move(reason);
  close_started_ = Clock::now();
  const ErrorCode code = ErrorCodeOf(close_reason_);
  if (established_ && code != mesh::v1::ERROR_CODE_UNSPECIFIED && stream_->is_open()) {
    mesh::v1::Error error;
    error.set_code(code);
    error.set_message(std::string(close_reason_.message()));
    if (kind_ == LinkKind::kCluster) {
      mesh::v1::ClusterFrame frame;
      *frame.mutable_error() = std::move(error);
      (void)AppendFrame(frame);
    } else {
      mesh::v1::Frame frame;
      *frame.mutable_error() = std::move(error);
      (void)AppendFrame(frame);
    }
  }
  write_signal_.cancel();
  read_signal_.cancel();
  watchdog_timer_.cancel();
}

awaitable<void> Link::WriteLoop() {
  auto self = shared_from_this();
  while (stream_->is_open()) {
    if (out_.empty()) {
      if (closing_) break;
      error_code ec;
      writer_waiting_ = true;
      co_await write_signal_.async_wait(redirect_error(use_awaitable, ec));
      writer_waiting_ = false;
      continue;
    }
    if (auto status = SealPackedRecord(send_, out_, open_record_); !status.ok()) {
      Close(status);
      break;
    }
    std::swap(out_, in_flight_);
    write_started_ = Clock::now();
    error_code ec;
    co_await stream_->Write(asio::buffer(in_flight_), 0, ec);
    const size_t n = in_flight_.size();
    write_started_.reset();
    if (ec) {
      Close(IoFailure(ec, "writing"));
      break;
    }
    stats_.bytes_sent.fetch_add(n, std::memory_order_relaxed);
    last_sent_ = Clock::now();  // once per coalesced write, not per frame
    in_flight_.clear();
    ShrinkIfLarge(in_flight_);
    if (reader_waiting_ && queued_bytes() <= config_.max_queued()) read_signal_.cancel();
  }
  CloseSocket();
}

awaitable<void> Link::Watchdog() {
  auto self = shared_from_this();
  uint64_t ping_nonce = 0;
  while (stream_->is_open()) {
    const Clock::time_point now = Clock::now();
    Clock::time_point next = Clock::time_point::max();
    std::optional<absl::Status> expired;
    auto deadline = [&](Clock::time_point at, ErrorCode code, const std::string& what) {
      if (expired) return;
      if (now >= at) {
        expired = LinkError(code, what);
      } else {
        next = std::min(next, at);
      }
    };
    if (!established_) {
      deadline(
          started_ + config_.handshake_timeout, mesh::v1::HANDSHAKE_TIMEOUT,
          absl::StrCat("handshake not finished within ", config_.handshake_timeout.count(), " ms"));
      if (expired) {
        close_reason_ = *expired;
        CloseSocket();
        break;
      }
    } else if (closing_) {
      if (now >= *close_started_ + kCloseGrace) {
        CloseSocket();
        break;
      }
      next = *close_started_ + kCloseGrace;
    } else {
      deadline(last_received_ + kMissedHeartbeats * config_.heartbeat_interval,
               mesh::v1::HEARTBEAT_TIMEOUT,
               absl::StrCat("nothing received for ", kMissedHeartbeats, " heartbeat intervals"));
      if (partial_since_) {
        deadline(*partial_since_ + config_.frame_timeout, mesh::v1::FRAME_TIMEOUT,
                 absl::StrCat("a frame was not completed within ", config_.frame_timeout.count(),
                              " ms"));
      }
      if (write_started_) {
        deadline(*write_started_ + config_.frame_timeout, mesh::v1::STALLED,
                 "the other side stopped reading");
      }
      if (expired) {
        Close(*expired);
        continue;
      }
      if (now >= last_sent_ + config_.heartbeat_interval) {
        if (kind_ == LinkKind::kCluster) {
          mesh::v1::ClusterFrame ping;
          ping.mutable_ping()->set_nonce(++ping_nonce);
          Send(ping);
        } else {
          mesh::v1::Frame ping;
          ping.mutable_ping()->set_nonce(++ping_nonce);
          Send(ping);
        }
      }
      next = std::min(next, last_sent_ + config_.heartbeat_interval);
    }
    watchdog_timer_.expires_at(next);
    error_code ec;
    co_await watchdog_timer_.async_wait(redirect_error(use_awaitable, ec));
  }
}

absl::Status Link::IoFailure(const error_code& ec, absl::string_view during) {
  if (!close_reason_.ok()) return close_reason_;
  if (ec == asio::error::eof) {
    return LinkError(mesh::v1::TRUNCATED,
                     absl::StrCat("the other side closed the connection during ", during));
  }
  if (ec.category() == StreamErrorCategory()) {
    return LinkError(ec == MakeError(StreamError::kMessageTooLarge) ? mesh::v1::FRAME_TOO_LARGE
                                                                    : mesh::v1::MALFORMED_FRAME,
                     ec.message());
  }
  return absl::UnavailableError(absl::StrCat(during, ": ", ec.message()));
}

void Link::CloseSocket() {
  closing_ = true;
  if (stream_->is_open()) {
    stream_->Close(ErrorCodeOf(close_reason_));
    if (established_) stats_.links_open.fetch_sub(1, std::memory_order_relaxed);
  }
  watchdog_timer_.cancel();
  write_signal_.cancel();
  read_signal_.cancel();
  ReleaseFrameBudget();
}

void Link::ReleaseFrameBudget() {
  if (budget_held_ > 0 && config_.frame_budget != nullptr)
    config_.frame_budget->Release(budget_held_, config_.budget_owner);
  budget_held_ = 0;
}

}  // namespace mesh::peer
