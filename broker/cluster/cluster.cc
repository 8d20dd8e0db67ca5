// The mesh: cluster links, membership, presence, homes and forwarding (DESIGN §5).
//
// Locks: the cluster's state sits under one mutex (mu_), never held while calling the router;
// the router calls Placement methods under its stripe locks, and those take mu_ only. Each
// cluster link has its own outgoing queue under its own mutex, a leaf.
#include "broker/cluster/cluster.h"

#include <sys/stat.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <deque>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/files.h"
#include "broker/log.h"
#include "peer/handshake_gate.h"

namespace mesh::broker {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::ip::tcp;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;

// Deliveries one forwarder may have in flight to the next hop; beyond it, messages wait in
// the mailbox (on disk once their ack window passes).
constexpr uint64_t kForwardWindow = 1024;
// Deliveries in flight over one cluster link, whatever the number of forwarders riding it.
constexpr int64_t kLinkWindow = 8192;
// A forward batch is cut at this many payload bytes, so frames stay well under max_frame.
constexpr size_t kBatchBytes = size_t{256} << 10;
constexpr std::chrono::milliseconds kDialBackoffMin{100};
constexpr std::chrono::milliseconds kDialBackoffMax{5000};
constexpr std::chrono::milliseconds kConnectTimeout{5000};
// Balance (DESIGN §5): a broker holding more than this share above the mesh's average of
// peers sends GoAway{REBALANCE} to some of them each probe interval, at most this share of
// its peers (and at least one) at a time.
constexpr double kBalanceBand = 1.2;
constexpr double kBalanceStep = 0.05;

uint64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

uint64_t SteadyMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now().time_since_epoch())
      .count();
}

std::string SeqRef(uint64_t seq) {
  std::string ref(8, '\0');
  for (int i = 0; i < 8; ++i) ref[i] = static_cast<char>(seq >> (56 - 8 * i));
  return ref;
}

std::optional<uint64_t> SeqOf(std::string_view ref) {
  if (ref.size() != 8) return std::nullopt;
  uint64_t seq = 0;
  for (char c : ref) seq = (seq << 8) | static_cast<uint8_t>(c);
  return seq;
}

// One cluster link and its outgoing queue, which any thread may fill: frames, forwards (cut
// into batches) and acks go out together on the link's executor.
class ClusterLink : public std::enable_shared_from_this<ClusterLink> {
 public:
  ClusterLink(std::shared_ptr<peer::Link> link, bool initiator, std::string dialed)
      : link_(std::move(link)),
        initiator_(initiator),
        dialed_(std::move(dialed)),
        node_(link_->remote_id().Raw()) {}

  peer::Link& link() { return *link_; }
  bool initiator() const { return initiator_; }
  const std::string& dialed() const { return dialed_; }
  const std::string& node() const { return node_; }
  std::atomic<bool> up{false};
  std::atomic<bool> closed{false};
  const std::shared_ptr<ForwardWindow> window = std::make_shared<ForwardWindow>(kLinkWindow);
  std::shared_ptr<Session> acks;  // collects the SendAcks of messages forwarded to us

  // Keeps the order of everything queued: forwards and acks batched so far go out before this
  // frame. A presence delta must not overtake the ack of a delivery that preceded it, or the
  // sender's broker sees the recipient leave with the message still unacknowledged and hands
  // it on to be delivered a second time.
  void Queue(mesh::v1::ClusterFrame frame) {
    std::lock_guard lock(mu_);
    CutPending();
    frames_.push_back(std::move(frame));
    ScheduleFlush();
  }

  void QueueForward(Session& forwarder, uint64_t link_seq, const mesh::v1::StoredEnvelope& envelope,
                    const std::string& self) {
    std::lock_guard lock(mu_);
    const uint64_t seq = next_seq_++;
    sent_[seq] = {forwarder.weak_from_this(), link_seq, Clock::now()};
    if (batch_bytes_ + envelope.payload().size() > kBatchBytes && forwards_.messages_size() > 0) {
      CutBatch();
    }
    auto* message = forwards_.add_messages();
    message->set_seq(seq);
    message->set_from(envelope.from());
    message->set_to(envelope.to());
    message->set_id(envelope.id());
    message->set_payload(envelope.payload());
    message->set_sent_at_ms(envelope.sent_at_ms());
    message->set_expire_at_ms(envelope.expire_at_ms());
    message->set_ingress_node(envelope.ingress_node().empty() ? self : envelope.ingress_node());
    batch_bytes_ += envelope.payload().size();
    ScheduleFlush();
  }

  void QueueAck(uint64_t seq, mesh::v1::SendAck::Status status, std::string detail) {
    std::lock_guard lock(mu_);
    auto* ack = acks_.add_acks();
    ack->set_seq(seq);
    ack->set_status(status);
    if (!detail.empty()) ack->set_detail(std::move(detail));
    ScheduleFlush();
  }

  // The forwarders and their link seqs that these acks settle, grouped by forwarder; `owned`
  // or refused. Observes the forward latency of the owned ones.
  struct Settled {
    std::shared_ptr<Session> forwarder;
    std::vector<uint64_t> link_seqs;
    bool owned;
  };
  std::vector<Settled> Settle(const mesh::v1::ForwardAckBatch& batch, LatencyHistogram& latency) {
    std::vector<Settled> settled;
    std::lock_guard lock(mu_);
    const auto now = Clock::now();
    for (const auto& ack : batch.acks()) {
      auto it = sent_.find(ack.seq());
      if (it == sent_.end()) continue;
      const Sent sent = it->second;
      sent_.erase(it);
      auto forwarder = sent.forwarder.lock();
      if (!forwarder) continue;
      const bool owned = ack.status() == mesh::v1::SendAck::ACCEPTED ||
                         ack.status() == mesh::v1::SendAck::DUPLICATE;
      if (owned) {
        latency.Observe(std::chrono::duration_cast<std::chrono::microseconds>(now - sent.at));
      }
      if (settled.empty() || settled.back().forwarder != forwarder ||
          settled.back().owned != owned) {
        settled.push_back({forwarder, {}, owned});
      }
      settled.back().link_seqs.push_back(sent.link_seq);
    }
    return settled;
  }

