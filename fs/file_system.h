// FileSystem: the FUSE low-level adapter that serves an index as a read-only directory tree.
//
// Inode numbers are index entry ids (the root is FUSE_ROOT_ID == index::kRootId). Metadata comes
// from the index with long kernel cache timeouts, since a mounted index never changes. Reads go
// through ChunkStore; sequential readers get readahead (fs/readahead.h). Every write-type
// operation answers EROFS. A file's extents are validated the first time it is opened; a file that
// fails gets EIO with the reason logged, the rest of the mount keeps working.
//
// Errors cross into errno in exactly one place (ReplyError); every EIO is counted by cause.
// No exception escapes into libfuse: std::bad_alloc becomes ENOMEM, anything else EIO.
//
// Thread safety: the handlers run on libfuse's worker threads concurrently.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_set>

#include "common/buffer.h"
#include "common/clock.h"
#include "common/result.h"
#include "fs/chunk_store.h"
#include "fs/readahead.h"
#include "index/reader.h"

struct fuse_lowlevel_ops;

namespace ckptfs::fs {

struct FileSystemOptions {
  Duration read_timeout = std::chrono::seconds(20);  // Deadline for one read request.
  double cache_timeout_s = 86400;                    // Kernel entry/attr cache lifetime.
  uid_t uid = 0;                                     // Owner shown for every entry.
  gid_t gid = 0;
  ReadaheadOptions readahead;
  // Called once the kernel's INIT request has been handled (on a FUSE worker thread).
  std::function<void()> on_init;
};

struct FileSystemCounters {
  std::atomic<std::uint64_t> reads{0};
  std::atomic<std::uint64_t> bytes_read{0};
  std::atomic<std::uint64_t> eio_fetch{0};     // No replica delivered a chunk in time.
  std::atomic<std::uint64_t> eio_index{0};     // The index query failed or was inconsistent.
  std::atomic<std::uint64_t> eio_invalid{0};   // A file failed its validation at open.
  std::atomic<std::uint64_t> eio_internal{0};  // An unexpected exception.
};

// The index as the chunk store's ReplicaSource.
class IndexReplicas final : public ReplicaSource {
 public:
  explicit IndexReplicas(index::IndexReader* index) : index_(index) {}
  Result<std::vector<std::int64_t>> Replicas(std::int64_t chunk_id) override {
    return index_->Replicas(chunk_id);
  }
  Result<index::BlockList> Blocks(std::int64_t chunk_id) override {
    return index_->Blocks(chunk_id);
  }

 private:
  index::IndexReader* index_;
};

class FileSystem {
 public:
  FileSystem(index::IndexReader* index, ChunkStore* store, Clock* clock, FileSystemOptions options);

  // The operations table; fuse_session_new's userdata must be this FileSystem.
  static const fuse_lowlevel_ops& Operations();

  // One piece of a read: verified bytes of one chunk, in memory, kept alive by `owner` (a chunk
  // buffer of the store, or scratch space the piece was read into from the disk cache).
  struct Part {
    std::shared_ptr<const Buffer> owner;
    std::span<const std::uint8_t> bytes;
  };
  // The verified chunk pieces that make up bytes [offset, offset + length) of `file`, in order,
  // fetching the chunks it spans in parallel. REQUIRES: the range lies within the file.
  Result<std::vector<Part>> GatherRange(std::uint64_t file, std::uint64_t offset,
                                        std::size_t length, Access access, TimePoint deadline);

  // GatherRange, copied into dst.
  Status ReadRange(std::uint64_t file, std::uint64_t offset, std::span<std::uint8_t> dst,
                   TimePoint deadline);
  // Queues background fetches for the chunks overlapping `range` of `file`.
  void PrefetchRange(std::uint64_t file, ByteRange range);

  index::IndexReader& index() { return *index_; }
  ChunkStore& store() { return *store_; }
  const FileSystemOptions& options() const { return options_; }
  const FileSystemCounters& counters() const { return counters_; }
  FileSystemCounters& mutable_counters() { return counters_; }
  Clock& clock() { return *clock_; }

  // Runs ValidateFile once per file id; remembers successes only.
  Status ValidateOnce(std::uint64_t file);

 private:
  // Aligned space to read `length` bytes from a disk cache file; returned to a small pool when
  // the last user drops it, so replies do not map and fault in fresh memory every time.
  std::shared_ptr<Buffer> TakeScratch(std::size_t length);
  // The part of `data` at [offset, offset + length), read from disk if it is not in memory.
  Result<Part> Resolve(const ChunkKey& key, ChunkData data, std::uint64_t offset,
                       std::size_t length);

  index::IndexReader* index_;
  ChunkStore* store_;
  Clock* clock_;
  FileSystemOptions options_;
  FileSystemCounters counters_;
  std::mutex validated_mu_;
  std::unordered_set<std::uint64_t> validated_;  // GUARDED_BY(validated_mu_)
  std::mutex scratch_mu_;
  std::vector<std::unique_ptr<Buffer>> scratch_;  // GUARDED_BY(scratch_mu_)
};

}  // namespace ckptfs::fs
