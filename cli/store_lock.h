// StoreLock: who is writing into, or removing from, a store directory (publish --store).
//
// `ckptfs gc` removes the objects no index lists, but a publish under way stores its objects,
// and counts on those it finds already there, before it writes the index that lists them. So a
// publish holds a shared lock on each store it writes into until its index is written (several
// publishes may share stores), and gc holds an exclusive one while it removes: each refuses to
// start, with one line, while the other runs, rather than wait on it. The lock is flock(2) on
// DIR/.ckptfs-lock, which the kernel releases when its holder exits, however it exits.
#pragma once

#include <string>

#include "common/result.h"
#include "common/unique_fd.h"

namespace ckptfs::cli {

class StoreLock {
 public:
  enum class Holder { kPublish, kGc };

  // Takes the lock of `store_dir` for `holder`. FailedPrecondition when the other kind of
  // holder has it.
  static Result<StoreLock> Take(const std::string& store_dir, Holder holder);

 private:
  explicit StoreLock(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

}  // namespace ckptfs::cli
