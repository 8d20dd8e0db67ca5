// The PROXY protocol v2 parser against headers written byte by byte from the spec's layout.
#include "peer/proxy_protocol.h"

#include <gtest/gtest.h>

#include <vector>

namespace mesh::peer {
namespace {

using Bytes = std::vector<uint8_t>;
using boost::asio::ip::make_address;

// Signature, version/command, family/transport, length, then `rest` (address block and TLVs).
Bytes Header(uint8_t version_command, uint8_t family_transport, const Bytes& rest) {
  Bytes h(kProxySignature.begin(), kProxySignature.end());
  h.push_back(version_command);
  h.push_back(family_transport);
  h.push_back(static_cast<uint8_t>(rest.size() >> 8));
  h.push_back(static_cast<uint8_t>(rest.size()));
  h.insert(h.end(), rest.begin(), rest.end());
  return h;
}

const Bytes kInetBlock = {203,  0,    113, 7,  // source
                          10,   0,    1,   5,  // destination
                          0xC3, 0x50,          // source port 50000
                          0x1E, 0x14};         // destination port 7700

TEST(ProxyProtocolTest, ParsesProxyOverTcp4) {
  Bytes h = Header(0x21, 0x11, kInetBlock);
  auto header = ParseProxyHeader(h);
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->size, 16u + 12u);
  ASSERT_TRUE(header->source.has_value());
  EXPECT_EQ(header->source->address(), make_address("203.0.113.7"));
  EXPECT_EQ(header->source->port(), 50000);
  EXPECT_EQ(header->destination->address(), make_address("10.0.1.5"));
  EXPECT_EQ(header->destination->port(), 7700);
}

TEST(ProxyProtocolTest, ParsesProxyOverTcp6AndSkipsTlvs) {
  Bytes block(36, 0);
  const auto source = make_address("2001:db8:1:2::99").to_v6().to_bytes();
  const auto destination = make_address("fd00::5").to_v6().to_bytes();
  std::copy(source.begin(), source.end(), block.begin());
  std::copy(destination.begin(), destination.end(), block.begin() + 16);
  block[32] = 0x04, block[33] = 0xD2;  // 1234
  block[34] = 0x1E, block[35] = 0x14;  // 7700
  // An AWS VPC endpoint TLV (type 0xEA) and a NOOP one: neither is read.
  const Bytes tlvs = {0xEA, 0x00, 0x05, 0x01, 'v', 'p', 'c', 'e', 0x04, 0x00, 0x01, 0x00};
  block.insert(block.end(), tlvs.begin(), tlvs.end());
  Bytes h = Header(0x21, 0x21, block);
  const size_t header_size = h.size();
  h.insert(h.end(), {'M', 'E', 'S', 'H'});  // the stream goes on after the header
  auto header = ParseProxyHeader(h);
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->size, header_size);
  ASSERT_TRUE(header->source.has_value());
  EXPECT_EQ(header->source->address(), make_address("2001:db8:1:2::99"));
  EXPECT_EQ(header->source->port(), 1234);
  EXPECT_EQ(header->destination->address(), make_address("fd00::5"));
}

TEST(ProxyProtocolTest, LocalKeepsTheSocketsAddress) {
  // LOCAL ignores whatever address block follows; UNSPEC likewise keeps the socket's address.
  for (const Bytes& h :
       {Header(0x20, 0x00, {}), Header(0x20, 0x11, kInetBlock), Header(0x21, 0x00, {})}) {
    auto header = ParseProxyHeader(h);
    ASSERT_TRUE(header.ok()) << header.status();
    EXPECT_EQ(header->size, h.size());
    EXPECT_FALSE(header->source.has_value());
  }
}

TEST(ProxyProtocolTest, RefusesTruncatedHeaders) {
  const Bytes h = Header(0x21, 0x11, kInetBlock);
  for (size_t n : {size_t{0}, size_t{11}, size_t{15}, size_t{16}, h.size() - 1}) {
    auto header = ParseProxyHeader({h.data(), n});
    EXPECT_EQ(header.status().code(), absl::StatusCode::kOutOfRange) << n;
  }
  EXPECT_EQ(ProxyHeaderSize({h.data(), 15}).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(*ProxyHeaderSize({h.data(), 16}), h.size());
}

TEST(ProxyProtocolTest, RefusesABadSignature) {
  Bytes h = Header(0x21, 0x11, kInetBlock);
  h[6] ^= 0x01;
  EXPECT_EQ(ParseProxyHeader(h).status().code(), absl::StatusCode::kInvalidArgument);
  // A mesh preamble where the header should be.
  const Bytes preamble = {'M', 'E', 'S', 'H', 1, 1, 0, 0, 0, 32, 1, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_EQ(ParseProxyHeader(preamble).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ProxyProtocolTest, RefusesOtherVersionsAndCommands) {
  auto v1 = ParseProxyHeader(Header(0x11, 0x11, kInetBlock));
  EXPECT_EQ(v1.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(v1.status().message().find("version 1"), std::string::npos) << v1.status();
  EXPECT_EQ(ParseProxyHeader(Header(0x22, 0x11, kInetBlock)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ProxyProtocolTest, RefusesFamiliesThatAreNotTcp) {
  EXPECT_EQ(ParseProxyHeader(Header(0x21, 0x31, Bytes(216, 0))).status().code(),
            absl::StatusCode::kInvalidArgument);  // AF_UNIX
  EXPECT_EQ(ParseProxyHeader(Header(0x21, 0x12, kInetBlock)).status().code(),
            absl::StatusCode::kInvalidArgument);  // UDP
  // An address block too short for its family.
  EXPECT_EQ(ParseProxyHeader(Header(0x21, 0x21, kInetBlock)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ProxyProtocolTest, RefusesHeadersOverTheCap) {
  Bytes block = kInetBlock;
  block.resize(kProxyMaxSize - kProxyFixedSize, 0);  // TLV room, never read
  EXPECT_TRUE(ParseProxyHeader(Header(0x21, 0x11, block)).ok());
  block.push_back(0);
  const Bytes h = Header(0x21, 0x11, block);
  EXPECT_EQ(ParseProxyHeader(h).status().code(), absl::StatusCode::kResourceExhausted);
  // Refused from the fixed part alone, before anything is buffered.
  EXPECT_EQ(ProxyHeaderSize({h.data(), kProxyFixedSize}).status().code(),
            absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace mesh::peer
