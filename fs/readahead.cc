#include "fs/readahead.h"

#include <algorithm>

namespace ckptfs::fs {

Readahead Readahead::Inherited(ReadaheadOptions options, std::uint64_t window) {
  Readahead readahead(options);
  // A run that has read nothing yet at offset 0: the first read continues it.
  readahead.started_ = true;
  readahead.inherited_ = std::min(window, options.max_window);
  readahead.window_ = readahead.inherited_;
  return readahead;
}

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
    inherited_ = 0;
  }
  started_ = true;
  past_eof_ = 0;
  std::uint64_t run = run_end_ - run_begin_;
  if (run < StartAfter() && inherited_ == 0) return {};
  window_ = std::min(options_.max_window, inherited_ + 2 * run);
  if (FromTheStart() && run_end_ + window_ > file_size) {
    past_eof_ = run_end_ + window_ - std::max(file_size, run_end_);
  }
  ByteRange range{std::max(prefetched_to_, run_end_), std::min(file_size, run_end_ + window_)};
  if (range.empty()) return {};
  prefetched_to_ = range.end;
  return range;
}

std::uint64_t Readahead::TakeExcess() {
  if (!options_.across_files || past_eof_ <= excess_taken_) return 0;
  std::uint64_t excess = past_eof_ - excess_taken_;
  excess_taken_ = past_eof_;
  return excess;
}

}  // namespace ckptfs::fs
