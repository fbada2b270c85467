#include "fs/readahead.h"

#include <algorithm>
#include <utility>

namespace ckptfs::fs {

Readahead Readahead::Inherited(ReadaheadOptions options, std::uint64_t window) {
  Readahead readahead(options);
  // A run that has read nothing yet at offset 0: the first read continues it.
  readahead.started_ = true;
  readahead.run_.inherited = std::min(window, options.max_window);
  readahead.run_.window = readahead.run_.inherited;
  return readahead;
}

ByteRange Readahead::OnRead(std::uint64_t offset, std::uint64_t length, std::uint64_t file_size) {
  std::uint64_t end = offset + length;
  if (started_ && Continues(run_, offset)) {
    run_.end = std::max(run_.end, end);
  } else if (broken_ && Continues(*broken_, offset)) {  // Only a started run breaks.
    std::swap(run_, *broken_);  // Back to the stream after a read elsewhere.
    run_.end = std::max(run_.end, end);
  } else {
    if (started_ && (!broken_ || run_.length() >= broken_->length())) broken_ = run_;
    run_ = Run{.begin = offset, .end = end, .prefetched_to = end};
  }
  started_ = true;
  past_eof_ = 0;
  if (run_.length() < StartAfter() && run_.inherited == 0) return {};
  run_.window = std::min(options_.max_window, run_.inherited + 2 * run_.length());
  if (FromTheStart() && run_.end + run_.window > file_size) {
    past_eof_ = run_.end + run_.window - std::max(file_size, run_.end);
  }
  ByteRange range{std::max(run_.prefetched_to, run_.end),
                  std::min(file_size, run_.end + run_.window)};
  if (range.empty()) return {};
  run_.prefetched_to = range.end;
  return range;
}

std::uint64_t Readahead::TakeExcess() {
  if (!options_.across_files || past_eof_ <= excess_taken_) return 0;
  std::uint64_t excess = past_eof_ - excess_taken_;
  excess_taken_ = past_eof_;
  return excess;
}

}  // namespace ckptfs::fs
