// The mesh's facade (DESIGN §5): it runs the cluster links, dials and timers, and answers the
// router's placement questions from membership, presence and homes.
//
// Locks: membership and presence sit under one mutex (mu_), never held while calling the
// router; the router calls Placement methods under its stripe locks, and those take mu_ only.
// Each cluster link has its own outgoing queue under its own mutex, a leaf.
#include "broker/cluster/cluster.h"

#include <sodium.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <deque>
#include <map>
#include <set>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "broker/cluster/cluster_link.h"
#include "broker/cluster/membership.h"
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

// Tells this process from another holding the same node key (a cloned volume).
std::string NewIncarnation() {
  std::string bytes(16, '\0');
  randombytes_buf(bytes.data(), bytes.size());
  return bytes;
}

}  // namespace

class Cluster::Impl : public std::enable_shared_from_this<Impl> {
 public:
  Impl(ClusterConfig config, const crypto::KeyPair& key, const ClusterSecrets& secrets,
       Router& router, std::vector<asio::io_context*> shards, peer::LinkConfig link_config,
       ClusterStats& stats)
      : config_(std::move(config)),
        key_(key),
        self_(key.public_key.Raw()),
        incarnation_(NewIncarnation()),
        router_(router),
        shards_(std::move(shards)),
        link_config_(link_config),
        stats_(stats),
        gate_(config_.max_pending_handshakes, config_.max_pending_handshakes_per_ip),
        membership_(self_, std::set<std::string>(config_.peers.begin(), config_.peers.end())),
        presence_(self_, config_.presence) {
    UseSecretsLocked(secrets);
    hello_.set_protocol_version(peer::kProtocolVersion);
    hello_.set_node_name(config_.node_name);
    hello_.mutable_limits()->set_max_payload(link_config_.max_payload);
    hello_.mutable_limits()->set_heartbeat_interval_ms(
        static_cast<uint32_t>(link_config_.heartbeat_interval.count()));
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
         {"dns", config_.dns},
         {"authority", config_.authority ? config_.authority->ToString() : std::string()}});
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
    membership_.Clear();
    all_links_.clear();
  }

  void StartDrain() {
    std::vector<std::shared_ptr<ClusterLink>> links;
    {
      std::lock_guard lock(mu_);
      draining_ = true;
      // Every link, not only those up: one whose hello went out before this (saying "not
      // draining") and whose member's hello has not come yet would otherwise never hear it,
      // and that member would go on counting this node as a home. Queued after the hello.
      links = all_links_;
    }
    mesh::v1::ClusterFrame frame;
    frame.mutable_member()->set_draining(true);
    for (auto& link : links) link->Queue(frame);
    router_.RebindAll();
  }

  size_t LiveMembers() const {
    std::lock_guard lock(mu_);
    size_t n = 0;
    for (const auto& [id, member] : membership_.members()) n += member.state == MemberState::kLive;
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
    for (const auto& [id, member] : membership_.members()) {
      mesh::v1::Member view;
      view.set_node_id(crypto::IdText(id));
      view.set_name(member.name);
      view.set_address(member.address);
      view.set_rtt_ms(member.rtt_ms);
      view.set_state(MemberViewState(member));
      out.push_back(std::move(view));
    }
    return out;
  }

  std::optional<std::string> Locate(std::string_view peer) const {
    std::lock_guard lock(mu_);
    const std::string* node = presence_.NodeOf(peer);
    if (node == nullptr) return std::nullopt;
    return crypto::IdText(*node);
  }

  int64_t PresencePeers() const {
    std::lock_guard lock(mu_);
    return static_cast<int64_t>(presence_.connected());
  }

  int64_t PresenceEntries() const {
    std::lock_guard lock(mu_);
    return static_cast<int64_t>(presence_.size());
  }

  std::vector<std::pair<std::string, int64_t>> MemberCounts() const {
    std::map<std::string, int64_t> counts = {
        {"joining", 0}, {"live", 0}, {"suspect", 0}, {"draining", 0}};
    std::lock_guard lock(mu_);
    ++counts[draining_ ? "draining" : "live"];  // this node
    for (const auto& [id, member] : membership_.members()) {
      ++counts[MemberStateName(member.state, member.draining)];
    }
    return {counts.begin(), counts.end()};
  }

  // ---- Placement ----

  std::string NextHop(std::string_view recipient) {
    stats_.placement_queries.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard lock(mu_);
    const std::string home = HomeOf(recipient, membership_.HomeSet(draining_));
    if (home.empty()) return {};  // no member to hand it to: keep it
    if (home != self_) return home;
    // Home here: to the broker the peer is connected to, if another; else keep it.
    const std::string* node = presence_.NodeOf(recipient);
    if (node == nullptr || *node == self_) return {};
    // A suspect member keeps its peers: their messages wait here for its link (outbox).
    if (!membership_.members().contains(*node)) return {};
    return *node;
  }

  std::shared_ptr<Session> Forwarder(std::string_view recipient, const std::string& node) {
    std::shared_ptr<ClusterLink> link;
    bool handoff = false;
    {
      std::lock_guard lock(mu_);
      const Member* member = membership_.Find(node);
      if (member == nullptr || !member->link || !member->link->up) return nullptr;
      link = member->link;
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
    auto carrier = std::static_pointer_cast<ClusterLink>(forwarder.forwarding()->carrier.lock());
    if (!carrier || !carrier->up || carrier->closed) return false;
    std::lock_guard lock(mu_);
    const Member* member = membership_.Find(forwarder.forwarding()->next_hop);
    return member != nullptr && member->link == carrier;
  }

  void OnSession(const crypto::PeerId& peer, bool connected) {
    mesh::v1::ClusterFrame frame;
    std::vector<std::shared_ptr<ClusterLink>> links;
    {
      std::lock_guard lock(mu_);
      auto delta = presence_.Local(peer.Raw(), connected, WallMs());
      if (!delta) return;  // replaced elsewhere meanwhile
      *frame.mutable_presence()->add_entries() = std::move(*delta);
      links = membership_.UpLinks();
    }
    for (auto& link : links) link->Queue(frame);
  }

  uint16_t port() const { return port_; }

 private:
  void UseSecretsLocked(const ClusterSecrets& secrets) {
    secrets_.push_back(secrets);
    link_config_.psk = &secrets_.back().current;
    link_config_.psk_next = secrets_.back().next ? &*secrets_.back().next : nullptr;
  }

  peer::LinkConfig CurrentLinkConfig() const {
    std::lock_guard lock(mu_);
    return link_config_;
  }

  mesh::v1::ClusterFrame HelloFrameLocked() const {
    mesh::v1::ClusterFrame frame;
    auto* hello = frame.mutable_hello();
    hello->set_version(mesh::v1::CLUSTER_VERSION_1);
    hello->set_node_name(config_.node_name);
    hello->set_address(advertise_);
    hello->set_draining(draining_);
    hello->set_incarnation(incarnation_);
    if (!config_.node_cert.empty()) hello->set_node_cert(config_.node_cert);
    membership_.Gossip(*hello->mutable_members());
    return frame;
  }

  awaitable<void> AcceptLoop() {
    auto self = shared_from_this();
    co_await peer::AcceptLoop(
        *acceptor_, shards_,
        [this](size_t index, tcp::socket socket, const tcp::endpoint& remote) {
          if (!gate_.TryEnter(remote.address())) {
            stats_.links.CountFailure(mesh::v1::OVERLOADED);
            return;
          }
          asio::co_spawn(*shards_[index], Serve(std::move(socket), remote), asio::detached);
        },
        [](const error_code& ec) {
          Log(spdlog::level::warn, "accept_failed",
              {{"listener", "cluster"}, {"error", ec.message()}});
        });
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
    co_await Run(std::make_shared<ClusterLink>(*std::move(accepted), false, std::string()),
                 remote.address().to_string());
  }

  // Runs on the shard where the socket and the link will live: an operation pending on one
  // io_context must not belong to a coroutine of another (both go at shutdown, in turn).
  awaitable<void> DialOnce(std::string address) {
    auto self = shared_from_this();
    auto result = co_await Connect(address);
    {
      std::lock_guard lock(mu_);
      membership_.DialEnded(address, result.ok(), Clock::now());
    }
    if (!result.ok()) {
      Log(spdlog::level::debug, "cluster_dial_failed",
          {{"address", address}, {"error", std::string(result.status().message())}});
      co_return;
    }
    co_await Run(std::make_shared<ClusterLink>(*std::move(result), true, address), address);
  }

  // On the executor of the coroutine that awaits it: the socket and the link live there.
  awaitable<absl::StatusOr<std::shared_ptr<peer::Link>>> Connect(const std::string& address) {
    auto socket = co_await peer::Dial(address, kConnectTimeout, /*spread=*/false);
    if (!socket.ok()) co_return socket.status();
    co_return co_await peer::Link::Connect(*std::move(socket), key_, hello_,
                                           crypto::PreferredSuite(), CurrentLinkConfig(),
                                           stats_.links, peer::LinkKind::kCluster);
  }

  // Serves one established cluster link until it ends. `remote`: the address it came from or
  // went to, for the log.
  awaitable<void> Run(std::shared_ptr<ClusterLink> link, std::string remote) {
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
      link->Queue(HelloFrameLocked());
    }
    absl::Status ended = co_await link->link().RunCluster(
        [&](mesh::v1::ClusterFrame& frame) { return OnFrame(link, remote, frame); });
    link->closed = true;
    link->up = false;
    OnLinkDown(link, ended);
  }

  absl::Status OnFrame(const std::shared_ptr<ClusterLink>& link, const std::string& remote,
                       mesh::v1::ClusterFrame& frame) {
    if (frame.has_hello()) return OnHello(link, remote, frame.hello());
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
          if (Member* member = membership_.Find(link->node())) {
            member->draining = frame.member().draining();
          }
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
        membership_.Learn(frame.probe().members());
        return absl::OkStatus();
      }
      case mesh::v1::ClusterFrame::kProbeReply: {
        const uint64_t sent = frame.probe_reply().nonce();
        const uint64_t now = SteadyMicros();
        std::lock_guard lock(mu_);
        Member* member = membership_.Find(link->node());
        if (member != nullptr && now >= sent) {
          member->rtt_ms = static_cast<double>(now - sent) / 1000.0;
        }
        return absl::OkStatus();
      }
      default:
        return peer::LinkError(mesh::v1::UNEXPECTED_FRAME,
                               absl::StrCat("cluster frame ", frame.body_case(), " not accepted"));
    }
  }

  // Where an authority is configured, the secret alone admits no one (DESIGN §5).
  absl::Status CheckCertificate(const ClusterLink& link, const mesh::v1::ClusterHello& hello) {
    if (!config_.authority) return absl::OkStatus();
    auto node = crypto::PeerId::FromBytes(
        {reinterpret_cast<const uint8_t*>(link.node().data()), link.node().size()});
    absl::Status status = hello.node_cert().empty()
                              ? absl::UnauthenticatedError("no node certificate")
                              : crypto::VerifyNodeCertificate(
                                    {reinterpret_cast<const uint8_t*>(hello.node_cert().data()),
                                     hello.node_cert().size()},
                                    *config_.authority, *node, absl::ToUnixSeconds(absl::Now()));
    if (status.ok()) return status;
    return peer::LinkError(
        mesh::v1::NOT_CERTIFIED,
        absl::StrCat("member ", crypto::IdText(link.node()),
                     " is not certified by the mesh authority: ", status.message()));
  }

  absl::Status OnHello(const std::shared_ptr<ClusterLink>& link, const std::string& remote,
                       const mesh::v1::ClusterHello& hello) {
    if (link->up) return peer::LinkError(mesh::v1::UNEXPECTED_FRAME, "a second cluster hello");
    if (hello.version() != mesh::v1::CLUSTER_VERSION_1) {
      stats_.refused_version.fetch_add(1, std::memory_order_relaxed);
      return peer::LinkError(mesh::v1::UNSUPPORTED_VERSION,
                             absl::StrCat("cluster protocol version ", hello.version(),
                                          " is not spoken here (this node speaks 1)"));
    }
    if (auto status = CheckCertificate(*link, hello); !status.ok()) {
      Log(spdlog::level::warn, "cluster_link_refused",
          {{"remote", remote},
           {"reason", "not_certified"},
           {"detail", std::string(status.message())}});
      return status;
    }
    const std::string& node = link->node();
    Membership::Admission admission;
    {
      std::lock_guard lock(mu_);
      admission = membership_.Admit(link, hello, incarnation_);
      if (admission.kind == Membership::Admission::kJoined) {
        // Our own sessions, so the member routes to them at once.
        mesh::v1::ClusterFrame full;
        *full.mutable_presence() = presence_.OwnTable();
        link->Queue(std::move(full));
      }
    }
    switch (admission.kind) {
      case Membership::Admission::kSelf:
        return absl::CancelledError("dialled itself");
      case Membership::Admission::kDuplicate:
        return absl::CancelledError("a link to this member exists");
      case Membership::Admission::kCloned: {
        // Two processes with one node key: a copied volume, or (towards another member) a
        // broker that restarted before the link to its old process timed out; the second
        // clears itself once that link's heartbeat fails.
        const bool ours = node == self_;
        const std::string detail = absl::StrCat(
            "node ID ", crypto::IdText(node), ours ? " is this node's" : " is live on another link",
            ": two brokers hold one node key (a cloned or restored volume?); give each its own "
            "node.key");
        Log(spdlog::level::err, "duplicate_node_id",
            {{"node", crypto::IdText(node)},
             {"remote", remote},
             {"name", hello.node_name()},
             {"address", hello.address()},
             {"hint", ours ? "another broker runs with this broker's node.key"
                           : "a cloned volume, or a restart before the old link timed out"}});
        return peer::LinkError(mesh::v1::DUPLICATE_NODE, detail);
      }
      case Membership::Admission::kJoined:
        break;
    }
    if (admission.replaced) {
      asio::post(admission.replaced->link().get_executor(),
                 [replaced = admission.replaced] { replaced->link().Close(absl::OkStatus()); });
    }
    if (admission.first) {
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
    Membership::LinkDown down;
    {
      std::lock_guard lock(mu_);
      std::erase(all_links_, link);
      down = membership_.OnLinkDown(link, stopping_);
      if (down.gone) presence_.ForgetNode(link->node(), WallMs());
    }
    if (!down.member_link) return;
    Log(spdlog::level::warn, "cluster_link_down",
        {{"node", crypto::IdText(link->node())},
         {"detail", std::string(ended.message())},
         {"now", down.gone ? "gone" : "suspect"}});
    if (down.gone) PublishMember(link->node(), "left");
    router_.RebindAll();
  }

  void ApplyPresence(const std::string& from_node, const mesh::v1::Presence& presence) {
    PresenceTable::Applied applied;
    {
      std::lock_guard lock(mu_);
      applied = presence_.Apply(from_node, presence, WallMs());
    }
    if (applied.refused > 0) {
      stats_.presence_refused.fetch_add(applied.refused, std::memory_order_relaxed);
      Log(spdlog::level::warn, "presence_refused",
          {{"node", crypto::IdText(from_node)},
           {"entries", applied.refused},
           {"why", "a member may announce only its own sessions, with epochs not in the future"}});
    }
    for (const auto& peer : applied.replaced_here) {
      router_.Disconnect(peer, mesh::v1::GoAway::REPLACED);
    }
    for (const auto& peer : applied.changed) router_.Rebind(peer);
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
  // the mesh's average of peers asks some of its own to go (they reconnect elsewhere). Reads
  // counts presence maintains: O(members), whatever the number of peers.
  void Balance() {
    size_t mine = 0;
    size_t total = 0;
    size_t nodes = 1;
    {
      std::lock_guard lock(mu_);
      if (draining_) return;
      mine = presence_.ConnectedOn(self_);
      total = mine;
      for (const auto& [id, member] : membership_.members()) {
        if (member.state != MemberState::kLive || member.draining) continue;
        ++nodes;
        total += presence_.ConnectedOn(id);
      }
      if (nodes == 1) return;
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
    if (ec) co_return;  // keep the last answer rather than forget every member
    std::set<std::string> addresses;
    for (const auto& entry : results) {
      const auto endpoint = entry.endpoint();
      addresses.insert(
          endpoint.address().is_v6()
              ? absl::StrCat("[", endpoint.address().to_string(), "]:", endpoint.port())
              : absl::StrCat(endpoint.address().to_string(), ":", endpoint.port()));
    }
    std::lock_guard lock(mu_);
    membership_.SetDns(std::move(addresses));
  }

  void Tick() {
    Membership::Due due;
    std::vector<std::shared_ptr<ClusterLink>> links;
    mesh::v1::ClusterFrame probe;
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      due = membership_.Tick(Clock::now(), advertise_, config_.suspect_timeout);
      const uint64_t now_ms = WallMs();
      for (const auto& node : due.gone) presence_.ForgetNode(node, now_ms);
      presence_.Prune(now_ms);
      links = membership_.UpLinks();
      probe.mutable_probe()->set_nonce(SteadyMicros());
      membership_.Gossip(*probe.mutable_probe()->mutable_members());
    }
    for (const auto& node : due.gone) {
      Log(spdlog::level::warn, "member_gone", {{"node", crypto::IdText(node)}});
      PublishMember(node, "left");
    }
    Balance();
    for (auto& link : links) link->Queue(probe);
    for (auto& address : due.dial) {
      auto& shard = *shards_[next_dial_shard_++ % shards_.size()];
      asio::co_spawn(shard, DialOnce(address), asio::detached);
    }
    // Homes moved with a member gone; else only what waits for a next hop (a refusal, no link).
    if (!due.gone.empty()) {
      router_.RebindAll();
    } else {
      router_.PlaceUnbound();
    }
  }

  const ClusterConfig config_;
  const crypto::KeyPair& key_;
  const std::string self_;
  const std::string incarnation_;
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
  Membership membership_;
  PresenceTable presence_;
  std::vector<std::shared_ptr<ClusterLink>> all_links_;
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
int64_t Cluster::PresenceEntries() const { return impl_->PresenceEntries(); }
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
