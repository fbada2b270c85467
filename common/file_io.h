// Whole reads and writes on file descriptors, retrying short transfers and EINTR.
#pragma once

#include <cstdint>
#include <span>

#include "common/status.h"

namespace ckptfs {

// Reads exactly dst.size() bytes at `offset` of `fd`. DataLoss when the file ends first; the
// errno as a Status when pread fails.
Status PreadExactly(int fd, std::uint64_t offset, std::span<std::uint8_t> dst);

// Writes all of `bytes` at the current position of `fd`.
Status WriteAll(int fd, std::span<const std::uint8_t> bytes);

}  // namespace ckptfs
