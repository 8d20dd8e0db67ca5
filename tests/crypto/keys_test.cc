// Peer IDs, canonical-key checks and key files.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "base/files.h"
#include "crypto/crypto.h"

namespace mesh::crypto {
namespace {

class KeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(Init().ok());
    char tmpl[] = "/tmp/mesh-keys-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(KeysTest, PeerIdRoundTripsAsBase64Url) {
  KeyPair key = KeyPair::Generate();
  std::string text = key.public_key.ToString();
  EXPECT_EQ(text.size(), 43u);
  EXPECT_EQ(text.find_first_of("+/="), std::string::npos);
  auto parsed = PeerId::Parse(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, key.public_key);
}

TEST_F(KeysTest, RejectsMalformedPeerIds) {
  EXPECT_FALSE(PeerId::Parse("").ok());
  EXPECT_FALSE(PeerId::Parse("short").ok());
  EXPECT_FALSE(PeerId::Parse(std::string(43, '!')).ok());
  std::string padded = KeyPair::Generate().public_key.ToString() + "=";
  EXPECT_FALSE(PeerId::Parse(padded).ok());
}

TEST_F(KeysTest, RejectsNonCanonicalAndLowOrderKeys) {
  Bytes key(32, 0);
  EXPECT_FALSE(IsCanonicalPublicKey(key));  // zero: low order
  key[0] = 1;
  EXPECT_FALSE(IsCanonicalPublicKey(key));  // one: low order
  Bytes p(32, 0xff);
  p[0] = 0xed;
  p[31] = 0x7f;
  EXPECT_FALSE(IsCanonicalPublicKey(p));  // p itself: not below p
  p[0] = 0xec;
  EXPECT_FALSE(IsCanonicalPublicKey(p));  // p - 1: low order
  p[0] = 0xeb;
  EXPECT_TRUE(IsCanonicalPublicKey(p));  // p - 2: an ordinary point encoding
  const PeerId id = KeyPair::Generate().public_key;
  Bytes high(id.bytes.begin(), id.bytes.end());
  EXPECT_TRUE(IsCanonicalPublicKey(high));
  high[31] |= 0x80;
  EXPECT_FALSE(IsCanonicalPublicKey(high));  // top bit set
}

TEST_F(KeysTest, KeyFileRoundTripsWithOwnerOnlyMode) {
  std::string path = dir_ + "/node.key";
  KeyPair key = KeyPair::Generate();
  ASSERT_TRUE(WriteKeyFile(path, key).ok());
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto loaded = LoadKeyFile(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->public_key, key.public_key);
  EXPECT_FALSE(WriteKeyFile(path, KeyPair::Generate()).ok()) << "must never overwrite a key";
}

TEST_F(KeysTest, WritesFilesAtomicallyReplacingOnlyWhenAsked) {
  const std::string path = dir_ + "/file";
  auto read = [&] {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  ASSERT_TRUE(base::WriteFileAtomically(path, "first", 0600, base::Replace::kNo).ok());
  EXPECT_EQ(read(), "first");
  EXPECT_EQ(base::WriteFileAtomically(path, "second", 0600, base::Replace::kNo).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(read(), "first");
  // A replacement takes the new file's mode, whatever the old one had.
  ASSERT_EQ(chmod(path.c_str(), 0644), 0);
  ASSERT_TRUE(base::WriteFileAtomically(path, "third", 0600, base::Replace::kYes).ok());
  EXPECT_EQ(read(), "third");
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // No temporary file is left beside it.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_), {}), 1);
  EXPECT_FALSE(
      base::WriteFileAtomically(dir_ + "/missing-dir/file", "x", 0600, base::Replace::kYes).ok());
}

TEST_F(KeysTest, RefusesWorldReadableKeyFileButAcceptsGroupReadable) {
  std::string path = dir_ + "/node.key";
  ASSERT_TRUE(WriteKeyFile(path, KeyPair::Generate()).ok());
  ASSERT_EQ(chmod(path.c_str(), 0644), 0);
  auto loaded = LoadKeyFile(path);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(loaded.status().message().find("chmod 600"), std::string::npos);
  ASSERT_EQ(chmod(path.c_str(), 0440), 0);
  EXPECT_TRUE(LoadKeyFile(path).ok());
}

TEST_F(KeysTest, RejectsGarbageKeyFile) {
  std::string path = dir_ + "/bad.key";
  std::ofstream(path) << "# comment\nnot-base64!\n";
  chmod(path.c_str(), 0600);
  EXPECT_EQ(LoadKeyFile(path).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadKeyFile(dir_ + "/missing.key").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace mesh::crypto
