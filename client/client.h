// The client module's front door: dialling a broker and holding a link to it.
// Everything asynchronous runs on the executor passed in; the blocking helpers run their own.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "crypto/crypto.h"
#include "peer/peer.h"

namespace mesh::client {

// How a client knows the broker it reached is one of the mesh's (DESIGN §5). With neither
// field set the broker is unverified: the link is encrypted, but to whoever answered.
struct BrokerTrust {
  std::optional<crypto::AuthorityKey> authority;  // require a valid node certificate by it
  std::vector<crypto::PeerId> pinned;             // require one of these broker keys
  // wss:// only: the trust anchors (PEM) its TLS certificate must chain to; empty: the system's.
  // TLS is checked in addition to the above, never instead (Noise authenticates the broker).
  std::string tls_ca_file;
  bool verifies() const { return authority.has_value() || !pinned.empty(); }
};

// Checks a broker's proven static key and the certificate in its Hello against `trust`; every
// check given must pass. UNAUTHENTICATED says which one failed.
absl::Status CheckBroker(const BrokerTrust& trust, const crypto::PeerId& broker,
                         const mesh::v1::Hello& hello);

struct ConnectOptions {
  std::string address;                       // HOST:PORT
  const crypto::KeyPair* key = nullptr;      // borrowed; the client's static key (its peer ID)
  std::optional<crypto::CipherSuite> suite;  // default: AES-GCM where the CPU has it
  peer::LinkConfig link;
  std::string agent = "mesh-client/0.1";
  std::chrono::milliseconds connect_timeout{10'000};
  BrokerTrust trust;
};

// Resolves, dials and runs the handshake, checking the broker against `options.trust` after
// handshake message 2 (a broker that fails never receives message 3, which carries the client's
// key). A broker that refuses the suite is retried once with the best suite both speak.
peer::awaitable<absl::StatusOr<std::shared_ptr<peer::Link>>> Connect(const ConnectOptions& options,
                                                                     peer::LinkStats& stats);

struct PingResult {
  crypto::PeerId broker_id;
  std::string node_name;
  crypto::CipherSuite suite;
  std::chrono::microseconds handshake{0};  // connect + handshake
  std::vector<std::chrono::microseconds> round_trips;
};

// Blocking: connects, sends `count` Pings one after another and times each Pong.
absl::StatusOr<PingResult> Ping(const ConnectOptions& options, int count,
                                std::chrono::milliseconds pong_timeout);

}  // namespace mesh::client
