// The runtime statistics of a mount: what the root's user.ckptfs.stats attribute holds and
// `ckptfs stats MOUNTPOINT` prints.
//
// The text is one "name value" line per number, like /proc/vmstat, with a dotted prefix naming
// where the number comes from: fs. (FUSE requests, fs::FileSystemCounters), store. (the chunk
// store, fs::ChunkStoreCounters), fetch. (HTTP, netfetch::FetchCounters), cache. (the disk cache),
// memory. (the chunk buffers against memory_cache=), node.<name>. (each node's health, in index
// order) and daemon. (the daemon's memory). Values are non-negative decimal integers; backing_off,
// awaiting_probe, unanswered and down are 0 or 1. Names are stable: a script may rely on them, and
// new numbers are only ever added. A node name is written with '%', whitespace and control bytes as
// %XX, so that every line splits into exactly two fields.
//
// The names of the counters come from each counter struct's ForEach, next to their fields, so a
// new counter shows up without an edit here. FormatStats takes its sources as arguments, so that
// a test can check the exact text; MountStatsText gathers them from a mount's live objects.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/result.h"
#include "fs/chunk_store.h"
#include "fs/disk_cache.h"
#include "fs/file_system.h"
#include "netfetch/fetcher.h"

namespace ckptfs::cli {

struct CacheStats {
  std::uint64_t used_bytes = 0;
  std::uint64_t capacity_bytes = 0;
  std::uint64_t entries = 0;  // Whole and partial chunks.
};

// The daemon's resident memory, now and at its peak (VmRSS and VmHWM of /proc/self/status).
struct DaemonMemory {
  std::uint64_t rss_bytes = 0;
  std::uint64_t peak_rss_bytes = 0;
};

// What FormatStats shows. The counters are read as the text is written, each once (the text is
// not one atomic snapshot).
struct StatsSources {
  const fs::FileSystemCounters& fs;
  const fs::ChunkStoreCounters& store;
  const netfetch::FetchCounters& fetch;
  CacheStats cache;
  fs::ChunkStore::Memory memory;
  std::vector<netfetch::NodeHealth> nodes;
  DaemonMemory daemon;
};

// The text described at the top of this file.
std::string FormatStats(const StatsSources& stats);

// One mount for FormatPrometheus: where it is, and its text (FormatStats) or why it could not
// be read.
struct MountStats {
  std::string mountpoint;
  Result<std::string> text;
};

// The mounts' statistics in the Prometheus text format (0.0.4), for node_exporter's textfile
// collector or a scraper. First ckptfs_up{mountpoint="..."}, 1 or 0 for each mount, so that a
// mount whose daemon did not answer is seen; then each "name value" line as the metric
// ckptfs_<name, '.' as '_'> labelled with its mountpoint, node.<NAME>.<field> lines as
// ckptfs_node_<field> with a node label (the name unescaped). fs., store. and fetch. numbers
// count since the mount started: counters, named with the suffix _total; the others are gauges.
// Each family's samples follow its one TYPE line, in the order of `mounts`. Lines that are not
// a name and a number are left out.
std::string FormatPrometheus(const std::vector<MountStats>& mounts);

// VmRSS and VmHWM of a /proc/<pid>/status text, in bytes; 0 for a field that is missing.
DaemonMemory ParseProcStatus(std::string_view status);

// The text of one mount, from its live objects and /proc/self/status.
// Thread safety: may be called from many threads, while the mount serves.
std::string MountStatsText(const fs::FileSystem& file_system, const fs::ChunkStore& store,
                           const netfetch::RetryingFetcher& fetcher, const fs::DiskCache& cache);

// The statistics text of the ckptfs mount whose root is `mountpoint` (its fs::kStatsXattr).
// FailedPrecondition when the path is not the root of a ckptfs mount (it has no such attribute),
// NotFound when it does not exist, DeadlineExceeded when its daemon has not answered within
// `timeout` (stopped or hung: the call would wait for ever), other errors as getxattr(2) gives
// them. The call is made by a child process, killed at the timeout. Call it before any thread
// starts (it forks).
Result<std::string> ReadMountStats(const std::string& mountpoint,
                                   Duration timeout = std::chrono::seconds(5));

}  // namespace ckptfs::cli
