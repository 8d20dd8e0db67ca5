#include "client/session.h"

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstdio>
#include <random>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "base/files.h"

namespace mesh::client {
namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using mesh::v1::SendAck;

std::string_view AsText(const MessageId& id) {
  return {reinterpret_cast<const char*>(id.data()), id.size()};
}

crypto::ByteSpan AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// One set of link counters for every session of the process. A link may outlive its session
// (its coroutines end on the executor after the session is gone), so the counters it refers to
// must live as long as the process.
peer::LinkStats& LinkStatsOfAllSessions() {
  static peer::LinkStats stats;
  return stats;
}

uint64_t WallSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

struct Session::PendingSend {
  MessageId id;
  mesh::v1::Frame frame;  // the Send, kept as sent so a retry is byte-for-byte the same
  SendCallback done;
  Clock::time_point queued;
};

// (from ‖ id) pairs handed to the application, kept for at least the dedup window: two
// generations of one window each, so forgetting is dropping the older set (no per-entry
// expiry), and a new generation is sized like the last (no rehash pauses in a steady flow).
// With a file, each pair is appended before its DeliverAck goes out, so a restart between the
// two does not repeat it.
struct Session::Dedup {
  static constexpr size_t kKeySize = 32 + 16;
  static constexpr size_t kRecordSize = kKeySize + 8;  // key, Unix seconds (big-endian)
  using Key = std::array<char, kKeySize>;              // inline: no allocation per message

  static Key KeyOf(std::string_view from, std::string_view id) {
    Key key;
    std::copy(from.begin(), from.end(), key.begin());
    std::copy(id.begin(), id.end(), key.begin() + from.size());
    return key;
  }

  std::chrono::seconds window;
  std::string path;
  FILE* file = nullptr;
  absl::flat_hash_set<Key> current;
  absl::flat_hash_set<Key> previous;
  uint64_t rotate_at = 0;  // Unix seconds

  ~Dedup() {
    if (file != nullptr) std::fclose(file);
  }

  absl::Status Load() {
    rotate_at = WallSeconds() + static_cast<uint64_t>(window.count());
    if (path.empty()) return absl::OkStatus();
    const uint64_t cutoff = WallSeconds() - static_cast<uint64_t>(window.count());
    std::vector<std::pair<Key, uint64_t>> live;
    if (FILE* in = std::fopen(path.c_str(), "rb")) {
      char record[kRecordSize];
      while (std::fread(record, 1, kRecordSize, in) == kRecordSize) {
        uint64_t at = 0;
        for (size_t i = 0; i < 8; ++i) at = (at << 8) | static_cast<uint8_t>(record[kKeySize + i]);
        Key key;
        std::copy(record, record + kKeySize, key.begin());
        if (at >= cutoff && current.insert(key).second) live.emplace_back(key, at);
      }
      std::fclose(in);
    }
    // Rewrite with only the live entries, so the file stays about one window long. Owner-only
    // (it tells who wrote to this key), and atomic: a crash leaves the old file or the new one.
    std::string records;
    records.reserve(live.size() * kRecordSize);
    for (const auto& [key, at] : live) {
      const auto record = EncodeRecord(key, at);
      records.append(record.data(), record.size());
    }
    if (auto status = base::WriteFileAtomically(path, records, 0600, base::Replace::kYes);
        !status.ok()) {
      return absl::UnavailableError(status.message());
    }
    file = std::fopen(path.c_str(), "ab");
    if (file == nullptr) return absl::UnavailableError(absl::StrCat("cannot append to ", path));
    return absl::OkStatus();
  }

  static std::array<char, kRecordSize> EncodeRecord(const Key& key, uint64_t at) {
    std::array<char, kRecordSize> record;
    std::copy(key.begin(), key.end(), record.begin());
    for (size_t i = kRecordSize; i-- > kKeySize; at >>= 8) record[i] = static_cast<char>(at & 0xff);
    return record;
  }

  void Rotate(uint64_t now) {
    if (now < rotate_at) return;
    previous = std::move(current);
    current = {};
    current.reserve(previous.size());
    rotate_at = now + static_cast<uint64_t>(window.count());
  }

