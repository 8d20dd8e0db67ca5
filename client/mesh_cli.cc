// mesh-cli: keys, and talking to a broker from the shell.
#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/session.h"

namespace {

namespace asio = boost::asio;

int Fail(const absl::Status& status) {
  std::cerr << "mesh-cli: " << status.message() << "\n";
  return 1;
}

int Fail(std::string_view message) {
  std::cerr << "mesh-cli: " << message << "\n";
  return 1;
}

std::string Hex(std::span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 15]);
  }
  return out;
}

std::string Base64(std::string_view bytes) {
  std::string out(sodium_base64_encoded_len(bytes.size(), sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), reinterpret_cast<const uint8_t*>(bytes.data()),
                    bytes.size(), sodium_base64_VARIANT_ORIGINAL);
  out.resize(out.size() - 1);  // the terminating NUL
  return out;
}

// One JSON object per received message; the payload as text when it is UTF-8.
std::string MessageJson(const mesh::client::Message& message) {
  nlohmann::json line;
  line["from"] = message.from.ToString();
  line["id"] = Hex(message.id);
  line["sent_at_ms"] = message.sent_at_ms;
  line["size"] = message.payload.size();
  if (!message.sealed_status.ok())
    line["sealed_error"] = std::string(message.sealed_status.message());
  line["payload"] = message.payload;
  try {
    return line.dump();
  } catch (const nlohmann::json::type_error&) {  // not UTF-8
    line.erase("payload");
    line["payload_base64"] = Base64(message.payload);
    return line.dump();
  }
}

absl::StatusOr<mesh::crypto::KeyPair> LoadKey(const std::string& path) {
  auto key = mesh::crypto::LoadKeyFile(path);
  if (!key.ok()) {
    return absl::Status(key.status().code(),
                        absl::StrCat(key.status().message(),
                                     " (create one with: mesh-cli keygen --out ", path, ")"));
  }
  return key;
}

// How the commands that reach a broker check it (DESIGN §5).
struct TrustFlags {
  std::string authority = std::getenv("MESH_AUTHORITY") ? std::getenv("MESH_AUTHORITY") : "";
  std::string broker_keys;
  std::string tls_ca_file;

  void Add(CLI::App* command) {
    command
        ->add_option("--mesh-authority", authority,
                     "Refuse a broker without a valid node certificate by this authority key")
        ->envname("MESH_AUTHORITY");
    command
        ->add_option("--broker-key", broker_keys,
                     "Refuse a broker whose key is not one of these (comma-separated)")
        ->envname("MESH_BROKER_KEY");
    command
        ->add_option("--tls-ca-file", tls_ca_file,
                     "wss:// only: trust anchors (PEM) for the broker's TLS certificate "
                     "(default: the system's)")
        ->envname("MESH_TLS_CA_FILE")
        ->check(CLI::ExistingFile);
  }

  absl::StatusOr<mesh::client::BrokerTrust> Trust() const {
    mesh::client::BrokerTrust trust;
    trust.tls_ca_file = tls_ca_file;
    if (!authority.empty()) {
      auto key = mesh::crypto::AuthorityKey::Parse(authority);
      if (!key.ok())
        return absl::InvalidArgumentError(
            absl::StrCat("--mesh-authority: ", key.status().message()));
      trust.authority = *key;
    }
    std::stringstream list(broker_keys);
    for (std::string text; std::getline(list, text, ',');) {
      if (text.empty()) continue;
      auto key = mesh::crypto::PeerId::Parse(text);
      if (!key.ok())
        return absl::InvalidArgumentError(absl::StrCat("--broker-key: ", key.status().message()));
      trust.pinned.push_back(*key);
    }
    if (!trust.verifies()) {
      std::fprintf(stderr,
                   "mesh-cli: the broker is unverified (give --mesh-authority or --broker-key to "
                   "check whom you talk to)\n");
    }
    return trust;
  }
};

// Options shared by the commands that hold a session with a broker.
struct SessionFlags {
  TrustFlags trust;
  std::string broker = std::getenv("MESH_BROKER") ? std::getenv("MESH_BROKER") : "127.0.0.1:7700";
  std::string key;
  bool seal = false;
  int64_t timeout_ms = 10'000;

  void Add(CLI::App* command, const std::string& default_key) {
    key = default_key;
    command->add_option("--broker,-b", broker, "Broker HOST:PORT (several: comma-separated)")
        ->capture_default_str()
        ->envname("MESH_BROKER");
    command->add_option("--key,-k", key, "Key file: this peer's identity")
        ->capture_default_str()
        ->envname("MESH_KEY_FILE");
    command->add_flag("--seal", seal, "End-to-end seal payloads (crypto_box to the recipient)");
    command->add_option("--timeout-ms", timeout_ms, "Give up when the broker has not answered")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    trust.Add(command);
  }

