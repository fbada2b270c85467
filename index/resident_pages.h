// ResidentPages: keeps chosen pages of a read-only file mapped into this process.
//
// The kernel drops clean page-cache pages when asked (drop_caches, fadvise DONTNEED) or when it
// wants memory, and every dropped index page costs a disk read the next time a lookup, open or
// read needs it: about ten of them make a cold open and first read several milliseconds slower.
// Pages mapped into a process are skipped by the first two and can still be reclaimed under real
// memory pressure, so mapping the hot pages of the index keeps metadata latency flat without
// taking memory the machine needs. The pages count towards the daemon's RSS; the caller bounds
// them with a budget.
//
// So that the memory held is exactly the pages chosen: each run of adjacent pages gets a mapping of
// its own (a page fault also maps the cached pages around the faulting one, "fault-around", but
// never beyond its mapping), and the pages are faulted in one by one without readahead (a large
// folio stays in memory whole while any of its pages is mapped).
//
// Thread safety: not thread-safe; the owner adds pages before sharing it.
#pragma once

#include <cstdint>
#include <set>
#include <stop_token>
#include <utility>
#include <vector>

#include "common/status.h"

namespace ckptfs::index {

class ResidentPages {
 public:
  // Pages of `fd` (a regular file opened for reading, not owned; it must outlive this object).
  explicit ResidentPages(int fd = -1, std::uint64_t budget = 0);

  // Chooses the pages covering [offset, offset + length) to be kept. False, choosing none of
  // them, when they do not all fit in the budget with the pages chosen before.
  bool Choose(std::uint64_t offset, std::uint64_t length);

  // Maps the chosen pages and faults them in (reading them from disk if they are not cached).
  // They stay mapped until this object dies. Unavailable, keeping what is mapped so far, when
  // `stop` is requested before the end (it is checked between pages).
  Status Keep(std::stop_token stop = {});

  // Bytes of the distinct pages chosen, at most the budget.
  std::uint64_t bytes() const { return pages_.size() * page_size_; }

 private:
  // One mapped run of pages, unmapped when it dies.
  class Mapping {
   public:
    Mapping(void* addr, std::size_t length) : addr_(addr), length_(length) {}
    Mapping(Mapping&& other) noexcept
        : addr_(std::exchange(other.addr_, nullptr)), length_(other.length_) {}
    Mapping& operator=(Mapping&&) = delete;
    ~Mapping();

   private:
    void* addr_;
    std::size_t length_;
  };

  int fd_;
  std::uint64_t budget_;
  std::uint64_t page_size_;
  std::set<std::uint64_t> pages_;  // Page numbers (file offset / page_size_) chosen.
  std::vector<Mapping> maps_;
};

}  // namespace ckptfs::index
