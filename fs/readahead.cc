#include "fs/readahead.h"

#include <algorithm>

namespace ckptfs::fs {

ByteRange Readahead::OnRead(std::uint64_t offset, std::uint64_t length, std::uint64_t file_size) {
  std::uint64_t end = offset + length;
  bool sequential =
      started_ && offset + options_.slack >= run_end_ && offset <= run_end_ + options_.slack;
  if (sequential) {
    run_end_ = std::max(run_end_, end);
  } else {
    run_begin_ = offset;
    run_end_ = end;
    prefetched_to_ = end;
    window_ = 0;
  }
  started_ = true;
  std::uint64_t run = run_end_ - run_begin_;
  if (run < StartAfter()) return {};
  window_ = std::min(options_.max_window, 2 * run);
  ByteRange range{std::max(prefetched_to_, run_end_), std::min(file_size, run_end_ + window_)};
  if (range.empty()) return {};
  prefetched_to_ = range.end;
  return range;
}

}  // namespace ckptfs::fs
