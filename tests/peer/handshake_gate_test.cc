// The handshake gate's caps, and the source each address is capped as.
#include "peer/handshake_gate.h"

#include <gtest/gtest.h>

namespace mesh::peer {
namespace {

using boost::asio::ip::make_address;

TEST(HandshakeGateTest, KeysAnIpv6AddressByItsSlash64) {
  EXPECT_EQ(HandshakeGate::KeyOf(make_address("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            make_address("2001:db8:1:2::"));
  EXPECT_EQ(HandshakeGate::KeyOf(make_address("2001:db8:1:2::1")),
            HandshakeGate::KeyOf(make_address("2001:db8:1:2:ffff:ffff:ffff:ffff")));
  EXPECT_NE(HandshakeGate::KeyOf(make_address("2001:db8:1:2::1")),
            HandshakeGate::KeyOf(make_address("2001:db8:1:3::1")));
  EXPECT_EQ(HandshakeGate::KeyOf(make_address("fe80::1%1")), make_address("fe80::"));
}

TEST(HandshakeGateTest, KeysAnIpv4MappedAddressAsIpv4) {
  EXPECT_EQ(HandshakeGate::KeyOf(make_address("::ffff:203.0.113.7")), make_address("203.0.113.7"));
  EXPECT_NE(HandshakeGate::KeyOf(make_address("::ffff:203.0.113.7")),
            HandshakeGate::KeyOf(make_address("::ffff:203.0.113.8")));
  EXPECT_EQ(HandshakeGate::KeyOf(make_address("203.0.113.7")), make_address("203.0.113.7"));
}

TEST(HandshakeGateTest, CapsOneSlash64AsOneSource) {
  HandshakeGate gate(/*total=*/100, /*per_address=*/2);
  EXPECT_TRUE(gate.TryEnter(make_address("2001:db8::1")));
  EXPECT_TRUE(gate.TryEnter(make_address("2001:db8::2")));
  EXPECT_FALSE(gate.TryEnter(make_address("2001:db8::3")));  // same /64
  EXPECT_TRUE(gate.TryEnter(make_address("2001:db8:0:1::1")));
  gate.Leave(make_address("2001:db8::1"));
  EXPECT_TRUE(gate.TryEnter(make_address("2001:db8::4")));
}

TEST(HandshakeGateTest, CapsAMappedAddressTogetherWithItsIpv4Form) {
  HandshakeGate gate(/*total=*/100, /*per_address=*/2);
  EXPECT_TRUE(gate.TryEnter(make_address("198.51.100.1")));
  EXPECT_TRUE(gate.TryEnter(make_address("::ffff:198.51.100.1")));
  EXPECT_FALSE(gate.TryEnter(make_address("198.51.100.1")));
  EXPECT_TRUE(gate.TryEnter(make_address("198.51.100.2")));
}

TEST(HandshakeGateTest, CapsTheTotal) {
  HandshakeGate gate(/*total=*/2, /*per_address=*/2);
  EXPECT_TRUE(gate.TryEnter(make_address("198.51.100.1")));
  EXPECT_TRUE(gate.TryEnter(make_address("198.51.100.2")));
  EXPECT_FALSE(gate.TryEnter(make_address("198.51.100.3")));
  gate.Leave(make_address("198.51.100.2"));
  EXPECT_TRUE(gate.TryEnter(make_address("198.51.100.3")));
}

TEST(HandshakeGateTest, AProxiedConnectionHoldsTheTotalUntilItsSourceIsKnown) {
  HandshakeGate gate(/*total=*/2, /*per_address=*/1);
  ASSERT_TRUE(gate.TryEnterUnattributed());
  ASSERT_TRUE(gate.TryEnterUnattributed());
  EXPECT_FALSE(gate.TryEnterUnattributed());
  EXPECT_FALSE(gate.TryEnter(make_address("198.51.100.1")));
  EXPECT_TRUE(gate.TryAttribute(make_address("198.51.100.1")));
  EXPECT_FALSE(gate.TryAttribute(make_address("198.51.100.1")));  // its source is at the cap
  gate.LeaveUnattributed();
  gate.Leave(make_address("198.51.100.1"));
  EXPECT_TRUE(gate.TryEnter(make_address("198.51.100.1")));
  EXPECT_TRUE(gate.TryEnterUnattributed());
  EXPECT_FALSE(gate.TryEnterUnattributed());
}

}  // namespace
}  // namespace mesh::peer
