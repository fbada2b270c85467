// Parsing and printing of byte sizes and durations as users write them on the command line.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace ckptfs {

// "4096", "4K", "4KiB", "8M", "10G", "1T" (binary multiples; a trailing "B" or "iB" is allowed).
Result<std::uint64_t> ParseSize(std::string_view text);

// Seconds as a decimal number: "30", "2.5". Must be > 0.
Result<double> ParseSeconds(std::string_view text);

// 1536 → "1.5 KiB"; exact bytes below 1 KiB.
std::string FormatSize(std::uint64_t bytes);

}  // namespace ckptfs
