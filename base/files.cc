#include "base/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace mesh::base {
namespace {

absl::Status Errno(const std::string& what, const std::string& path) {
  return absl::UnavailableError(
      absl::StrCat("cannot ", what, " ", path, ": ", std::strerror(errno)));
}

std::string DirOf(const std::string& path) {
  const std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

bool WriteAll(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

}  // namespace

absl::Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("open directory", dir);
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  return ok ? absl::OkStatus() : Errno("fsync directory", dir);
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view contents, int mode,
                                 Replace replace) {
  // A unique temp name beside the target (same filesystem, so rename and link are atomic).
  std::string temp = path + ".tmp.XXXXXX";
  const int fd = ::mkstemp(temp.data());
  if (fd < 0) return Errno("create a temporary file for", path);
  absl::Status status = absl::OkStatus();
  if (::fchmod(fd, static_cast<mode_t>(mode)) != 0) {
    status = Errno("set the mode of", temp);
  } else if (!WriteAll(fd, contents)) {
    status = Errno("write", temp);
  } else if (::fsync(fd) != 0) {
    status = Errno("fsync", temp);
  }
  ::close(fd);
  if (status.ok()) {
    if (replace == Replace::kYes) {
      if (::rename(temp.c_str(), path.c_str()) != 0) status = Errno("rename into", path);
    } else if (::link(temp.c_str(), path.c_str()) != 0) {
      status =
          errno == EEXIST
              ? absl::AlreadyExistsError(absl::StrCat(path, " exists; it is never overwritten"))
              : Errno("create", path);
    }
  }
  ::unlink(temp.c_str());  // after rename it is gone already; after link it is a second name
  if (!status.ok()) return status;
  return SyncDirectory(DirOf(path));
}

absl::Status RemoveFileDurably(const std::string& path) {
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return Errno("remove", path);
  }
  return SyncDirectory(DirOf(path));
}

absl::Status CheckPrivateFile(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
  }
  if ((st.st_mode & (S_IROTH | S_IWOTH | S_IWGRP)) != 0) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "%s %s may be read or written by other users (mode %03o); run: chmod 600 %s", what, path,
        st.st_mode & 0777, path));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadPrivateFile(const std::string& path, const std::string& what) {
  if (auto status = CheckPrivateFile(path, what); !status.ok()) return status;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno(absl::StrCat("read ", what), path);
  std::string contents;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ::close(fd);
      return Errno(absl::StrCat("read ", what), path);
    }
    if (n == 0) break;
    contents.append(buffer, static_cast<size_t>(n));
    if (contents.size() > (1u << 20)) {
      ::close(fd);
      return absl::InvalidArgumentError(absl::StrCat(what, " ", path, " is over 1 MiB"));
    }
  }
  ::close(fd);
  return contents;
}

}  // namespace mesh::base
