// Buffer: a fixed-size heap array of bytes that is not zero-filled on allocation.
//
// Chunks are megabytes and are always overwritten by a fetch or a file read right away, so the
// zero-fill a std::vector would do is pure cost on the read path. The bytes start on a page
// boundary (kBufferAlignment) so that a buffer can be written to a file opened with O_DIRECT.
// Thread safety: a value type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <span>

namespace ckptfs {

inline constexpr std::size_t kBufferAlignment = 4096;

class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t size)
      : data_(
            static_cast<std::uint8_t*>(::operator new[](size, std::align_val_t(kBufferAlignment)))),
        size_(size) {}

  std::uint8_t* data() { return data_.get(); }
  const std::uint8_t* data() const { return data_.get(); }
  std::size_t size() const { return size_; }
  std::span<std::uint8_t> span() { return {data_.get(), size_}; }
  std::span<const std::uint8_t> span() const { return {data_.get(), size_}; }

 private:
  struct AlignedDelete {
    void operator()(std::uint8_t* p) const {
      ::operator delete[](p, std::align_val_t(kBufferAlignment));
    }
  };
  std::unique_ptr<std::uint8_t[], AlignedDelete> data_;
  std::size_t size_ = 0;
};

}  // namespace ckptfs
