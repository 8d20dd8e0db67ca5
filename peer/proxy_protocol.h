// PROXY protocol v2 (haproxy's proxy-protocol.txt §2.2): the binary header a load balancer puts
// before a connection's first byte to carry the client's address (DESIGN §3, untrusted peers).
#pragma once

#include <array>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "absl/status/statusor.h"

namespace mesh::peer {

inline constexpr std::array<uint8_t, 12> kProxySignature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                            0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
// Signature, version and command, family and transport, a 2-byte big-endian length.
inline constexpr size_t kProxyFixedSize = kProxySignature.size() + 1 + 1 + 2;
// The spec's suggested receive buffer: an address block of any family plus room for TLVs. A
// header over it is refused rather than buffered (the length field allows 64 KiB).
inline constexpr size_t kProxyMaxSize = 536;
// Address blocks: source and destination addresses, then source and destination ports.
inline constexpr size_t kProxyInetBlock = 4 + 4 + 2 + 2;
inline constexpr size_t kProxyInet6Block = 16 + 16 + 2 + 2;

struct ProxyHeader {
  size_t size = 0;  // bytes the header takes, TLVs included
  // The client, for PROXY over TCP/IPv4 or TCP/IPv6. Empty for LOCAL (the proxy's own
  // connection, e.g. a health check) and for PROXY with family UNSPEC: the spec lets a
  // receiver keep the socket's address then, and so do we.
  std::optional<boost::asio::ip::tcp::endpoint> source;
  std::optional<boost::asio::ip::tcp::endpoint> destination;
};

// The whole header's size from its first kProxyFixedSize bytes, or why they are not the start
// of a v2 header: InvalidArgument (signature, version, command), ResourceExhausted (over
// kProxyMaxSize), OutOfRange (fewer than kProxyFixedSize bytes).
absl::StatusOr<size_t> ProxyHeaderSize(std::span<const uint8_t> bytes);

// Parses the header at the start of `bytes`; bytes after header.size belong to the stream.
// Refuses (InvalidArgument) PROXY over AF_UNIX or over a transport other than STREAM: no TCP
// client of this port arrives that way, so a proxy sending it is misconfigured. TLVs are
// skipped unread.
absl::StatusOr<ProxyHeader> ParseProxyHeader(std::span<const uint8_t> bytes);

// Reads exactly one header from `socket` (nothing after it, so the link's preamble is still
// there to read), within `timeout`. Failures carry a link error reason (ErrorCodeOf):
// BAD_PREAMBLE for a malformed or missing header, HANDSHAKE_TIMEOUT, TRUNCATED.
boost::asio::awaitable<absl::StatusOr<ProxyHeader>> ReadProxyHeader(
    boost::asio::ip::tcp::socket& socket, std::chrono::milliseconds timeout);

}  // namespace mesh::peer
