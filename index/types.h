// The records of a ckptfs index, as the reader hands them out and the writer takes them in.
// See docs/INDEX.md for the on-disk schema.
#pragma once

#include <cstdint>
#include <string>

#include "common/digest.h"

namespace ckptfs::index {

// The format this build reads and writes (meta.schema_version).
inline constexpr int kSchemaVersion = 1;
// entries.id of the root directory; equal to FUSE_ROOT_ID so inode numbers are entry ids.
inline constexpr std::uint64_t kRootId = 1;

enum class EntryType : int { kFile = 1, kDirectory = 2, kSymlink = 3 };

struct Entry {
  std::uint64_t id = 0;
  std::uint64_t parent = 0;
  std::string name;  // Empty for the root.
  EntryType type = EntryType::kFile;
  std::uint32_t mode = 0;  // Permission bits only (07777); the type comes from `type`.
  std::uint64_t size = 0;  // Bytes for files, target length for symlinks, 0 for directories.
  std::int64_t mtime_ns = 0;
  std::string target;  // Symlinks only.
};

struct Node {
  std::int64_t id = 0;
  std::string name;
  std::string url;  // Base URL without a trailing slash; objects live at <url>/chunks/<hh>/<hex>.
};

// One piece of a file: bytes [offset, offset + size) of the file are the chunk's bytes.
struct Extent {
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
  std::int64_t chunk_id = 0;
  Digest digest;
};

// Summary figures written by publish into meta, used by statfs and `ckptfs` summaries.
struct IndexStats {
  std::uint64_t files = 0;
  std::uint64_t directories = 0;
  std::uint64_t bytes = 0;        // Sum of file sizes.
  std::uint64_t chunks = 0;       // Unique chunks.
  std::uint64_t chunk_bytes = 0;  // Sum of unique chunk sizes.
};

// A name is valid when it is non-empty, not "." or "..", and has no '/' or NUL.
bool IsValidName(const std::string& name);

// Relative object path of a chunk on a node: "chunks/<hh>/<64 hex>".
std::string ChunkObjectPath(const Digest& digest);

}  // namespace ckptfs::index
