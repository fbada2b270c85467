// Readahead: decides, per open file, which bytes to fetch ahead of a sequential reader.
//
// A read continues a sequential run when it starts within `slack` bytes of where the run got to
// (the kernel sends readahead requests in parallel, so they arrive slightly out of order). The
// window opens once a run has read `start_after` bytes (`start_after_seek` for a run that began
// after a seek), and is then twice the run's length, capped at `max_window`: it grows while the
// reader stays sequential and closes on a seek. An isolated read (a random reader, a loader
// looking at a header) therefore never triggers readahead, and fetches only the blocks it
// touches. Runs after a seek wait longer because memory-mapped loaders read one tensor as a few
// megabytes of sequential page-fault reads (the kernel reads around each fault): that is still
// one lazy lookup, not a stream.
//
// Thread safety: not thread-safe; the owner serialises calls (one per open file).
#pragma once

#include <cstdint>

namespace ckptfs::fs {

struct ReadaheadOptions {
  std::uint64_t start_after = 2ull << 20;
  std::uint64_t start_after_seek = 8ull << 20;
  std::uint64_t max_window = 64ull << 20;
  std::uint64_t slack = 4ull << 20;
};

struct ByteRange {
  std::uint64_t begin = 0;
  std::uint64_t end = 0;  // Exclusive.
  bool empty() const { return end <= begin; }
};

class Readahead {
 public:
  explicit Readahead(ReadaheadOptions options = {}) : options_(options) {}

  // Records a read of [offset, offset + length) of a file of `file_size` bytes and returns the
  // range to prefetch now: beyond what earlier calls already returned, within the file.
  ByteRange OnRead(std::uint64_t offset, std::uint64_t length, std::uint64_t file_size);

  std::uint64_t window() const { return window_; }

  // Whether the last read belongs to a stream: a run from the start of the file, or one that has
  // read start_after_seek bytes. Otherwise it is a lone read (a seek, a random access, a lazy load
  // of one tensor), which should fetch only what it touches.
  bool streaming() const { return FromTheStart() || run_end_ - run_begin_ >= StartAfter(); }

 private:
  // Within slack of offset 0: the kernel's first requests may arrive slightly out of order.
  bool FromTheStart() const { return run_begin_ <= options_.slack; }
  std::uint64_t StartAfter() const {
    return FromTheStart() ? options_.start_after : options_.start_after_seek;
  }

  ReadaheadOptions options_;
  std::uint64_t run_begin_ = 0;      // Where the current sequential run started.
  std::uint64_t run_end_ = 0;        // Furthest byte the run has read.
  std::uint64_t prefetched_to_ = 0;  // End of what was already handed out for prefetching.
  std::uint64_t window_ = 0;
  bool started_ = false;
};

}  // namespace ckptfs::fs
