#include "cli/store_lock.h"

#include <fcntl.h>
#include <sys/file.h>

#include <cerrno>
#include <utility>

#include "common/file_io.h"

namespace ckptfs::cli {

Result<StoreLock> StoreLock::Take(const std::string& store_dir, Holder holder) {
  const std::string path = store_dir + "/.ckptfs-lock";
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) return ErrnoStatus(errno, "cannot open " + path);
  const int kind = holder == Holder::kGc ? LOCK_EX : LOCK_SH;
  int rc;
  do {
    rc = ::flock(fd.get(), kind | LOCK_NB);
  } while (rc != 0 && errno == EINTR);
  if (rc == 0) return StoreLock(std::move(fd));
  if (errno != EWOULDBLOCK) return ErrnoStatus(errno, "cannot lock " + path);
  return FailedPreconditionError(
      holder == Holder::kGc
          ? "a publish is writing into store " + store_dir + ": run gc when it is done"
          : "ckptfs gc is removing objects from store " + store_dir + ": publish when it is done");
}

}  // namespace ckptfs::cli
