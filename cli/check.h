// `ckptfs check`: are the chunks an index names still on their nodes?
//
// Mounts fail over to another replica when one is missing or damaged, so a node that lost its
// disk, or an object cut short, goes unnoticed until the last replica of some chunk goes too.
// This asks every node for every replica the index lists: with HEAD, whether the object is
// there with the right size; with `verify`, by GETting it whole and checking its SHA-256. It
// prints one line per bad replica (a few per node and kind), a line per node, and a summary, and
// fails when any replica is bad. Publishing the source again sends only what is missing; a
// damaged object must be removed from its node first (publish keeps an object of the right
// size).
//
// Chunks are taken from the index a page at a time and replicas are checked `jobs` at a time,
// so memory stays bounded whatever the size of the index (with `verify`, `jobs` chunk buffers).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "common/digest.h"
#include "common/result.h"
#include "netfetch/transport.h"

namespace ckptfs::cli {

struct CheckOptions {
  std::string index_path;  // A local file, or an http(s) URL of one.
  // Where an index URL is downloaded to for the check (and removed after); empty: $TMPDIR, else
  // /tmp.
  std::string temp_dir;
  bool verify = false;  // GET and hash every replica, not only HEAD it.
  int jobs = 8;         // Replicas checked at a time.
  // Node name → URL to ask instead of the index's (another network's name for the same node),
  // as a mount's node.NAME=URL.
  std::map<std::string, std::string> node_urls;
  // The SHA-256 the index must have (--index-sha256, as publish prints it): another version is
  // refused before anything is asked of the nodes.
  std::optional<Digest> index_sha256;
};

// What became of the replicas of one node (or of all of them).
struct ReplicaCounts {
  std::uint64_t ok = 0;
  std::uint64_t missing = 0;      // The node answered 404 or 410.
  std::uint64_t wrong_size = 0;   // There, with another size.
  std::uint64_t corrupt = 0;      // There, with the right size and other bytes (verify only).
  std::uint64_t unreachable = 0;  // No answer, or an error status other than not found.

  std::uint64_t bad() const { return missing + wrong_size + corrupt + unreachable; }
  std::uint64_t total() const { return ok + bad(); }
};

struct CheckReport {
  std::uint64_t chunks = 0;
  std::uint64_t chunks_without_good_replica = 0;  // Bytes no mount can read right now.
  std::vector<ReplicaCounts> per_node;            // Indexed like IndexReader::nodes().
  ReplicaCounts all;
};

// Checks as described above, printing to `out`. The error is for an index that cannot be read;
// bad replicas are in the report.
Result<CheckReport> Check(const CheckOptions& options, netfetch::Transport& transport,
                          std::ostream& out);

}  // namespace ckptfs::cli
