// The runtime statistics of a mount: what the root's user.ckptfs.stats attribute holds and
// `ckptfs stats MOUNTPOINT` prints.
//
// The text is one "name value" line per number, like /proc/vmstat, with a dotted prefix naming
// where the number comes from: fs. (FUSE requests, fs::FileSystemCounters), store. (the chunk
// store, fs::ChunkStoreCounters), fetch. (HTTP, netfetch::FetchCounters), cache. (the disk cache),
// node.<name>. (each node's health, in index order) and daemon. (the daemon's memory). Values
// are non-negative decimal integers; backing_off is 0 or 1. Names are stable: a script may rely
// on them, and new numbers are only ever added. A node name is written with '%', whitespace and
// control bytes as %XX, so that every line splits into exactly two fields.
//
// FormatStats works on plain copies (StatsSnapshot), so that a test can check the exact text;
// CollectStats takes those copies from the live objects of a mount.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "fs/chunk_store.h"
#include "fs/disk_cache.h"
#include "fs/file_system.h"
#include "netfetch/fetcher.h"

namespace ckptfs::cli {

// Copies of fs::FileSystemCounters.
struct FsStats {
  std::uint64_t reads = 0;
  std::uint64_t bytes_read = 0;
  std::uint64_t eio_fetch = 0;
  std::uint64_t eio_index = 0;
  std::uint64_t eio_invalid = 0;
  std::uint64_t eio_internal = 0;
};

// Copies of fs::ChunkStoreCounters.
struct StoreStats {
  std::uint64_t memory_hits = 0;
  std::uint64_t cache_hits = 0;
  std::uint64_t disk_loads = 0;
  std::uint64_t fetches = 0;
  std::uint64_t block_fetches = 0;
  std::uint64_t partial_hits = 0;
  std::uint64_t early_reads = 0;
  std::uint64_t joined = 0;
  std::uint64_t fetch_errors = 0;
  std::uint64_t cache_write_errors = 0;
  std::uint64_t prefetch_queued = 0;
  std::uint64_t prefetch_dropped = 0;
};

// Copies of netfetch::FetchCounters.
struct FetchStats {
  std::uint64_t fetches = 0;
  std::uint64_t attempts = 0;
  std::uint64_t failed_attempts = 0;
  std::uint64_t digest_mismatches = 0;
  std::uint64_t bytes_fetched = 0;
  std::uint64_t failed_fetches = 0;
  std::uint64_t resumed_attempts = 0;
  std::uint64_t range_fetches = 0;
  std::uint64_t range_bytes_fetched = 0;
  std::uint64_t failed_range_fetches = 0;
};

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

struct StatsSnapshot {
  FsStats fs;
  StoreStats store;
  FetchStats fetch;
  CacheStats cache;
  std::vector<netfetch::NodeHealth> nodes;
  DaemonMemory daemon;
};

// The text described at the top of this file.
std::string FormatStats(const StatsSnapshot& stats);

// Plain copies of live counters (each value read once; the set is not one atomic snapshot).
FsStats CopyStats(const fs::FileSystemCounters& counters);
StoreStats CopyStats(const fs::ChunkStoreCounters& counters);
FetchStats CopyStats(const netfetch::FetchCounters& counters);
CacheStats CopyStats(const fs::DiskCache& cache);

// VmRSS and VmHWM of a /proc/<pid>/status text, in bytes; 0 for a field that is missing.
DaemonMemory ParseProcStatus(std::string_view status);

// Everything FormatStats shows, from the objects of one mount and /proc/self/status.
// Thread safety: may be called from many threads, while the mount serves.
StatsSnapshot CollectStats(const fs::FileSystem& file_system, const fs::ChunkStore& store,
                           const netfetch::RetryingFetcher& fetcher, const fs::DiskCache& cache);

// The statistics text of the ckptfs mount whose root is `mountpoint` (its fs::kStatsXattr).
// FailedPrecondition when the path is not the root of a ckptfs mount (it has no such attribute),
// NotFound when it does not exist, other errors as getxattr(2) gives them.
Result<std::string> ReadMountStats(const std::string& mountpoint);

}  // namespace ckptfs::cli
