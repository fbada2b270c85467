// Whole reads and writes on file descriptors, retrying short transfers and EINTR; directories
// made with their parents.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/digest.h"
#include "common/result.h"
#include "common/status.h"
#include "common/unique_fd.h"

namespace ckptfs {

// Reads exactly dst.size() bytes at `offset` of `fd`. DataLoss when the file ends first; the
// errno as a Status when pread fails.
Status PreadExactly(int fd, std::uint64_t offset, std::span<std::uint8_t> dst);

// Bytes of scratch space PreadAligned needs for [offset, offset + length): the range widened to
// whole kDirectIoBlock blocks.
inline constexpr std::uint64_t kDirectIoBlock = 4096;
std::size_t AlignedReadSize(std::uint64_t offset, std::size_t length);

// Opens `path` read-only with O_DIRECT (plus `extra_flags`), or without it on a file system that
// refuses it (tmpfs answers EINVAL): read it with PreadAligned. Invalid with errno set on failure.
UniqueFd OpenForDirectRead(const std::string& path, int extra_flags = 0);

// Reads bytes [offset, offset + length) of a file that may be open with O_DIRECT, which only
// takes whole blocks into aligned memory: reads the widened range into `scratch` (REQUIRES:
// aligned to kDirectIoBlock, at least AlignedReadSize bytes) and returns the wanted bytes as a
// view into it. Works on files without O_DIRECT too. DataLoss when the file ends first.
Result<std::span<const std::uint8_t>> PreadAligned(int fd, std::uint64_t offset, std::size_t length,
                                                   std::span<std::uint8_t> scratch);

// True when the file system reports a hole (bytes never written) within [offset, offset + length)
// of `fd`; false when it does not, or cannot tell (no SEEK_HOLE support, an error). A range past
// the end of the file counts as a hole. Costs one lseek, not a read.
bool RangeHasHole(int fd, std::uint64_t offset, std::uint64_t length);

// Writes all of `bytes` at the current position of `fd`.
Status WriteAll(int fd, std::span<const std::uint8_t> bytes);

// Makes directory `path` and whichever of its parents are missing, each with `mode`, as
// `mkdir -p` does; directories already there are fine.
Status MakeDirs(const std::string& path, mode_t mode);

// `path` made absolute against the working directory (as given when it already is); the errno
// when the working directory cannot be had.
Result<std::string> AbsolutePath(const std::string& path);

// The modification time of what `st` describes, as a wall-clock time.
std::chrono::system_clock::time_point ModifiedTime(const struct stat& st);

// The whole of the regular file `path`.
Result<std::vector<std::uint8_t>> ReadWholeFile(const std::string& path);

// The SHA-256 of everything in the file open as `fd`, read from its start (page-cache reads of
// 1 MiB; `fd` must not be open with O_DIRECT). The errno as a Status, "cannot read <name>: ...",
// when a read fails.
Result<Digest> FileSha256(int fd, std::string_view name);

// A directory of our own (mode 0700, made by mkdtemp) for files that must not outlive a command:
// removed with what is in it (not subdirectories) when the object goes. Inside it, files can be
// made by name without the races of a shared /tmp.
class TemporaryDir {
 public:
  // `parent` empty: $TMPDIR, else /tmp. The name is `stem` and six random characters.
  static Result<TemporaryDir> Make(std::string parent, const std::string& stem);
  TemporaryDir(TemporaryDir&& other) noexcept;
  TemporaryDir& operator=(TemporaryDir&& other) noexcept;
  ~TemporaryDir();
  const std::string& path() const { return path_; }

 private:
  explicit TemporaryDir(std::string path) : path_(std::move(path)) {}
  void Remove();
  std::string path_;
};

}  // namespace ckptfs
