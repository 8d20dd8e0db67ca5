// Files that must survive a crash whole or not at all, and files that hold secrets. One place
// for the durable write (temp file, fsync, rename or link, directory fsync) and for the
// permission policy every secret file is held to.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace mesh::base {

enum class Replace : bool { kNo, kYes };

// Writes `contents` to `path` with `mode` (umask aside, the temp file is created with it, so
// the bytes are never readable with wider permissions): a crash leaves the old file or the new
// one, never a truncated one. kNo refuses an existing `path` (key files are never overwritten).
absl::Status WriteFileAtomically(const std::string& path, std::string_view contents, int mode,
                                 Replace replace);

// Removes `path` (missing is fine) and fsyncs its directory, so the removal survives power loss.
absl::Status RemoveFileDurably(const std::string& path);

// fsyncs a directory: what was created, renamed or removed in it is then on disk.
absl::Status SyncDirectory(const std::string& dir);

// The policy for files holding secrets (keys, the admin token, the cluster secret): no other
// user may read or write them and the group may not write them (group-readable is fine:
// Kubernetes mounts Secrets 0440 with an fsGroup). `what` names the file in the error.
absl::Status CheckPrivateFile(const std::string& path, const std::string& what);

// Reads a whole secret file after CheckPrivateFile.
absl::StatusOr<std::string> ReadPrivateFile(const std::string& path, const std::string& what);

}  // namespace mesh::base
