// `ckptfs publish`: turns a directory into chunk objects on nodes plus one index file.
//
// Order of work, so that a failure never leaves an index that points at missing chunks: check every
// argument and walk the whole tree first (special or unreadable files are errors before anything is
// written); then chunk, hash (each chunk and each of its blocks, in one pass over the bytes,
// several chunks at a time) and store each unique chunk on its nodes (several at a time, while the
// next ones are read) while writing the index to a temporary file next to the output; wait for
// every store; make the stores durable; and only then rename the index into place. On any error the
// temporary index is removed.
#pragma once

#include <cstdint>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/result.h"
#include "netfetch/transport.h"

namespace ckptfs::cli {

struct NodeSpec {
  std::string name;
  std::string url;
};

struct PublishOptions {
  std::string source_dir;
  std::string index_path;  // A file, or an http(s) URL to PUT the index to once all is stored.
  // Where an index for a URL is written before its PUT; empty: $TMPDIR, else /tmp.
  std::string temp_dir;
  std::vector<NodeSpec> nodes;
  std::map<std::string, std::string> stores;  // Node name → directory that node serves.
  int replicas = 0;                           // 0: min(2, number of nodes).
  std::uint64_t chunk_size = 4ull << 20;
  // Size of the blocks each chunk's digests are listed for in the index (meta block_size): a
  // power of two from 4 KiB to chunk_size. A mount reads and verifies single blocks with them.
  std::uint64_t block_size = 64ull << 10;
  // Objects stored at a time, over all nodes (see ObjectUploads).
  int uploads = 8;
  // Names this publish's leases on the nodes it PUTs to (store_leases.h); empty: made from the
  // host name, the process id and random bits. Tests set it.
  std::string lease_id;
  // A terminal to show how far the publish has got on, one line rewritten at most once a
  // second; null: none.
  std::ostream* progress = nullptr;
};

// "NAME=VALUE" → {NAME, VALUE}; InvalidArgument naming `what` otherwise.
Result<std::pair<std::string, std::string>> SplitAssignment(const std::string& text,
                                                            const std::string& what);

// Publishes as described above and prints a summary to `out`. Chunks for nodes without a store
// directory are sent with HTTP PUT through `transport`, unless a HEAD finds the node has them.
// Chunks are stored while later ones are read, `options.uploads` at a time.
// `clock` times the uploads' attempts and waits between them.
Status Publish(const PublishOptions& options, netfetch::Transport& transport, Clock& clock,
               std::ostream& out);

}  // namespace ckptfs::cli
