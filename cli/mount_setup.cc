#include "cli/mount_setup.h"

#include <algorithm>
#include <ctime>

#include "cli/index_download.h"
#include "cli/node_urls.h"
#include "common/file_io.h"

namespace ckptfs::cli {

Result<std::string> ChooseCacheDir(const MountOptions& options) {
  if (!options.cache_dir.empty()) return options.cache_dir;
  CKPTFS_ASSIGN_OR_RETURN(std::string dir, DefaultCacheDir());
  CKPTFS_RETURN_IF_ERROR(MakeDirs(dir.substr(0, dir.rfind('/')), 0700));
  return dir;
}

Result<std::unique_ptr<index::IndexReader>> OpenIndex(const MountOptions& options,
                                                      const std::string& cache_dir,
                                                      netfetch::Transport& transport) {
  std::string path = options.index;
  if (IsHttpUrl(path)) {
    CKPTFS_ASSIGN_OR_RETURN(path, LocalIndexCopy({.url = options.index,
                                                  .cache_dir = cache_dir,
                                                  .timeout = kIndexTransferTimeout,
                                                  .sha256 = options.index_sha256,
                                                  .fallback = options.index_fallback,
                                                  .now = std::time(nullptr)},
                                                 transport));
  }
  return index::IndexReader::Open(path, options.index_sha256);
}

Result<std::vector<netfetch::NodeEndpoint>> Endpoints(const index::IndexReader& index,
                                                      const MountOptions& options) {
  std::vector<netfetch::NodeEndpoint> endpoints;
  for (const index::Node& node : index.nodes()) {
    endpoints.push_back({node.id, node.name, node.url});
  }
  CKPTFS_RETURN_IF_ERROR(OverrideNodeUrls(options.node_urls, "option node.", endpoints));
  return endpoints;
}

netfetch::RetryOptions RetryOptionsFor(const MountOptions& options) {
  netfetch::RetryOptions retry;
  retry.attempt_timeout = std::min<Duration>(retry.attempt_timeout, options.timeout);
  retry.lone_fetch_parts = options.fetch_parts;
  retry.stall_timeout = options.stall_timeout;
  // The first reads to meet a dead node wait out their deadline; those that start once it has
  // been dead for half of one fail at once.
  retry.down_after = options.timeout / 2;
  return retry;
}

}  // namespace ckptfs::cli
