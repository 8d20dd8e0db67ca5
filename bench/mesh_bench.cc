// mesh-bench: load on a running broker through the real client library. N sender/recipient
// pairs, each peer its own link; every payload carries its send time, so the recipient measures
// delivery latency (same machine, same steady clock).
//   online:  recipients connected first; senders keep --window sends outstanding each (or pace
//            to --rate msgs/s in all); reports delivered msgs/s and latency percentiles.
//   offline: senders fill the recipients' mailboxes (enqueue rate, every SendAck awaited), then
//            the recipients connect and drain them (drain rate).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "client/session.h"

namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using mesh::v1::SendAck;

int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

struct Config {
  std::string broker = "127.0.0.1:7700";
  std::vector<std::string> brokers;  // a mesh: pairs placed over them by `placement`
  std::string placement = "spread";  // same | cross | spread
  int pairs = 16;
  size_t size = 256;
  uint64_t count = 20'000;  // per pair
  double duration_s = 0;    // online: run this long instead of --count
  double warmup_s = 0;      // online: latencies of messages sent before this are not counted
  std::string mode = "online";
  int recipients = 0;  // fill: offline recipients the sends spread over (0: one per pair)
  uint32_t window = 256;
  double rate = 0;  // online: total msgs/s, 0 = as fast as acknowledged
  int threads = 1;
  uint32_t credit = 512;
  uint32_t ttl_s = 0;  // 0: the broker's default
  bool json = false;
  std::string latency_log;  // CSV of every delivery: when it was sent, how long it took
  std::string tls_ca_file;  // wss:// brokers: trust anchors (empty: the system's)
};

// One io_context per thread; sessions spread over them.
class Runtime {
 public:
  explicit Runtime(int threads) {
    for (int i = 0; i < threads; ++i) contexts_.push_back(std::make_unique<asio::io_context>());
  }
  asio::io_context& Next() { return *contexts_[next_++ % contexts_.size()]; }
  void Run() {
    for (auto& io : contexts_) {
      guards_.emplace_back(asio::make_work_guard(*io));
      threads_.emplace_back([&io = *io] { io.run(); });
    }
  }
  void Stop() {
    for (auto& io : contexts_) io->stop();
    for (auto& t : threads_) t.join();
  }

 private:
  std::vector<std::unique_ptr<asio::io_context>> contexts_;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards_;
  std::vector<std::thread> threads_;
  size_t next_ = 0;
};

struct Pair {
  mesh::crypto::KeyPair sender_key = mesh::crypto::KeyPair::Generate();
  mesh::crypto::KeyPair recipient_key = mesh::crypto::KeyPair::Generate();
  std::shared_ptr<mesh::client::Session> sender;
  std::shared_ptr<mesh::client::Session> recipient;
  asio::io_context* sender_io = nullptr;
  size_t index = 0;
  uint64_t sent = 0;                  // on the sender's executor
  std::vector<int64_t> latencies_ns;  // on the recipient's executor
  std::vector<int64_t> sent_ns;       // with --latency-log: send time of each latency
};

class Bench {
 public:
  explicit Bench(Config config) : config_(std::move(config)), runtime_(config_.threads) {
    for (int i = 0; i < config_.pairs; ++i) {
      pairs_.push_back(std::make_unique<Pair>());
      pairs_.back()->index = static_cast<size_t>(i);
    }
    for (int i = 0; i < config_.recipients; ++i) {
      fill_recipients_.push_back(mesh::crypto::KeyPair::Generate().public_key);
    }
  }