 private:
  struct Sent {
    std::weak_ptr<Session> forwarder;
    uint64_t link_seq;
    Clock::time_point at;
  };

  void CutBatch() {
    mesh::v1::ClusterFrame frame;
    frame.mutable_forward()->Swap(&forwards_);
    frames_.push_back(std::move(frame));
    batch_bytes_ = 0;
  }

  void ScheduleFlush() {
    if (flush_scheduled_) return;
    flush_scheduled_ = true;
    asio::post(link_->get_executor(), [self = shared_from_this()] { self->Flush(); });
  }

  // Moves the batched forwards and acks into frames_, behind what is queued there already.
  void CutPending() {
    if (forwards_.messages_size() > 0) CutBatch();
    if (acks_.acks_size() > 0) {
      mesh::v1::ClusterFrame frame;
      frame.mutable_acks()->Swap(&acks_);
      frames_.push_back(std::move(frame));
    }
  }

  void Flush() {
    std::vector<mesh::v1::ClusterFrame> frames;
    {
      std::lock_guard lock(mu_);
      flush_scheduled_ = false;
      CutPending();
      frames.swap(frames_);
    }
    for (const auto& frame : frames) link_->Send(frame);
  }

  const std::shared_ptr<peer::Link> link_;
  const bool initiator_;
  const std::string dialed_;  // the address dialled; empty when accepted
  const std::string node_;
  std::mutex mu_;
  std::vector<mesh::v1::ClusterFrame> frames_;
  mesh::v1::ForwardBatch forwards_;
  size_t batch_bytes_ = 0;
  mesh::v1::ForwardAckBatch acks_;
  bool flush_scheduled_ = false;
  uint64_t next_seq_ = 1;
  absl::flat_hash_map<uint64_t, Sent> sent_;
};

enum class MemberState { kJoining, kLive, kSuspect };

const char* StateName(MemberState state, bool draining) {
  if (draining) return "draining";
  switch (state) {
    case MemberState::kJoining:
      return "joining";
    case MemberState::kLive:
      return "live";
    case MemberState::kSuspect:
      return "suspect";
  }
  return "unknown";
}

}  // namespace

uint64_t HomeScore(std::string_view node, std::string_view peer) {
  crypto_hash_sha256_state state;
  crypto_hash_sha256_init(&state);
  crypto_hash_sha256_update(&state, reinterpret_cast<const uint8_t*>(node.data()), node.size());
  crypto_hash_sha256_update(&state, reinterpret_cast<const uint8_t*>(peer.data()), peer.size());
  uint8_t digest[crypto_hash_sha256_BYTES];
  crypto_hash_sha256_final(&state, digest);
  uint64_t score = 0;
  for (int i = 0; i < 8; ++i) score = (score << 8) | digest[i];
  return score;
}

std::string HomeOf(std::string_view peer, const std::vector<std::string>& nodes) {
  std::string best;
  uint64_t best_score = 0;
  for (const auto& node : nodes) {
    const uint64_t score = HomeScore(node, peer);
    if (best.empty() || score > best_score || (score == best_score && node < best)) {
      best = node;
      best_score = score;
    }
  }
  return best;
}

namespace {

absl::StatusOr<crypto::Secret<crypto::kKeySize>> ParseSecretLine(const std::string& path,
                                                                 const std::string& line) {
  const std::string hex(absl::StripAsciiWhitespace(line));
  if (hex.size() != 2 * crypto::kKeySize || !absl::c_all_of(hex, absl::ascii_isxdigit)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cluster secret file ", path,
                     ": each line must be 64 hex characters (32 bytes); make one with: "
                     "openssl rand -hex 32"));
  }
  std::string bytes = absl::HexStringToBytes(hex);
  crypto::Secret<crypto::kKeySize> secret(
      {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
  crypto::Wipe(bytes);
  return secret;
}

}  // namespace

absl::StatusOr<ClusterSecrets> LoadClusterSecret(const std::string& path) {
  auto text = base::ReadPrivateFile(path, "cluster secret file");
  if (!text.ok()) return text.status();
  std::istringstream in(*text);
  std::string first, second;
  std::getline(in, first);
  std::getline(in, second);
  crypto::Wipe(*text);
  auto current = ParseSecretLine(path, first);
  if (!current.ok()) return current.status();
  ClusterSecrets secrets{*current, std::nullopt};
  if (!absl::StripAsciiWhitespace(second).empty()) {
    auto next = ParseSecretLine(path, second);
    if (!next.ok()) return next.status();
    secrets.next = *next;
  }
  return secrets;
}

