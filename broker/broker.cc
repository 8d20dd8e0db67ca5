#include "broker/broker.h"

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "broker/control/control_service.h"
#include "broker/control/grpc_server.h"
#include "broker/control/http_server.h"
#include "broker/drain.h"
#include "broker/log.h"
#include "broker/proxied_accept.h"
#include "peer/handshake_gate.h"
#include "peer/rate_limiter.h"
#include "peer/websocket.h"

namespace mesh::broker {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::ip::tcp;
using boost::system::error_code;

constexpr std::chrono::milliseconds kShutdownFlush{2000};
// How often the free space of the store's volume is read (statfs).
constexpr std::chrono::milliseconds kSpaceCheck{250};

// Lifts the open-files limit to the hard limit: each link is a descriptor.
void RaiseFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

// One io_context and its thread; it owns the links accepted onto it.
struct Shard {
  asio::io_context io{1};
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(io);
  std::unordered_set<std::shared_ptr<peer::Link>> links;  // touched only on `io`
  std::thread thread;
};

constexpr const char* kVersion = MESH_VERSION;

// Whether a listen address only accepts connections from this machine.
bool IsLoopback(const std::string& address) {
  auto host = peer::SplitHostPort(address);
  if (!host.ok()) return false;
  if (host->first == "localhost") return true;
  error_code ec;
  const auto ip = asio::ip::make_address(host->first, ec);
  return !ec && ip.is_loopback();
}

// A file whose modification time is watched; an empty path never changes.
struct WatchedFile {
  WatchedFile() = default;
  explicit WatchedFile(std::string file) : path(std::move(file)) { Changed(); }

  // True once for each new modification time (following symlinks, as Secret volumes use).
  bool Changed() {
    if (path.empty()) return false;
    std::error_code ec;
    const auto time = std::filesystem::last_write_time(path, ec);
    if (ec || time == mtime) return false;
    mtime = time;
    return true;
  }

  std::string path;
  std::optional<std::filesystem::file_time_type> mtime;
};

}  // namespace

class Broker::Impl {
 public:
  Impl(BrokerConfig config, crypto::KeyPair key)
      : config_(std::move(config)),
        key_(std::move(key)),
        frame_budget_(config_.frame_memory_budget, config_.frame_memory_per_ip),
        gate_(config_.max_pending_handshakes, config_.max_pending_handshakes_per_ip),
        new_links_(config_.new_links_per_ip_rate, config_.new_links_per_ip_burst) {
    config_.link.frame_budget = &frame_budget_;
    config_.link.ping_allowed = [this](const crypto::PeerId& peer) {
      return router_->TakeRateToken(peer.Raw());
    };
    int threads = config_.threads > 0
                      ? config_.threads
                      : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    for (int i = 0; i < threads; ++i) shards_.push_back(std::make_unique<Shard>());
    hello_.set_protocol_version(peer::kProtocolVersion);
    hello_.set_node_name(config_.node_name);
    auto* limits = hello_.mutable_limits();
    limits->set_max_payload(config_.link.max_payload);
    limits->set_heartbeat_interval_ms(
        static_cast<uint32_t>(config_.link.heartbeat_interval.count()));
    limits->set_dedup_window_s(static_cast<uint32_t>(config_.routing.dedup_window.count()));
    config_.routing.max_payload = config_.link.max_payload;
    config_.routing.node_id = key_.public_key.Raw();
    if (config_.store.path.empty()) config_.store.path = config_.data_dir + "/store";
    config_.store.on_write = [this](std::chrono::microseconds d) { store_write_.Observe(d); };
    config_.store.on_sync = [this](std::chrono::microseconds d) { store_sync_.Observe(d); };
  }

  // Teardown in the reverse of Start, spelled out rather than left to member order: nothing
  // goes while a thread may still call into it.
  ~Impl() {
    grpc_.reset();  // no request reaches the control service any more
    http_.reset();
    control_.reset();
    drain_.reset();
    if (router_) router_->StopBackground();  // it reads the store and asks the placement
    cluster_.reset();                        // holds a Placement pointer into the router
    store_.reset();  // joins the writer thread, which calls the router and the histograms
    router_.reset();
  }

