#include "broker/control/control_service.h"

#include <unistd.h>

#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "base/files.h"
#include "peer/record.h"

namespace mesh::broker {
namespace {

using mesh::v1::SendAck;

constexpr uint32_t kDefaultPageSize = 100;
constexpr uint32_t kMaxPageSize = 1000;

uint64_t WallMs(std::chrono::steady_clock::time_point at) {
  const auto since = std::chrono::steady_clock::now() - at;
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch() - since)
                                   .count());
}

// A peer or node ID from a request: `field` names it in the error.
absl::StatusOr<std::string> ParseId(const char* field, const std::string& text) {
  if (text.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  auto id = crypto::PeerId::Parse(text);
  if (!id.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " is not a peer ID (43 characters of unpadded base64url): ", id.status().message()));
  }
  return id->Raw();
}

mesh::v1::Peer PeerOf(const PeerView& view, const crypto::PeerId& node_id) {
  mesh::v1::Peer peer;
  peer.set_id(crypto::IdText(view.id));
  peer.set_connected(view.connected);
  if (view.connected) {
    peer.set_node_id(node_id.ToString());
    peer.set_remote_address(view.remote_address);
    peer.set_connected_at_ms(WallMs(view.connected_at));
  }
  peer.set_in_flight(view.in_flight);
  peer.set_credit(view.credit);
  peer.set_mailbox_messages(view.mailbox_messages);
  peer.set_mailbox_bytes(view.mailbox_bytes);
  return peer;
}

// How a SendAck status reads as a call status: rejections are errors a caller can act on.
absl::Status StatusOfAck(const SendAck& ack) {
  const std::string detail = absl::StrCat(SendAck::Status_Name(ack.status()),
                                          ack.detail().empty() ? "" : ": ", ack.detail());
  switch (ack.status()) {
    case SendAck::ACCEPTED:
    case SendAck::DUPLICATE:
      return absl::OkStatus();
    case SendAck::TOO_LARGE:
    case SendAck::INVALID:
      return absl::InvalidArgumentError(detail);
    case SendAck::MAILBOX_FULL:
    case SendAck::SENDER_QUOTA:
    case SendAck::STORE_FULL:
    case SendAck::RATE_LIMITED:
      return absl::ResourceExhaustedError(detail);
    case SendAck::STORE_UNAVAILABLE:
      return absl::UnavailableError(detail);
    default:
      return absl::InternalError(detail);
  }
}

// SendAcks other than ACCEPTED and DUPLICATE, by status name, every status present.
std::map<std::string, uint64_t> RejectedByStatus(const RouterStats& routed) {
  std::map<std::string, uint64_t> rejected;
  for (int status = 0; status < RouterStats::kStatuses; ++status) {
    if (!SendAck::Status_IsValid(status) || status == SendAck::STATUS_UNSPECIFIED ||
        status == SendAck::ACCEPTED || status == SendAck::DUPLICATE) {
      continue;
    }
    rejected[SendAck::Status_Name(static_cast<SendAck::Status>(status))] =
        routed.acks[status].load();
  }
  return rejected;
}

// The SendAck a local sender is waiting for.
// The answer of a send, for a caller that waits on a thread of its own.
class ResultWait {
 public:
  using Result = absl::StatusOr<mesh::v1::SendMessageResponse>;
  void Set(Result result) {
    {
      std::lock_guard lock(mu_);
      if (result_) return;
      result_ = std::move(result);
    }
    done_.notify_all();
  }
  std::optional<Result> Wait(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    done_.wait_for(lock, timeout, [&] { return result_.has_value(); });
    return result_;
  }

 private:
  std::mutex mu_;
  std::condition_variable done_;
  std::optional<Result> result_;
};

}  // namespace

ControlService::ControlService(ControlContext context, const std::string& admin_token)
    : context_(std::move(context)), expected_authorization_("Bearer " + admin_token) {}

bool ControlService::SetAdminToken(const std::string& admin_token) {
  std::string expected = "Bearer " + admin_token;
  std::lock_guard lock(token_mu_);
  if (expected == expected_authorization_) return false;
  expected_authorization_ = std::move(expected);
  return true;
}

bool ControlService::Authorized(std::string_view authorization) const {
  std::lock_guard lock(token_mu_);
  return crypto::ConstantTimeEquals(authorization, expected_authorization_);
}