class Cluster::Impl : public std::enable_shared_from_this<Impl> {
 public:
  Impl(ClusterConfig config, const crypto::KeyPair& key, const ClusterSecrets& secrets,
       Router& router, std::vector<asio::io_context*> shards, peer::LinkConfig link_config,
       ClusterStats& stats)
      : config_(std::move(config)),
        key_(key),
        self_(key.public_key.Raw()),
        router_(router),
        shards_(std::move(shards)),
        link_config_(link_config),
        stats_(stats),
        gate_(config_.max_pending_handshakes, config_.max_pending_handshakes_per_ip) {
    UseSecretsLocked(secrets);
    hello_.set_protocol_version(peer::kProtocolVersion);
    hello_.set_node_name(config_.node_name);
    hello_.mutable_limits()->set_max_payload(link_config_.max_payload);
    hello_.mutable_limits()->set_heartbeat_interval_ms(
        static_cast<uint32_t>(link_config_.heartbeat_interval.count()));
    for (const auto& seed : config_.peers) seeds_.insert(seed);
  }

  absl::Status Start() {
    auto acceptor = peer::Listen(*shards_.front(), config_.listen);
    if (!acceptor.ok()) return acceptor.status();
    acceptor_.emplace(*std::move(acceptor));
    const tcp::endpoint endpoint = acceptor_->local_endpoint();
    port_ = endpoint.port();
    // Without --cluster-advertise: the bound address, loopback for "every interface".
    const auto ip = endpoint.address().is_unspecified() ? std::string("127.0.0.1")
                                                        : endpoint.address().to_string();
    advertise_ = config_.advertise.empty() ? absl::StrCat(ip, ":", port_) : config_.advertise;
    Log(spdlog::level::info, "listening",
        {{"listener", "cluster"},
         {"addr", endpoint.address().to_string()},
         {"port", port_},
         {"advertise", advertise_},
         {"seeds", config_.peers.size()},
         {"dns", config_.dns}});
    asio::co_spawn(*shards_.front(), AcceptLoop(), asio::detached);
    asio::co_spawn(*shards_.front(), TickLoop(), asio::detached);
    return absl::OkStatus();
  }

