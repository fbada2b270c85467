// IndexReader: the read-only view of an index that a mount serves from.
//
// Open() does the cheap checks (an SQLite file, format "ckptfs", a schema version this build
// knows, the required tables and columns, a root directory, at least one node) and fails with
// InvalidArgument and a one-line reason otherwise. Nothing is loaded whole: every call is an
// indexed query, so a mount of a million-chunk index is ready at once. ValidateFile() does the
// per-file checks the first time a file is opened. Given the SHA-256 the index must have (a
// pinned version), Open() hashes the file it opened before SQLite reads a byte of it.
//
// Thread safety: all methods may be called from many threads at once. Each calling thread gets
// its own read-only SQLite connection from a small pool, with its statements prepared once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "common/digest.h"
#include "common/result.h"
#include "index/types.h"

namespace ckptfs::index {

class IndexReader {
 public:
  // FailedPrecondition, naming both digests, when `sha256` is given and the file's differs.
  static Result<std::unique_ptr<IndexReader>> Open(const std::string& path,
                                                   const std::optional<Digest>& sha256 = {});
  ~IndexReader();

  std::uint64_t chunk_size() const;
  // meta.block_size of a v2 index; 0 for a v1 index, which has no block digests.
  std::uint64_t block_size() const;
  // meta.schema_version: 1 or 2.
  int schema_version() const;
  const IndexStats& stats() const;
  // All nodes, loaded at Open (an index has a handful).
  const std::vector<Node>& nodes() const;

  // NotFound when there is no such id.
  Result<Entry> GetEntry(std::uint64_t id) const;
  // NotFound when `parent` has no child called `name`.
  Result<Entry> Lookup(std::uint64_t parent, std::string_view name) const;
  // Children of `parent` with id > after_id, in id order, at most `limit` of them. Entries with
  // an invalid name are left out (and logged).
  Result<std::vector<Entry>> ListChildren(std::uint64_t parent, std::uint64_t after_id,
                                          std::size_t limit) const;

  // The extents of `file` that overlap [offset, offset + length), in offset order.
  Result<std::vector<Extent>> ExtentsInRange(std::uint64_t file, std::uint64_t offset,
                                             std::uint64_t length) const;
  // Chunks with id > after_id, in id order, at most `limit` of them: for tools that go over
  // every chunk (ckptfs check) a page at a time. DataLoss for a digest that is not 32 bytes or
  // a size outside 1..chunk_size.
  Result<std::vector<ChunkRecord>> ChunksAfter(std::int64_t after_id, std::size_t limit) const;
  // For each of `digests`, whether the index has a chunk of that digest: which objects of a
  // store an index still needs (ckptfs gc). One statement for the whole list.
  Result<std::vector<bool>> HasChunks(std::span<const Digest> digests) const;
  // Node ids holding a replica of `chunk` (only nodes that exist in the nodes table).
  Result<std::vector<std::int64_t>> Replicas(std::int64_t chunk) const;
  // One chunk each node holds, for every node with a replica of one of the first
  // `first_chunks` chunks (id order), nodes in the order first met: an object to ask a node
  // for without going over the whole index. Publish spreads replicas over all nodes, so any
  // node that holds something shows up within the first few chunks. DataLoss as ChunksAfter.
  Result<std::vector<NodeChunk>> ChunkPerNode(std::size_t first_chunks) const;

  // The block digests of `chunk`, from the blocks table (one query by primary key; neither
  // ExtentsInRange nor ValidateFile reads that table). An empty list, with block_size 0, for a
  // v1 index. NotFound when there is no such chunk; DataLoss when it has no blocks row, its
  // digests are not a blob of ceil(size / block_size) * 32 bytes or its size is outside
  // 1..chunk_size (the index is untrusted input).
  Result<BlockList> Blocks(std::int64_t chunk) const;

  // Per-file checks: a regular file with a valid name; extents start at 0, are contiguous and
  // add up to the size; every chunk has a 32-byte digest, a size from 1 to chunk_size and a
  // replica on a known node. DataLoss with the reason otherwise. Reads extents, chunks, replicas
  // and nodes only, never the block digests: Blocks() checks those when a chunk is fetched.
  Status ValidateFile(std::uint64_t file) const;

  // Keeps the index pages that lookups, opens and reads need mapped in memory, so that a dropped
  // page cache does not turn every metadata access into a disk read (index/resident_pages.h):
  // first every table and index but the block digests, then block digests while `budget` bytes
  // last. Returns the bytes kept. Safe to run while other threads use the reader (a mount runs
  // it in the background, so that reading up to `budget` of pages from a cold disk does not
  // delay the mount); the reader must outlive the call. Call it once. Unavailable when `stop`
  // is requested before the end.
  Result<std::uint64_t> KeepResident(std::uint64_t budget, std::stop_token stop = {});

 private:
  struct Impl;
  explicit IndexReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ckptfs::index
