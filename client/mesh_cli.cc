// mesh-cli: keys, and talking to a broker from the shell.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "client/client.h"

namespace {

int Fail(const absl::Status& status) {
  std::cerr << "mesh-cli: " << status.message() << "\n";
  return 1;
}

double Millis(std::chrono::microseconds us) { return static_cast<double>(us.count()) / 1000.0; }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mesh-cli: keys and messages for mesh-broker"};
  app.require_subcommand(1);
  std::string default_key =
      std::getenv("MESH_KEY_FILE") ? std::getenv("MESH_KEY_FILE") : "mesh.key";

  std::string keygen_out = default_key;
  auto* keygen = app.add_subcommand(
      "keygen", "Create a new static key file (mode 0600) and print its peer ID");
  keygen->add_option("--out,-o", keygen_out, "Key file to create (never overwritten)")
      ->capture_default_str();

  std::string id_key = default_key;
  auto* id = app.add_subcommand("id", "Print the peer ID of a key file");
  id->add_option("--key,-k", id_key, "Key file")->capture_default_str()->envname("MESH_KEY_FILE");

  std::string ping_address, ping_key, ping_suite = "auto";
  int ping_count = 3;
  int64_t ping_timeout_ms = 5000;
  auto* ping =
      app.add_subcommand("ping", "Handshake with a broker, print its peer ID and round-trip times");
  ping->add_option("address", ping_address, "Broker HOST:PORT")->required();
  ping->add_option("--key,-k", ping_key, "Key file (default: a throwaway key)")
      ->envname("MESH_KEY_FILE");
  ping->add_option("--count,-c", ping_count, "Pings to send")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  ping->add_option("--suite", ping_suite, "Cipher suite to offer")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "aesgcm", "chachapoly"}));
  ping->add_option("--timeout-ms", ping_timeout_ms,
                   "How long to wait for each Pong and for the connection")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);

  CLI11_PARSE(app, argc, argv);
  if (auto status = mesh::crypto::Init(); !status.ok()) return Fail(status);

  if (keygen->parsed()) {
    auto key = mesh::crypto::KeyPair::Generate();
    if (auto status = mesh::crypto::WriteKeyFile(keygen_out, key); !status.ok())
      return Fail(status);
    std::cout << key.public_key.ToString() << "\n";
    return 0;
  }
  if (id->parsed()) {
    auto key = mesh::crypto::LoadKeyFile(id_key);
    if (!key.ok()) return Fail(key.status());
    std::cout << key->public_key.ToString() << "\n";
    return 0;
  }
  // ping
  mesh::crypto::KeyPair key = mesh::crypto::KeyPair::Generate();
  if (!ping_key.empty()) {
    auto loaded = mesh::crypto::LoadKeyFile(ping_key);
    if (!loaded.ok()) return Fail(loaded.status());
    key = *std::move(loaded);
  }
  mesh::client::ConnectOptions options;
  options.address = ping_address;
  options.key = &key;
  options.agent = "mesh-cli/0.1";
  options.connect_timeout = std::chrono::milliseconds(ping_timeout_ms);
  if (ping_suite == "aesgcm") options.suite = mesh::crypto::CipherSuite::kAesGcm;
  if (ping_suite == "chachapoly") options.suite = mesh::crypto::CipherSuite::kChaChaPoly;
  auto result = mesh::client::Ping(options, ping_count, std::chrono::milliseconds(ping_timeout_ms));
  if (!result.ok()) return Fail(result.status());
  std::printf("broker %s node %s suite %s\n", result->broker_id.ToString().c_str(),
              result->node_name.c_str(), mesh::crypto::CipherName(result->suite));
  std::printf("connect+handshake %.3f ms\n", Millis(result->handshake));
  double sum = 0, lo = 1e18, hi = 0;
  for (size_t i = 0; i < result->round_trips.size(); ++i) {
    double ms = Millis(result->round_trips[i]);
    std::printf("pong %zu rtt %.3f ms\n", i + 1, ms);
    sum += ms;
    lo = std::min(lo, ms);
    hi = std::max(hi, ms);
  }
  std::printf("rtt min/avg/max %.3f/%.3f/%.3f ms\n", lo, sum / result->round_trips.size(), hi);
  return 0;
}
