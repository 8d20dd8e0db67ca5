// Runs every XX and XXpsk3 vector of the published Noise test vectors (cacophony and snow
// files, tests/data/noise-vectors) through HandshakeState and CipherState, as both initiator
// and responder: each ciphertext must match byte for byte and each payload must come back.
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>

#include "crypto/crypto.h"
#include "tests/crypto/noise_vector.pb.h"

namespace mesh::crypto {
namespace {

Bytes Hex(const std::string& hex) {
  Bytes out(hex.size() / 2);
  size_t len = 0;
  EXPECT_EQ(sodium_hex2bin(out.data(), out.size(), hex.data(), hex.size(), nullptr, &len, nullptr),
            0);
  out.resize(len);
  return out;
}

std::string ToHex(ByteSpan bytes) {
  std::string out(bytes.size() * 2 + 1, '\0');
  sodium_bin2hex(out.data(), out.size(), bytes.data(), bytes.size());
  out.pop_back();
  return out;
}

testing::NoiseVectorFile LoadVectors(const std::string& name) {
  std::ifstream in(std::string(MESH_TEST_DATA_DIR) + "/noise-vectors/" + name);
  std::stringstream text;
  text << in.rdbuf();
  testing::NoiseVectorFile file;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  auto status = google::protobuf::util::JsonStringToMessage(text.str(), &file, options);
  EXPECT_TRUE(status.ok()) << name << ": " << status.ToString();
  return file;
}

struct Side {
  KeyPair static_key;
  HandshakeState handshake;
};

HandshakeConfig ConfigFor(const testing::NoiseVector& v, bool initiator, Pattern pattern,
                          CipherSuite suite, const KeyPair* static_key) {
  HandshakeConfig config;
  config.pattern = pattern;
  config.suite = suite;
  config.initiator = initiator;
  config.prologue = Hex(initiator ? v.init_prologue() : v.resp_prologue());
  config.static_key = static_key;
  const auto& psks = initiator ? v.init_psks() : v.resp_psks();
  if (!psks.empty()) config.psk.emplace(Hex(psks[0]));
  config.ephemeral_for_testing.emplace(Hex(initiator ? v.init_ephemeral() : v.resp_ephemeral()));
  return config;
}

void RunVector(const testing::NoiseVector& v, Pattern pattern, CipherSuite suite) {
  SCOPED_TRACE(v.protocol_name());
  KeyPair init_static = KeyPair::FromPrivate(Hex(v.init_static()));
  KeyPair resp_static = KeyPair::FromPrivate(Hex(v.resp_static()));
  auto init = HandshakeState::Create(ConfigFor(v, true, pattern, suite, &init_static));
  auto resp = HandshakeState::Create(ConfigFor(v, false, pattern, suite, &resp_static));
  ASSERT_TRUE(init.ok()) << init.status();
  ASSERT_TRUE(resp.ok()) << resp.status();
  EXPECT_EQ(init->ProtocolName(), v.protocol_name());

  size_t i = 0;
  for (; i < static_cast<size_t>(v.messages_size()) && !init->IsComplete(); ++i) {
    SCOPED_TRACE("handshake message " + std::to_string(i));
    HandshakeState& writer = i % 2 == 0 ? *init : *resp;
    HandshakeState& reader = i % 2 == 0 ? *resp : *init;
    Bytes message, payload;
    ASSERT_TRUE(writer.WriteMessage(Hex(v.messages(i).payload()), message).ok());
    EXPECT_EQ(ToHex(message), v.messages(i).ciphertext());
    ASSERT_TRUE(reader.ReadMessage(message, payload).ok());
    EXPECT_EQ(ToHex(payload), v.messages(i).payload());
  }
  ASSERT_TRUE(init->IsComplete());
  ASSERT_TRUE(resp->IsComplete());
  if (!v.handshake_hash().empty()) {
    EXPECT_EQ(ToHex(init->GetHandshakeHash()), v.handshake_hash());
    EXPECT_EQ(ToHex(resp->GetHandshakeHash()), v.handshake_hash());
  }
  EXPECT_EQ(init->remote_static()->bytes, resp_static.public_key.bytes);
  EXPECT_EQ(resp->remote_static()->bytes, init_static.public_key.bytes);

  TransportCiphers init_ciphers = init->Split();
  TransportCiphers resp_ciphers = resp->Split();
  for (; i < static_cast<size_t>(v.messages_size()); ++i) {
    SCOPED_TRACE("transport message " + std::to_string(i));
    CipherState& send = i % 2 == 0 ? init_ciphers.send : resp_ciphers.send;
    CipherState& receive = i % 2 == 0 ? resp_ciphers.receive : init_ciphers.receive;
    Bytes payload = Hex(v.messages(i).payload());
    Bytes ciphertext(payload.size() + kTagSize);
    ASSERT_TRUE(send.EncryptWithAd({}, payload, ciphertext.data()).ok());
    EXPECT_EQ(ToHex(ciphertext), v.messages(i).ciphertext());
    Bytes plaintext(payload.size());
    ASSERT_TRUE(receive.DecryptWithAd({}, ciphertext, plaintext.data()).ok());
    EXPECT_EQ(plaintext, payload);
  }
}

// Runs the file's XX-family vectors; returns how many ran. Others are listed, not hidden.
int RunFile(const std::string& name) {
  const std::regex name_re(R"(Noise_(XX|XXpsk3)_25519_(AESGCM|ChaChaPoly)_SHA256)");
  int ran = 0;
  std::vector<std::string> skipped;
  const testing::NoiseVectorFile file = LoadVectors(name);
  for (const auto& v : file.vectors()) {
    std::smatch m;
    if (!std::regex_match(v.protocol_name(), m, name_re)) {
      skipped.push_back(v.protocol_name());
      continue;
    }
    Pattern pattern = m[1] == "XX" ? Pattern::kXX : Pattern::kXXpsk3;
    CipherSuite suite = m[2] == "AESGCM" ? CipherSuite::kAesGcm : CipherSuite::kChaChaPoly;
    if (!SuiteAvailable(suite)) {
      ADD_FAILURE() << v.protocol_name() << " cannot run: AES-GCM is not available on this CPU";
      continue;
    }
    RunVector(v, pattern, suite);
    ++ran;
  }
  std::cout << name << ": ran " << ran
            << " XX-family vectors; not applicable (other patterns): " << skipped.size() << "\n";
  return ran;
}

TEST(NoiseVectors, CacophonyEveryXXAndXXpsk3Case) {
  ASSERT_TRUE(Init().ok());
  // XX and XXpsk3, each for AESGCM and ChaChaPoly.
  EXPECT_EQ(RunFile("cacophony-25519-sha256.json"), 4);
}

TEST(NoiseVectors, SnowEveryXXCase) {
  ASSERT_TRUE(Init().ok());
  EXPECT_EQ(RunFile("snow-25519-sha256.json"), 2);
}

}  // namespace
}  // namespace mesh::crypto
