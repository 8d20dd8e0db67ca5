// CipherState behaviour the vectors do not reach: nonce exhaustion, tampering, in-place use.
#include <gtest/gtest.h>

#include "crypto/crypto.h"

namespace mesh::crypto {
namespace {

class CipherStateTest : public ::testing::TestWithParam<CipherSuite> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(Init().ok());
    if (!SuiteAvailable(GetParam())) GTEST_SKIP() << "AES-GCM not available on this CPU";
    Bytes key(kKeySize, 7);
    sender_ = CipherState(GetParam());
    receiver_ = CipherState(GetParam());
    sender_.InitializeKey(key);
    receiver_.InitializeKey(key);
  }
  CipherState sender_, receiver_;
};

TEST_P(CipherStateTest, RoundTripsInPlace) {
  Bytes buffer = {'h', 'e', 'l', 'l', 'o'};
  buffer.resize(5 + kTagSize);
  ASSERT_TRUE(sender_.EncryptWithAd({}, {buffer.data(), 5}, buffer.data()).ok());
  ASSERT_TRUE(receiver_.DecryptWithAd({}, buffer, buffer.data()).ok());
  EXPECT_EQ(std::string(buffer.begin(), buffer.begin() + 5), "hello");
  EXPECT_EQ(sender_.nonce(), 1u);
  EXPECT_EQ(receiver_.nonce(), 1u);
}

TEST_P(CipherStateTest, RejectsFlippedByteAndKeepsNonce) {
  Bytes plain(100, 1), sealed(100 + kTagSize), out(100);
  ASSERT_TRUE(sender_.EncryptWithAd({}, plain, sealed.data()).ok());
  for (size_t i = 0; i < sealed.size(); i += 13) {
    Bytes tampered = sealed;
    tampered[i] ^= 0x01;
    EXPECT_EQ(receiver_.DecryptWithAd({}, tampered, out.data()).code(),
              absl::StatusCode::kUnauthenticated);
  }
  EXPECT_EQ(receiver_.nonce(), 0u);
  EXPECT_TRUE(receiver_.DecryptWithAd({}, sealed, out.data()).ok());
}

TEST_P(CipherStateTest, BindsAssociatedData) {
  Bytes plain(10, 1), sealed(10 + kTagSize), out(10);
  Bytes ad = {1, 2, 3};
  ASSERT_TRUE(sender_.EncryptWithAd(ad, plain, sealed.data()).ok());
  Bytes other_ad = {1, 2, 4};
  EXPECT_FALSE(receiver_.DecryptWithAd(other_ad, sealed, out.data()).ok());
}

TEST_P(CipherStateTest, RefusesToEncryptOnceNonceWouldWrap) {
  Bytes plain(4, 0), sealed(4 + kTagSize);
  sender_.SetNonce(~uint64_t{0} - 1);
  EXPECT_TRUE(sender_.EncryptWithAd({}, plain, sealed.data()).ok());
  EXPECT_EQ(sender_.EncryptWithAd({}, plain, sealed.data()).code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_P(CipherStateTest, RejectsReplayedMessage) {
  Bytes plain(8, 3), first(8 + kTagSize), out(8);
  ASSERT_TRUE(sender_.EncryptWithAd({}, plain, first.data()).ok());
  ASSERT_TRUE(receiver_.DecryptWithAd({}, first, out.data()).ok());
  EXPECT_FALSE(receiver_.DecryptWithAd({}, first, out.data()).ok());
}

INSTANTIATE_TEST_SUITE_P(Suites, CipherStateTest,
                         ::testing::Values(CipherSuite::kAesGcm, CipherSuite::kChaChaPoly),
                         [](const auto& info) { return std::string(CipherName(info.param)); });

}  // namespace
}  // namespace mesh::crypto

namespace mesh::crypto {
namespace {

// Found by the handshake fuzzer: Noise's first messages run with no key, and an empty payload
// must pass through without touching a null buffer.
TEST(KeylessCipherState, PassesPlaintextThroughIncludingEmpty) {
  CipherState cipher;
  EXPECT_TRUE(cipher.EncryptWithAd({}, {}, nullptr).ok());
  EXPECT_TRUE(cipher.DecryptWithAd({}, {}, nullptr).ok());
  Bytes data = {1, 2, 3}, out(3);
  ASSERT_TRUE(cipher.EncryptWithAd({}, data, out.data()).ok());
  EXPECT_EQ(out, data);
  EXPECT_EQ(cipher.nonce(), 0u) << "a keyless cipher does not use nonces";
}

}  // namespace
}  // namespace mesh::crypto
