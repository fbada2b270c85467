// The records of a ckptfs index, as the reader hands them out and the writer takes them in.
// See docs/INDEX.md for the on-disk schema.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/digest.h"

namespace ckptfs::index {

// The newest format this build reads, and the one it writes (meta.schema_version). Version 1
// (no block digests) is still read.
inline constexpr int kSchemaVersion = 2;
// Block size publish uses unless told otherwise (meta.block_size).
inline constexpr std::uint64_t kDefaultBlockSize = 64 << 10;
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

// One row of the chunks table.
struct ChunkRecord {
  std::int64_t id = 0;
  Digest digest;
  std::uint64_t size = 0;
};

// A chunk that node `node` holds a replica of.
struct NodeChunk {
  std::int64_t node = 0;
  ChunkRecord chunk;
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

// The block digests of one chunk (schema v2): the SHA-256 of each of its consecutive
// block_size-byte blocks, the last one possibly shorter. Empty, with block_size 0, for a chunk of
// a v1 index, which has none.
struct BlockList {
  std::uint64_t block_size = 0;
  std::vector<Digest> digests;  // ceil(chunk size / block_size) of them.
};

// ceil(chunk_bytes / block_size). REQUIRES: block_size > 0.
inline std::uint64_t BlockCount(std::uint64_t chunk_bytes, std::uint64_t block_size) {
  return chunk_bytes / block_size + (chunk_bytes % block_size != 0 ? 1 : 0);
}

// True when `block_size` may go with `chunk_size` in an index: a power of two from 4 KiB to
// chunk_size.
bool IsValidBlockSize(std::uint64_t block_size, std::uint64_t chunk_size);

// The digests publish records for one chunk, computed in one pass over its bytes: each block is
// hashed on its own and fed to the whole-chunk hash right after, while it is in the CPU cache.
struct ChunkDigests {
  Digest chunk;
  std::vector<Digest> blocks;
};
// REQUIRES: block_size > 0.
ChunkDigests HashChunk(std::span<const std::uint8_t> bytes, std::uint64_t block_size);

// A name is valid when it is non-empty, not "." or "..", and has no '/' or NUL.
bool IsValidName(const std::string& name);

// Relative object path of a chunk on a node: "chunks/<hh>/<64 hex>".
std::string ChunkObjectPath(const Digest& digest);

}  // namespace ckptfs::index
