#include "index/resident_pages.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

namespace ckptfs::index {

ResidentPages::ResidentPages(int fd, std::uint64_t budget)
    : fd_(fd), budget_(budget), page_size_(static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE))) {}

ResidentPages::Mapping::~Mapping() {
  if (addr_ != nullptr) ::munmap(addr_, length_);
}

bool ResidentPages::Choose(std::uint64_t offset, std::uint64_t length) {
  if (length == 0) return true;
  const std::uint64_t first = offset / page_size_;
  const std::uint64_t last = (offset + length - 1) / page_size_;
  std::uint64_t added = 0;
  for (std::uint64_t p = first; p <= last; ++p) added += pages_.contains(p) ? 0 : 1;
  if ((pages_.size() + added) * page_size_ > budget_) return false;
  for (std::uint64_t p = first; p <= last; ++p) pages_.insert(p);
  return true;
}

Status ResidentPages::Keep(std::stop_token stop) {
  // Readahead caches a file in large folios, and one mapped page keeps its whole folio in memory.
  // Dropping the file's clean pages first, then faulting each chosen page in with readahead off,
  // brings back exactly the chosen pages, one page each.
  ::posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED);
  auto it = pages_.begin();
  while (it != pages_.end()) {
    const std::uint64_t first = *it;
    std::uint64_t end = first + 1;
    while (++it != pages_.end() && *it == end) ++end;
    const std::size_t length = (end - first) * page_size_;
    void* addr =
        ::mmap(nullptr, length, PROT_READ, MAP_SHARED, fd_, static_cast<off_t>(first * page_size_));
    if (addr == MAP_FAILED) return ErrnoStatus(errno, "cannot map index pages");
    maps_.emplace_back(addr, length);
    ::madvise(addr, length, MADV_RANDOM);
    // Reading one byte per page maps it; the volatile sink keeps the reads from being dropped.
    const auto* bytes = static_cast<const volatile std::uint8_t*>(addr);
    for (std::size_t at = 0; at < length; at += page_size_) {
      if (stop.stop_requested()) return UnavailableError("stopped while keeping index pages");
      (void)bytes[at];
    }
  }
  return Status::Ok();
}

}  // namespace ckptfs::index