  void Stop() {
    std::vector<std::shared_ptr<ClusterLink>> links;
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
      links = all_links_;
    }
    // The acceptor goes on its own thread, while its io_context still runs.
    asio::post(*shards_.front(), [self = shared_from_this()] { self->acceptor_.reset(); });
    for (auto& link : links) {
      asio::post(link->link().get_executor(), [link] { link->link().Close(absl::OkStatus()); });
    }
  }

  // Re-reads the secret file (SIGHUP, or its modification time changed): new handshakes use
  // it; links up stay up. A file that does not parse is logged and the secrets stay as they were.
  void ReloadSecret() {
    if (config_.secret_file.empty()) return;
    auto secrets = LoadClusterSecret(config_.secret_file);
    if (!secrets.ok()) {
      Log(spdlog::level::err, "cluster_secret_reload_failed",
          {{"error", std::string(secrets.status().message())}});
      return;
    }
    std::lock_guard lock(mu_);
    UseSecretsLocked(*secrets);
    Log(spdlog::level::info, "cluster_secret_reloaded", {{"next", secrets->next.has_value()}});
  }

  void Release() {
    std::lock_guard lock(mu_);
    members_.clear();
    all_links_.clear();
  }

  void StartDrain() {
    std::vector<std::shared_ptr<ClusterLink>> links;
    {
      std::lock_guard lock(mu_);
      draining_ = true;
      links = UpLinks();
    }
    mesh::v1::ClusterFrame frame;
    frame.mutable_member()->set_draining(true);
    for (auto& link : links) link->Queue(frame);
    router_.RebindAll();
  }

  size_t LiveMembers() const {
    std::lock_guard lock(mu_);
    size_t n = 0;
    for (const auto& [id, member] : members_) n += member.state == MemberState::kLive;
    return n;
  }

  std::vector<mesh::v1::Member> Members() const {
    std::vector<mesh::v1::Member> out;
    std::lock_guard lock(mu_);
    mesh::v1::Member self;
    self.set_node_id(crypto::IdText(self_));
    self.set_name(config_.node_name);
    self.set_state(draining_ ? mesh::v1::Member::DRAINING : mesh::v1::Member::ALIVE);
    self.set_address(advertise_);
    self.set_self(true);
    out.push_back(std::move(self));
    for (const auto& [id, member] : members_) {
      mesh::v1::Member view;
      view.set_node_id(crypto::IdText(id));
      view.set_name(member.name);
      view.set_address(member.address);
      view.set_rtt_ms(member.rtt_ms);
      mesh::v1::Member::State state = mesh::v1::Member::STATE_UNSPECIFIED;
      if (member.draining) {
        state = mesh::v1::Member::DRAINING;
      } else if (member.state == MemberState::kLive) {
        state = mesh::v1::Member::ALIVE;
      } else if (member.state == MemberState::kSuspect) {
        state = mesh::v1::Member::SUSPECT;
      }
      view.set_state(state);
      out.push_back(std::move(view));
    }
    return out;
  }

  std::optional<std::string> Locate(std::string_view peer) const {
    std::lock_guard lock(mu_);
    auto it = presence_.find(absl::string_view(peer.data(), peer.size()));
    if (it == presence_.end() || !it->second.connected) return std::nullopt;
    return crypto::IdText(it->second.node);
  }

  int64_t PresencePeers() const {
    std::lock_guard lock(mu_);
    int64_t n = 0;
    for (const auto& [peer, entry] : presence_) n += entry.connected;
    return n;
  }

  std::vector<std::pair<std::string, int64_t>> MemberCounts() const {
    std::map<std::string, int64_t> counts = {
        {"joining", 0}, {"live", 0}, {"suspect", 0}, {"draining", 0}};
    std::lock_guard lock(mu_);
    ++counts[draining_ ? "draining" : "live"];  // this node
    for (const auto& [id, member] : members_) ++counts[StateName(member.state, member.draining)];
    return {counts.begin(), counts.end()};
  }

  // ---- Placement ----

  std::string NextHop(std::string_view recipient) {
    std::lock_guard lock(mu_);
    const std::string home = HomeOf(recipient, HomeSetLocked());
    if (home.empty()) return {};  // no member to hand it to: keep it
    if (home != self_) return home;
    // Home here: to the broker the peer is connected to, if another; else keep it.
    auto it = presence_.find(absl::string_view(recipient.data(), recipient.size()));
    if (it == presence_.end() || !it->second.connected || it->second.node == self_) return {};
    // A suspect member keeps its peers: their messages wait here for its link (outbox).
    if (!members_.contains(it->second.node)) return {};
    return it->second.node;
  }

  std::shared_ptr<Session> Forwarder(std::string_view recipient, const std::string& node) {
    std::shared_ptr<ClusterLink> link;
    bool handoff = false;
    {
      std::lock_guard lock(mu_);
      auto it = members_.find(node);
      if (it == members_.end() || !it->second.link || !it->second.link->up) return nullptr;
      link = it->second.link;
      handoff = draining_;
    }
    auto id = crypto::PeerId::FromBytes(
        {reinterpret_cast<const uint8_t*>(recipient.data()), recipient.size()});
    if (!id.ok()) return nullptr;
    std::weak_ptr<ClusterLink> weak = link;
    auto forward = [weak, self = self_, handoff, stats = &stats_](
                       Session& forwarder, uint64_t link_seq,
                       const mesh::v1::StoredEnvelope& envelope) {
      if (auto carrier = weak.lock()) carrier->QueueForward(forwarder, link_seq, envelope, self);
      if (handoff) stats->handoff_messages.fetch_add(1, std::memory_order_relaxed);
    };
    return std::make_shared<Session>(*id, node, std::move(forward),
                                     std::weak_ptr<void>(std::static_pointer_cast<void>(link)),
                                     link->window, link->link().get_executor(), kForwardWindow);
  }

  bool Usable(const Session& forwarder) {
    auto carrier = std::static_pointer_cast<ClusterLink>(forwarder.carrier().lock());
    if (!carrier || !carrier->up || carrier->closed) return false;
    std::lock_guard lock(mu_);
    auto it = members_.find(forwarder.next_hop());
    return it != members_.end() && it->second.link == carrier;
  }

  void OnSession(const crypto::PeerId& peer, bool connected) {
    mesh::v1::ClusterFrame frame;
    std::vector<std::shared_ptr<ClusterLink>> links;
    {
      std::lock_guard lock(mu_);
      const std::string raw = peer.Raw();
      Presence& entry = presence_[raw];
      if (connected) {
        entry = {self_, std::max(WallMs(), entry.epoch_ms + 1), true};
      } else {
        if (entry.node != self_ || !entry.connected) return;  // replaced elsewhere meanwhile
        entry.connected = false;
      }
      auto* delta = frame.mutable_presence()->add_entries();
      delta->set_peer(raw);
      delta->set_node(self_);
      delta->set_epoch_ms(entry.epoch_ms);
      delta->set_connected(connected);
      links = UpLinks();
    }
    for (auto& link : links) link->Queue(frame);
  }

  uint16_t port() const { return port_; }

 private:
  struct Member {
    std::string address;
    std::string name;
    MemberState state = MemberState::kJoining;
    bool draining = false;
    std::shared_ptr<ClusterLink> link;
    Clock::time_point since = Clock::now();
    double rtt_ms = 0;
  };
  struct Presence {
    std::string node;
    uint64_t epoch_ms = 0;
    bool connected = false;
  };
  struct Dial {
    bool in_progress = false;
    Clock::time_point next{};
    std::chrono::milliseconds backoff = kDialBackoffMin;
  };

  void UseSecretsLocked(const ClusterSecrets& secrets) {
    secrets_.push_back(secrets);
    link_config_.psk = &secrets_.back().current;
    link_config_.psk_next = secrets_.back().next ? &*secrets_.back().next : nullptr;
  }

  peer::LinkConfig CurrentLinkConfig() const {
    std::lock_guard lock(mu_);
    return link_config_;
  }

  // Homes are computed over live and suspect members that do not drain, and this node.
  std::vector<std::string> HomeSetLocked() const {
    std::vector<std::string> nodes;
    if (!draining_) nodes.push_back(self_);
    for (const auto& [id, member] : members_) {
      if (member.draining || member.state == MemberState::kJoining) continue;
      nodes.push_back(id);
    }
    return nodes;
  }

  std::vector<std::shared_ptr<ClusterLink>> UpLinks() const {
    std::vector<std::shared_ptr<ClusterLink>> links;
    for (const auto& [id, member] : members_) {
      if (member.link && member.link->up) links.push_back(member.link);
    }
    return links;
  }

  mesh::v1::ClusterFrame HelloFrame() const {
    mesh::v1::ClusterFrame frame;
    auto* hello = frame.mutable_hello();
    hello->set_version(mesh::v1::CLUSTER_VERSION_1);
    hello->set_node_name(config_.node_name);
    hello->set_address(advertise_);
    hello->set_draining(draining_);
    AddMembersLocked(*hello->mutable_members());
    return frame;
  }

  void AddMembersLocked(google::protobuf::RepeatedPtrField<mesh::v1::ClusterMember>& out) const {
    for (const auto& [id, member] : members_) {
      // Only members proven by a link: an address nobody reached is not passed on.
      if (member.address.empty() || member.state == MemberState::kJoining) continue;
      auto* m = out.Add();
      m->set_node_id(id);
      m->set_address(member.address);
      m->set_draining(member.draining);
    }
  }

  void LearnMembersLocked(
      const google::protobuf::RepeatedPtrField<mesh::v1::ClusterMember>& gossip) {
    for (const auto& m : gossip) {
      if (m.node_id() == self_ || m.node_id().size() != crypto::kKeySize || m.address().empty()) {
        continue;
      }
      auto [it, added] = members_.try_emplace(m.node_id());
      if (added) it->second.address = m.address();
    }
  }

  awaitable<void> AcceptLoop() {
    size_t next = 0;
    auto self = shared_from_this();
    while (true) {
      asio::io_context& shard = *shards_[next++ % shards_.size()];
      error_code ec;
      tcp::socket socket =
          co_await acceptor_->async_accept(shard, asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        if (ec == asio::error::operation_aborted || !acceptor_->is_open()) break;
        Log(spdlog::level::warn, "accept_failed",
            {{"listener", "cluster"}, {"error", ec.message()}});
        continue;
      }
      const auto remote = socket.remote_endpoint(ec);
      if (ec) continue;
      if (!gate_.TryEnter(remote.address())) {
        stats_.links.CountFailure(mesh::v1::OVERLOADED);
        continue;
      }
      asio::co_spawn(shard, Serve(std::move(socket), remote), asio::detached);
    }
  }

  awaitable<void> Serve(tcp::socket socket, tcp::endpoint remote) {
    auto self = shared_from_this();
    auto accepted =
        co_await peer::Link::Accept(std::move(socket), key_, hello_, peer::LinkKind::kCluster,
                                    CurrentLinkConfig(), stats_.links);
    gate_.Leave(remote.address());
    if (!accepted.ok()) {
      // Without the secret, or with another one, message 3 fails: say so, once per attempt.
      Log(spdlog::level::warn, "cluster_link_refused",
          {{"remote", remote.address().to_string()},
           {"reason", peer::ReasonName(peer::ErrorCodeOf(accepted.status()))},
           {"detail", std::string(accepted.status().message())}});
      co_return;
    }
    co_await Run(std::make_shared<ClusterLink>(*std::move(accepted), false, std::string()));
  }

  // Runs on `shard`, where the socket and the link will live: an operation pending on one
  // io_context must not belong to a coroutine of another (both go at shutdown, in turn).
  awaitable<void> DialOnce(std::string address, asio::io_context& shard) {
    auto self = shared_from_this();
    auto result = co_await Connect(shard, address);
    {
      std::lock_guard lock(mu_);
      Dial& dial = dials_[address];
      dial.in_progress = false;
      if (result.ok()) {
        dial.backoff = kDialBackoffMin;
      } else {
        dial.next = Clock::now() + dial.backoff;
        dial.backoff = std::min(dial.backoff * 2, kDialBackoffMax);
      }
    }
    if (!result.ok()) {
      Log(spdlog::level::debug, "cluster_dial_failed",
          {{"address", address}, {"error", std::string(result.status().message())}});
      co_return;
    }
    co_await Run(std::make_shared<ClusterLink>(*std::move(result), true, address));
  }

  awaitable<absl::StatusOr<std::shared_ptr<peer::Link>>> Connect(asio::io_context& shard,
                                                                 const std::string& address) {
    auto host_port = peer::SplitHostPort(address);
    if (!host_port.ok()) co_return host_port.status();
    tcp::resolver resolver(shard);
    error_code ec;
    auto endpoints = co_await resolver.async_resolve(host_port->first, host_port->second,
                                                     asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return absl::UnavailableError(absl::StrCat("resolve ", address, ": ", ec.message()));
    tcp::socket socket(shard);
    asio::steady_timer timeout(shard, kConnectTimeout);
    timeout.async_wait([&socket](const error_code& e) {
      if (!e) {
        error_code ignored;
        socket.close(ignored);
      }
    });
    co_await asio::async_connect(socket, endpoints, asio::redirect_error(asio::use_awaitable, ec));
    timeout.cancel();
    if (ec) co_return absl::UnavailableError(absl::StrCat("connect ", address, ": ", ec.message()));
    const auto suite = crypto::SuiteAvailable(crypto::CipherSuite::kAesGcm)
                           ? crypto::CipherSuite::kAesGcm
                           : crypto::CipherSuite::kChaChaPoly;
    co_return co_await peer::Link::Connect(std::move(socket), key_, hello_, suite,
                                           CurrentLinkConfig(), stats_.links,
                                           peer::LinkKind::kCluster);
  }

  // Serves one established cluster link until it ends.
  awaitable<void> Run(std::shared_ptr<ClusterLink> link) {
    auto self = shared_from_this();
    std::weak_ptr<ClusterLink> weak = link;
    link->acks = std::make_shared<Session>(link->link().remote_id(), [weak](mesh::v1::Frame frame) {
      auto carrier = weak.lock();
      if (!carrier || !frame.has_send_ack()) return;
      if (auto seq = SeqOf(frame.send_ack().id())) {
        carrier->QueueAck(*seq, frame.send_ack().status(), frame.send_ack().detail());
      }
    });
    {
      std::lock_guard lock(mu_);
      if (stopping_) co_return;
      all_links_.push_back(link);
      link->Queue(HelloFrame());
    }
    absl::Status ended = co_await link->link().RunCluster(
        [&](mesh::v1::ClusterFrame& frame) { return OnFrame(link, frame); });
    link->closed = true;
    link->up = false;
    OnLinkDown(link, ended);
  }

  absl::Status OnFrame(const std::shared_ptr<ClusterLink>& link, mesh::v1::ClusterFrame& frame) {
    if (frame.has_hello()) return OnHello(link, frame.hello());
    if (!link->up) {
      return peer::LinkError(mesh::v1::UNEXPECTED_FRAME, "a cluster frame before the hello");
    }
    switch (frame.body_case()) {
      case mesh::v1::ClusterFrame::kPresence:
        ApplyPresence(link->node(), frame.presence());
        return absl::OkStatus();
      case mesh::v1::ClusterFrame::kForward:
        for (auto& message : *frame.mutable_forward()->mutable_messages()) {
          mesh::v1::StoredEnvelope envelope;
          envelope.set_allocated_from(message.release_from());
          envelope.set_allocated_to(message.release_to());
          envelope.set_allocated_id(message.release_id());
          envelope.set_allocated_payload(message.release_payload());
          envelope.set_sent_at_ms(message.sent_at_ms());
          envelope.set_expire_at_ms(message.expire_at_ms());
          envelope.set_allocated_ingress_node(message.release_ingress_node());
          router_.OnForward(*link->acks, std::move(envelope), SeqRef(message.seq()));
        }
        return absl::OkStatus();
      case mesh::v1::ClusterFrame::kAcks:
        for (auto& settled : link->Settle(frame.acks(), stats_.forward_latency)) {
          router_.OnForwardAcks(*settled.forwarder, settled.link_seqs, settled.owned);
        }
        return absl::OkStatus();
      case mesh::v1::ClusterFrame::kMember: {
        {
          std::lock_guard lock(mu_);
          auto it = members_.find(link->node());
          if (it != members_.end()) it->second.draining = frame.member().draining();
        }
        Log(spdlog::level::info, "member_draining", {{"node", crypto::IdText(link->node())}});
        PublishMember(link->node(), "draining");
        router_.RebindAll();
        return absl::OkStatus();
      }
      case mesh::v1::ClusterFrame::kProbe: {
        mesh::v1::ClusterFrame reply;
        reply.mutable_probe_reply()->set_nonce(frame.probe().nonce());
        link->Queue(std::move(reply));
        std::lock_guard lock(mu_);
        LearnMembersLocked(frame.probe().members());
        return absl::OkStatus();
      }
      case mesh::v1::ClusterFrame::kProbeReply: {
        const uint64_t sent = frame.probe_reply().nonce();
        const uint64_t now = SteadyMicros();
        std::lock_guard lock(mu_);
        auto it = members_.find(link->node());
        if (it != members_.end() && now >= sent) {
          it->second.rtt_ms = static_cast<double>(now - sent) / 1000.0;
        }
        return absl::OkStatus();
      }
      default:
        return peer::LinkError(mesh::v1::UNEXPECTED_FRAME,
                               absl::StrCat("cluster frame ", frame.body_case(), " not accepted"));
    }
  }

  absl::Status OnHello(const std::shared_ptr<ClusterLink>& link,
                       const mesh::v1::ClusterHello& hello) {
    if (link->up) return peer::LinkError(mesh::v1::UNEXPECTED_FRAME, "a second cluster hello");
    if (hello.version() != mesh::v1::CLUSTER_VERSION_1) {
      stats_.refused_version.fetch_add(1, std::memory_order_relaxed);
      return peer::LinkError(mesh::v1::UNSUPPORTED_VERSION,
                             absl::StrCat("cluster protocol version ", hello.version(),
                                          " is not spoken here (this node speaks 1)"));
    }
    const std::string& node = link->node();
    if (node == self_) {
      std::lock_guard lock(mu_);
      if (!link->dialed().empty()) self_addresses_.insert(link->dialed());
      return absl::CancelledError("dialled itself");
    }
    std::shared_ptr<ClusterLink> replaced;
    bool joined = false;
    {
      std::lock_guard lock(mu_);
      Member& member = members_[node];
      if (member.link && member.link != link && member.link->up) {
        // Two links between one pair: the one dialled by the lower node ID stays.
        const std::string& dialer_new = link->initiator() ? self_ : node;
        const std::string& dialer_old = member.link->initiator() ? self_ : node;
        if (dialer_old <= dialer_new) return absl::CancelledError("a link to this member exists");
        replaced = member.link;
      }
      joined = member.state != MemberState::kLive;
      member.link = link;
      member.state = MemberState::kLive;
      member.since = Clock::now();
      member.address = hello.address();
      member.name = hello.node_name();
      member.draining = hello.draining();
      link->up = true;
      LearnMembersLocked(hello.members());
      // Our whole table of local sessions, so the member routes to them at once.
      mesh::v1::ClusterFrame full;
      full.mutable_presence()->set_full(true);
      for (const auto& [peer, entry] : presence_) {
        if (entry.node != self_ || !entry.connected) continue;
        auto* e = full.mutable_presence()->add_entries();
        e->set_peer(peer);
        e->set_node(self_);
        e->set_epoch_ms(entry.epoch_ms);
        e->set_connected(true);
      }
      link->Queue(std::move(full));
    }
    if (replaced) {
      asio::post(replaced->link().get_executor(),
                 [replaced] { replaced->link().Close(absl::OkStatus()); });
    }
    if (joined) {
      Log(spdlog::level::info, "member_joined",
          {{"node", crypto::IdText(node)},
           {"name", hello.node_name()},
           {"address", hello.address()}});
      PublishMember(node, "joined");
    }
    router_.RebindAll();
    return absl::OkStatus();
  }

  void OnLinkDown(const std::shared_ptr<ClusterLink>& link, const absl::Status& ended) {
    bool was_member_link = false;
    bool gone = false;
    {
      std::lock_guard lock(mu_);
      std::erase(all_links_, link);
      auto it = members_.find(link->node());
      if (it != members_.end() && it->second.link == link) {
        was_member_link = true;
        it->second.link.reset();
        if (it->second.draining || stopping_) {
          gone = true;
          DropMemberLocked(it);
        } else {
          it->second.state = MemberState::kSuspect;
          it->second.since = Clock::now();
        }
      }
    }
    if (!was_member_link) return;
    Log(spdlog::level::warn, "cluster_link_down",
        {{"node", crypto::IdText(link->node())},
         {"detail", std::string(ended.message())},
         {"now", gone ? "gone" : "suspect"}});
    if (gone) PublishMember(link->node(), "left");
    router_.RebindAll();
  }

  template <typename Iterator>
  void DropMemberLocked(Iterator it) {
    const std::string node = it->first;
    members_.erase(it);
    for (auto& [peer, entry] : presence_) {
      if (entry.node == node) entry.connected = false;
    }
  }

  void ApplyPresence(const std::string& from_node, const mesh::v1::Presence& presence) {
    std::vector<std::string> changed;
    std::vector<std::string> replaced_here;
    {
      std::lock_guard lock(mu_);
      absl::flat_hash_set<std::string> listed;
      for (const auto& e : presence.entries()) {
        if (e.peer().size() != crypto::kKeySize || e.node().size() != crypto::kKeySize) continue;
        if (presence.full()) listed.insert(e.peer());
        auto [it, added] = presence_.try_emplace(e.peer());
        Presence& known = it->second;
        if (e.connected()) {
          const bool newer = added || e.epoch_ms() > known.epoch_ms ||
                             (e.epoch_ms() == known.epoch_ms && e.node() > known.node);
          if (!newer) continue;
          if (!added && known.node == self_ && known.connected) replaced_here.push_back(e.peer());
          known = {e.node(), e.epoch_ms(), true};
          changed.push_back(e.peer());
        } else if (added) {
          known = {e.node(), e.epoch_ms(), false};
        } else if (known.node == e.node() && known.epoch_ms == e.epoch_ms() && known.connected) {
          known.connected = false;
          changed.push_back(e.peer());
        }
      }
      if (presence.full()) {
        for (auto& [peer, entry] : presence_) {
          if (entry.node == from_node && entry.connected && !listed.contains(peer)) {
            entry.connected = false;
            changed.push_back(peer);
          }
        }
      }
    }
    for (const auto& peer : replaced_here) router_.Disconnect(peer, mesh::v1::GoAway::REPLACED);
    for (const auto& peer : changed) router_.Rebind(peer);
  }

  void PublishMember(const std::string& node, const char* what) {
    if (!router_.events().has_watchers()) return;
    mesh::v1::Event event;
    auto* member = event.mutable_member_changed();
    member->set_node_id(crypto::IdText(node));
    member->set_change(what);
    router_.events().Publish(std::move(event));
  }

  // Once per probe interval: probes and gossip, suspects that time out, dials, DNS.
  awaitable<void> TickLoop() {
    auto self = shared_from_this();
    asio::steady_timer timer(*shards_.front());
    auto next_dns = Clock::now();
    while (true) {
      {
        std::lock_guard lock(mu_);
        if (stopping_) break;
      }
      if (!config_.dns.empty() && Clock::now() >= next_dns) {
        next_dns = Clock::now() + config_.dns_interval;
        co_await ResolveDns();
      }
      Tick();
      timer.expires_after(config_.probe_interval);
      error_code ec;
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
  }

  // Connections are long-lived, so brokers a scale-up adds would stay idle: a broker far above
  // the mesh's average of peers asks some of its own to go (they reconnect elsewhere).
  void Balance() {
    size_t mine = 0;
    size_t total = 0;
    size_t nodes = 1;
    {
      std::lock_guard lock(mu_);
      if (draining_) return;
      absl::flat_hash_set<std::string> live;
      for (const auto& [id, member] : members_) {
        if (member.state == MemberState::kLive && !member.draining) live.insert(id);
      }
      if (live.empty()) return;
      nodes += live.size();
      for (const auto& [peer, entry] : presence_) {
        if (!entry.connected) continue;
        if (entry.node == self_) {
          ++mine;
          ++total;
        } else if (live.contains(entry.node)) {
          ++total;
        }
      }
    }
    const double average = static_cast<double>(total) / static_cast<double>(nodes);
    if (static_cast<double>(mine) <= average * kBalanceBand || mine < 2) return;
    const auto excess = static_cast<size_t>(static_cast<double>(mine) - average * kBalanceBand);
    const size_t step = std::max<size_t>(
        1, std::min(excess, static_cast<size_t>(static_cast<double>(mine) * kBalanceStep)));
    const size_t sent = router_.GoAwaySome(step, mesh::v1::GoAway::REBALANCE);
    Log(spdlog::level::info, "rebalance",
        {{"peers", mine}, {"mesh_average", average}, {"go_away", sent}});
  }

  awaitable<void> ResolveDns() {
    auto host_port = peer::SplitHostPort(config_.dns);
    if (!host_port.ok()) co_return;
    tcp::resolver resolver(*shards_.front());
    error_code ec;
    auto results = co_await resolver.async_resolve(host_port->first, host_port->second,
                                                   asio::redirect_error(asio::use_awaitable, ec));
    std::set<std::string> addresses;
    if (!ec) {
      for (const auto& entry : results) {
        const auto endpoint = entry.endpoint();
        addresses.insert(
            endpoint.address().is_v6()
                ? absl::StrCat("[", endpoint.address().to_string(), "]:", endpoint.port())
                : absl::StrCat(endpoint.address().to_string(), ":", endpoint.port()));
      }
    }
    if (ec) co_return;  // keep the last answer rather than forget every member
    std::lock_guard lock(mu_);
    dns_addresses_ = std::move(addresses);
    dns_resolved_ = true;
  }

  void Tick() {
    std::vector<std::string> to_dial;
    std::vector<std::string> gone;
    std::vector<std::shared_ptr<ClusterLink>> links;
    mesh::v1::ClusterFrame probe;
    const auto now = Clock::now();
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      // A suspect past its timeout is gone; so is an unlinked member DNS no longer lists.
      for (auto it = members_.begin(); it != members_.end();) {
        Member& member = it->second;
        const bool dropped_by_dns = dns_resolved_ && !member.link &&
                                    !dns_addresses_.contains(member.address) &&
                                    !seeds_.contains(member.address);
        // A suspect past its timeout, or a member learned of but never reached in as long.
        const bool timed_out =
            member.state != MemberState::kLive && now - member.since >= config_.suspect_timeout;
        if ((member.state != MemberState::kLive && dropped_by_dns) || timed_out) {
          gone.push_back(it->first);
          auto next = std::next(it);
          DropMemberLocked(it);
          it = next;
          continue;
        }
        ++it;
      }
      std::set<std::string> linked;
      for (const auto& [id, member] : members_) {
        if (member.link) linked.insert(member.address);
      }
      auto want = [&](const std::string& address) {
        if (address.empty() || address == advertise_ || linked.contains(address) ||
            self_addresses_.contains(address)) {
          return;
        }
        Dial& dial = dials_[address];
        if (dial.in_progress || now < dial.next) return;
        dial.in_progress = true;
        to_dial.push_back(address);
      };
      for (const auto& [id, member] : members_) {
        if (!member.link) want(member.address);
      }
      for (const auto& seed : seeds_) want(seed);
      for (const auto& address : dns_addresses_) want(address);
      links = UpLinks();
      probe.mutable_probe()->set_nonce(SteadyMicros());
      AddMembersLocked(*probe.mutable_probe()->mutable_members());
    }
    for (const auto& node : gone) {
      Log(spdlog::level::warn, "member_gone", {{"node", crypto::IdText(node)}});
      PublishMember(node, "left");
    }
    Balance();
    for (auto& link : links) link->Queue(probe);
    for (auto& address : to_dial) {
      auto& shard = *shards_[next_dial_shard_++ % shards_.size()];
      asio::co_spawn(shard, DialOnce(address, shard), asio::detached);
    }
    // Homes moved with a member gone; else only what waits unbound (a refusal, no link).
    if (!gone.empty()) {
      router_.RebindAll();
    } else {
      router_.PlaceUnbound();
    }
  }

  const ClusterConfig config_;
  const crypto::KeyPair& key_;
  const std::string self_;
  Router& router_;
  const std::vector<asio::io_context*> shards_;
  peer::LinkConfig link_config_;  // psk and psk_next: the secrets in use, under mu_
  // Every version of the secrets loaded, so a handshake under way keeps valid pointers across
  // a reload (a few bytes per reload; wiped at exit).
  std::deque<ClusterSecrets> secrets_;
  ClusterStats& stats_;
  peer::HandshakeGate gate_;
  mesh::v1::Hello hello_;
  std::optional<tcp::acceptor> acceptor_;
  uint16_t port_ = 0;
  std::string advertise_;
  std::atomic<size_t> next_dial_shard_{0};

  mutable std::mutex mu_;
  bool stopping_ = false;
  bool draining_ = false;
  std::map<std::string, Member> members_;  // by node ID (raw), this node excluded
  std::vector<std::shared_ptr<ClusterLink>> all_links_;
  std::set<std::string> seeds_;
  std::set<std::string> dns_addresses_;
  bool dns_resolved_ = false;
  std::set<std::string> self_addresses_;  // addresses that turned out to be this node
  std::map<std::string, Dial> dials_;
  absl::flat_hash_map<std::string, Presence> presence_;  // peer (raw) -> where it is
};