absl::StatusOr<mesh::v1::Stats> ControlService::GetStats(const mesh::v1::GetStatsRequest&) const {
  mesh::v1::Stats stats;
  stats.set_node_id(context_.node_id.ToString());
  stats.set_node_name(context_.node_name);
  stats.set_version(context_.version);
  stats.set_uptime_s(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                               std::chrono::steady_clock::now() - context_.started)
                                               .count()));
  stats.set_ready(ready());
  stats.set_draining(context_.draining && context_.draining());
  const RouterStats& routed = context_.router->stats();
  stats.set_peers_connected(static_cast<uint64_t>(std::max<int64_t>(0, routed.sessions.load())));
  stats.set_peers_total(routed.sessions_total.load());
  stats.set_handshakes_started(context_.links->handshakes_started.load());
  stats.set_handshakes_completed(context_.links->handshakes_completed.load());
  stats.set_messages_sent(routed.sends.load());
  stats.set_messages_accepted(routed.acks[SendAck::ACCEPTED].load());
  stats.set_messages_delivered(routed.delivered.load());
  stats.set_messages_acked(routed.acked.load());
  stats.set_messages_fast_path(routed.fast_path.load());
  stats.set_messages_stored(routed.stored.load());
  stats.set_messages_expired(routed.expired.load());
  stats.set_messages_queued(static_cast<uint64_t>(std::max<int64_t>(0, routed.queued.load())));
  stats.set_queued_bytes(static_cast<uint64_t>(std::max<int64_t>(0, routed.queued_bytes.load())));
  for (const auto& [name, n] : RejectedByStatus(routed)) (*stats.mutable_rejected())[name] = n;
  const store::StoreStats& stored = context_.store->stats();
  stats.set_store_writes(stored.writes.load());
  stats.set_store_syncs(stored.syncs.load());
  stats.set_store_live_bytes(context_.store->EstimatedLiveBytes());
  stats.set_store_available(context_.store->available());
  stats.set_store_full(context_.router->Full());
  return stats;
}

absl::StatusOr<mesh::v1::ListPeersResponse> ControlService::ListPeers(
    const mesh::v1::ListPeersRequest& request) const {
  if (request.page_size() > kMaxPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size ", request.page_size(), " is over the maximum ", kMaxPageSize));
  }
  const uint32_t page_size = request.page_size() == 0 ? kDefaultPageSize : request.page_size();
  std::string after;
  if (!request.page_token().empty()) {
    auto id = ParseId("page_token", request.page_token());
    if (!id.ok()) return id.status();
    after = *std::move(id);
  }
  // One more than asked: whether another page follows.
  std::vector<PeerView> views = context_.router->ListPeers(after, page_size + 1);
  mesh::v1::ListPeersResponse response;
  for (size_t i = 0; i < views.size() && i < page_size; ++i) {
    *response.add_peers() = PeerOf(views[i], context_.node_id);
  }
  if (views.size() > page_size) response.set_next_page_token(response.peers().rbegin()->id());
  return response;
}

absl::StatusOr<mesh::v1::Peer> ControlService::GetPeer(
    const mesh::v1::GetPeerRequest& request) const {
  auto id = ParseId("id", request.id());
  if (!id.ok()) return id.status();
  auto view = context_.router->GetPeer(*id);
  // In a mesh, the peer may be connected to another member.
  std::optional<std::string> node;
  if (context_.locate && !(view && view->connected)) node = context_.locate(*id);
  if (!node && (!view || (!view->connected && view->mailbox_messages == 0))) {
    return absl::NotFoundError(absl::StrCat(
        "peer ", request.id(), " is not connected to the mesh and has no mailbox here"));
  }
  PeerView fallback;
  fallback.id = std::string(*id);
  mesh::v1::Peer peer = PeerOf(view.value_or(fallback), context_.node_id);
  if (node) {
    peer.set_connected(true);
    peer.set_node_id(*node);
  }
  return peer;
}

absl::StatusOr<mesh::v1::DisconnectPeerResponse> ControlService::DisconnectPeer(
    const mesh::v1::DisconnectPeerRequest& request) {
  auto id = ParseId("id", request.id());
  if (!id.ok()) return id.status();
  if (!context_.router->Disconnect(*id)) {
    return absl::NotFoundError(absl::StrCat("peer ", request.id(), " is not connected here"));
  }
  return mesh::v1::DisconnectPeerResponse();
}

