// IndexDownload: the local copy of an index URL that a mount opens.
//
// A mount of an http(s) index URL downloads the index into <cache_dir>/indexes/ (a temporary
// name, then a rename) and opens the copy. Copies are of two kinds:
//  - By URL, "<SHA-256 of the URL>.ckptfs": the version the server gave last. A later mount asks
//    for it again with its ETag ("<copy>.etag") or Last-Modified (the copy's mtime), so an
//    unchanged index costs one 304; with `fallback`, a failed download mounts the copy kept.
//  - By content, "sha256-<hex>.ckptfs", for a mount that pins the version (index_sha256=): used
//    with no request at all whenever it is there and has that SHA-256, and otherwise downloaded
//    and kept only if it has. The server may have moved on to another version meanwhile, or be
//    down: the pinned one still mounts.
// A copy's access time is its last mount; copies of either kind not mounted for
// kIndexCopyLifetime are deleted by the next mount of an index URL (a running mount keeps its
// open file), so that a directory of versions published one after another does not grow for
// ever.
#pragma once

#include <chrono>
#include <ctime>
#include <optional>
#include <string>

#include "common/clock.h"
#include "common/digest.h"
#include "common/result.h"
#include "netfetch/transport.h"

namespace ckptfs::cli {

inline constexpr std::chrono::hours kIndexCopyLifetime{24 * 30};

struct IndexDownload {
  std::string url;
  std::string cache_dir;         // Copies go to its indexes/ subdirectory, made if missing.
  Duration timeout{};            // Of the download.
  std::optional<Digest> sha256;  // index_sha256=: the only version to accept.
  bool fallback = false;         // index_fallback: mount the copy by URL when the download fails.
  std::time_t now = 0;           // Wall time, for the age of copies.
};

// The local path of the index that `download` names, downloaded as the header says.
Result<std::string> LocalIndexCopy(const IndexDownload& download, netfetch::Transport& transport);

}  // namespace ckptfs::cli
