// Mesh authority keys and node certificates (Ed25519 via libsodium).
#include <cstring>
#include <ctime>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "crypto/crypto.h"
#include "crypto/text.h"

namespace mesh::crypto {
namespace {

constexpr uint8_t kMagic[4] = {'M', 'N', 'C', '1'};
constexpr size_t kSignedSize = kNodeCertificateSize - crypto_sign_BYTES;

// The parts of a certificate before its signature, in wire order.
Bytes SignedPart(const PeerId& node, int64_t expires_unix_s, const AuthorityKey& authority) {
  Bytes out(std::begin(kMagic), std::end(kMagic));
  out.insert(out.end(), node.bytes.begin(), node.bytes.end());
  for (int shift = 56; shift >= 0; shift -= 8) {
    out.push_back(static_cast<uint8_t>(static_cast<uint64_t>(expires_unix_s) >> shift));
  }
  out.insert(out.end(), authority.bytes.begin(), authority.bytes.end());
  return out;
}

// Ed25519 keeps a 64-byte secret key derived from the seed, and the public key with it.
Secret<crypto_sign_SECRETKEYBYTES> ExpandSeed(const Secret<crypto_sign_SEEDBYTES>& seed,
                                              AuthorityKey& public_key) {
  Secret<crypto_sign_SECRETKEYBYTES> secret;
  crypto_sign_seed_keypair(public_key.bytes.data(), secret.data(), seed.data());
  return secret;
}

std::string TimeText(int64_t unix_s) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(unix_s), absl::UTCTimeZone());
}

}  // namespace

absl::StatusOr<AuthorityKey> AuthorityKey::Parse(std::string_view text) {
  AuthorityKey key;
  if (auto status = text::FromBase64(text, key.bytes); !status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad authority key '", std::string(text), "': ", status.message()));
  }
  return key;
}

std::string AuthorityKey::ToString() const { return text::ToBase64(bytes); }

AuthorityKeyPair AuthorityKeyPair::Generate() {
  AuthorityKeyPair pair;
  randombytes_buf(pair.seed.data(), pair.seed.size());
  ExpandSeed(pair.seed, pair.public_key);
  return pair;
}

absl::Status WriteAuthorityKeyFile(const std::string& path, const AuthorityKeyPair& key) {
  return text::WriteFile(
      path, 0600,
      absl::StrCat("mesh authority Ed25519 key; public key ", key.public_key.ToString()),
      key.seed.span());
}

absl::StatusOr<AuthorityKeyPair> LoadAuthorityKeyFile(const std::string& path) {
  AuthorityKeyPair pair;
  if (auto status =
          text::ReadFile(path, /*private_file=*/true, {pair.seed.data(), pair.seed.size()});
      !status.ok()) {
    return status;
  }
  ExpandSeed(pair.seed, pair.public_key);
  return pair;
}

Bytes IssueNodeCertificate(const AuthorityKeyPair& authority, const PeerId& node,
                           int64_t expires_unix_s) {
  Bytes cert = SignedPart(node, expires_unix_s, authority.public_key);
  AuthorityKey derived;
  const auto secret = ExpandSeed(authority.seed, derived);
  uint8_t signature[crypto_sign_BYTES];
  crypto_sign_detached(signature, nullptr, cert.data(), cert.size(), secret.data());
  cert.insert(cert.end(), std::begin(signature), std::end(signature));
  return cert;
}

absl::StatusOr<NodeCertificate> ParseNodeCertificate(ByteSpan bytes) {
  if (bytes.size() != kNodeCertificateSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("a node certificate is ", kNodeCertificateSize, " bytes, got ", bytes.size()));
  }
  if (std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0) {
    return absl::InvalidArgumentError("not a node certificate (bad magic)");
  }
  NodeCertificate cert;
  size_t at = sizeof kMagic;
  std::memcpy(cert.node.bytes.data(), bytes.data() + at, kKeySize);
  at += kKeySize;
  uint64_t expires = 0;
  for (int i = 0; i < 8; ++i) expires = expires << 8 | bytes[at++];
  cert.expires_unix_s = static_cast<int64_t>(expires);
  std::memcpy(cert.authority.bytes.data(), bytes.data() + at, cert.authority.bytes.size());
  if (crypto_sign_verify_detached(bytes.data() + kSignedSize, bytes.data(), kSignedSize,
                                  cert.authority.bytes.data()) != 0) {
    return absl::InvalidArgumentError("node certificate signature does not verify");
  }
  return cert;
}

absl::Status VerifyNodeCertificate(ByteSpan bytes, const AuthorityKey& authority,
                                   const PeerId& node, int64_t now_unix_s) {
  if (bytes.empty()) return absl::UnauthenticatedError("the broker sent no node certificate");
  auto cert = ParseNodeCertificate(bytes);
  if (!cert.ok()) return absl::UnauthenticatedError(cert.status().message());
  if (cert->authority != authority) {
    return absl::UnauthenticatedError(absl::StrCat("node certificate is signed by authority ",
                                                   cert->authority.ToString(), ", not ",
                                                   authority.ToString()));
  }
  if (cert->node != node) {
    return absl::UnauthenticatedError(absl::StrCat(
        "node certificate names node ", cert->node.ToString(), ", not ", node.ToString()));
  }
  if (cert->expires_unix_s <= now_unix_s) {
    return absl::UnauthenticatedError(
        absl::StrCat("node certificate expired at ", TimeText(cert->expires_unix_s)));
  }
  return absl::OkStatus();
}

absl::Status WriteNodeCertificateFile(const std::string& path, ByteSpan certificate) {
  auto cert = ParseNodeCertificate(certificate);
  if (!cert.ok()) return cert.status();
  return text::WriteFile(
      path, 0644,
      absl::StrCat("mesh node certificate; node ", cert->node.ToString(), "; expires ",
                   TimeText(cert->expires_unix_s), "; authority ", cert->authority.ToString()),
      certificate);
}

absl::StatusOr<Bytes> LoadNodeCertificateFile(const std::string& path) {
  Bytes cert(kNodeCertificateSize);
  if (auto status = text::ReadFile(path, /*private_file=*/false, cert); !status.ok()) return status;
  if (auto parsed = ParseNodeCertificate(cert); !parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", parsed.status().message()));
  }
  return cert;
}

}  // namespace mesh::crypto