  absl::StatusOr<mesh::client::SessionOptions> Options(const mesh::crypto::KeyPair& pair) const {
    mesh::client::SessionOptions options;
    auto checks = trust.Trust();
    if (!checks.ok()) return checks.status();
    options.trust = *std::move(checks);
    std::stringstream list(broker);
    for (std::string address; std::getline(list, address, ',');) {
      if (!address.empty()) options.brokers.push_back(address);
    }
    options.key = &pair;
    options.seal = seal;
    options.agent = "mesh-cli/0.1";
    options.connect_timeout = std::chrono::milliseconds(timeout_ms);
    options.backoff_max = std::chrono::milliseconds(1000);
    return options;
  }
};

int Send(const SessionFlags& flags, const std::string& to_text, const std::string& text,
         const std::string& file, uint32_t ttl_s) {
  auto to = mesh::crypto::PeerId::Parse(to_text);
  if (!to.ok()) return Fail(absl::StrCat("--to: ", to.status().message()));
  std::string payload = text;
  if (!file.empty()) {
    std::ifstream in(file, std::ios::binary);
    if (!in) return Fail(absl::StrCat("cannot read ", file));
    payload.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto key = LoadKey(flags.key);
  if (!key.ok()) return Fail(key.status());

  auto options = flags.Options(*key);
  if (!options.ok()) return Fail(options.status());
  asio::io_context io;
  auto session = mesh::client::Session::Create(io.get_executor(), *options);
  absl::Status last_error = absl::DeadlineExceededError("no answer");
  session->OnState([&](bool connected, const absl::Status& why) {
    if (!connected && !why.ok()) last_error = why;
  });
  std::optional<mesh::client::SendResult> result;
  if (auto status = session->Start(); !status.ok()) return Fail(status);
  session->Send(
      *to, std::move(payload),
      [&](const mesh::client::SendResult& r) {
        result = r;
        session->Close();
      },
      ttl_s);
  asio::steady_timer deadline(io, std::chrono::milliseconds(flags.timeout_ms));
  deadline.async_wait([&](const boost::system::error_code& ec) {
    if (!ec) session->Close();
  });
  while (!result && io.run_one() > 0) {
  }
  session->Close();
  deadline.cancel();
  io.run_for(std::chrono::milliseconds(200));  // let the link close cleanly
  if (!result || result->status == mesh::v1::SendAck::STATUS_UNSPECIFIED) {
    return Fail(absl::StrCat("no SendAck from ", flags.broker, " within ", flags.timeout_ms,
                             " ms: ", last_error.message()));
  }
  const std::string status = mesh::v1::SendAck::Status_Name(result->status);
  if (!result->ok()) {
    return Fail(
        absl::StrCat("rejected: ", status,
                     result->detail.empty() ? "" : absl::StrCat(" (", result->detail, ")")));
  }
  std::printf("%s %s\n", status.c_str(), Hex(result->id).c_str());
  return 0;
}

int Listen(const SessionFlags& flags, int64_t count, const std::string& dedup_file) {
  auto key = LoadKey(flags.key);
  if (!key.ok()) return Fail(key.status());
  auto options = flags.Options(*key);
  if (!options.ok()) return Fail(options.status());
  options->dedup_file = dedup_file;
  // The library hands on (and acknowledges) no more than `count`; the rest stay queued.
  if (count > 0) options->max_messages = static_cast<uint64_t>(count);
  asio::io_context io;
  auto session = mesh::client::Session::Create(io.get_executor(), *options);
  int64_t received = 0;
  asio::signal_set signals(io, SIGINT, SIGTERM);
  session->OnMessage([&](const mesh::client::Message& message) {
    std::printf("%s\n", MessageJson(message).c_str());
    std::fflush(stdout);
    if (count > 0 && ++received >= count) {
      session->Close();
      signals.cancel();
    }
  });
  session->OnState([&](bool connected, const absl::Status& why) {
    if (connected) {
      std::fprintf(stderr, "mesh-cli: listening as %s on %s\n", key->public_key.ToString().c_str(),
                   flags.broker.c_str());
    } else if (absl::IsAlreadyExists(why)) {
      std::fprintf(stderr, "mesh-cli: %s; reconnecting\n", std::string(why.message()).c_str());
    } else {
      std::fprintf(stderr, "mesh-cli: link to %s down (%s); reconnecting\n", flags.broker.c_str(),
                   std::string(why.message()).c_str());
    }
  });
  if (auto status = session->Start(); !status.ok()) return Fail(status);
  signals.async_wait([&](const boost::system::error_code& ec, int) {
    if (!ec) session->Close();
  });
  // Runs until Close() has ended the link and the reconnect loop (interrupt, or --count).
  io.run();
  return 0;
}

// `node` is a node ID, or a key file to read it from (the broker's <data-dir>/node.key).
int Certify(const std::string& authority_file, const std::string& node, int days,
            const std::string& out) {
  auto authority = mesh::crypto::LoadAuthorityKeyFile(authority_file);
  if (!authority.ok()) return Fail(authority.status());
  auto node_id = mesh::crypto::PeerId::Parse(node);
  if (!node_id.ok()) {
    auto key = mesh::crypto::LoadKeyFile(node);
    if (!key.ok()) {
      return Fail(absl::StrCat("--node: neither a node ID (", node_id.status().message(),
                               ") nor a key file (", key.status().message(), ")"));
    }
    node_id = key->public_key;
  }
  const int64_t expires = std::chrono::duration_cast<std::chrono::seconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count() +
                          int64_t{days} * 86400;
  auto cert = mesh::crypto::IssueNodeCertificate(*authority, *node_id, expires);
  if (auto status = mesh::crypto::WriteNodeCertificateFile(out, cert); !status.ok())
    return Fail(status);
  std::printf("%s: node %s, %d days, authority %s\n", out.c_str(), node_id->ToString().c_str(),
              days, authority->public_key.ToString().c_str());
  return 0;
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
  TrustFlags ping_trust;
  ping_trust.Add(ping);

  std::string authority_out = "authority.key";
  auto* authority_keygen = app.add_subcommand(
      "authority-keygen",
      "Create the mesh authority's Ed25519 key (mode 0600) and print its public key");
  authority_keygen->add_option("--out,-o", authority_out, "Key file to create (never overwritten)")
      ->capture_default_str();

  std::string certify_authority = "authority.key", certify_node, certify_out = "node.cert";
  int certify_days = 365;
  auto* certify = app.add_subcommand(
      "certify", "Sign a node certificate: the authority vouches for a broker's node ID");
  certify->add_option("--authority-key", certify_authority, "The authority's key file")
      ->capture_default_str();
  certify
      ->add_option("--node", certify_node,
                   "The broker's node ID, or its key file (<data-dir>/node.key)")
      ->required();
  certify->add_option("--days", certify_days, "Days until it expires")
      ->capture_default_str()
      ->check(CLI::Range(1, 3650));
  certify->add_option("--out,-o", certify_out, "Certificate file to create (never overwritten)")
      ->capture_default_str();

  SessionFlags send_flags;
  std::string send_to, send_text, send_file;
  uint32_t send_ttl = 0;
  auto* send = app.add_subcommand("send", "Send one message and wait for the broker's SendAck");
  send_flags.Add(send, default_key);
  send->add_option("--to,-t", send_to, "Recipient peer ID")->required();
  send->add_option("--ttl", send_ttl,
                   "Seconds the broker keeps it for an offline recipient "
                   "(0: the broker's default)");
  auto* text_option = send->add_option("text", send_text, "Message text");
  send->add_option("--file,-f", send_file, "Send this file's bytes")->excludes(text_option);

  SessionFlags listen_flags;
  int64_t listen_count = 0;
  std::string listen_dedup;
  auto* listen = app.add_subcommand(
      "listen", "Receive messages: one JSON line each on stdout, until interrupted");
  listen_flags.Add(listen, default_key);
  listen->add_option("--count,-n", listen_count, "Exit after this many messages (0: never)")
      ->check(CLI::NonNegativeNumber);
  listen->add_option("--dedup-file", listen_dedup,
                     "Remember received message ids here, so a restart does not show one twice");

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
  if (authority_keygen->parsed()) {
    auto key = mesh::crypto::AuthorityKeyPair::Generate();
    if (auto status = mesh::crypto::WriteAuthorityKeyFile(authority_out, key); !status.ok())
      return Fail(status);
    std::cout << key.public_key.ToString() << "\n";
    return 0;
  }
  if (certify->parsed()) return Certify(certify_authority, certify_node, certify_days, certify_out);
  if (send->parsed()) {
    if (send_text.empty() && send_file.empty()) return Fail("send: give TEXT or --file");
    return Send(send_flags, send_to, send_text, send_file, send_ttl);
  }
  if (listen->parsed()) return Listen(listen_flags, listen_count, listen_dedup);
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
  auto trust = ping_trust.Trust();
  if (!trust.ok()) return Fail(trust.status());
  options.trust = *std::move(trust);
  if (ping_suite == "aesgcm") options.suite = mesh::crypto::CipherSuite::kAesGcm;
  if (ping_suite == "chachapoly") options.suite = mesh::crypto::CipherSuite::kChaChaPoly;
  auto result = mesh::client::Ping(options, ping_count, std::chrono::milliseconds(ping_timeout_ms));
  if (!result.ok()) return Fail(result.status());
  std::printf("broker %s node %s suite %s %s\n", result->broker_id.ToString().c_str(),
              result->node_name.c_str(), mesh::crypto::CipherName(result->suite),
              options.trust.verifies() ? "verified" : "unverified");
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
