// The kernel's table of mounts as this process sees it (/proc/self/mountinfo): which file
// systems are mounted at a path, topmost last. `ckptfs mount` uses it to find the device of its
// own mount (for the kernel readahead knob) and to refuse mounting over a ckptfs mount that is
// already there.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace ckptfs::cli {

struct MountEntry {
  std::string device;       // "major:minor".
  std::string mount_point;  // Absolute, with the kernel's octal escapes (\040 ...) undone.
  std::string fs_type;      // "ext4", "fuse.ckptfs", ...
};

// The entries of `mountinfo` (the text of a mountinfo file) mounted at `path`, in the file's
// order, which puts the topmost mount last. Lines that do not parse are skipped.
std::vector<MountEntry> MountsAt(std::string_view mountinfo, std::string_view path);

// MountsAt over /proc/self/mountinfo; empty when it cannot be read.
std::vector<MountEntry> CurrentMountsAt(std::string_view path);

// The mount points of `mountinfo` where a file system of type `fs_type` ("fuse.ckptfs") is
// mounted, each once, in the file's order. `ckptfs stats --prometheus` without a mountpoint
// shows every ckptfs mount this way.
std::vector<std::string> MountPointsOfType(std::string_view mountinfo, std::string_view fs_type);

// MountPointsOfType over /proc/self/mountinfo; empty when it cannot be read.
std::vector<std::string> CurrentMountPointsOfType(std::string_view fs_type);

// `mountpoint` as the mount table names it: absolute, its directory resolved by realpath(), its
// last component taken as it is. Resolving that too would ask the file system mounted there,
// which may be dead or not answering. Errors: those of realpath() on the directory.
Result<std::string> ResolveMountpoint(const std::string& mountpoint);

}  // namespace ckptfs::cli
