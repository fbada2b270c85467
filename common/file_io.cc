#include "common/file_io.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <string>
#include <utility>

#include "common/unique_fd.h"

namespace ckptfs {

Status PreadExactly(int fd, std::uint64_t offset, std::span<std::uint8_t> dst) {
  std::size_t done = 0;
  while (done < dst.size()) {
    ssize_t n =
        ::pread(fd, dst.data() + done, dst.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, "pread");
    if (n == 0) return DataLossError("unexpected end of file");
    done += static_cast<std::size_t>(n);
  }
  return Status::Ok();
}

std::size_t AlignedReadSize(std::uint64_t offset, std::size_t length) {
  std::uint64_t begin = offset / kDirectIoBlock * kDirectIoBlock;
  std::uint64_t end = (offset + length + kDirectIoBlock - 1) / kDirectIoBlock * kDirectIoBlock;
  return static_cast<std::size_t>(end - begin);
}

UniqueFd OpenForDirectRead(const std::string& path, int extra_flags) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT | extra_flags));
  if (!fd.valid() && errno == EINVAL) {
    fd = UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | extra_flags));
  }
  return fd;
}

Result<std::span<const std::uint8_t>> PreadAligned(int fd, std::uint64_t offset, std::size_t length,
                                                   std::span<std::uint8_t> scratch) {
  const std::uint64_t begin = offset / kDirectIoBlock * kDirectIoBlock;
  const std::size_t skip = static_cast<std::size_t>(offset - begin);
  const std::size_t span = AlignedReadSize(offset, length);
  const std::size_t needed = skip + length;
  std::size_t done = 0;
  while (done < needed) {
    // Whole blocks only: past the wanted bytes the read simply stops at the end of the file.
    ssize_t n = ::pread(fd, scratch.data() + done, span - done, static_cast<off_t>(begin + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, "pread");
    if (n == 0) return DataLossError("unexpected end of file");
    done += static_cast<std::size_t>(n);
    if (done < needed && done % kDirectIoBlock != 0) {
      return DataLossError("unexpected end of file");  // A partial block is the file's end.
    }
  }
  return std::span<const std::uint8_t>(scratch.data() + skip, length);
}

bool RangeHasHole(int fd, std::uint64_t offset, std::uint64_t length) {
  // The start of the first hole at or after `offset`; the end of the file counts as one, so a
  // file system without SEEK_HOLE support reports no hole before it.
  const off_t hole = ::lseek(fd, static_cast<off_t>(offset), SEEK_HOLE);
  if (hole < 0) return errno == ENXIO;  // ENXIO: `offset` is at or past the end of the file.
  return static_cast<std::uint64_t>(hole) < offset + length;
}

Status WriteAll(int fd, std::span<const std::uint8_t> bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, "write");
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
  return Status::Ok();
}

Status MakeDirs(const std::string& path, mode_t mode) {
  std::size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    std::string prefix = path.substr(0, pos);
    if (prefix.empty()) continue;
    if (::mkdir(prefix.c_str(), mode) != 0 && errno != EEXIST) {
      return ErrnoStatus(errno, "cannot create " + prefix);
    }
  }
  return Status::Ok();
}

Result<std::string> AbsolutePath(const std::string& path) {
  if (!path.empty() && path.front() == '/') return path;
  char cwd[PATH_MAX];
  if (::getcwd(cwd, sizeof(cwd)) == nullptr) {
    return ErrnoStatus(errno, "cannot resolve " + path + " against the working directory");
  }
  return std::string(cwd) + "/" + path;
}

Result<std::vector<std::uint8_t>> ReadWholeFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat st;
  if (!fd.valid() || ::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, "cannot read " + path);
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(st.st_size));
  CKPTFS_RETURN_IF_ERROR(PreadExactly(fd.get(), 0, bytes).WithContext("cannot read " + path));
  return bytes;
}

Result<Digest> FileSha256(int fd, std::string_view name) {
  std::vector<std::uint8_t> buffer(1 << 20);
  Sha256Hasher hasher;
  for (std::uint64_t offset = 0;;) {
    const ssize_t n = ::pread(fd, buffer.data(), buffer.size(), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, "cannot read " + std::string(name));
    if (n == 0) return hasher.Finish();
    hasher.Update(buffer.data(), static_cast<std::size_t>(n));
    offset += static_cast<std::uint64_t>(n);
  }
}

Result<TemporaryDir> TemporaryDir::Make(std::string parent, const std::string& stem) {
  if (parent.empty()) {
    const char* env = std::getenv("TMPDIR");
    parent = env != nullptr && *env != '\0' ? env : "/tmp";
  }
  std::string path = parent + "/" + stem + ".XXXXXX";
  if (::mkdtemp(path.data()) == nullptr) {
    return ErrnoStatus(errno, "cannot create a temporary directory in " + parent);
  }
  return TemporaryDir(std::move(path));
}

TemporaryDir::TemporaryDir(TemporaryDir&& other) noexcept
    : path_(std::exchange(other.path_, std::string())) {}

TemporaryDir& TemporaryDir::operator=(TemporaryDir&& other) noexcept {
  if (this != &other) {
    Remove();
    path_ = std::exchange(other.path_, std::string());
  }
  return *this;
}

TemporaryDir::~TemporaryDir() { Remove(); }

void TemporaryDir::Remove() {
  if (path_.empty()) return;
  if (DIR* dir = ::opendir(path_.c_str())) {
    while (const dirent* e = ::readdir(dir)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") ::unlink((path_ + "/" + name).c_str());
    }
    ::closedir(dir);
  }
  ::rmdir(path_.c_str());
  path_.clear();
}

std::chrono::system_clock::time_point ModifiedTime(const struct stat& st) {
  using SystemTime = std::chrono::system_clock::time_point;
  return SystemTime(std::chrono::duration_cast<SystemTime::duration>(
      std::chrono::seconds(st.st_mtim.tv_sec) + std::chrono::nanoseconds(st.st_mtim.tv_nsec)));
}

}  // namespace ckptfs
