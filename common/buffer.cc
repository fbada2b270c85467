#include "common/buffer.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

namespace ckptfs {

namespace {

std::size_t AlignmentFor(std::size_t size) {
  return size >= kHugePageSize ? kHugePageSize : kBufferAlignment;
}

}  // namespace

Buffer::Buffer(std::size_t size, BufferStart start)
    : data_(
          static_cast<std::uint8_t*>(::operator new[](size, std::align_val_t(AlignmentFor(size)))),
          AlignedDelete{AlignmentFor(size)}),
      size_(size) {
  const std::size_t first = start == BufferStart::kQuickFirstBytes ? kHugePageSize : 0;
  const std::size_t huge_end = size / kHugePageSize * kHugePageSize;
  if (huge_end <= first) return;
  // A tail shorter than a huge page keeps small pages. Best effort: a kernel without transparent
  // huge pages answers EINVAL, and the buffer works the same with small pages.
  (void)::madvise(data_.get() + first, huge_end - first, MADV_HUGEPAGE);
}

void DiscardPages(std::span<std::uint8_t> bytes) {
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<std::uintptr_t>(bytes.data());
  const std::uintptr_t first = (begin + page - 1) / page * page;
  const std::uintptr_t end = (begin + bytes.size()) / page * page;
  if (end <= first) return;
  (void)::madvise(reinterpret_cast<void*>(first), end - first, MADV_DONTNEED);
}

}  // namespace ckptfs