  absl::Status Start() {
    RaiseFileLimit();
    if (auto status = LoadNodeCertificate(); !status.ok()) return status;
    Shard& first = *shards_.front();
    // Watched from before the listeners read them, so a renewal meanwhile is not missed.
    tls_cert_file_ = WatchedFile(config_.tls_cert_file);
    tls_key_file_ = WatchedFile(config_.tls_key_file);
    // Installed before the store recovers (which may take long): a SIGHUP meanwhile must not
    // kill the broker, and a SIGTERM is handled once the shards run.
    signals_.emplace(first.io, SIGINT, SIGTERM, SIGHUP);
    WaitForSignal();
    if (auto status = RemoveDrained(config_.data_dir); !status.ok()) return status;
    if (auto status = StartHttp(); !status.ok()) return status;
    auto store = store::Store::Open(config_.store);
    if (!store.ok()) return store.status();
    store_ = *std::move(store);
    router_ = std::make_unique<Router>(config_.routing, *store_);
    if (auto status = router_->Recover(); !status.ok()) return status;
    if (auto status = StartCluster(); !status.ok()) return status;
    drain_ = std::make_unique<Drain>(
        DrainOptions{config_.data_dir, config_.drain_timeout, key_.public_key.ToString()}, first.io,
        *router_, cluster_.get(), cluster_stats_, stopping_);
    Log(spdlog::level::info, "store_open",
        {{"path", config_.store.path}, {"sync", store::SyncPolicyName(config_.store.sync)}});
    if (auto status = StartControlPlane(); !status.ok()) return status;
    auto acceptor = peer::Listen(first.io, config_.listen_peer);
    if (!acceptor.ok()) return acceptor.status();
    acceptor_.emplace(*std::move(acceptor));
    const tcp::endpoint bound = acceptor_->local_endpoint();
    Log(spdlog::level::info, "listening",
        {{"listener", "peer"},
         {"addr", bound.address().to_string()},
         {"port", bound.port()},
         {"node_id", key_.public_key.ToString()},
         {"node_name", config_.node_name},
         {"shards", shards_.size()},
         {"proxy_protocol", config_.proxy_protocol}});
    asio::co_spawn(first.io, AcceptLinks(*acceptor_, /*websocket=*/false), asio::detached);
    if (!config_.listen_ws.empty()) {
      auto ws = peer::Listen(first.io, config_.listen_ws);
      if (!ws.ok()) return ws.status();
      ws_acceptor_.emplace(*std::move(ws));
      const bool tls =
          config_.ws_tls == "on" || (config_.ws_tls == "auto" && !config_.tls_cert_file.empty());
      if (tls) {
        if (config_.tls_cert_file.empty()) {
          return absl::InvalidArgumentError("--ws-tls on needs --tls-cert-file and --tls-key-file");
        }
        auto context = peer::ServerTlsContext(config_.tls_cert_file, config_.tls_key_file);
        if (!context.ok()) return context.status();
        std::lock_guard lock(tls_mu_);
        ws_tls_ = *std::move(context);
      }
      Log(spdlog::level::info, "listening",
          {{"listener", "ws"},
           {"addr", ws_acceptor_->local_endpoint().address().to_string()},
           {"port", ws_acceptor_->local_endpoint().port()},
           {"path", peer::kWebSocketPath},
           {"tls", tls}});
      asio::co_spawn(first.io, AcceptLinks(*ws_acceptor_, /*websocket=*/true), asio::detached);
    }
    asio::co_spawn(first.io, TickLoop(), asio::detached);
    for (auto& shard : shards_) {
      shard->thread = std::thread([s = shard.get()] { s->io.run(); });
    }
    return absl::OkStatus();
  }

  void Wait() {
    for (auto& shard : shards_) {
      if (shard->thread.joinable()) shard->thread.join();
    }
    if (cluster_) cluster_->Release();
    if (grpc_) grpc_->Shutdown();
    if (http_) http_->Shutdown();
  }

  // Not ready while draining or stopping, while the store cannot write, or at a high-water mark
  // (new messages would get STORE_FULL).
  bool Ready() const {
    return !stopping_ && !drain_->draining() && store_->available() && !router_->Full();
  }

  // Liveness: false only when a restart is the way out. A store that failed a write and has not
  // resumed for store_unavailable_timeout holds an error RocksDB cannot resume from (a fatal
  // I/O error; a full disk resumes by itself once space returns); reopening it clears that.
  // Not while its volume is at the high-water mark: a restart makes no room, and a broker
  // that stays up still delivers what it holds. Full alone is never a reason.
  bool Live() const {
    const auto timeout = config_.store_unavailable_timeout;
    return timeout.count() == 0 || store_->UnavailableFor() < timeout || store_->full();
  }

