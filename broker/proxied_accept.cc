// Reads the PROXY v2 header of a peer connection and attributes its handshake place.
#include "broker/proxied_accept.h"

#include "peer/peer.h"

namespace mesh::broker {

boost::asio::awaitable<absl::Status> AdmitProxied(boost::asio::ip::tcp::socket& socket,
                                                  boost::asio::ip::tcp::endpoint& remote,
                                                  peer::HandshakeGate& gate,
                                                  std::chrono::milliseconds& handshake_timeout) {
  const auto started = std::chrono::steady_clock::now();
  auto header = co_await peer::ReadProxyHeader(socket, handshake_timeout);
  if (!header.ok()) {
    gate.LeaveUnattributed();
    co_return header.status();
  }
  if (header->source) remote = *header->source;
  if (!gate.TryAttribute(remote.address())) {
    gate.LeaveUnattributed();
    co_return peer::LinkError(mesh::v1::OVERLOADED, "too many handshakes in progress");
  }
  // The header counts against the handshake deadline: both together end within it.
  handshake_timeout -= std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - started);
  handshake_timeout = std::max(handshake_timeout, std::chrono::milliseconds(1));
  co_return absl::OkStatus();
}

}  // namespace mesh::broker
