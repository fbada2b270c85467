#include "cli/local_index.h"

#include "cli/node_urls.h"

namespace ckptfs::cli {

Result<std::string> LocalIndexes::Get(const std::string& path_or_url) {
  if (!IsHttpUrl(path_or_url)) return path_or_url;
  if (!downloads_) {
    CKPTFS_ASSIGN_OR_RETURN(downloads_, TemporaryDir::Make(temp_dir_, stem_));
  }
  const std::string path = downloads_->path() + "/index-" + std::to_string(downloaded_++);
  Result<netfetch::FileFetch> got = transport_.GetToFile(path_or_url, path, kIndexTransferTimeout);
  if (!got.ok()) return got.status().WithContext("cannot download the index");
  return path;
}

}  // namespace ckptfs::cli