  int Run() {
    runtime_.Run();
    if (config_.mode == "fill") {  // the mailboxes stay full: for drain and handoff runs
      Fill();
      return Finish(ok_ ? 0 : 1);
    }
    if (config_.mode == "offline") {
      Fill();
      if (!ok_) return Finish(1);
      ConnectRecipients();
      WaitFor([&] { return delivered_ >= total(); }, "drain");
      drain_s_ = Seconds(drain_start_);
    } else {
      ConnectRecipients();
      ConnectSenders();
      start_ = Clock::now();
      warm_ns_ = NowNanos() + static_cast<int64_t>(config_.warmup_s * 1e9);
      for (auto& pair : pairs_) StartSending(*pair);
      WaitFor(
          [&] {
            const bool sending_done =
                config_.duration_s <= 0 || Seconds(start_) >= config_.duration_s;
            return sending_done && delivered_ >= total();
          },
          "deliveries");
      online_s_ = Seconds(start_);
    }
    return Finish(ok_ ? 0 : 1);
  }

 private:
  uint64_t PlannedPerPair() const {
    if (config_.duration_s > 0 && config_.rate > 0) {
      return static_cast<uint64_t>(config_.rate / config_.pairs * config_.duration_s) + 1;
    }
    return config_.count;
  }

  uint64_t total() const {
    return config_.duration_s > 0 ? planned_.load() : config_.count * config_.pairs;
  }

  static double Seconds(Clock::time_point since) {
    return std::chrono::duration<double>(Clock::now() - since).count();
  }

  // Pair i's sender is on broker i mod n; its recipient on the same one (same), the next one
  // (cross: every message crosses brokers), or one that varies with i (spread: some of each).
  const std::string& BrokerOf(int pair, bool recipient) const {
    const auto& list = config_.brokers;
    const size_t n = list.size();
    const size_t at = static_cast<size_t>(pair) % n;
    if (!recipient || config_.placement == "same") return list[at];
    if (config_.placement == "cross") return list[(at + 1) % n];
    return list[(at + static_cast<size_t>(pair) / n) % n];
  }

  mesh::client::SessionOptions Options(const mesh::crypto::KeyPair& key,
                                       const std::string& broker) {
    mesh::client::SessionOptions options;
    options.brokers = {broker};
    options.key = &key;
    options.agent = "mesh-bench/0.1";
    options.credit = config_.credit;
    options.trust.tls_ca_file = config_.tls_ca_file;
    // Each recipient's dedup set is sized for the run: 16 recipients growing in step would
    // otherwise all rehash at the same moments and show up as latency spikes.
    options.dedup_expected = PlannedPerPair();
    return options;
  }

  void ConnectRecipients() {
    std::atomic<int> up{0};
    drain_start_ = Clock::now();
    for (int i = 0; i < config_.pairs; ++i) {
      auto& pair = pairs_[i];
      auto& io = runtime_.Next();
      pair->recipient = mesh::client::Session::Create(
          io.get_executor(), Options(pair->recipient_key, BrokerOf(i, true)));
      Pair* p = pair.get();
      p->latencies_ns.reserve(PlannedPerPair());
      pair->recipient->OnMessage([this, p](const mesh::client::Message& message) {
        int64_t sent_ns = 0;
        if (message.payload.size() >= sizeof(sent_ns)) {
          std::memcpy(&sent_ns, message.payload.data(), sizeof(sent_ns));
          if (config_.mode == "online" && sent_ns >= warm_ns_) {
            p->latencies_ns.push_back(NowNanos() - sent_ns);
            if (!config_.latency_log.empty()) p->sent_ns.push_back(sent_ns);
          }
        }
        delivered_.fetch_add(1, std::memory_order_relaxed);
      });
      pair->recipient->OnState([&up](bool connected, const absl::Status&) {
        if (connected) ++up;
      });
      (void)pair->recipient->Start();
    }
    WaitFor([&] { return up >= config_.pairs; }, "recipients to connect");
  }

  void ConnectSenders() {
    std::atomic<int> up{0};
    for (int i = 0; i < config_.pairs; ++i) {
      auto& pair = pairs_[i];
      pair->sender_io = &runtime_.Next();
      pair->sender = mesh::client::Session::Create(pair->sender_io->get_executor(),
                                                   Options(pair->sender_key, BrokerOf(i, false)));
      pair->sender->OnState([&up](bool connected, const absl::Status&) {
        if (connected) ++up;
      });
      (void)pair->sender->Start();
    }
    WaitFor([&] { return up >= config_.pairs; }, "senders to connect");
  }

