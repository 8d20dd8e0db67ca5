// Mesh authority keys and node certificates: issue, verify, refuse.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "crypto/crypto.h"

namespace mesh::crypto {
namespace {

constexpr int64_t kNow = 1'800'000'000;

class CertTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(Init().ok());
    char tmpl[] = "/tmp/mesh-cert-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string dir_;
  AuthorityKeyPair authority_ = AuthorityKeyPair::Generate();
  PeerId node_ = KeyPair::Generate().public_key;
};

TEST_F(CertTest, IssuedCertificateVerifiesForItsNodeUntilItExpires) {
  Bytes cert = IssueNodeCertificate(authority_, node_, kNow + 3600);
  ASSERT_EQ(cert.size(), kNodeCertificateSize);
  EXPECT_TRUE(VerifyNodeCertificate(cert, authority_.public_key, node_, kNow).ok());
  auto parsed = ParseNodeCertificate(cert);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->node, node_);
  EXPECT_EQ(parsed->expires_unix_s, kNow + 3600);
  EXPECT_EQ(parsed->authority, authority_.public_key);

  auto expired = VerifyNodeCertificate(cert, authority_.public_key, node_, kNow + 3600);
  EXPECT_EQ(expired.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(expired.message().find("expired"), std::string::npos) << expired;
}

TEST_F(CertTest, RefusesAnotherNodeAnotherAuthorityAndNoCertificate) {
  Bytes cert = IssueNodeCertificate(authority_, node_, kNow + 3600);
  auto other_node =
      VerifyNodeCertificate(cert, authority_.public_key, KeyPair::Generate().public_key, kNow);
  EXPECT_NE(other_node.message().find("names node"), std::string::npos) << other_node;
  auto other_authority =
      VerifyNodeCertificate(cert, AuthorityKeyPair::Generate().public_key, node_, kNow);
  EXPECT_NE(other_authority.message().find("signed by authority"), std::string::npos)
      << other_authority;
  auto none = VerifyNodeCertificate({}, authority_.public_key, node_, kNow);
  EXPECT_NE(none.message().find("no node certificate"), std::string::npos) << none;
}

TEST_F(CertTest, EveryFlippedBitOrWrongLengthIsRefused) {
  Bytes cert = IssueNodeCertificate(authority_, node_, kNow + 3600);
  for (size_t bit = 0; bit < cert.size() * 8; ++bit) {
    Bytes tampered = cert;
    tampered[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    EXPECT_FALSE(VerifyNodeCertificate(tampered, authority_.public_key, node_, kNow).ok())
        << "bit " << bit;
  }
  Bytes shorter(cert.begin(), cert.end() - 1);
  EXPECT_FALSE(ParseNodeCertificate(shorter).ok());
  Bytes longer = cert;
  longer.push_back(0);
  EXPECT_FALSE(ParseNodeCertificate(longer).ok());
}

TEST_F(CertTest, KeyAndCertificateFilesRoundTrip) {
  const std::string key_path = dir_ + "/authority.key";
  ASSERT_TRUE(WriteAuthorityKeyFile(key_path, authority_).ok());
  EXPECT_FALSE(WriteAuthorityKeyFile(key_path, AuthorityKeyPair::Generate()).ok());
  auto loaded = LoadAuthorityKeyFile(key_path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->public_key, authority_.public_key);

  const std::string cert_path = dir_ + "/node.cert";
  Bytes cert = IssueNodeCertificate(*loaded, node_, kNow + 60);
  ASSERT_TRUE(WriteNodeCertificateFile(cert_path, cert).ok());
  auto read = LoadNodeCertificateFile(cert_path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, cert);
  EXPECT_TRUE(VerifyNodeCertificate(*read, authority_.public_key, node_, kNow).ok());

  auto parsed_key = AuthorityKey::Parse(authority_.public_key.ToString());
  ASSERT_TRUE(parsed_key.ok());
  EXPECT_EQ(*parsed_key, authority_.public_key);
  EXPECT_FALSE(AuthorityKey::Parse("not-a-key").ok());

  std::ofstream(dir_ + "/garbage.cert") << "# x\n" << std::string(187, 'A') << "\n";
  EXPECT_FALSE(LoadNodeCertificateFile(dir_ + "/garbage.cert").ok());
}

}  // namespace
}  // namespace mesh::crypto
