// IndexWriter: builds a new index file for `ckptfs publish`.
//
// All rows go into one SQLite transaction; Finish() commits it and closes the file. The writer
// writes to the path it is given: publish passes a temporary name and renames it into place
// itself once every chunk object is stored, so no reader ever sees an index that points at
// missing chunks. Thread safety: one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "common/result.h"
#include "index/types.h"

namespace ckptfs::index {

class IndexWriter {
 public:
  // Creates a fresh schema v2 index at `path` (an existing file there is replaced), with the
  // schema, meta rows (format, schema_version, hash, chunk_size, block_size) and the root
  // directory (kRootId, mode 0755, mtime 0 until SetRoot is called). Every chunk is then added
  // with its block digests. InvalidArgument when chunk_size is outside 1 byte..1 GiB or
  // block_size is not a power of two from 4 KiB to chunk_size.
  static Result<std::unique_ptr<IndexWriter>> Create(const std::string& path,
                                                     std::uint64_t chunk_size,
                                                     std::uint64_t block_size);
  // The same for a schema v1 index, as ckptfs wrote before block digests: no block_size, no
  // blocks table, chunks added without block digests. For callers that do not have the chunk
  // bytes (tests of indexes written by older versions); publish writes v2.
  static Result<std::unique_ptr<IndexWriter>> Create(const std::string& path,
                                                     std::uint64_t chunk_size);
  ~IndexWriter();

  // Adds a node; returns its id. InvalidArgument for a duplicate or invalid name.
  Result<std::int64_t> AddNode(const std::string& name, const std::string& url);

  // Sets the root directory's mode and mtime.
  Status SetRoot(std::uint32_t mode, std::int64_t mtime_ns);

  // Adds an entry under `entry.parent` (entry.id is ignored); returns the new id.
  // InvalidArgument for an invalid name or a name already present in that directory.
  Result<std::uint64_t> AddEntry(const Entry& entry);

  struct AddedChunk {
    std::int64_t id = 0;
    bool is_new = false;  // False when a chunk with this digest was already in the index.
  };
  // Adds a chunk by digest with the digests of its blocks (index::HashChunk computes both; they
  // go into the blocks table, one row per chunk), or finds the one already there (dedup; the
  // blocks of a known digest are not looked at again).
  // InvalidArgument when `size` is outside 1..chunk_size or `blocks` does not hold
  // ceil(size / block_size) digests; FailedPrecondition on a v1 writer.
  Result<AddedChunk> AddChunk(const Digest& digest, std::uint64_t size,
                              std::span<const Digest> blocks);
  // Adds a chunk without block digests: only on a v1 writer (FailedPrecondition otherwise).
  Result<AddedChunk> AddChunk(const Digest& digest, std::uint64_t size);
  Status AddExtent(std::uint64_t file, std::uint64_t offset, std::int64_t chunk);
  Status AddReplica(std::int64_t chunk, std::int64_t node);

  // Records summary figures in meta, commits, and closes the database.
  Status Finish(const IndexStats& stats);

 private:
  struct Impl;
  explicit IndexWriter(std::unique_ptr<Impl> impl);
  // block_size 0 makes a v1 index.
  static Result<std::unique_ptr<IndexWriter>> CreateVersion(const std::string& path,
                                                            std::uint64_t chunk_size,
                                                            std::uint64_t block_size);
  Result<AddedChunk> AddChunkRow(const Digest& digest, std::uint64_t size,
                                 std::span<const Digest> blocks);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ckptfs::index
