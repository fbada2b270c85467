// Buffer: a fixed-size heap array of bytes that is not zero-filled on allocation.
//
// Chunks are megabytes and are always overwritten by a fetch or a file read right away, so the
// zero-fill a std::vector would do is pure cost on the read path. Thread safety: a value type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

namespace ckptfs {

class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t size)
      : data_(std::make_unique_for_overwrite<std::uint8_t[]>(size)), size_(size) {}

  std::uint8_t* data() { return data_.get(); }
  const std::uint8_t* data() const { return data_.get(); }
  std::size_t size() const { return size_; }
  std::span<std::uint8_t> span() { return {data_.get(), size_}; }
  std::span<const std::uint8_t> span() const { return {data_.get(), size_}; }

 private:
  std::unique_ptr<std::uint8_t[]> data_;
  std::size_t size_ = 0;
};

}  // namespace ckptfs
