// The cluster secret file (DESIGN §5, "Secrets and trust").
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "base/files.h"
#include "broker/cluster/cluster.h"

namespace mesh::broker {
namespace {

absl::StatusOr<crypto::Secret<crypto::kKeySize>> ParseSecretLine(const std::string& path,
                                                                 const std::string& line) {
  const std::string hex(absl::StripAsciiWhitespace(line));
  if (hex.size() != 2 * crypto::kKeySize || !absl::c_all_of(hex, absl::ascii_isxdigit)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cluster secret file ", path,
                     ": each line must be 64 hex characters (32 bytes); make one with: "
                     "openssl rand -hex 32"));
  }
  std::string bytes = absl::HexStringToBytes(hex);
  crypto::Secret<crypto::kKeySize> secret(
      {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
  crypto::Wipe(bytes);
  return secret;
}

}  // namespace

absl::StatusOr<ClusterSecrets> LoadClusterSecret(const std::string& path) {
  auto text = base::ReadPrivateFile(path, "cluster secret file");
  if (!text.ok()) return text.status();
  std::istringstream in(*text);
  std::string first, second;
  std::getline(in, first);
  std::getline(in, second);
  crypto::Wipe(*text);
  auto current = ParseSecretLine(path, first);
  if (!current.ok()) return current.status();
  ClusterSecrets secrets{*current, std::nullopt};
  if (!absl::StripAsciiWhitespace(second).empty()) {
    auto next = ParseSecretLine(path, second);
    if (!next.ok()) return next.status();
    secrets.next = *next;
  }
  return secrets;
}

}  // namespace mesh::broker
