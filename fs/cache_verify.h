// VerifyCache: checks a disk cache directory (fs/disk_cache.h) against the names of its entries.
//
// A mount serves a whole cached chunk without hashing it again (that would halve warm reads), so
// a byte that changed on the local disk after the verified write (a failing disk, a file system
// bug, an edit by hand) would be served as it is. This reads every whole entry <dir>/<hh>/<hex>,
// hashes it and compares the SHA-256 with its name; with `remove` it deletes the ones that
// differ or cannot be read, which mounts then fetch again. Partial files (".part") are left
// alone: every read checks their blocks. Safe while mounts use the directory: an entry they
// evict meanwhile is skipped, one removed here is a miss for them.
//
// Memory: one prefix directory's listing per job, and a 1 MiB read buffer per job. Reads go
// around the page cache (O_DIRECT where the file system has it), so a check of a large cache
// does not push the models being served out of memory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"

namespace ckptfs::fs {

struct CacheVerifyOptions {
  std::string dir;
  bool remove = false;  // Delete the entries that fail.
  int jobs = 1;         // Prefix directories checked at once.
};

struct BadCacheEntry {
  std::string path;
  std::string reason;    // "SHA-256 is <hex>" or why it could not be read.
  bool removed = false;  // With `remove`: deleted (else `reason` also says why not).
};

struct CacheVerifyReport {
  std::uint64_t entries = 0;  // Whole entries hashed (bad ones included).
  std::uint64_t bytes = 0;
  std::vector<BadCacheEntry> bad;  // In path order.
};

// NotFound when `options.dir` does not exist, FailedPrecondition when it is not a directory,
// PermissionDenied when this user may not read it (or, with `remove`, write it) or an entry in
// it; a prefix directory that cannot be listed is an error too.
Result<CacheVerifyReport> VerifyCache(const CacheVerifyOptions& options);

}  // namespace ckptfs::fs
