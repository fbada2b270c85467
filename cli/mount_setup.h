// What `ckptfs mount` and `ckptfs warmup` both build from MountOptions: the cache directory, the
// index and what the fetcher needs to reach its nodes.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "cli/mount_options.h"
#include "common/result.h"
#include "index/reader.h"
#include "netfetch/fetcher.h"
#include "netfetch/transport.h"

namespace ckptfs::cli {

// cache_dir=, or DefaultCacheDir() made with its parents (XDG asks for 0700): a fresh account
// has no ~/.cache yet. An explicit cache_dir= is not made here, and DiskCache::Open makes only
// itself: a data disk that is not mounted must not turn into a cache on the root file system.
Result<std::string> ChooseCacheDir(const MountOptions& options);

// The index of `options`: its path, or the local copy of its URL in `cache_dir`
// (LocalIndexCopy), checked against index_sha256= when that is given.
Result<std::unique_ptr<index::IndexReader>> OpenIndex(const MountOptions& options,
                                                      const std::string& cache_dir,
                                                      netfetch::Transport& transport);

// The index's nodes, with the URLs of node.NAME= instead of theirs.
Result<std::vector<netfetch::NodeEndpoint>> Endpoints(const index::IndexReader& index,
                                                      const MountOptions& options);

// The fetcher's limits from timeout=, stall_timeout= and fetch_parts=.
netfetch::RetryOptions RetryOptionsFor(const MountOptions& options);

}  // namespace ckptfs::cli