  bool Seen(const Key& key) {
    Rotate(WallSeconds());
    return current.contains(key) || previous.contains(key);
  }

  void Record(const Key& key) {
    const uint64_t now = WallSeconds();
    if (file != nullptr) {
      const auto record = EncodeRecord(key, now);
      std::fwrite(record.data(), 1, record.size(), file);
    }
    current.insert(key);
  }

  // Before the DeliverAcks of what was recorded go out: the records reach the kernel.
  void Flush() {
    if (file != nullptr) std::fflush(file);
  }
};

namespace {
absl::Status ReplacedStatus() {
  return absl::AlreadyExistsError("replaced by a newer session with this key");
}
}  // namespace

std::chrono::milliseconds GoAwayRetryDelay(uint32_t retry_after_ms) {
  return std::min(std::chrono::milliseconds(retry_after_ms), kMaxGoAwayRetry);
}

std::shared_ptr<Session> Session::Create(asio::any_io_executor executor, SessionOptions options) {
  return std::shared_ptr<Session>(new Session(std::move(executor), std::move(options)));
}

Session::Session(asio::any_io_executor executor, SessionOptions options)
    : executor_(std::move(executor)),
      options_(std::move(options)),
      max_payload_(options_.link.max_payload),
      dedup_(std::make_unique<Dedup>()) {
  dedup_->window = options_.dedup_window;
  dedup_->path = options_.dedup_file;
  dedup_->current.reserve(options_.dedup_expected);
  randombytes_buf(id_prefix_.data(), id_prefix_.size());
}

MessageId Session::NextId() {
  MessageId id;
  std::copy(id_prefix_.begin(), id_prefix_.end(), id.begin());
  uint64_t n = id_counter_.fetch_add(1, std::memory_order_relaxed);
  for (size_t i = id.size(); i-- > id_prefix_.size(); n >>= 8) id[i] = static_cast<uint8_t>(n);
  return id;
}

Session::~Session() = default;

absl::Status Session::Start() {
  if (options_.key == nullptr) return absl::InvalidArgumentError("a session needs a static key");
  if (options_.brokers.empty()) return absl::InvalidArgumentError("no broker address given");
  if (auto status = dedup_->Load(); !status.ok()) return status;
  asio::co_spawn(executor_, ConnectLoop(), asio::detached);
  asio::co_spawn(executor_, GiveUpLoop(), asio::detached);
  return absl::OkStatus();
}

asio::awaitable<void> Session::ConnectLoop() {
  auto self = shared_from_this();
  auto backoff = options_.backoff_min;
  std::mt19937 jitter(std::random_device{}());
  wake_ = std::make_shared<asio::steady_timer>(executor_);
  // Sessions start at different brokers of the list; each reconnect (after a GoAway or a
  // broken link) moves on to the next one.
  for (size_t attempt = jitter() % options_.brokers.size(); !closed_; ++attempt) {
    ConnectOptions connect;
    connect.address = options_.brokers[attempt % options_.brokers.size()];
    connect.key = options_.key;
    connect.suite = options_.suite;
    connect.link = options_.link;
    connect.agent = options_.agent;
    connect.connect_timeout = options_.connect_timeout;
    connect.trust = options_.trust;
    auto link = co_await Connect(connect, LinkStatsOfAllSessions());
    absl::Status ended;
    if (!link.ok()) {
      ended = link.status();
    } else if (closed_) {
      (*link)->Close(absl::OkStatus());
      break;
    } else {
      link_ = *link;
      ++stats_.connects;
      backoff = options_.backoff_min;
      retry_hint_ = std::chrono::milliseconds(0);
      if (const auto& limits = link_->remote_hello().limits(); limits.max_payload() > 0) {
        max_payload_ = limits.max_payload();
      }
      // Credit is a window (acks open it again), so bounding it by what is still wanted
      // bounds the deliveries in flight, not their total: OnDeliver refuses the rest.
      uint64_t window = options_.credit;
      if (options_.max_messages > 0) window = std::min(window, options_.max_messages - handed_);
      if (window > 0) {
        mesh::v1::Frame credit;
        credit.mutable_credit()->set_n(static_cast<uint32_t>(window));
        link_->Send(credit);
      }
      for (const auto& [order, send] : pending_) {
        Transmit(send);
        ++stats_.resent;
      }
      if (on_state_) on_state_(true, absl::OkStatus());
      ended = co_await link_->Run([this](mesh::v1::Frame& frame) { return OnFrame(frame); });
      link_.reset();
      acks_.clear();  // seqs of the link that ended; the broker redelivers what they named
    }
    if (closed_) break;
    if (replaced_) ended = ReplacedStatus();
    replaced_ = false;
    if (on_state_) on_state_(false, ended);
    // Back off with jitter; a GoAway's hint replaces the backoff.
    auto wait = retry_hint_.count() > 0
                    ? retry_hint_
                    : std::chrono::milliseconds(std::uniform_int_distribution<int64_t>(
                          backoff.count() / 2, backoff.count())(jitter));
    if (!link.ok()) backoff = std::min(backoff * 2, options_.backoff_max);
    wake_->expires_after(wait);
    boost::system::error_code ec;
    co_await wake_->async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

asio::awaitable<void> Session::GiveUpLoop() {
  auto self = shared_from_this();
  give_up_timer_ = std::make_shared<asio::steady_timer>(executor_);
  while (!closed_) {
    give_up_timer_->expires_after(std::chrono::seconds(1));
    boost::system::error_code ec;
    co_await give_up_timer_->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    const auto cutoff = Clock::now() - options_.give_up_after;
    while (!pending_.empty() && pending_.begin()->second.queued < cutoff) {
      Finish(pending_.begin()->second.id, SendAck::STATUS_UNSPECIFIED,
             "not acknowledged within the dedup window; gave up");
    }
  }
}

void Session::Transmit(const PendingSend& send) {
  if (link_) link_->Send(send.frame);
}

void Session::Send(const crypto::PeerId& to, std::string payload, SendCallback done,
                   uint32_t ttl_s) {
  PendingSend send;
  send.id = NextId();
  auto* frame = send.frame.mutable_send();
  frame->set_id(std::string(AsText(send.id)));
  frame->set_to(std::string(reinterpret_cast<const char*>(to.bytes.data()), to.bytes.size()));
  frame->set_ttl_s(ttl_s);
  if (options_.seal) {
    crypto::Bytes sealed = crypto::SealPayload(*options_.key, to, send.id, AsBytes(payload));
    frame->set_payload(std::string(sealed.begin(), sealed.end()));
  } else {
    frame->set_payload(std::move(payload));
  }
  send.done = std::move(done);
  asio::post(executor_, [self = shared_from_this(), send = std::move(send)]() mutable {
    ++self->stats_.sends;
    const size_t size = send.frame.send().payload().size();
    if (self->closed_ || size > self->max_payload_) {
      SendResult result;
      result.id = send.id;
      result.status = self->closed_ ? SendAck::STATUS_UNSPECIFIED : SendAck::TOO_LARGE;
      result.detail = self->closed_ ? "session closed"
                                    : absl::StrCat("payload of ", size,
                                                   " bytes is over the broker's max_payload ",
                                                   self->max_payload_);
      if (send.done) send.done(result);
      return;
    }
    send.queued = Clock::now();
    const uint64_t order = self->next_order_++;
    self->pending_by_id_[send.id] = order;
    self->Transmit(send);
    self->pending_.emplace(order, std::move(send));
  });
}

std::future<SendResult> Session::Send(const crypto::PeerId& to, std::string payload,
                                      uint32_t ttl_s) {
  auto promise = std::make_shared<std::promise<SendResult>>();
  auto future = promise->get_future();
  Send(
      to, std::move(payload), [promise](const SendResult& result) { promise->set_value(result); },
      ttl_s);
  return future;
}

void Session::Finish(const MessageId& id, SendAck::Status status, std::string detail) {
  auto by_id = pending_by_id_.find(id);
  if (by_id == pending_by_id_.end()) return;  // an ack for a send already finished
  auto it = pending_.find(by_id->second);
  pending_by_id_.erase(by_id);
  PendingSend send = std::move(it->second);
  pending_.erase(it);
  if (send.done) send.done(SendResult{send.id, status, std::move(detail)});
}

void Session::Close() {
  asio::post(executor_, [self = shared_from_this()] {
    if (self->closed_) return;
    self->closed_ = true;
    if (self->wake_) self->wake_->cancel();
    if (self->give_up_timer_) self->give_up_timer_->cancel();
    if (self->link_) {
      self->FlushAcks();
      self->link_->Close(absl::OkStatus());
    }
    while (!self->pending_.empty()) {
      self->Finish(self->pending_.begin()->second.id, SendAck::STATUS_UNSPECIFIED,
                   "session closed");
    }
  });
}

absl::Status Session::OnFrame(mesh::v1::Frame& frame) {
  switch (frame.body_case()) {
    case mesh::v1::Frame::kSendAck: {
      const auto& ack = frame.send_ack();
      if (ack.id().size() != sizeof(MessageId)) break;
      MessageId id;
      std::copy(ack.id().begin(), ack.id().end(), id.begin());
      Finish(id, ack.status(), ack.detail());
      return absl::OkStatus();
    }
    case mesh::v1::Frame::kDeliver:
      OnDeliver(*frame.mutable_deliver());
      return absl::OkStatus();
    case mesh::v1::Frame::kGoAway:
      retry_hint_ = GoAwayRetryDelay(frame.go_away().retry_after_ms());
      if (frame.go_away().reason() == mesh::v1::GoAway::REPLACED) {
        replaced_ = true;
        if (options_.stop_when_replaced) {
          if (on_state_) on_state_(false, ReplacedStatus());
          Close();
        } else {
          retry_hint_ = std::max(retry_hint_, options_.replaced_retry);
        }
      }
      return absl::OkStatus();
    case mesh::v1::Frame::kPong:
    case mesh::v1::Frame::kError:
      return absl::OkStatus();
    default:
      break;
  }
  return peer::LinkError(mesh::v1::UNEXPECTED_FRAME,
                         absl::StrCat("frame '", peer::FrameName(frame), "' from a broker"));
}

void Session::OnDeliver(mesh::v1::Deliver& deliver) {
  // Past the application's limit: left unacknowledged, so the broker keeps it for the next
  // session (an ack for the last message handed on opened the window for one more).
  if (options_.max_messages > 0 && handed_ >= options_.max_messages) return;
  const bool first_ack = acks_.empty();
  acks_.push_back(deliver.seq());
  if (first_ack) {
    // One DeliverAck for everything handled in this read.
    asio::post(executor_, [self = shared_from_this()] { self->FlushAcks(); });
  }
  auto from = crypto::PeerId::FromBytes(AsBytes(deliver.from()));
  if (!from.ok() || deliver.id().size() != sizeof(MessageId)) return;  // acked, never shown
  const Dedup::Key key = Dedup::KeyOf(deliver.from(), deliver.id());
  if (dedup_->Seen(key)) {
    ++stats_.duplicates_dropped;
    return;
  }
  Message message;
  message.from = *from;
  std::copy(deliver.id().begin(), deliver.id().end(), message.id.begin());
  message.sent_at_ms = deliver.sent_at_ms();
  if (options_.seal) {
    auto opened = crypto::OpenSealed(*options_.key, *from, message.id, AsBytes(deliver.payload()));
    if (opened.ok()) {
      message.payload.assign(opened->begin(), opened->end());
    } else {
      message.sealed_status = opened.status();
      message.payload = std::move(*deliver.mutable_payload());
    }
  } else {
    message.payload = std::move(*deliver.mutable_payload());
  }
  ++stats_.received;
  ++handed_;
  if (on_message_) on_message_(message);
  dedup_->Record(key);
}

void Session::FlushAcks() {
  if (acks_.empty()) return;
  dedup_->Flush();
  if (link_) {
    mesh::v1::Frame frame;
    auto* ack = frame.mutable_deliver_ack();
    for (uint64_t seq : acks_) ack->add_seqs(seq);
    link_->Send(frame);
  }
  acks_.clear();
}

}  // namespace mesh::client
