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
// One read away from a stream does not end it: the run it broke is kept, and a read that
// continues it resumes it with its window. Copying a tensor out of a memory-mapped file touches
// the tensor's last page before its first (a large memcpy loads both ends first), so each
// tensor of a safetensors load_file began with a page-fault read 64 MiB ahead, which closed the
// window and sent the next 7 MiB of the stream out as isolated reads. The longer of the broken
// run and the one before it is kept, so a lone read cannot push out a stream.
//
// Across files: checkpoint loaders and copy tools read a directory's files one after another, so
// the window of a run from the start of a file may reach past its end. TakeExcess() reports that
// part, for the caller to spend on the following files; Inherited() starts the Readahead of such
// a following file with the stream's window, so that the stream does not start from nothing at
// every file. Only the decision lives here; the caller knows the directory.
//
// Thread safety: not thread-safe; the owner serialises calls (one per open file).
#pragma once

#include <cstdint>
#include <optional>

namespace ckptfs::fs {

struct ReadaheadOptions {
  std::uint64_t start_after = 2ull << 20;
  std::uint64_t start_after_seek = 8ull << 20;
  std::uint64_t max_window = 64ull << 20;
  std::uint64_t slack = 4ull << 20;
  // Whether a window that reaches past the end of the file is reported by TakeExcess(), so that
  // the caller reads ahead into the next files of the directory.
  bool across_files = true;
};

struct ByteRange {
  std::uint64_t begin = 0;
  std::uint64_t end = 0;  // Exclusive.
  bool empty() const { return end <= begin; }
};

class Readahead {
 public:
  explicit Readahead(ReadaheadOptions options = {}) : options_(options) {}

  // A Readahead for a file that a stream with window `window` reached from an earlier file: its
  // first read at offset 0 continues that stream, so the window is open from the first read and
  // keeps growing from `window` (the run counts as having read window / 2 bytes before this file,
  // as within one large file). A seek closes it like any window.
  static Readahead Inherited(ReadaheadOptions options, std::uint64_t window);

  // Records a read of [offset, offset + length) of a file of `file_size` bytes and returns the
  // range to prefetch now: beyond what earlier calls already returned, within the file.
  ByteRange OnRead(std::uint64_t offset, std::uint64_t length, std::uint64_t file_size);

  // Bytes of the window beyond the end of the file that no earlier call returned: what the caller
  // may read ahead in the files after this one. Non-zero only with across_files, for a run from
  // the start of the file (a run after a seek is a lookup, not a stream); never more than
  // max_window in total over the object's life, however often the reader starts over.
  std::uint64_t TakeExcess();

  std::uint64_t window() const { return run_.window; }

  // Whether the last read belongs to a stream: a run from the start of the file, or one that has
  // read start_after_seek bytes. Otherwise it is a lone read (a seek, a random access, a lazy load
  // of one tensor), which should fetch only what it touches.
  bool streaming() const { return FromTheStart() || run_.length() >= StartAfter(); }

 private:
  // A sequential run of reads and what it has handed out.
  struct Run {
    std::uint64_t begin = 0;          // Where the run started.
    std::uint64_t end = 0;            // Furthest byte the run has read.
    std::uint64_t prefetched_to = 0;  // End of what was already handed out for prefetching.
    std::uint64_t window = 0;
    std::uint64_t inherited = 0;  // Window the run brought from an earlier file; 0 after a seek.
    std::uint64_t length() const { return end - begin; }
  };

  // Whether a read at `offset` continues `run`.
  bool Continues(const Run& run, std::uint64_t offset) const {
    return offset + options_.slack >= run.end && offset <= run.end + options_.slack;
  }
  // Within slack of offset 0: the kernel's first requests may arrive slightly out of order.
  bool FromTheStart() const { return run_.begin <= options_.slack; }
  std::uint64_t StartAfter() const {
    return FromTheStart() ? options_.start_after : options_.start_after_seek;
  }

  ReadaheadOptions options_;
  Run run_;                         // The run the last read belongs to.
  std::optional<Run> broken_;       // The run before it, which a read may resume.
  std::uint64_t past_eof_ = 0;      // How far the window of a run from the start reaches past EOF.
  std::uint64_t excess_taken_ = 0;  // Bytes past EOF TakeExcess() already returned.
  bool started_ = false;
};

}  // namespace ckptfs::fs
