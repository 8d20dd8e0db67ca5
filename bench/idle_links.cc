// idle_links: a running mesh-broker's resident memory per idle established link. Reads the
// broker's VmRSS, opens N links to it, waits for them to settle, reads VmRSS again, prints JSON.
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "crypto/crypto.h"
#include "peer/peer.h"

namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using mesh::peer::Link;

// VmRSS of a process, in KiB, from /proc/PID/status.
absl::StatusOr<int64_t> ReadRssKib(int pid) {
  const std::string path = absl::StrCat("/proc/", pid, "/status");
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::string line;
  while (std::getline(in, line)) {
    long long kib = 0;
    if (std::sscanf(line.c_str(), "VmRSS: %lld kB", &kib) == 1) return int64_t{kib};
  }
  return absl::InternalError(absl::StrCat("no VmRSS line in ", path));
}

// Lifts the open-files limit to the hard limit and returns it: each link is a descriptor.
rlim_t RaiseFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
    getrlimit(RLIMIT_NOFILE, &limit);
  }
  return limit.rlim_cur;
}

struct Options {
  int broker_pid = 0;
  std::string address;
  std::string tls_ca_file;
  int links = 10000;
  int concurrency = 48;
  int settle_ms = 2000;
};

// Opens the links with at most `concurrency` handshakes in flight and keeps them running.
class Opener {
 public:
  Opener(asio::io_context& io, const Options& options) : io_(io), options_(options) {
    keys_.reserve(options.links);
    for (int i = 0; i < options.links; ++i) keys_.push_back(mesh::crypto::KeyPair::Generate());
  }

  awaitable<void> OpenAll() {
    asio::steady_timer all_done(io_, asio::steady_timer::time_point::max());
    int workers = std::min(options_.concurrency, options_.links);
    for (int i = 0; i < workers; ++i) {
      asio::co_spawn(
          io_,
          [this, &workers, &all_done]() -> awaitable<void> {
            co_await Worker();
            if (--workers == 0) all_done.cancel();
          },
          asio::detached);
    }
    boost::system::error_code ec;
    while (workers > 0) co_await all_done.async_wait(asio::redirect_error(use_awaitable, ec));
  }

  int established() const { return established_; }
  int failed() const { return failed_; }
  const absl::Status& first_error() const { return first_error_; }
  int64_t links_open() const { return stats_.links_open.load(); }

 private:
  // Dials links one after another until none are left to open.
  awaitable<void> Worker() {
    while (next_ < options_.links) {
      const int i = next_++;
      mesh::client::ConnectOptions connect;
      connect.address = options_.address;
      connect.key = &keys_[i];
      connect.agent = "idle_links";
      connect.trust.tls_ca_file = options_.tls_ca_file;
      auto link = co_await mesh::client::Connect(connect, stats_);
      if (!link.ok()) {
        if (failed_++ == 0) first_error_ = link.status();
        continue;
      }
      ++established_;
      if (established_ % 1000 == 0) std::fprintf(stderr, "%d links established\n", established_);
      links_.push_back(*link);
      // Reading answers the broker's heartbeats; the frames themselves are ignored.
      asio::co_spawn(
          io_,
          [l = *link]() -> awaitable<void> {
            (void)co_await l->Run([](mesh::v1::Frame&) { return absl::OkStatus(); });
          },
          asio::detached);
    }
  }

  asio::io_context& io_;
  const Options& options_;
  std::vector<mesh::crypto::KeyPair> keys_;
  mesh::peer::LinkStats stats_;
  std::vector<std::shared_ptr<Link>> links_;
  int next_ = 0;
  int established_ = 0;
  int failed_ = 0;
  absl::Status first_error_;
};

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app{"idle_links: resident memory of a running mesh-broker per idle established link"};
  app.add_option("--broker-pid", options.broker_pid, "PID of the mesh-broker to measure")
      ->required();
  app.add_option("--address", options.address,
                 "The broker's peer listener: HOST:PORT, ws://HOST:PORT or wss://HOST:PORT")
      ->required();
  app.add_option("--tls-ca-file", options.tls_ca_file,
                 "wss:// only: trust anchors (PEM) for the broker's certificate")
      ->check(CLI::ExistingFile);
  app.add_option("--links", options.links, "Links to open")
      ->capture_default_str()
      ->check(CLI::Range(1, 1'000'000));
  app.add_option("--concurrency", options.concurrency,
                 "Handshakes in flight at once; keep below the broker's "
                 "--max-pending-handshakes-per-ip (64 by default)")
      ->capture_default_str()
      ->check(CLI::Range(1, 10'000));
  app.add_option("--settle-ms", options.settle_ms,
                 "Wait after the last handshake before reading RSS again")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);

  if (auto status = mesh::crypto::Init(); !status.ok()) {
    std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
    return 1;
  }
  const rlim_t files = RaiseFileLimit();
  if (files < static_cast<rlim_t>(options.links) + 64) {
    std::fprintf(stderr, "open-files limit %llu is too low for %d links; raise it (ulimit -n)\n",
                 static_cast<unsigned long long>(files), options.links);
    return 1;
  }

  const auto before = ReadRssKib(options.broker_pid);
  if (!before.ok()) {
    std::fprintf(stderr, "%s\n", std::string(before.status().message()).c_str());
    return 1;
  }

  asio::io_context io{1};
  Opener opener(io, options);
  absl::StatusOr<int64_t> after = absl::UnknownError("not measured");
  double open_seconds = 0;
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        const auto start = std::chrono::steady_clock::now();
        co_await opener.OpenAll();
        open_seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        asio::steady_timer settle(io, std::chrono::milliseconds(options.settle_ms));
        co_await settle.async_wait(use_awaitable);
        after = ReadRssKib(options.broker_pid);
        io.stop();
      },
      asio::detached);
  io.run();

  if (opener.failed() > 0) {
    std::fprintf(stderr, "%d of %d links failed; first: %s\n", opener.failed(), options.links,
                 opener.first_error().ToString().c_str());
  }
  if (!after.ok()) {
    std::fprintf(stderr, "%s\n", std::string(after.status().message()).c_str());
    std::fflush(stderr);
    std::_Exit(1);
  }
  const int links = opener.established();
  const double per_link = links > 0 ? static_cast<double>(*after - *before) * 1024.0 / links : 0.0;
  std::printf(
      "{\"links\": %d, \"failed\": %d, \"links_open_at_measurement\": %lld, "
      "\"rss_before_kib\": %lld, \"rss_after_kib\": %lld, \"per_link_bytes\": %.0f, "
      "\"open_seconds\": %.2f}\n",
      links, opener.failed(), static_cast<long long>(opener.links_open()),
      static_cast<long long>(*before), static_cast<long long>(*after), per_link, open_seconds);
  std::fflush(stdout);
  // Measured: leave without tearing down thousands of links one by one; the kernel closes them.
  std::_Exit(opener.failed() > 0 ? 1 : 0);
}
