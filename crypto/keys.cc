// X25519 static keys, peer IDs and key files.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/files.h"
#include "crypto/crypto.h"
#include "crypto/text.h"

namespace mesh::crypto {
namespace {

using text::FromBase64;
using text::ToBase64;

constexpr int kBase64Variant = sodium_base64_VARIANT_URLSAFE_NO_PADDING;
constexpr size_t kIdTextSize = 43;  // ceil(32 * 4 / 3) without padding

// Canonical encodings of the X25519 points of small order (the others are non-canonical
// aliases, refused by the range check). RFC 7748 §7; the same list libsodium blacklists.
constexpr uint8_t kLowOrderPoints[][kKeySize] = {
    {0},
    {1},
    {0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3,
     0xfa, 0xf1, 0x9f, 0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32,
     0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00},
    {0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1,
     0x55, 0x9c, 0x83, 0xef, 0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c,
     0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57},
    {0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
};

// Little-endian comparison with p = 2^255 - 19: true when key < p.
bool BelowFieldPrime(ByteSpan key) {
  if (key[31] != 0x7f) return key[31] < 0x7f;
  for (int i = 30; i >= 1; --i) {
    if (key[i] != 0xff) return true;
  }
  return key[0] < 0xed;
}

}  // namespace

absl::Status Init() {
  if (sodium_init() < 0) return absl::InternalError("libsodium failed to initialise");
  return absl::OkStatus();
}

bool IsCanonicalPublicKey(ByteSpan key) {
  if (key.size() != kKeySize || (key[31] & 0x80) != 0 || !BelowFieldPrime(key)) return false;
  // Public keys are public: a plain comparison, not a constant-time one.
  for (const auto& point : kLowOrderPoints) {
    if (std::memcmp(point, key.data(), kKeySize) == 0) return false;
  }
  return true;
}

absl::StatusOr<PeerId> PeerId::FromBytes(ByteSpan raw) {
  if (raw.size() != kKeySize) {
    return absl::InvalidArgumentError(absl::StrCat("a peer ID is 32 bytes, got ", raw.size()));
  }
  PeerId id;
  std::copy(raw.begin(), raw.end(), id.bytes.begin());
  return id;
}

absl::StatusOr<PeerId> PeerId::Parse(std::string_view text) {
  if (text.size() != kIdTextSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("a peer ID is 43 characters of base64url, got ", text.size(), " characters"));
  }
  PeerId id;
  if (auto status = FromBase64(text, id.bytes); !status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad peer ID '", std::string(text), "': ", status.message()));
  }
  if (!IsCanonicalPublicKey(id.bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad peer ID '", std::string(text), "': not a canonical X25519 public key"));
  }
  return id;
}

std::string PeerId::ToString() const { return ToBase64(bytes); }

std::string IdText(std::string_view raw) {
  auto id = PeerId::FromBytes({reinterpret_cast<const uint8_t*>(raw.data()), raw.size()});
  return id.ok() ? id->ToString() : std::string();
}

KeyPair KeyPair::Generate() {
  KeyPair pair;
  randombytes_buf(pair.private_key.data(), kKeySize);
  crypto_scalarmult_curve25519_base(pair.public_key.bytes.data(), pair.private_key.data());
  return pair;
}

KeyPair KeyPair::FromPrivate(ByteSpan private_key) {
  KeyPair pair;
  pair.private_key.Assign(private_key);
  crypto_scalarmult_curve25519_base(pair.public_key.bytes.data(), pair.private_key.data());
  return pair;
}

absl::Status WriteKeyFile(const std::string& path, const KeyPair& key) {
  return text::WriteFile(
      path, 0600, absl::StrCat("mesh X25519 static key; peer ID ", key.public_key.ToString()),
      key.private_key.span());
}

absl::StatusOr<KeyPair> LoadKeyFile(const std::string& path) {
  Secret<kKeySize> raw;
  if (auto status = text::ReadFile(path, /*private_file=*/true, {raw.data(), kKeySize});
      !status.ok()) {
    return status;
  }
  return KeyPair::FromPrivate(raw.span());
}

std::string RandomBytes(size_t n) {
  std::string bytes(n, '\0');
  randombytes_buf(bytes.data(), bytes.size());
  return bytes;
}

std::string Base64Url(std::string_view bytes) {
  return text::ToBase64({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && sodium_memcmp(a.data(), b.data(), a.size()) == 0;
}

void Wipe(std::string& secret) { sodium_memzero(secret.data(), secret.size()); }

namespace text {

std::string ToBase64(ByteSpan raw) {
  std::string out(sodium_base64_encoded_len(raw.size(), kBase64Variant), '\0');
  sodium_bin2base64(out.data(), out.size(), raw.data(), raw.size(), kBase64Variant);
  out.resize(std::strlen(out.c_str()));
  return out;
}

absl::Status FromBase64(std::string_view text, std::span<uint8_t> out) {
  size_t len = 0;
  const char* end = nullptr;
  if (sodium_base642bin(out.data(), out.size(), text.data(), text.size(), nullptr, &len, &end,
                        kBase64Variant) != 0 ||
      len != out.size() || end != text.data() + text.size()) {
    return absl::InvalidArgumentError("not unpadded base64url of the right length");
  }
  return absl::OkStatus();
}

absl::Status WriteFile(const std::string& path, int mode, const std::string& comment,
                       ByteSpan raw) {
  std::string content = absl::StrCat("# ", comment, "\n", ToBase64(raw), "\n");
  absl::Status status = base::WriteFileAtomically(path, content, mode, base::Replace::kNo);
  sodium_memzero(content.data(), content.size());
  return status;
}

absl::Status ReadFile(const std::string& path, bool private_file, std::span<uint8_t> out) {
  if (private_file) {
    if (auto status = base::CheckPrivateFile(path, "key file"); !status.ok()) return status;
  } else if (struct stat st{}; ::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat(path, ": ", std::strerror(errno)));
  }
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    auto status = FromBase64(line, out);
    sodium_memzero(line.data(), line.size());
    if (!status.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", status.message()));
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(path, " holds nothing"));
}

}  // namespace text
}  // namespace mesh::crypto
