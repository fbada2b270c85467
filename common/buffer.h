// Buffer: a fixed-size heap array of bytes that is not zero-filled on allocation.
//
// Chunks are megabytes and are always overwritten by a fetch or a file read right away, so the
// zero-fill a std::vector would do is pure cost on the read path. The bytes start on a page
// boundary (kBufferAlignment) so that a buffer can be written to a file opened with O_DIRECT.
//
// A buffer of kHugePageSize or more starts on a huge-page boundary and asks the kernel for
// transparent huge pages (MADV_HUGEPAGE; Debian enables them only where asked). Every byte of a
// chunk buffer is touched by the fetch that fills it, its hash, the FUSE reply (which pins the
// source one page at a time) and the cache write; with small pages a cold read took about 10%
// more daemon CPU and a disk-cache read ran at 0.6 of the speed (DESIGN "Memory"). Without the
// alignment a 4 MiB buffer would hold at most one whole huge page.
// Thread safety: a value type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <span>

namespace ckptfs {

inline constexpr std::size_t kBufferAlignment = 4096;
// The x86-64 (and 4 KiB-page arm64) size of a transparent huge page.
inline constexpr std::size_t kHugePageSize = 2u << 20;

// How the start of a buffer of kHugePageSize or more is backed.
enum class BufferStart {
  kHuge,  // Every whole huge page advised.
  // The first huge page left on small pages, the rest advised. The first write into a huge page
  // clears all 2 MiB of it before the write goes on; a buffer made for a reader that waits for
  // its first bytes (a fresh one, when no idle buffer is left) takes 4 KiB faults there instead.
  kQuickFirstBytes,
};

class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t size, BufferStart start = BufferStart::kHuge);

  std::uint8_t* data() { return data_.get(); }
  const std::uint8_t* data() const { return data_.get(); }
  std::size_t size() const { return size_; }
  std::span<std::uint8_t> span() { return {data_.get(), size_}; }
  std::span<const std::uint8_t> span() const { return {data_.get(), size_}; }

 private:
  struct AlignedDelete {
    std::size_t alignment = kBufferAlignment;
    void operator()(std::uint8_t* p) const { ::operator delete[](p, std::align_val_t(alignment)); }
  };
  std::unique_ptr<std::uint8_t[], AlignedDelete> data_;
  std::size_t size_ = 0;
};

// Gives the whole pages within `bytes` back to the system (MADV_DONTNEED): they take no memory
// until written again and read as zeros meanwhile; the bytes of pages that `bytes` covers only in
// part are left as they are. For bytes whose value no longer matters, in any anonymous memory
// (a Buffer, the heap). Best effort: a failure leaves the bytes in place.
void DiscardPages(std::span<std::uint8_t> bytes);

}  // namespace ckptfs
