// mesh-broker: flags (each with a MESH_* environment variable) into a BrokerConfig, then run.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cctype>
#include <iostream>

#include "broker/broker.h"
#include "broker/log.h"

namespace {

// --admin-token-file <-> MESH_ADMIN_TOKEN_FILE
std::string EnvName(const std::string& flag) {
  std::string env = "MESH_";
  for (char c : flag) env.push_back(c == '-' ? '_' : static_cast<char>(std::toupper(c)));
  return env;
}

std::string HostName() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mesh-broker: relays addressed messages between peers over Noise-secured links"};
  app.set_help_flag("-h,--help,--helpfull", "Print every flag with its environment variable");
  mesh::broker::BrokerConfig config;
  int64_t handshake_timeout_ms = config.link.handshake_timeout.count();
  int64_t heartbeat_interval_ms = config.link.heartbeat_interval.count();
  int64_t frame_timeout_ms = config.link.frame_timeout.count();
  std::string log_level = "info";

  auto flag = [&](const std::string& name, auto& value, const std::string& help) {
    return app.add_option("--" + name, value, help)->envname(EnvName(name))->capture_default_str();
  };
  flag("listen-peer", config.listen_peer, "Address for peer links (HOST:PORT; port 0 picks one)");
  flag("data-dir", config.data_dir, "Directory for the node key and the store");
  flag("node-name", config.node_name, "Name announced to peers (default: the host name)");
  flag("threads", config.threads, "I/O threads, one io_context each (0: one per core)")
      ->check(CLI::Range(0, 1024));
  flag("max-payload", config.link.max_payload, "Largest message payload in bytes")
      ->check(CLI::Range(size_t{1}, size_t{64} << 20));
  flag("handshake-timeout-ms", handshake_timeout_ms, "Deadline for a Noise handshake")
      ->check(CLI::PositiveNumber);
  flag("heartbeat-interval-ms", heartbeat_interval_ms,
       "Ping interval; a link silent for 3 intervals is closed")
      ->check(CLI::PositiveNumber);
  flag("frame-timeout-ms", frame_timeout_ms, "Deadline for a frame once begun")
      ->check(CLI::PositiveNumber);
  flag("frame-memory-budget", config.frame_memory_budget,
       "Bytes for partly received frames across all links; reads pause when spent")
      ->check(CLI::PositiveNumber);
  flag("max-pending-handshakes", config.max_pending_handshakes, "Handshakes in progress at once")
      ->check(CLI::PositiveNumber);
  flag("max-pending-handshakes-per-ip", config.max_pending_handshakes_per_ip,
       "Handshakes in progress at once from one address")
      ->check(CLI::PositiveNumber);
  flag("log-level", log_level, "debug, info, warn or error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  CLI11_PARSE(app, argc, argv);

  config.link.handshake_timeout = std::chrono::milliseconds(handshake_timeout_ms);
  config.link.heartbeat_interval = std::chrono::milliseconds(heartbeat_interval_ms);
  config.link.frame_timeout = std::chrono::milliseconds(frame_timeout_ms);
  if (config.node_name.empty()) config.node_name = HostName();

  using mesh::broker::Log;
  mesh::broker::InitLogging(log_level);
  if (auto status = mesh::crypto::Init(); !status.ok()) {
    Log(spdlog::level::critical, "startup_failed", {{"error", std::string(status.message())}});
    return 1;
  }
  auto key = mesh::broker::LoadOrCreateNodeKey(config.data_dir);
  if (!key.ok()) {
    Log(spdlog::level::critical, "startup_failed",
        {{"error", std::string(key.status().message())}});
    return 1;
  }
  mesh::broker::Broker broker(config, *std::move(key));
  if (auto status = broker.Start(); !status.ok()) {
    Log(spdlog::level::critical, "startup_failed", {{"error", std::string(status.message())}});
    return 1;
  }
  broker.Wait();
  Log(spdlog::level::info, "stopped", {});
  return 0;
}
