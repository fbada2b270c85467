// Warmup: fetches the chunks of an index (all of them, or those of some of its files and
// directories) into a cache directory ahead of use, each verified as a mount verifies it, so that
// mounts on this machine read them from the local disk: staging a model on a machine before the
// job that loads it starts, with or without a mount. Mounts already running on the directory
// find what it wrote (DiskCache::Has).
//
// Chunks already cached are not fetched again (they are marked used). The chunks asked for must
// fit in the cache's bound as a whole (otherwise the warmup would evict what it fetched first):
// FailedPrecondition before any fetch when they do not. A chunk that cannot be fetched (every
// replica failed within the deadline) is reported and the others go on. Memory: one chunk buffer
// per job, and a list of the chunks asked for (about 50 bytes each).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/result.h"
#include "fs/disk_cache.h"
#include "index/reader.h"
#include "netfetch/fetcher.h"

namespace ckptfs::cli {

struct WarmupOptions {
  // Files and directories of the checkpoint, relative to its root ("a/b.bin"; "" or "." is the
  // root); empty: the whole index. Directories count with everything below them; symlinks are
  // not followed.
  std::vector<std::string> paths;
  int jobs = 8;                      // Chunks fetched at a time.
  Duration chunk_timeout{};          // How long one chunk may take, failover included.
  std::ostream* progress = nullptr;  // A line rewritten each second (a terminal), or nothing.
};

struct WarmupReport {
  std::uint64_t chunks = 0, bytes = 0;                // Distinct chunks asked for.
  std::uint64_t cached_chunks = 0, cached_bytes = 0;  // Of those, already in the cache.
  std::uint64_t fetched_chunks = 0, fetched_bytes = 0;
  std::uint64_t failed_chunks = 0;
  std::vector<std::string> failures;  // "chunk HEX: reason", the first few.
  Duration elapsed{};                 // Of the fetches.
};

Result<WarmupReport> Warmup(const index::IndexReader& index, netfetch::ChunkFetcher& fetcher,
                            fs::DiskCache& cache, Clock& clock, const WarmupOptions& options);

}  // namespace ckptfs::cli