  // SIGTERM and the control plane's Drain share one drain; SIGTERM stops once it ended.
  mesh::v1::DrainResponse StartDrain(bool exit = false) {
    auto response = drain_->Start([this, exit] {
      if (exit) Stop("drained");
    });
    return response;  // gRPC health follows on the next tick: only the first shard sets it
  }

  // SIGTERM drains (then stops), SIGINT stops at once; a second signal during a drain stops
  // at once too: whatever is not handed off is on disk or still owned by its sender.
  void WaitForSignal() {
    signals_->async_wait([this](const error_code& ec, int signal) {
      if (ec) return;
      if (signal == SIGHUP) {
        Log(spdlog::level::info, "signal", {{"signal", "SIGHUP"}, {"action", "reload"}});
        ReloadFiles(/*changed_only=*/false);
        WaitForSignal();
        return;
      }
      if (signal == SIGTERM && drain_ && !drain_->draining()) {
        Log(spdlog::level::info, "signal", {{"signal", "SIGTERM"}, {"action", "drain"}});
        StartDrain(/*exit=*/true);
        WaitForSignal();
        return;
      }
      Stop(signal == SIGTERM ? "SIGTERM" : "SIGINT");
    });
  }

  // A certificate for another node, or one that expired, is refused at start: clients given
  // the authority would refuse this broker anyway, and a start-up error says why at once. With
  // --mesh-authority the members require one by that authority, so it must be there.
  absl::Status LoadNodeCertificate() {
    const auto& authority = config_.cluster.authority;
    if (config_.node_cert_file.empty()) {
      if (!authority) return absl::OkStatus();
      return absl::InvalidArgumentError(
          "--mesh-authority needs --node-cert-file: members would refuse this node (make one "
          "with mesh-cli certify)");
    }
    auto cert = crypto::LoadNodeCertificateFile(config_.node_cert_file);
    if (!cert.ok()) return cert.status();
    auto parsed = crypto::ParseNodeCertificate(*cert);
    if (!parsed.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("--node-cert-file ", config_.node_cert_file,
                                                        ": ", parsed.status().message()));
    }
    const int64_t now = absl::ToUnixSeconds(absl::Now());
    if (auto status = crypto::VerifyNodeCertificate(*cert, authority.value_or(parsed->authority),
                                                    key_.public_key, now);
        !status.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("--node-cert-file ", config_.node_cert_file, ": ", status.message()));
    }
    hello_.set_node_cert(cert->data(), cert->size());
    config_.cluster.node_cert.assign(reinterpret_cast<const char*>(cert->data()), cert->size());
    Log(spdlog::level::info, "node_certificate",
        {{"authority", parsed->authority.ToString()},
         {"expires_unix_s", parsed->expires_unix_s},
         {"days_left", (parsed->expires_unix_s - now) / 86400}});
    return absl::OkStatus();
  }

  absl::Status StartCluster() {
    if (config_.cluster_secret_file.empty()) {
      if (!config_.cluster.peers.empty() || !config_.cluster.dns.empty()) {
        return absl::InvalidArgumentError(
            "--cluster-peers and --cluster-dns need --cluster-secret-file (the mesh's PSK)");
      }
      return absl::OkStatus();
    }
    auto secret = LoadClusterSecret(config_.cluster_secret_file);
    if (!secret.ok()) return secret.status();
    std::vector<asio::io_context*> shards;
    for (auto& shard : shards_) shards.push_back(&shard->io);
    if (config_.cluster.node_name.empty()) config_.cluster.node_name = config_.node_name;
    config_.cluster.secret_file = config_.cluster_secret_file;
    secret_file_ = WatchedFile(config_.cluster_secret_file);
    cluster_ = std::make_unique<Cluster>(config_.cluster, key_, *secret, *router_,
                                         std::move(shards), config_.link, cluster_stats_);
    router_->SetPlacement(cluster_.get());
    return cluster_->Start();
  }

  void Stop(std::string_view why) {
    asio::post(shards_.front()->io, [this, why = std::string(why)] {
      if (stopping_.exchange(true)) return;
      Log(spdlog::level::info, "stopping", {{"why", why}});
      error_code ec;
      if (acceptor_) acceptor_->close(ec);
      if (ws_acceptor_) ws_acceptor_->close(ec);
      if (signals_) signals_->cancel(ec);
      if (cluster_) cluster_->Stop();
      for (auto& shard : shards_) {
        asio::post(shard->io, [s = shard.get()] {
          mesh::v1::Frame go_away;
          go_away.mutable_go_away()->set_reason(mesh::v1::GoAway::SHUTTING_DOWN);
          for (const auto& link : s->links) {
            link->Send(go_away);
            link->Close(absl::OkStatus());
          }
        });
      }
      asio::co_spawn(shards_.front()->io, FinishStop(), asio::detached);
    });
  }

  const peer::LinkStats& stats() const { return stats_; }
  const RouterStats& router_stats() const { return router_->stats(); }

 private:
  // Routing's periodic work: fast-path deadlines (a quarter of the ack window) and expiry.
  awaitable<void> TickLoop() {
    const auto window = config_.routing.ack_window;
    const auto period = std::clamp<std::chrono::milliseconds>(
        window / 4, std::chrono::milliseconds(5), std::chrono::milliseconds(100));
    asio::steady_timer timer(shards_.front()->io);
    auto files_checked = peer::Clock::now();
    auto space_checked = peer::Clock::now();
    while (!stopping_) {
      timer.expires_after(period);
      error_code ec;
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      // statfs at most every kSpaceCheck, not per message: Sends read the answer.
      if (peer::Clock::now() - space_checked >= kSpaceCheck) {
        space_checked = peer::Clock::now();
        store_->CheckSpace();
      }
      router_->Tick();
      LogStoreChanges();
      if (peer::Clock::now() - files_checked >= std::chrono::seconds(1)) {
        files_checked = peer::Clock::now();
        ReloadFiles(/*changed_only=*/true);
        new_links_.Prune();
      }
      if (grpc_) {
        const bool ready = Ready();
        if (ready != serving_) grpc_->SetServing(serving_ = ready);
      }
    }
  }

  // One line when the store turns unavailable or full and when it comes back: the causes of a
  // readiness change that an operator cannot see in the Sends' answers alone.
  void LogStoreChanges() {
    const bool available = store_->available();
    if (available != store_available_) {
      store_available_ = available;
      const store::StoreStats& stats = store_->stats();
      Log(available ? spdlog::level::info : spdlog::level::err,
          available ? "store_resumed" : "store_unavailable",
          {{"failed_writes", stats.failed_writes.load()}, {"resumes", stats.resumes.load()}});
    }
    const bool live = Live();
    if (live != live_) {
      live_ = live;
      Log(live ? spdlog::level::info : spdlog::level::critical, live ? "store_live" : "store_stuck",
          {{"unavailable_s",
            std::chrono::duration_cast<std::chrono::seconds>(store_->UnavailableFor()).count()},
           {"detail", live ? "the store resumed or its volume is full: /healthz answers 200"
                           : "the store has not resumed: /healthz answers 503 so that the "
                             "broker is restarted, which reopens it"}});
    }
    const bool went_full = router_->TakeWentFull();
    const bool full = router_->Full();
    auto log_full = [&](bool now_full) {
      store_full_ = now_full;
      Log(now_full ? spdlog::level::warn : spdlog::level::info,
          now_full ? "store_full" : "store_not_full",
          {{"volume_full", store_->full()},
           {"queued_bytes", router_->stats().queued_bytes.load()},
           {"store_max_bytes", config_.routing.store_max_bytes},
           {"min_free_fraction", config_.store.min_free_fraction}});
    };
    if (went_full && !store_full_) log_full(true);  // perhaps over already: told next
    if (full != store_full_) log_full(full);
  }

  // The cluster secret, the admin token and the TLS certificate are re-read on SIGHUP and when
  // their files change (a Kubernetes Secret volume swaps its files in place; cert-manager renews
  // a certificate so). A file that does not load is logged and the value in use stays.
  void ReloadFiles(bool changed_only) {
    if (cluster_ && (!changed_only || secret_file_.Changed())) cluster_->ReloadSecret();
    // Both halves of the pair are checked each time: a renewal changes both.
    const bool cert_changed = tls_cert_file_.Changed();
    const bool key_changed = tls_key_file_.Changed();
    if (!changed_only || cert_changed || key_changed) ReloadTls();
    if (control_ && (!changed_only || token_file_.Changed())) {
      auto token = LoadOrCreateAdminToken(token_file_.path, config_.data_dir);
      if (!token.ok()) {
        Log(spdlog::level::err, "admin_token_reload_failed",
            {{"error", std::string(token.status().message())}});
      } else if (control_->SetAdminToken(*token)) {
        Log(spdlog::level::info, "admin_token_reloaded", {{"path", token_file_.path}});
      }
    }
  }

  // New wss and HTTPS connections get the certificate in the files now; open ones keep theirs.
  // gRPC's is read at start only.
  void ReloadTls() {
    const bool ws = WsTls() != nullptr;  // wss is on: it never goes off
    if (config_.tls_cert_file.empty() || (!ws && !http_)) return;
    auto context = peer::ServerTlsContext(config_.tls_cert_file, config_.tls_key_file);
    if (!context.ok()) {
      Log(spdlog::level::err, "tls_reload_failed",
          {{"error", std::string(context.status().message())}});
      return;
    }
    if (ws) {
      std::lock_guard lock(tls_mu_);
      ws_tls_ = *context;
    }
    if (http_) http_->SetTls(*context);
    Log(spdlog::level::info, "tls_reloaded",
        {{"cert", config_.tls_cert_file}, {"ws", ws}, {"http", http_ != nullptr}});
  }

  peer::TlsContext WsTls() {
    std::lock_guard lock(tls_mu_);
    return ws_tls_;
  }

  // Without TLS, a control-plane address other than loopback sends the token in clear.
  void WarnIfPlaintext(const char* listener, const std::string& address) const {
    if (!config_.tls_cert_file.empty() || IsLoopback(address)) return;
    Log(spdlog::level::warn, "control_plane_plaintext",
        {{"listener", listener},
         {"addr", address},
         {"hint",
          "the admin token crosses the network in clear; pass --tls-cert-file and "
          "--tls-key-file"}});
  }

  // The HTTP listener comes up before the store opens, so that /healthz answers while the
  // store recovers (a startup probe sees the process alive); the rest waits for the service.
  absl::Status StartHttp() {
    request_metrics_ = std::make_unique<monitoring::RequestMetrics>(registry_);
    if (config_.listen_http.empty()) return absl::OkStatus();
    HttpOptions options;
    options.address = config_.listen_http;
    options.tls = {config_.tls_cert_file, config_.tls_key_file};
    options.exposition = [this] {  // called only once Serve handed the service over
      auto families = monitoring::Families(control_->MetricsSnapshot());
      for (auto& family : monitoring::ProcessFamilies()) families.push_back(std::move(family));
      for (auto& family : registry_.Collect()) families.push_back(std::move(family));
      return monitoring::Exposition(families);
    };
    auto http = HttpServer::Start(*request_metrics_, std::move(options));
    if (!http.ok()) return http.status();
    http_ = *std::move(http);
    WarnIfPlaintext("http", config_.listen_http);
    Log(spdlog::level::info, "listening",
        {{"listener", "http"},
         {"addr", config_.listen_http},
         {"port", http_->port()},
         {"tls", !config_.tls_cert_file.empty()}});
    return absl::OkStatus();
  }

  absl::Status StartControlPlane() {
    if (config_.listen_grpc.empty() && config_.listen_http.empty()) return absl::OkStatus();
    auto token = LoadOrCreateAdminToken(config_.admin_token_file, config_.data_dir);
    if (!token.ok()) return token.status();
    // Watched from the token just read (the file may have been created by that read).
    token_file_ = WatchedFile(config_.admin_token_file.empty() ? config_.data_dir + "/admin.token"
                                                               : config_.admin_token_file);
    ControlContext context;
    context.router = router_.get();
    context.links = &stats_;
    context.frame_budget = &frame_budget_;
    context.store = store_.get();
    context.store_write_duration = &store_write_;
    context.store_sync_duration = &store_sync_;
    context.node_id = key_.public_key;
    context.node_name = config_.node_name;
    context.version = kVersion;
    context.ready = [this] { return Ready(); };
    context.live = [this] { return Live(); };
    context.draining = [this] { return drain_->draining(); };
    context.start_drain = [this] { return StartDrain(); };
    if (cluster_) {
      context.members = [this] { return cluster_->Members(); };
      context.locate = [this](std::string_view peer) { return cluster_->Locate(peer); };
      context.cluster = [this](monitoring::BrokerSnapshot& s) {
        s.cluster_members.clear();
        for (const auto& [state, n] : cluster_->MemberCounts()) s.cluster_members[state] = n;
        const ClusterStats& stats = cluster_stats_;
        s.handoff_messages = stats.handoff_messages.load();
        s.presence_refused = stats.presence_refused.load();
        s.placement_queries = stats.placement_queries.load();
        s.presence_entries = cluster_->PresenceEntries();
        s.presence_peers = cluster_->PresencePeers();
        s.forward_latency = ToMonitoring(stats.forward_latency);
      };
      context.cluster_links = &cluster_stats_.links;
    }
    control_ = std::make_unique<ControlService>(std::move(context), *token);
    if (http_) http_->Serve(*control_);
    if (config_.listen_grpc.empty()) return absl::OkStatus();
    const TlsFiles tls{config_.tls_cert_file, config_.tls_key_file};
    auto server = GrpcServer::Start(*control_, *request_metrics_, config_.listen_grpc, tls);
    if (!server.ok()) return server.status();
    grpc_ = *std::move(server);
    serving_ = Ready();
    Log(spdlog::level::info, "listening",
        {{"listener", "grpc"},
         {"addr", config_.listen_grpc},
         {"port", grpc_->port()},
         {"tls", tls.enabled()}});
    WarnIfPlaintext("grpc", config_.listen_grpc);
    return absl::OkStatus();
  }

  // Waits (bounded) for the links to flush their GoAway, then lets every shard's thread end.
  awaitable<void> FinishStop() {
    asio::steady_timer timer(shards_.front()->io);
    const auto deadline = peer::Clock::now() + kShutdownFlush;
    while (stats_.links_open.load() > 0 && peer::Clock::now() < deadline) {
      timer.expires_after(std::chrono::milliseconds(10));
      co_await timer.async_wait(asio::use_awaitable);
    }
    LogStats();
    for (auto& shard : shards_) {
      shard->work.reset();
      shard->io.stop();
    }
  }

  void LogStats() {
    std::string failures;
    Log(spdlog::level::info, "link_stats",
        {{"handshakes_started", stats_.handshakes_started.load()},
         {"handshakes_completed", stats_.handshakes_completed.load()},
         {"frames_received", stats_.frames_received.load()},
         {"frames_sent", stats_.frames_sent.load()}});
    const RouterStats& routed = router_->stats();
    Log(spdlog::level::info, "routing_stats",
        {{"sends", routed.sends.load()},
         {"accepted", routed.acks[mesh::v1::SendAck::ACCEPTED].load()},
         {"duplicates", routed.acks[mesh::v1::SendAck::DUPLICATE].load()},
         {"delivered", routed.delivered.load()},
         {"acked", routed.acked.load()},
         {"fast_path", routed.fast_path.load()},
         {"stored", routed.stored.load()},
         {"expired", routed.expired.load()},
         {"queued", routed.queued.load()},
         {"replaced", routed.replaced.load()}});
    const store::StoreStats& stored = store_->stats();
    Log(spdlog::level::info, "store_stats",
        {{"commits", stored.commits.load()},
         {"durable_commits", stored.durable_commits.load()},
         {"writes", stored.writes.load()},
         {"syncs", stored.syncs.load()},
         {"write_micros", stored.write_micros.load()},
         {"failed_writes", stored.failed_writes.load()},
         {"resumes", stored.resumes.load()}});
    for (int code = 1; code < peer::LinkStats::kReasons; ++code) {
      if (!mesh::v1::ErrorCode_IsValid(code)) continue;
      uint64_t n = stats_.failures[code].load();
      if (n > 0) {
        Log(spdlog::level::info, "link_failures",
            {{"reason", peer::ReasonName(static_cast<mesh::v1::ErrorCode>(code))}, {"count", n}});
      }
    }
  }

  // Peer links on 7700 (TCP) or 7780 (WebSocket): the same gates, then the same Link.
  awaitable<void> AcceptLinks(tcp::acceptor& acceptor, bool websocket) {
    std::vector<asio::io_context*> shards;
    for (auto& shard : shards_) shards.push_back(&shard->io);
    co_await peer::AcceptLoop(
        acceptor, std::move(shards),
        [this, websocket](size_t index, tcp::socket socket, const tcp::endpoint& remote) {
          if (stopping_) return;
          if (!(config_.proxy_protocol ? gate_.TryEnterUnattributed()
                                       : gate_.TryEnter(remote.address()))) {
            stats_.CountFailure(mesh::v1::OVERLOADED);
            LogThrottled(mesh::v1::OVERLOADED, remote, "too many handshakes in progress");
            return;  // the socket closes as it goes out of scope
          }
          Shard& shard = *shards_[index];
          asio::co_spawn(shard.io, ServeLink(shard, std::move(socket), remote, websocket),
                         asio::detached);
        },
        [websocket](const error_code& ec) {
          // Out of descriptors or similar: say so and keep serving the links we have.
          Log(spdlog::level::warn, "accept_failed",
              {{"listener", websocket ? "ws" : "peer"}, {"error", ec.message()}});
        });
  }

  awaitable<void> ServeLink(Shard& shard, tcp::socket socket, tcp::endpoint remote,
                            bool websocket) {
    peer::LinkConfig link_config = config_.link;
    if (config_.proxy_protocol) {
      auto admitted = co_await AdmitProxied(socket, remote, gate_, link_config.handshake_timeout);
      if (!admitted.ok()) {
        stats_.CountFailure(peer::ErrorCodeOf(admitted));
        LogThrottled(peer::ErrorCodeOf(admitted), remote, admitted.message());
        co_return;
      }
    }
    link_config.budget_owner = peer::HandshakeGate::KeyOf(remote.address()).to_string();
    if (!new_links_.Take(link_config.budget_owner)) {
      gate_.Leave(remote.address());
      stats_.CountFailure(mesh::v1::OVERLOADED);
      LogThrottled(mesh::v1::OVERLOADED, remote,
                   "over --new-links-per-ip-rate new links per second from this address");
      co_return;  // the socket closes as it goes out of scope
    }
    std::unique_ptr<peer::ByteStream> stream;
    if (websocket) {
      const auto upgrade_started = peer::Clock::now();
      auto upgraded = co_await peer::AcceptWebSocket(
          std::move(socket), {config_.ws_allowed_origins, link_config.handshake_timeout, WsTls()});
      if (!upgraded.ok()) {
        gate_.Leave(remote.address());
        // Not a mesh link: no upgrade, the wrong path or subprotocol, or an Origin refused.
        stats_.CountFailure(mesh::v1::BAD_PREAMBLE);
        LogThrottled(mesh::v1::BAD_PREAMBLE, remote, upgraded.status().message());
        co_return;
      }
      stream = *std::move(upgraded);
      // The upgrade spent part of the handshake's time.
      link_config.handshake_timeout = std::max(
          std::chrono::milliseconds(1),
          link_config.handshake_timeout - std::chrono::duration_cast<std::chrono::milliseconds>(
                                              peer::Clock::now() - upgrade_started));
    } else {
      stream = peer::TcpStream(std::move(socket));
    }
    auto accepted = co_await peer::Link::Accept(std::move(stream), key_, hello_,
                                                peer::LinkKind::kPeer, link_config, stats_);
    gate_.Leave(remote.address());
    if (!accepted.ok()) {
      LogThrottled(peer::ErrorCodeOf(accepted.status()), remote, accepted.status().message());
      co_return;
    }
    std::shared_ptr<peer::Link> link = *std::move(accepted);
    if (stopping_) co_return;
    if (drain_->draining()) {
      mesh::v1::Frame go_away;
      go_away.mutable_go_away()->set_reason(mesh::v1::GoAway::DRAINING);
      link->Send(go_away);
      link->Close(absl::OkStatus());
      (void)co_await link->Run([](mesh::v1::Frame&) { return absl::OkStatus(); });
      co_return;
    }
    const std::string peer_id = link->remote_id().ToString();
    Log(spdlog::level::info, "link_up",
        {{"peer", peer_id},
         {"remote", remote.address().to_string()},
         {"agent", link->remote_hello().agent()},
         {"suite", crypto::CipherName(link->suite())}});
    shard.links.insert(link);
    auto attached = router_->Attach(link, remote.address().to_string());
    if (!attached.ok()) {
      // Its mailbox could not be read: no session without it (a later one tries again).
      Log(spdlog::level::err, "session_refused",
          {{"peer", peer_id}, {"error", std::string(attached.status().message())}});
      link->Close(attached.status());
      shard.links.erase(link);
      co_return;
    }
    std::shared_ptr<Session> session = *std::move(attached);
    absl::Status ended = co_await link->Run(
        [&](mesh::v1::Frame& frame) { return router_->OnFrame(*session, frame); });
    const mesh::v1::ErrorCode code = peer::ErrorCodeOf(ended);
    router_->Detach(*session, code == mesh::v1::ERROR_CODE_UNSPECIFIED
                                  ? std::string_view("closed")
                                  : std::string_view(peer::ReasonName(code)));
    shard.links.erase(link);
    Log(code == mesh::v1::ERROR_CODE_UNSPECIFIED ? spdlog::level::info : spdlog::level::warn,
        "link_down",
        {{"peer", peer_id},
         {"reason", code == mesh::v1::ERROR_CODE_UNSPECIFIED ? "closed" : peer::ReasonName(code)},
         {"detail", std::string(ended.message())}});
  }

  // At most kLogBurst lines per reason per second, so a flood cannot flood the log as well.
  void LogThrottled(mesh::v1::ErrorCode code, const tcp::endpoint& remote,
                    absl::string_view detail) {
    static constexpr int kLogBurst = 20;
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard lock(log_mu_);
    auto& window = log_windows_[code];
    if (now - window.start >= std::chrono::seconds(1)) {
      if (window.suppressed > 0) {
        Log(spdlog::level::warn, "link_refused_suppressed",
            {{"reason", peer::ReasonName(code)}, {"count", window.suppressed}});
      }
      window = {now, 0, 0};
    }
    if (++window.logged > kLogBurst) {
      ++window.suppressed;
      return;
    }
    Log(spdlog::level::warn, "link_refused",
        {{"reason", code == mesh::v1::ERROR_CODE_UNSPECIFIED ? "io_error" : peer::ReasonName(code)},
         {"remote", remote.address().to_string()},
         {"detail", std::string(detail)}});
  }

  struct LogWindow {
    std::chrono::steady_clock::time_point start;
    int logged = 0;
    uint64_t suppressed = 0;
  };

  BrokerConfig config_;
  crypto::KeyPair key_;
  peer::MemoryBudget frame_budget_;
  peer::LinkStats stats_;
  // Outlives the shards: cluster links still held by coroutines when the shards' io_contexts
  // are destroyed count into it.
  ClusterStats cluster_stats_;
  peer::HandshakeGate gate_;
  peer::RateLimiter new_links_;  // per source address (an IPv6 /64)
  mesh::v1::Hello hello_;
  std::vector<std::unique_ptr<Shard>> shards_;
  LatencyHistogram store_write_;  // fed by the store's writer thread
  LatencyHistogram store_sync_;
  std::unique_ptr<Router> router_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Drain> drain_;
  prometheus::Registry registry_;  // the control plane's request counters
  std::unique_ptr<monitoring::RequestMetrics> request_metrics_;
  std::unique_ptr<ControlService> control_;
  WatchedFile secret_file_;
  WatchedFile token_file_;
  std::unique_ptr<GrpcServer> grpc_;
  std::unique_ptr<HttpServer> http_;
  std::unique_ptr<Cluster> cluster_;
  bool serving_ = false;         // last readiness told to gRPC health; first shard only
  bool store_available_ = true;  // as last logged; first shard only
  bool store_full_ = false;
  bool live_ = true;
  std::optional<tcp::acceptor> acceptor_;
  std::optional<tcp::acceptor> ws_acceptor_;
  std::mutex tls_mu_;        // ws_tls_ is read by every shard and replaced by a reload
  peer::TlsContext ws_tls_;  // set: wss on ws_acceptor_
  WatchedFile tls_cert_file_;
  WatchedFile tls_key_file_;
  std::optional<asio::signal_set> signals_;
  std::atomic<bool> stopping_{false};  // set on the first shard, read by every shard
  std::mutex log_mu_;
  std::unordered_map<int, LogWindow> log_windows_;
};

