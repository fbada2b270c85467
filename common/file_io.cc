#include "common/file_io.h"

#include <sys/types.h>
#include <unistd.h>

#include <cerrno>

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

Status WriteAll(int fd, std::span<const std::uint8_t> bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, "write");
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
  return Status::Ok();
}

}  // namespace ckptfs