  std::string Payload() {
    std::string payload(std::max(config_.size, sizeof(int64_t)), 'x');
    const int64_t now = NowNanos();
    std::memcpy(payload.data(), &now, sizeof(now));
    return payload;
  }

  bool MoreToSend(const Pair& pair) const {
    if (config_.duration_s > 0) return Seconds(start_) < config_.duration_s;
    return pair.sent < config_.count;
  }

  // On the sender's executor: one send, and the next when its SendAck comes back.
  void SendOne(Pair& pair) {
    if (!MoreToSend(pair)) return;
    ++pair.sent;
    planned_.fetch_add(1, std::memory_order_relaxed);
    // Interleaved over the pairs: the first --recipients sends reach as many mailboxes.
    const auto& to = fill_recipients_.empty()
                         ? pair.recipient_key.public_key
                         : fill_recipients_[((pair.sent - 1) * config_.pairs + pair.index) %
                                            fill_recipients_.size()];
    pair.sender->Send(
        to, Payload(),
        [this, &pair](const mesh::client::SendResult& result) {
          OnAck(result);
          if (config_.rate <= 0) SendOne(pair);
        },
        config_.ttl_s);
  }

  // One line per delivery, in send order: ms since the start, latency in µs (for plotting).
  void WriteLatencyLog() {
    std::vector<std::pair<int64_t, int64_t>> rows;
    for (auto& pair : pairs_) {
      for (size_t i = 0; i < pair->sent_ns.size(); ++i) {
        rows.emplace_back(pair->sent_ns[i], pair->latencies_ns[i]);
      }
    }
    std::sort(rows.begin(), rows.end());
    const int64_t origin =
        std::chrono::duration_cast<std::chrono::nanoseconds>(start_.time_since_epoch()).count();
    FILE* out = std::fopen(config_.latency_log.c_str(), "w");
    if (out == nullptr) {
      std::cerr << "mesh-bench: cannot write " << config_.latency_log << "\n";
      return;
    }
    std::fprintf(out, "sent_ms,latency_us\n");
    for (const auto& [sent, latency] : rows) {
      std::fprintf(out, "%.3f,%.1f\n", static_cast<double>(sent - origin) / 1e6,
                   static_cast<double>(latency) / 1e3);
    }
    std::fclose(out);
  }

  void OnAck(const mesh::client::SendResult& result) {
    if (result.ok()) {
      accepted_.fetch_add(1, std::memory_order_relaxed);
    } else {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      std::lock_guard lock(mu_);
      if (first_rejection_.empty()) {
        first_rejection_ = SendAck::Status_Name(result.status) + " " + result.detail;
      }
    }
  }

  void StartSending(Pair& pair) {
    if (config_.rate <= 0) {
      asio::post(*pair.sender_io, [this, &pair] {
        for (uint32_t i = 0; i < config_.window; ++i) SendOne(pair);
      });
      return;
    }
    // Paced: every millisecond, the sends due by now (a steady rate, not bursts per second).
    auto timer = std::make_shared<asio::steady_timer>(*pair.sender_io);
    const double per_pair = config_.rate / config_.pairs;
    // The tick holds itself only weakly; the pending wait holds it, so it goes with the last one.
    auto tick = std::make_shared<std::function<void()>>();
    *tick = [this, &pair, timer, per_pair, weak = std::weak_ptr<std::function<void()>>(tick)] {
      const double due = Seconds(start_) * per_pair;
      while (pair.sent < due && MoreToSend(pair)) SendOne(pair);
      if (!MoreToSend(pair)) return;
      timer->expires_after(std::chrono::milliseconds(1));
      timer->async_wait([self = weak.lock()](const boost::system::error_code& ec) {
        if (!ec && self) (*self)();
      });
    };
    asio::post(*pair.sender_io, [tick] { (*tick)(); });
  }