Broker::Broker(BrokerConfig config, crypto::KeyPair node_key)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(node_key))) {}
Broker::~Broker() = default;
absl::Status Broker::Start() { return impl_->Start(); }
void Broker::Wait() { impl_->Wait(); }
void Broker::Stop(std::string_view why) { impl_->Stop(why); }
const peer::LinkStats& Broker::link_stats() const { return impl_->stats(); }
const RouterStats& Broker::router_stats() const { return impl_->router_stats(); }

absl::StatusOr<crypto::KeyPair> LoadOrCreateNodeKey(const std::string& data_dir) {
  std::error_code ec;
  // Created private: the store holds who writes to whom and every unsealed payload. One that
  // exists keeps its mode (an image or a volume may grant its group).
  if (std::filesystem::create_directories(data_dir, ec)) {
    std::filesystem::permissions(data_dir, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::replace, ec);
  }
  if (ec)
    return absl::UnavailableError(
        absl::StrCat("cannot create data dir ", data_dir, ": ", ec.message()));
  const std::string path = data_dir + "/node.key";
  if (!std::filesystem::exists(path)) {
    auto status = crypto::WriteKeyFile(path, crypto::KeyPair::Generate());
    if (!status.ok()) return status;
    Log(spdlog::level::info, "node_key_created", {{"path", path}});
  }
  return crypto::LoadKeyFile(path);
}

}  // namespace mesh::broker