Cluster::Cluster(ClusterConfig config, const crypto::KeyPair& key, const ClusterSecrets& secrets,
                 Router& router, std::vector<asio::io_context*> shards,
                 peer::LinkConfig link_config, ClusterStats& stats)
    : impl_(std::make_shared<Impl>(std::move(config), key, secrets, router, std::move(shards),
                                   link_config, stats)) {}
Cluster::~Cluster() = default;
absl::Status Cluster::Start() { return impl_->Start(); }
void Cluster::Stop() { impl_->Stop(); }
void Cluster::Release() { impl_->Release(); }
void Cluster::ReloadSecret() { impl_->ReloadSecret(); }
void Cluster::StartDrain() { impl_->StartDrain(); }
size_t Cluster::LiveMembers() const { return impl_->LiveMembers(); }
std::vector<mesh::v1::Member> Cluster::Members() const { return impl_->Members(); }
std::optional<std::string> Cluster::Locate(std::string_view peer) const {
  return impl_->Locate(peer);
}
int64_t Cluster::PresencePeers() const { return impl_->PresencePeers(); }
std::vector<std::pair<std::string, int64_t>> Cluster::MemberCounts() const {
  return impl_->MemberCounts();
}
uint16_t Cluster::port() const { return impl_->port(); }
std::string Cluster::NextHop(std::string_view recipient) { return impl_->NextHop(recipient); }
std::shared_ptr<Session> Cluster::Forwarder(std::string_view recipient, const std::string& node) {
  return impl_->Forwarder(recipient, node);
}
bool Cluster::Usable(const Session& forwarder) { return impl_->Usable(forwarder); }
void Cluster::OnSession(const crypto::PeerId& peer, bool connected) {
  impl_->OnSession(peer, connected);
}

}  // namespace mesh::broker
