// The peer listener behind a load balancer that speaks PROXY protocol v2 (--proxy-protocol):
// the connection's source is the one its header carries, for the per-address handshake cap,
// the logs and the control plane (DESIGN §3, untrusted peers).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>

#include "absl/status/status.h"
#include "peer/handshake_gate.h"

namespace mesh::broker {

// For a connection accepted with an unattributed place in `gate` (TryEnterUnattributed): reads
// the PROXY v2 header within `handshake_timeout`, sets `remote` to the source it carries (kept
// for LOCAL), and moves the place to that source. On success the caller leaves the gate with
// Leave(remote) and has what is left of `handshake_timeout` for the handshake. On failure the
// place is given back and the status carries the link error reason to count and log:
// bad_preamble (no valid header), handshake_timeout, truncated, or overloaded (the source is at
// its cap; `remote` is then already the source).
boost::asio::awaitable<absl::Status> AdmitProxied(boost::asio::ip::tcp::socket& socket,
                                                  boost::asio::ip::tcp::endpoint& remote,
                                                  peer::HandshakeGate& gate,
                                                  std::chrono::milliseconds& handshake_timeout);

}  // namespace mesh::broker
