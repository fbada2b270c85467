#include "common/buffer.h"

#include <sys/mman.h>

namespace ckptfs {

namespace {

std::size_t AlignmentFor(std::size_t size) {
  return size >= kHugePageSize ? kHugePageSize : kBufferAlignment;
}

}  // namespace

Buffer::Buffer(std::size_t size)
    : data_(
          static_cast<std::uint8_t*>(::operator new[](size, std::align_val_t(AlignmentFor(size)))),
          AlignedDelete{AlignmentFor(size)}),
      size_(size) {
  if (size < kHugePageSize) return;
  // A tail shorter than a huge page keeps small pages. Best effort: a kernel without transparent
  // huge pages answers EINVAL, and the buffer works the same with small pages.
  (void)::madvise(data_.get(), size / kHugePageSize * kHugePageSize, MADV_HUGEPAGE);
}

}  // namespace ckptfs
