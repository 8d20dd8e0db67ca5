// Inside the crypto module: base64url text and the one-line key and certificate files.
#pragma once

#include <string>
#include <string_view>

#include "crypto/crypto.h"

namespace mesh::crypto::text {

std::string ToBase64(ByteSpan raw);
// Exactly `out.size()` bytes of unpadded base64url, nothing after them.
absl::Status FromBase64(std::string_view text, std::span<uint8_t> out);

// Creates `path` (never overwriting, atomically: WriteFileAtomically) with `mode`: a comment
// line, then `raw` as base64url.
absl::Status WriteFile(const std::string& path, int mode, const std::string& comment, ByteSpan raw);
// The first line of `path` that is not a comment, base64url-decoded into exactly `out`. With
// `private_file`, refuses a file other users may read or write (group-readable is fine).
absl::Status ReadFile(const std::string& path, bool private_file, std::span<uint8_t> out);

}  // namespace mesh::crypto::text
