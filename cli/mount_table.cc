#include "cli/mount_table.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>

#include "common/status.h"

namespace ckptfs::cli {

namespace {

// The kernel writes space, tab, newline and backslash in paths as \ooo.
std::string Unescape(std::string_view field) {
  std::string out;
  out.reserve(field.size());
  for (std::size_t i = 0; i < field.size(); ++i) {
    const bool escape =
        field[i] == '\\' && i + 4 <= field.size() &&
        field.substr(i + 1, 3).find_first_not_of("01234567") == std::string_view::npos;
    if (escape) {
      out.push_back(static_cast<char>((field[i + 1] - '0') * 64 + (field[i + 2] - '0') * 8 +
                                      (field[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(field[i]);
    }
  }
  return out;
}

// "id parent major:minor root mount_point options [optional fields...] - fs_type source ...".
std::optional<MountEntry> ParseLine(const std::string& line) {
  std::istringstream fields(line);
  std::string id, parent, device, root, point, options, field;
  if (!(fields >> id >> parent >> device >> root >> point >> options)) return std::nullopt;
  while (fields >> field && field != "-") {
  }
  std::string fs_type;
  if (field != "-" || !(fields >> fs_type)) return std::nullopt;
  return MountEntry{device, Unescape(point), fs_type};
}

// Every entry of `mountinfo` that parses, in the file's order.
std::vector<MountEntry> AllMounts(std::string_view mountinfo) {
  std::vector<MountEntry> found;
  std::istringstream lines{std::string(mountinfo)};
  std::string line;
  while (std::getline(lines, line)) {
    std::optional<MountEntry> entry = ParseLine(line);
    if (entry) found.push_back(std::move(*entry));
  }
  return found;
}

std::string CurrentMountinfo() {
  std::ifstream file("/proc/self/mountinfo");
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

}  // namespace

std::vector<MountEntry> MountsAt(std::string_view mountinfo, std::string_view path) {
  std::vector<MountEntry> found = AllMounts(mountinfo);
  std::erase_if(found, [&](const MountEntry& entry) { return entry.mount_point != path; });
  return found;
}

std::vector<MountEntry> CurrentMountsAt(std::string_view path) {
  return MountsAt(CurrentMountinfo(), path);
}

std::vector<std::string> MountPointsOfType(std::string_view mountinfo, std::string_view fs_type) {
  std::vector<std::string> points;
  for (MountEntry& entry : AllMounts(mountinfo)) {
    if (entry.fs_type == fs_type &&
        std::find(points.begin(), points.end(), entry.mount_point) == points.end()) {
      points.push_back(std::move(entry.mount_point));
    }
  }
  return points;
}

std::vector<std::string> CurrentMountPointsOfType(std::string_view fs_type) {
  return MountPointsOfType(CurrentMountinfo(), fs_type);
}

Result<std::string> ResolveMountpoint(const std::string& mountpoint) {
  std::string path = mountpoint;
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const std::size_t slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : path.substr(0, std::max<std::size_t>(slash, 1));
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  char resolved[PATH_MAX];
  if (::realpath(dir.c_str(), resolved) == nullptr) {
    return ErrnoStatus(errno, "mountpoint " + mountpoint);
  }
  const std::string base = resolved;
  if (name.empty()) return base;  // The root directory.
  return base == "/" ? base + name : base + "/" + name;
}

}  // namespace ckptfs::cli
