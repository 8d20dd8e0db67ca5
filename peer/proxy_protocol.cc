// PROXY protocol v2 header: parsed from bytes (so tests and the fuzzer drive it directly) and
// read from a socket before a link's preamble.
#include "peer/proxy_protocol.h"

#include <algorithm>
#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <memory>

#include "absl/strings/str_cat.h"
#include "peer/record.h"

namespace mesh::peer {
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;

// Byte 13: version in the high nibble, command in the low one.
constexpr uint8_t kVersion2 = 0x2;
constexpr uint8_t kCommandLocal = 0x0;
constexpr uint8_t kCommandProxy = 0x1;
// Byte 14: address family in the high nibble, transport in the low one.
constexpr uint8_t kFamilyUnspec = 0x0;
constexpr uint8_t kFamilyInet = 0x1;
constexpr uint8_t kFamilyInet6 = 0x2;
constexpr uint8_t kTransportStream = 0x1;

uint16_t BigEndian16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }

}  // namespace

absl::StatusOr<size_t> ProxyHeaderSize(std::span<const uint8_t> bytes) {
  if (bytes.size() < kProxyFixedSize) {
    return absl::OutOfRangeError(absl::StrCat("PROXY v2 header truncated: ", bytes.size(), " of ",
                                              kProxyFixedSize, " bytes"));
  }
  if (!std::equal(kProxySignature.begin(), kProxySignature.end(), bytes.begin())) {
    return absl::InvalidArgumentError("no PROXY v2 signature");
  }
  const uint8_t version = bytes[12] >> 4;
  const uint8_t command = bytes[12] & 0x0F;
  if (version != kVersion2) {
    return absl::InvalidArgumentError(
        absl::StrCat("PROXY protocol version ", version, " is not 2"));
  }
  if (command != kCommandLocal && command != kCommandProxy) {
    return absl::InvalidArgumentError(absl::StrCat("unknown PROXY v2 command ", command));
  }
  const size_t size = kProxyFixedSize + BigEndian16(&bytes[14]);
  if (size > kProxyMaxSize) {
    return absl::ResourceExhaustedError(
        absl::StrCat("PROXY v2 header of ", size, " bytes exceeds ", kProxyMaxSize));
  }
  return size;
}

absl::StatusOr<ProxyHeader> ParseProxyHeader(std::span<const uint8_t> bytes) {
  auto size = ProxyHeaderSize(bytes);
  if (!size.ok()) return size.status();
  if (bytes.size() < *size) {
    return absl::OutOfRangeError(
        absl::StrCat("PROXY v2 header truncated: ", bytes.size(), " of ", *size, " bytes"));
  }
  ProxyHeader header;
  header.size = *size;
  if ((bytes[12] & 0x0F) == kCommandLocal) return header;  // the spec: ignore the address block

  const uint8_t family = bytes[13] >> 4;
  const uint8_t transport = bytes[13] & 0x0F;
  if (family == kFamilyUnspec) return header;
  if ((family != kFamilyInet && family != kFamilyInet6) || transport != kTransportStream) {
    return absl::InvalidArgumentError(absl::StrCat("PROXY v2 family ", family, " over transport ",
                                                   transport, " is not TCP over IPv4/IPv6"));
  }
  const uint8_t* block = bytes.data() + kProxyFixedSize;
  const size_t block_size = family == kFamilyInet ? kProxyInetBlock : kProxyInet6Block;
  if (*size - kProxyFixedSize < block_size) {
    return absl::InvalidArgumentError(absl::StrCat("PROXY v2 address block of ",
                                                   *size - kProxyFixedSize,
                                                   " bytes is shorter than ", block_size));
  }
  // Source then destination address, source then destination port, for either family.
  auto read_block = [&](auto family_tag) {
    using Address = decltype(family_tag);
    typename Address::bytes_type source, destination;
    std::copy_n(block, source.size(), source.begin());
    std::copy_n(block + source.size(), destination.size(), destination.begin());
    const uint8_t* ports = block + source.size() + destination.size();
    header.source = tcp::endpoint(Address(source), BigEndian16(ports));
    header.destination = tcp::endpoint(Address(destination), BigEndian16(ports + 2));
  };
  if (family == kFamilyInet) {
    read_block(asio::ip::address_v4());
  } else {
    read_block(asio::ip::address_v6());
  }
  return header;
}

asio::awaitable<absl::StatusOr<ProxyHeader>> ReadProxyHeader(tcp::socket& socket,
                                                             std::chrono::milliseconds timeout) {
  // The timer cancels the socket's reads once the deadline passes. `done` tells a handler that
  // runs after the header was read (its wait completed first) to leave the socket alone.
  auto done = std::make_shared<bool>(false);
  auto expired = std::make_shared<bool>(false);
  asio::steady_timer timer(socket.get_executor(), timeout);
  timer.async_wait([&socket, done, expired](const boost::system::error_code& ec) {
    if (ec || *done) return;
    *expired = true;
    boost::system::error_code ignored;
    socket.cancel(ignored);
  });
  std::array<uint8_t, kProxyMaxSize> buffer;
  auto failure = [&](const boost::system::error_code& ec) {
    if (*expired) {
      return LinkError(mesh::v1::HANDSHAKE_TIMEOUT,
                       absl::StrCat("no PROXY v2 header within ", timeout.count(), " ms"));
    }
    if (ec == asio::error::eof) {
      return LinkError(mesh::v1::TRUNCATED,
                       "the other side closed the connection during the "
                       "PROXY v2 header");
    }
    return absl::UnavailableError(absl::StrCat("the PROXY v2 header: ", ec.message()));
  };

  boost::system::error_code ec;
  // Only the fixed part first: reading more could swallow the preamble of a short header.
  co_await asio::async_read(socket, asio::buffer(buffer.data(), kProxyFixedSize),
                            asio::redirect_error(asio::use_awaitable, ec));
  absl::StatusOr<ProxyHeader> header = absl::UnknownError("unread");
  if (ec) {
    header = failure(ec);
  } else if (auto size = ProxyHeaderSize({buffer.data(), kProxyFixedSize}); !size.ok()) {
    header = LinkError(mesh::v1::BAD_PREAMBLE,
                       absl::StrCat("no valid PROXY v2 header: ", size.status().message()));
  } else {
    co_await asio::async_read(
        socket, asio::buffer(buffer.data() + kProxyFixedSize, *size - kProxyFixedSize),
        asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      header = failure(ec);
    } else if (header = ParseProxyHeader({buffer.data(), *size}); !header.ok()) {
      header = LinkError(mesh::v1::BAD_PREAMBLE,
                         absl::StrCat("no valid PROXY v2 header: ", header.status().message()));
    }
  }
  *done = true;
  timer.cancel();
  co_return header;
}

}  // namespace mesh::peer
