// LocalIndexes: indexes named by path or by http(s) URL, as local files that SQLite can open.
//
// The commands that read an index whole (check, gc) take either; an index URL is what a publish
// to `-o URL` leaves and what machines mount. A URL's index is downloaded (GET, within
// kIndexTransferTimeout) into a temporary directory of this object's own, removed with it.
#pragma once

#include <optional>
#include <string>

#include "common/file_io.h"
#include "common/result.h"
#include "netfetch/transport.h"

namespace ckptfs::cli {

class LocalIndexes {
 public:
  // `temp_dir` empty: $TMPDIR, else /tmp. `stem` names the temporary directory.
  LocalIndexes(netfetch::Transport& transport, std::string temp_dir, std::string stem)
      : transport_(transport), temp_dir_(std::move(temp_dir)), stem_(std::move(stem)) {}

  // The local file for `path_or_url`: a path as it is, a URL downloaded.
  Result<std::string> Get(const std::string& path_or_url);

 private:
  netfetch::Transport& transport_;
  std::string temp_dir_, stem_;
  std::optional<TemporaryDir> downloads_;  // Made at the first URL.
  int downloaded_ = 0;
};

}  // namespace ckptfs::cli