std::shared_ptr<Session> ControlService::StartSend(const mesh::v1::SendMessageRequest& request,
                                                   SendDone done) {
  auto to = ParseId("to", request.to());
  if (!to.ok()) {
    done(to.status());
    return nullptr;
  }
  const std::string id = crypto::RandomBytes(store::kMessageIdSize);
  auto sender = std::make_shared<Session>(
      context_.node_id, [id, done = std::move(done)](const mesh::v1::Frame& frame) {
        // One SendAck per id reaches this sink: the router answers each Send once.
        if (!frame.has_send_ack() || frame.send_ack().id() != id) return;
        const SendAck& ack = frame.send_ack();
        if (auto status = StatusOfAck(ack); !status.ok()) return done(status);
        mesh::v1::SendMessageResponse response;
        response.set_id(crypto::Base64Url(id));
        response.set_status(ack.status());
        response.set_detail(ack.detail());
        done(std::move(response));
      });
  mesh::v1::Frame frame;
  auto* send = frame.mutable_send();
  send->set_id(id);
  send->set_to(*to);
  send->set_payload(request.payload());
  send->set_ttl_s(request.ttl_s());
  (void)context_.router->OnFrame(*sender, frame);
  return sender;
}

absl::StatusOr<mesh::v1::SendMessageResponse> ControlService::SendMessage(
    const mesh::v1::SendMessageRequest& request, std::chrono::milliseconds timeout) {
  auto wait = std::make_shared<ResultWait>();
  auto sender = StartSend(request, [wait](auto result) { wait->Set(std::move(result)); });
  auto result = wait->Wait(timeout);
  if (!result) {
    return absl::DeadlineExceededError(
        absl::StrCat("no SendAck within ", timeout.count(), " ms; the message may still arrive"));
  }
  return *std::move(result);
}

absl::StatusOr<mesh::v1::Mailbox> ControlService::GetMailbox(
    const mesh::v1::GetMailboxRequest& request) const {
  auto id = ParseId("id", request.id());
  if (!id.ok()) return id.status();
  mesh::v1::Mailbox mailbox;
  mailbox.set_id(request.id());
  if (auto view = context_.router->GetPeer(*id)) {
    mailbox.set_messages(view->mailbox_messages);
    mailbox.set_bytes(view->mailbox_bytes);
    mailbox.set_online(view->connected);
    mailbox.set_in_flight(view->in_flight);
  }
  return mailbox;
}

absl::StatusOr<mesh::v1::PurgeMailboxResponse> ControlService::PurgeMailbox(
    const mesh::v1::PurgeMailboxRequest& request) {
  auto id = ParseId("id", request.id());
  if (!id.ok()) return id.status();
  auto purged = context_.router->PurgeMailbox(*id);
  if (!purged.ok()) return purged.status();
  mesh::v1::PurgeMailboxResponse response;
  response.set_purged(*purged);
  return response;
}

absl::StatusOr<mesh::v1::ListMembersResponse> ControlService::ListMembers(
    const mesh::v1::ListMembersRequest&) const {
  mesh::v1::ListMembersResponse response;
  if (context_.members) {
    for (auto& member : context_.members()) {
      if (member.self()) member.set_mailboxes_homed(context_.router->MailboxCount());
      *response.add_members() = std::move(member);
    }
    return response;
  }
  // A single broker: this node.
  auto* self = response.add_members();
  self->set_node_id(context_.node_id.ToString());
  self->set_name(context_.node_name);
  const bool draining = context_.draining && context_.draining();
  self->set_state(draining ? mesh::v1::Member::DRAINING : mesh::v1::Member::ALIVE);
  self->set_mailboxes_homed(context_.router->MailboxCount());
  self->set_self(true);
  return response;
}

absl::StatusOr<mesh::v1::DrainResponse> ControlService::Drain(const mesh::v1::DrainRequest&) {
  if (!context_.start_drain) return absl::UnimplementedError("this broker cannot drain");
  return context_.start_drain();
}

std::shared_ptr<EventWatcher> ControlService::WatchEvents(const mesh::v1::WatchEventsRequest&) {
  return context_.router->events().Watch();
}

std::map<std::string, uint64_t> FailuresByReason(const peer::LinkStats* links) {
  std::map<std::string, uint64_t> by_reason;
  for (int code = 1; code < peer::LinkStats::kReasons; ++code) {
    if (!mesh::v1::ErrorCode_IsValid(code)) continue;
    by_reason[peer::ReasonName(static_cast<mesh::v1::ErrorCode>(code))] =
        links != nullptr ? links->failures[code].load() : 0;
  }
  return by_reason;
}

monitoring::Histogram ToMonitoring(const LatencyHistogram& histogram) {
  const auto snapshot = histogram.Load();
  monitoring::Histogram out;
  out.bounds_micros.assign(LatencyHistogram::kBoundsMicros.begin(),
                           LatencyHistogram::kBoundsMicros.end());
  out.counts.assign(snapshot.counts.begin(), snapshot.counts.end());
  out.sum_micros = snapshot.sum_micros;
  return out;
}

