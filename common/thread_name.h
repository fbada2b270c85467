// Names for the daemon's threads, so that `top -H`, `perf report --sort comm`, gdb and
// /proc/PID/task/*/comm tell fetching, loading and cache writing apart from the FUSE workers.
#pragma once

#include <string_view>

namespace ckptfs {

// Names the calling thread; Linux keeps the first 15 bytes. The main thread is left alone
// (its name is the process's, which ps and pgrep show). A failure changes nothing else.
void SetThreadName(std::string_view name);

}  // namespace ckptfs
