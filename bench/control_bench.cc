// control_bench: gRPC calls per second against a running broker's control plane. Each thread
// makes blocking GetStats calls on its own channel for --duration seconds; prints calls/s and
// latency percentiles (--json for one JSON line).
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "mesh/v1/control.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;

std::string ReadToken(const std::string& path) {
  std::ifstream in(path);
  std::string token;
  in >> token;
  return token;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"control_bench: gRPC GetStats calls/s against a running mesh-broker"};
  std::string target = "127.0.0.1:50051";
  std::string token_file = "mesh-data/admin.token";
  int threads = 2;
  double duration_s = 5;
  bool json = false;
  app.add_option("--target,-t", target, "gRPC HOST:PORT")->capture_default_str();
  app.add_option("--token-file", token_file, "Admin token file")->capture_default_str();
  app.add_option("--threads", threads, "Calling threads, one channel each")->capture_default_str();
  app.add_option("--duration", duration_s, "Seconds to run")->capture_default_str();
  app.add_flag("--json", json, "One JSON line");
  CLI11_PARSE(app, argc, argv);

  const std::string authorization = "Bearer " + ReadToken(token_file);
  std::atomic<bool> failed{false};
  std::vector<std::vector<double>> latencies(threads);
  std::vector<std::thread> workers;
  const auto end = Clock::now() + std::chrono::duration<double>(duration_s);
  const auto start = Clock::now();
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      grpc::ChannelArguments args;
      args.SetInt("grpc.use_local_subchannel_pool", 1);  // a connection per thread
      auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
      auto stub = mesh::v1::Control::NewStub(channel);
      while (Clock::now() < end && !failed) {
        grpc::ClientContext context;
        context.AddMetadata("authorization", authorization);
        mesh::v1::Stats stats;
        const auto sent = Clock::now();
        grpc::Status status = stub->GetStats(&context, mesh::v1::GetStatsRequest(), &stats);
        if (!status.ok()) {
          std::cerr << "control_bench: " << status.error_message() << "\n";
          failed = true;
          return;
        }
        latencies[t].push_back(
            std::chrono::duration<double, std::micro>(Clock::now() - sent).count());
      }
    });
  }
  for (auto& worker : workers) worker.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> all;
  for (auto& part : latencies) all.insert(all.end(), part.begin(), part.end());
  std::sort(all.begin(), all.end());
  auto percentile = [&](double p) {
    return all.empty() ? 0.0 : all[std::min(all.size() - 1, static_cast<size_t>(p * all.size()))];
  };
  nlohmann::json report = {{"calls", all.size()},
                           {"seconds", seconds},
                           {"calls_per_s", static_cast<double>(all.size()) / seconds},
                           {"threads", threads},
                           {"latency_us", {{"p50", percentile(0.5)}, {"p99", percentile(0.99)}}}};
  if (json) {
    std::cout << report.dump() << "\n";
  } else {
    std::cout << report.dump(2) << "\n";
  }
  return failed ? 1 : 0;
}