monitoring::BrokerSnapshot ControlService::MetricsSnapshot() {
  monitoring::BrokerSnapshot s;
  const RouterStats& routed = context_.router->stats();
  const peer::LinkStats& links = *context_.links;
  const store::StoreStats& stored = context_.store->stats();
  s.version = context_.version;
  s.ready = ready();
  s.uptime_s = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                         std::chrono::steady_clock::now() - context_.started)
                                         .count());
  s.peers_total = routed.sessions_total.load();
  s.peers_connected = routed.sessions.load();
  s.mailboxes = context_.router->MailboxCount();
  s.mailboxes_in_memory = context_.router->MailboxesInMemory();
  s.handshakes_started = links.handshakes_started.load();
  s.handshakes_completed = links.handshakes_completed.load();
  s.handshake_duration = ToMonitoring(links.handshake_duration);
  s.frames_rejected = FailuresByReason(&links);
  if (context_.frame_budget != nullptr) s.frame_memory_bytes = context_.frame_budget->used();
  s.messages_sent = routed.sends.load();
  s.messages_accepted = routed.acks[SendAck::ACCEPTED].load();
  s.messages_delivered = routed.acked.load();
  s.messages_expired = routed.expired.load();
  s.messages_rejected = RejectedByStatus(routed);
  uint64_t rejected = 0;
  for (const auto& [name, n] : s.messages_rejected) rejected += n;
  s.messages_failed = rejected + s.messages_expired;
  s.messages_fast_path = routed.fast_path.load();
  s.messages_stored = routed.stored.load();
  s.queue_size = routed.queued.load();
  s.queued_bytes = routed.queued_bytes.load();
  s.delivery_latency_fast = ToMonitoring(routed.delivery_latency_fast);
  s.delivery_latency_stored = ToMonitoring(routed.delivery_latency_stored);
  {
    // Over the last minute: against the newest sample at least 60 s old (or the oldest).
    std::lock_guard lock(rate_mu_);
    const auto now = std::chrono::steady_clock::now();
    rate_samples_.push_back({now, s.messages_delivered, s.messages_failed});
    while (rate_samples_.size() > 2 && now - rate_samples_[1].at >= std::chrono::seconds(60)) {
      rate_samples_.pop_front();
    }
    const RateSample& base = rate_samples_.front();
    const double delivered = static_cast<double>(s.messages_delivered - base.delivered);
    const double failed = static_cast<double>(s.messages_failed - base.failed);
    s.success_rate = delivered + failed > 0 ? delivered / (delivered + failed) : 1.0;
  }
  s.store_writes = stored.writes.load();
  s.store_syncs = stored.syncs.load();
  s.store_failed_writes = stored.failed_writes.load();
  s.store_messages_read = stored.messages_read.load();
  s.store_size_bytes = context_.store->EstimatedLiveBytes();
  s.store_available = context_.store->available();
  s.store_full = context_.router->Full();
  if (context_.store_write_duration) {
    s.store_write_duration = ToMonitoring(*context_.store_write_duration);
  }
  if (context_.store_sync_duration) {
    s.store_sync_duration = ToMonitoring(*context_.store_sync_duration);
  }
  const bool draining = context_.draining && context_.draining();
  s.draining = draining;
  for (const char* state : {"joining", "live", "suspect", "draining"}) {
    s.cluster_members[state] = 0;
  }
  s.cluster_members[draining ? "draining" : "live"] = 1;
  s.messages_forwarded = {{"in", routed.forwarded_in.load()}, {"out", routed.forwarded_out.load()}};
  s.outbox_messages = context_.router->OutboxMessages();
  s.presence_peers = s.peers_connected;
  s.cluster_handshake_failures = FailuresByReason(context_.cluster_links);
  if (context_.cluster) context_.cluster(s);
  return s;
}

absl::StatusOr<std::string> LoadOrCreateAdminToken(const std::string& path,
                                                   const std::string& data_dir) {
  const std::string file = path.empty() ? data_dir + "/admin.token" : path;
  if (path.empty() && ::access(file.c_str(), F_OK) != 0) {
    const std::string token = crypto::Base64Url(crypto::RandomBytes(32));
    auto written = base::WriteFileAtomically(file, token + "\n", 0600, base::Replace::kNo);
    if (!written.ok()) return written;
    return token;
  }
  auto text = base::ReadPrivateFile(file, "admin token file");
  if (!text.ok()) return text.status();
  std::string token(absl::StripAsciiWhitespace(*text));
  if (token.size() < 16) {
    return absl::FailedPreconditionError(
        absl::StrCat("admin token in ", file, " is shorter than 16 characters"));
  }
  return token;
}

}  // namespace mesh::broker