  void Fill() {
    ConnectSenders();
    start_ = Clock::now();
    for (auto& pair : pairs_) StartSending(*pair);
    WaitFor([&] { return accepted_ + rejected_ >= total(); }, "SendAcks");
    enqueue_s_ = Seconds(start_);
    if (rejected_ > 0) {
      std::cerr << "mesh-bench: " << rejected_ << " sends rejected, first: " << first_rejection_
                << "\n";
      ok_ = false;
    }
  }

  template <typename Done>
  void WaitFor(Done done, const char* what) {
    const auto limit =
        std::chrono::seconds(120) + std::chrono::seconds(static_cast<int64_t>(config_.duration_s));
    const auto deadline = Clock::now() + limit;
    while (!done()) {
      if (Clock::now() > deadline) {
        std::cerr << "mesh-bench: gave up waiting for " << what << "\n";
        ok_ = false;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

  int Finish(int code) {
    for (auto& pair : pairs_) {
      if (pair->sender) pair->sender->Close();
      if (pair->recipient) pair->recipient->Close();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    runtime_.Stop();

    if (!config_.latency_log.empty()) WriteLatencyLog();
    std::vector<int64_t> all;
    for (auto& pair : pairs_)
      all.insert(all.end(), pair->latencies_ns.begin(), pair->latencies_ns.end());
    std::sort(all.begin(), all.end());
    auto percentile_us = [&](double p) {
      if (all.empty()) return 0.0;
      size_t index =
          std::min(all.size() - 1, static_cast<size_t>(p * static_cast<double>(all.size())));
      return static_cast<double>(all[index]) / 1000.0;
    };
    const uint64_t delivered = delivered_.load();
    nlohmann::json report;
    report["mode"] = config_.mode;
    report["brokers"] = config_.brokers.size();
    report["placement"] = config_.placement;
    report["pairs"] = config_.pairs;
    report["size"] = config_.size;
    report["accepted"] = accepted_.load();
    report["rejected"] = rejected_.load();
    report["delivered"] = delivered;
    if (config_.mode == "online") {
      const double rate = static_cast<double>(delivered) / online_s_;
      report["seconds"] = online_s_;
      report["msgs_per_s"] = rate;
      report["mb_per_s"] = rate * static_cast<double>(config_.size) / 1e6;
      report["target_rate"] = config_.rate;
      report["warmup_s"] = config_.warmup_s;
      report["latency_us"] = {{"p50", percentile_us(0.5)},
                              {"p99", percentile_us(0.99)},
                              {"p999", percentile_us(0.999)},
                              {"max", all.empty() ? 0.0 : all.back() / 1000.0}};
    } else {
      const double enqueue = static_cast<double>(accepted_.load()) / enqueue_s_;
      const double drain = drain_s_ > 0 ? static_cast<double>(delivered) / drain_s_ : 0;
      report["enqueue_s"] = enqueue_s_;
      report["enqueue_msgs_per_s"] = enqueue;
      report["drain_s"] = drain_s_;
      report["drain_msgs_per_s"] = drain;
      report["drain_mb_per_s"] = drain * static_cast<double>(config_.size) / 1e6;
    }
    if (config_.json) {
      std::cout << report.dump() << "\n";
    } else if (config_.mode == "online") {
      std::printf(
          "online %d pairs %zu B: %.0f msgs/s (%.1f MB/s), latency p50 %.0f us p99 %.0f us "
          "p99.9 %.0f us\n",
          config_.pairs, config_.size, report["msgs_per_s"].get<double>(),
          report["mb_per_s"].get<double>(), percentile_us(0.5), percentile_us(0.99),
          percentile_us(0.999));
    } else {
      std::printf("offline %d pairs %zu B: enqueue %.0f msgs/s, drain %.0f msgs/s\n", config_.pairs,
                  config_.size, report["enqueue_msgs_per_s"].get<double>(),
                  report["drain_msgs_per_s"].get<double>());
    }
    if (delivered < total() && config_.mode != "fill") {
      std::cerr << "mesh-bench: delivered " << delivered << " of " << total() << "\n";
      code = 1;
    }
    return code;
  }

  Config config_;
  Runtime runtime_;
  std::vector<std::unique_ptr<Pair>> pairs_;
  std::vector<mesh::crypto::PeerId> fill_recipients_;
  std::atomic<uint64_t> planned_{0};
  std::atomic<uint64_t> accepted_{0};
  std::atomic<uint64_t> rejected_{0};
  std::atomic<uint64_t> delivered_{0};
  std::mutex mu_;
  std::string first_rejection_;
  Clock::time_point start_;
  int64_t warm_ns_ = 0;  // NowNanos() when --warmup ends
  Clock::time_point drain_start_;
  double online_s_ = 0, enqueue_s_ = 0, drain_s_ = 0;
  bool ok_ = true;
};

}  // namespace

int main(int argc, char** argv) {
  Config config;
  CLI::App app{"mesh-bench: load on a running mesh-broker through the client library"};
  app.add_option("--broker,-b", config.broker,
                 "Broker HOST:PORT, ws://HOST:PORT or wss://HOST:PORT")
      ->capture_default_str();
  app.add_option("--tls-ca-file", config.tls_ca_file,
                 "wss:// only: trust anchors (PEM) for the broker's certificate (default: the "
                 "system's)")
      ->check(CLI::ExistingFile);
  app.add_option("--brokers", config.brokers,
                 "A mesh: brokers HOST:PORT,... (instead of --broker); pairs placed by --placement")
      ->delimiter(',');
  app.add_option("--placement", config.placement,
                 "same: each pair on one broker; cross: every pair crosses brokers; spread: both")
      ->check(CLI::IsMember({"same", "cross", "spread"}))
      ->capture_default_str();
  app.add_option("--pairs,-p", config.pairs, "Sender/recipient pairs, each peer its own link")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("--size,-s", config.size, "Payload bytes (at least 8: the send time)")
      ->capture_default_str()
      ->check(CLI::Range(size_t{8}, size_t{64} << 20));
  app.add_option("--count,-n", config.count, "Messages per pair")->capture_default_str();
  app.add_option("--duration", config.duration_s, "online: send for this many seconds instead");
  app.add_option("--warmup", config.warmup_s,
                 "online: leave messages sent in the first seconds out of the latencies");
  app.add_option("--recipients", config.recipients,
                 "fill: offline recipients the sends spread over (0: one per pair)");
  app.add_option("--mode", config.mode,
                 "online, offline (fill, then drain), or fill (leave the mailboxes full)")
      ->capture_default_str()
      ->check(CLI::IsMember({"online", "offline", "fill"}));
  app.add_option("--window,-w", config.window, "Sends outstanding per sender")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1'000'000u));
  app.add_option("--latency-log", config.latency_log,
                 "online: write every delivery's send time and latency to this CSV file");
  app.add_option("--rate", config.rate, "online: total msgs/s to pace at (0: as fast as acked)");
  app.add_option("--threads,-t", config.threads, "Client io threads")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--credit", config.credit, "Credit each recipient grants")->capture_default_str();
  app.add_option("--ttl", config.ttl_s,
                 "Seconds the broker keeps each message for an offline recipient (0: its default)");
  app.add_flag("--json", config.json, "One JSON object on stdout");
  CLI11_PARSE(app, argc, argv);
  if (config.brokers.empty()) config.brokers = {config.broker};
  if (config.mode == "offline" && config.duration_s > 0) {
    std::cerr << "mesh-bench: offline mode takes --count, not --duration\n";
    return 2;
  }
  if (auto status = mesh::crypto::Init(); !status.ok()) {
    std::cerr << "mesh-bench: " << status.message() << "\n";
    return 1;
  }
  return Bench(config).Run();
}
