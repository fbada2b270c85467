#include "common/units.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace ckptfs {

Result<std::uint64_t> ParseSize(std::string_view text) {
  std::uint64_t number = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
  if (ec != std::errc() || end == text.data()) {
    return InvalidArgumentError("not a size: '" + std::string(text) + "'");
  }
  std::string_view suffix(end, text.data() + text.size() - end);
  int shift = 0;
  if (!suffix.empty()) {
    switch (std::toupper(static_cast<unsigned char>(suffix[0]))) {
      case 'K':
        shift = 10;
        break;
      case 'M':
        shift = 20;
        break;
      case 'G':
        shift = 30;
        break;
      case 'T':
        shift = 40;
        break;
      case 'B':
        shift = 0;
        break;
      default:
        return InvalidArgumentError("not a size: '" + std::string(text) + "'");
    }
    if (shift != 0) suffix.remove_prefix(1);
    if (suffix == "iB" || suffix == "B" || suffix == "ib" || suffix == "b") suffix = {};
    if (!suffix.empty()) return InvalidArgumentError("not a size: '" + std::string(text) + "'");
  }
  if (shift > 0 && number > (UINT64_MAX >> shift)) {
    return InvalidArgumentError("size too large: '" + std::string(text) + "'");
  }
  return number << shift;
}

Result<double> ParseSeconds(std::string_view text) {
  std::string copy(text);
  char* end = nullptr;
  double value = std::strtod(copy.c_str(), &end);
  if (copy.empty() || end != copy.c_str() + copy.size() || !std::isfinite(value) || value <= 0) {
    return InvalidArgumentError("not a positive number of seconds: '" + copy + "'");
  }
  return value;
}

std::string FormatSize(std::uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %s", value, kUnits[unit]);
  return buf;
}

}  // namespace ckptfs
