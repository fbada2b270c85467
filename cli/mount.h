// `ckptfs mount`: checks everything that can be checked, mounts, daemonizes, and serves until
// unmounted (fusermount3 -u, umount, SIGTERM, SIGINT or SIGHUP).
//
// Everything that can fail because of the user's input (options, the index, the cache directory,
// the mountpoint) is checked before the mount and reported as a Status, so that a bad call
// leaves nothing mounted. Threads start only after the fork of daemonizing.
#pragma once

#include "cli/mount_options.h"
#include "common/status.h"

namespace ckptfs::cli {

// Returns once the file system is unmounted (foreground) or, in the parent, once the background
// daemon serves the mount. Errors before mounting are returned; later ones are logged.
Status Mount(const MountOptions& options);

}  // namespace ckptfs::cli
