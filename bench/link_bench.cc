// One link's throughput over loopback TCP, in-process: an initiator on one io_context thread
// sends Send frames to a responder on another, which counts them; frames/s and payload MB/s.
#include <benchmark/benchmark.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "crypto/crypto.h"
#include "peer/peer.h"

namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;
using mesh::peer::Link;

// The sender stops queueing while the link holds this many bytes not yet written, and lets the
// writer drain: Link::Send itself queues without bound.
constexpr size_t kHighWater = size_t{1} << 20;
// Neither setup nor one batch may take longer: a hung link fails the benchmark, not the run.
constexpr auto kDeadline = std::chrono::seconds(15);

// A responder and an initiator joined by one established link over 127.0.0.1, each on its own
// io_context thread. Kept open across iterations and benchmarks.
class LinkPair {
 public:
  LinkPair() = default;
  LinkPair(const LinkPair&) = delete;
  LinkPair& operator=(const LinkPair&) = delete;
  ~LinkPair() { Stop(); }

  absl::Status Start() {
    tcp::acceptor acceptor(responder_io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    const uint16_t port = acceptor.local_endpoint().port();
    std::promise<absl::Status> accepted, connected;
    auto accepted_future = accepted.get_future();
    auto connected_future = connected.get_future();
    asio::co_spawn(responder_io_, Respond(std::move(acceptor), std::move(accepted)),
                   asio::detached);
    asio::co_spawn(initiator_io_, Initiate(absl::StrCat("127.0.0.1:", port), std::move(connected)),
                   asio::detached);
    responder_thread_ = std::thread([this] { responder_io_.run(); });
    initiator_thread_ = std::thread([this] { initiator_io_.run(); });
    for (auto* future : {&accepted_future, &connected_future}) {
      if (future->wait_for(kDeadline) != std::future_status::ready) {
        return absl::DeadlineExceededError("link setup did not finish within 15 s");
      }
      if (absl::Status status = future->get(); !status.ok()) return status;
    }
    established_ = true;
    return absl::OkStatus();
  }

  // Sends `count` copies of `frame` from the initiator and waits until the responder counted
  // them all.
  absl::Status Transfer(const mesh::v1::Frame& frame, uint64_t count) {
    if (!usable_) return absl::FailedPreconditionError("the link failed earlier");
    const uint64_t target = received_.load() + count;
    target_.store(target);
    asio::co_spawn(initiator_->get_executor(), SendBatch(frame, count), asio::detached);
    std::unique_lock lock(mu_);
    const bool done =
        cv_.wait_for(lock, kDeadline, [&] { return received_.load() >= target || down_; });
    if (down_) {
      usable_ = false;
      return absl::UnavailableError(absl::StrCat("the link went down: ", ended_.ToString()));
    }
    if (!done) {
      usable_ = false;
      return absl::DeadlineExceededError(absl::StrCat("only ", received_.load() - (target - count),
                                                      " of ", count, " frames within 15 s"));
    }
    return absl::OkStatus();
  }

  void Stop() {
    if (stopped_) return;
    stopped_ = true;
    for (auto& link : {initiator_, responder_}) {
      if (link) asio::post(link->get_executor(), [link] { link->Close(absl::OkStatus()); });
    }
    responder_work_.reset();
    initiator_work_.reset();
    if (!established_) {
      // Setup failed or hung: nothing worth closing gracefully.
      responder_io_.stop();
      initiator_io_.stop();
    }
    if (responder_thread_.joinable()) responder_thread_.join();
    if (initiator_thread_.joinable()) initiator_thread_.join();
    // The links' sockets belong to the io_contexts: drop them first.
    initiator_.reset();
    responder_.reset();
  }

 private:
  awaitable<void> Respond(tcp::acceptor acceptor, std::promise<absl::Status> accepted) {
    boost::system::error_code ec;
    tcp::socket socket = co_await acceptor.async_accept(asio::redirect_error(use_awaitable, ec));
    if (ec) {
      accepted.set_value(absl::UnavailableError(ec.message()));
      co_return;
    }
    mesh::v1::Hello hello;
    hello.set_protocol_version(mesh::peer::kProtocolVersion);
    hello.set_node_name("link_bench");
    hello.mutable_limits()->set_max_payload(config_.max_payload);
    hello.mutable_limits()->set_heartbeat_interval_ms(
        static_cast<uint32_t>(config_.heartbeat_interval.count()));
    auto link = co_await Link::Accept(std::move(socket), responder_key_, hello,
                                      mesh::peer::LinkKind::kPeer, config_, responder_stats_);
    if (!link.ok()) {
      accepted.set_value(link.status());
      co_return;
    }
    responder_ = *link;
    accepted.set_value(absl::OkStatus());
    absl::Status ended = co_await responder_->Run([this](mesh::v1::Frame& frame) {
      if (!frame.has_send()) return absl::OkStatus();
      if (received_.fetch_add(1, std::memory_order_relaxed) + 1 == target_.load()) {
        std::lock_guard lock(mu_);
        cv_.notify_all();
      }
      return absl::OkStatus();
    });
    LinkDown(ended);
  }

  awaitable<void> Initiate(std::string address, std::promise<absl::Status> connected) {
    mesh::client::ConnectOptions options;
    options.address = std::move(address);
    options.key = &initiator_key_;
    options.suite = mesh::crypto::CipherSuite::kAesGcm;
    options.link = config_;
    options.agent = "link_bench";
    auto link = co_await mesh::client::Connect(options, initiator_stats_);
    if (!link.ok()) {
      connected.set_value(link.status());
      co_return;
    }
    initiator_ = *link;
    connected.set_value(absl::OkStatus());
    // Reading keeps the link alive: it answers the responder's heartbeats.
    absl::Status ended =
        co_await initiator_->Run([](mesh::v1::Frame&) { return absl::OkStatus(); });
    LinkDown(ended);
  }

  // Runs on the initiator's executor: queues the frames, yielding whenever the writer is
  // more than kHighWater behind. Owns its copy of the frame: it may outlive a failed Transfer.
  awaitable<void> SendBatch(mesh::v1::Frame frame, uint64_t count) {
    auto executor = initiator_->get_executor();
    for (uint64_t i = 0; i < count && !initiator_->closed(); ++i) {
      // Re-posting (rather than sleeping on a timer) refills the queue the moment the writer
      // has drained it, at the price of spinning this thread meanwhile.
      while (initiator_->queued_bytes() >= kHighWater && !initiator_->closed()) {
        co_await asio::post(executor, use_awaitable);
      }
      initiator_->Send(frame);
    }
  }

  void LinkDown(const absl::Status& ended) {
    std::lock_guard lock(mu_);
    if (!stopped_ && !down_) {
      down_ = true;
      ended_ = ended;
    }
    cv_.notify_all();
  }

  const mesh::crypto::KeyPair responder_key_ = mesh::crypto::KeyPair::Generate();
  const mesh::crypto::KeyPair initiator_key_ = mesh::crypto::KeyPair::Generate();
  const mesh::peer::LinkConfig config_{};
  mesh::peer::LinkStats responder_stats_, initiator_stats_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> received_{0};  // Send frames the responder handled
  std::atomic<uint64_t> target_{0};    // the count at which the waiting batch is complete
  bool down_ = false;                  // guarded by mu_
  absl::Status ended_;                 // guarded by mu_
  bool usable_ = true;                 // benchmark thread only
  bool established_ = false;           // benchmark thread only
  std::atomic<bool> stopped_{false};

  // Declared after everything the links refer to, so destroyed before it.
  asio::io_context responder_io_{1};
  asio::io_context initiator_io_{1};
  asio::executor_work_guard<asio::io_context::executor_type> responder_work_ =
      asio::make_work_guard(responder_io_);
  asio::executor_work_guard<asio::io_context::executor_type> initiator_work_ =
      asio::make_work_guard(initiator_io_);
  std::thread responder_thread_, initiator_thread_;
  std::shared_ptr<Link> responder_, initiator_;  // set once, before Start returns
};

std::unique_ptr<LinkPair> g_pair;
absl::Status g_setup = absl::OkStatus();

LinkPair* GetPair() {
  if (!g_pair && g_setup.ok()) {
    g_pair = std::make_unique<LinkPair>();
    g_setup = g_pair->Start();
  }
  return g_setup.ok() ? g_pair.get() : nullptr;
}

mesh::v1::Frame SendFrame(size_t payload_size) {
  mesh::v1::Frame frame;
  auto* send = frame.mutable_send();
  send->set_id(std::string(16, '\x01'));
  send->set_to(std::string(mesh::crypto::kKeySize, '\x02'));
  send->set_payload(std::string(payload_size, '\xab'));
  return frame;
}

// Per iteration: one batch of Send frames with a state.range(0)-byte payload, timed from the
// first Send until the responder has handled the last.
void BM_LinkThroughput(benchmark::State& state) {
  const size_t payload = static_cast<size_t>(state.range(0));
  const uint64_t batch = payload <= 1024 ? 20000 : 2000;
  LinkPair* pair = GetPair();
  if (pair == nullptr) {
    state.SkipWithError(std::string(g_setup.message()).c_str());
    return;
  }
  const mesh::v1::Frame frame = SendFrame(payload);
  for (auto _ : state) {
    if (absl::Status status = pair->Transfer(frame, batch); !status.ok()) {
      state.SkipWithError(std::string(status.message()).c_str());
      break;
    }
  }
  const double frames = static_cast<double>(state.iterations()) * static_cast<double>(batch);
  state.SetItemsProcessed(static_cast<int64_t>(frames));
  state.SetBytesProcessed(static_cast<int64_t>(frames * static_cast<double>(payload)));
  state.counters["frames_per_iter"] = static_cast<double>(batch);
  state.counters["payload_MB"] =
      benchmark::Counter(frames * static_cast<double>(payload) / 1e6, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_LinkThroughput)->Arg(256)->Arg(16384)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  if (absl::Status status = mesh::crypto::Init(); !status.ok()) {
    std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
    return 1;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  g_pair.reset();
  return 0;
}
