// TCP under every listener and dialler, over real loopback sockets: addresses, the accept loop's
// spread over shards and its recovery from a failed accept, and dials that fail clearly.
#include "peer/listener.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_future.hpp>
#include <future>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/match.h"

namespace mesh::peer {
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

TEST(SplitHostPort, SplitsNamesV6AndEmptyHosts) {
  EXPECT_EQ(*SplitHostPort("broker.local:7700"),
            std::make_pair(std::string("broker.local"), std::string("7700")));
  EXPECT_EQ(*SplitHostPort("[::1]:7700"), std::make_pair(std::string("::1"), std::string("7700")));
  EXPECT_EQ(SplitHostPort(":0")->first, "");
  EXPECT_FALSE(SplitHostPort("no-port").ok());
  EXPECT_FALSE(SplitHostPort("host:").ok());
}

TEST(Listen, RefusesWhatIsNotAnIpAndPort) {
  asio::io_context io;
  EXPECT_EQ(Listen(io, "127.0.0.1:70000").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Listen(io, "broker.local:0").status().code(), absl::StatusCode::kInvalidArgument);
  auto taken = Listen(io, "127.0.0.1:0");
  ASSERT_TRUE(taken.ok()) << taken.status();
  const auto port = taken->local_endpoint().port();
  auto again = Listen(io, "127.0.0.1:" + std::to_string(port));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(again.status().message(), "cannot listen on")) << again.status();
}

// Two shards with a thread each, and an acceptor on a third io_context, as the broker has them.
class AcceptLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto acceptor = Listen(io_, "127.0.0.1:0");
    ASSERT_TRUE(acceptor.ok()) << acceptor.status();
    acceptor_.emplace(*std::move(acceptor));
    port_ = acceptor_->local_endpoint().port();
  }
  void TearDown() override {
    work_.reset();
    thread_.join();
  }
  void Start(ServeConnection serve, std::function<void(const error_code&)> on_failure = {}) {
    asio::co_spawn(
        io_,
        AcceptLoop(*acceptor_, {&shards_[0], &shards_[1]}, std::move(serve), std::move(on_failure)),
        [this](std::exception_ptr) { ended_ = true; });
    thread_ = std::thread([this] { io_.run(); });
  }
  // A client connection from this thread (the kernel completes it before any accept).
  tcp::socket Connect() {
    tcp::socket socket(client_io_);
    socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port_));
    return socket;
  }
  void CloseAcceptor() {
    asio::post(io_, [this] { acceptor_->close(); });
  }
  template <class Predicate>
  static bool WaitFor(Predicate done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
  }

  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_ = asio::make_work_guard(io_);
  asio::io_context shards_[2];
  asio::io_context client_io_;
  std::optional<tcp::acceptor> acceptor_;
  uint16_t port_ = 0;
  std::thread thread_;
  std::atomic<bool> ended_{false};
};

TEST_F(AcceptLoopTest, SpreadsConnectionsOverTheShardsInTurnAndEndsWhenClosed) {
  std::mutex mu;
  std::vector<size_t> shards;
  std::vector<bool> on_its_shard;
  std::vector<tcp::socket> kept;
  Start([&](size_t shard, tcp::socket socket, const tcp::endpoint& remote) {
    std::lock_guard lock(mu);
    shards.push_back(shard);
    on_its_shard.push_back(&asio::query(socket.get_executor(), asio::execution::context) ==
                           &shards_[shard]);
    EXPECT_TRUE(remote.address().is_loopback());
    kept.push_back(std::move(socket));
  });
  std::vector<tcp::socket> clients;
  for (int i = 0; i < 4; ++i) clients.push_back(Connect());
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard lock(mu);
    return shards.size() == 4;
  }));
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(shards, (std::vector<size_t>{0, 1, 0, 1}));
    EXPECT_EQ(on_its_shard, std::vector<bool>(4, true));
    kept.clear();
  }
  CloseAcceptor();
  EXPECT_TRUE(WaitFor([&] { return ended_.load(); }));
}

// Out of descriptors, accept fails with EMFILE until one is free: the loop reports it and keeps
// going, and the waiting connection is served once the limit allows it.
TEST_F(AcceptLoopTest, AFailedAcceptIsReportedAndTheLoopServesAgainAfterwards) {
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  std::atomic<int> served{0};
  std::atomic<int> failures{0};
  std::atomic<int> last_error{0};
  // Everything that needs a descriptor of its own gets it first: the loop's thread, the
  // shards' reactors and the client's socket.
  Start([&](size_t, tcp::socket, const tcp::endpoint&) { ++served; },
        [&](const error_code& ec) {
          last_error = ec.value();
          ++failures;
        });
  for (auto& shard : shards_) {
    tcp::socket warm(shard);
    warm.open(tcp::v4());
  }
  tcp::socket client(client_io_);
  client.open(tcp::v4());
  {
    // The loop's pause is a timer on io_: one timer there now, so that what it sets up (and a
    // sanitizer's first check of its types, which opens a pipe) is done before the limit.
    asio::steady_timer warm(io_, std::chrono::milliseconds(1));
    std::promise<void> waited;
    warm.async_wait([&](const error_code&) { waited.set_value(); });
    waited.get_future().wait();
  }
  // No descriptor left for the accepted socket: the lowest free one is the new soft limit.
  const int probe = ::dup(0);
  ASSERT_GE(probe, 0);
  ::close(probe);
  rlimit tight = saved;
  tight.rlim_cur = static_cast<rlim_t>(probe);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &tight), 0);
  error_code connected;
  client.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port_), connected);
  const bool failed = WaitFor([&] { return failures.load() > 0; });
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
  ASSERT_FALSE(connected) << connected.message();
  ASSERT_TRUE(failed);
  EXPECT_EQ(last_error.load(), EMFILE);
  EXPECT_TRUE(WaitFor([&] { return served.load() == 1; }));
  CloseAcceptor();
  EXPECT_TRUE(WaitFor([&] { return ended_.load(); }));
}

absl::StatusOr<tcp::socket> DialNow(asio::io_context& io, const std::string& address) {
  auto result = asio::co_spawn(io, Dial(address, std::chrono::seconds(15), true), asio::use_future);
  io.run();
  io.restart();
  return result.get();
}

TEST(Dial, ConnectsOrSaysWhyNot) {
  asio::io_context io;
  auto acceptor = Listen(io, "127.0.0.1:0");
  ASSERT_TRUE(acceptor.ok());
  const std::string port = std::to_string(acceptor->local_endpoint().port());
  auto connected = DialNow(io, "127.0.0.1:" + port);
  ASSERT_TRUE(connected.ok()) << connected.status();
  EXPECT_EQ(connected->remote_endpoint().port(), acceptor->local_endpoint().port());
  auto empty_host = DialNow(io, ":" + port);  // 127.0.0.1
  EXPECT_TRUE(empty_host.ok()) << empty_host.status();
  acceptor->close();
  auto refused = DialNow(io, "127.0.0.1:" + port);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "cannot connect to 127.0.0.1:" + port))
      << refused.status();
  EXPECT_EQ(DialNow(io, "no-port").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mesh::peer
