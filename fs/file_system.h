// FileSystem: the FUSE low-level adapter that serves an index as a read-only directory tree.
//
// Inode numbers are index entry ids (the root is FUSE_ROOT_ID == index::kRootId). Metadata comes
// from the index with long kernel cache timeouts, since a mounted index never changes. Reads go
// through ChunkStore; sequential readers get readahead (fs/readahead.h), which continues into the
// next files of the directory when a file is read to its end (ReadFile). Every write-type
// operation answers EROFS. A file's extents are validated the first time it is opened; a file that
// fails gets EIO with the reason logged, the rest of the mount keeps working.
//
// The root directory has one extended attribute, kStatsXattr, whose value is the mount's runtime
// statistics as the owner's FileSystemOptions::stats_text makes them (fs/ knows neither what they
// are nor how they are gathered); every other inode has none.
//
// Errors cross into errno in exactly one place (ReplyError); every EIO is counted by cause.
// No exception escapes into libfuse: std::bad_alloc becomes ENOMEM, anything else EIO.
//
// Thread safety: the handlers run on libfuse's worker threads concurrently.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>

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
  // The value of the root's kStatsXattr, made anew for each getxattr (on FUSE worker threads,
  // possibly several at once). Empty: the attribute does not exist.
  std::function<std::string()> stats_text;
};

// The extended attribute of the mount's root that holds its runtime statistics.
inline constexpr std::string_view kStatsXattr = "user.ckptfs.stats";

// Asynchronous requests (readahead, and so every read of a file through the page cache) the
// kernel keeps under way at once; it queues the rest. A read of a chunk whose nodes are all down
// waits up to the read deadline, and with the kernel's default of 12 a dozen such reads made
// every other read of the mount wait as long, bytes on a live node or in the cache included.
inline constexpr unsigned kMaxBackgroundRequests = 64;
// FUSE worker threads at most: every background request may wait in a read, with room left for
// lookups, opens and reads of user threads beside them. Idle threads beyond a few exit.
inline constexpr int kMaxWorkerThreads = 96;

struct FileSystemCounters {
  std::atomic<std::uint64_t> reads{0};
  std::atomic<std::uint64_t> bytes_read{0};
  std::atomic<std::uint64_t> lookups{0};       // LOOKUP requests: names not listed with attributes.
  std::atomic<std::uint64_t> eio_fetch{0};     // No replica delivered a chunk in time.
  std::atomic<std::uint64_t> eio_index{0};     // The index query failed or was inconsistent.
  std::atomic<std::uint64_t> eio_invalid{0};   // A file failed its validation at open.
  std::atomic<std::uint64_t> eio_internal{0};  // An unexpected exception.
  std::atomic<std::uint64_t> xattr_requests{0};  // getxattr and listxattr requests answered.

  // Calls visit(name, value) for each counter, in the order above; the names are the ones
  // `ckptfs stats` shows.
  template <typename Visit>
  void ForEach(Visit&& visit) const {
    visit("reads", reads.load());
    visit("bytes_read", bytes_read.load());
    visit("lookups", lookups.load());
    visit("eio_fetch", eio_fetch.load());
    visit("eio_index", eio_index.load());
    visit("eio_invalid", eio_invalid.load());
    visit("eio_internal", eio_internal.load());
    visit("xattr_requests", xattr_requests.load());
  }
};

// The index as the chunk store's ReplicaSource.
class IndexReplicas final : public ReplicaSource {
 public:
  explicit IndexReplicas(const index::IndexReader* index) : index_(index) {}
  Result<std::vector<std::int64_t>> Replicas(std::int64_t chunk_id) override {
    return index_->Replicas(chunk_id);
  }
  Result<index::BlockList> Blocks(std::int64_t chunk_id) override {
    return index_->Blocks(chunk_id);
  }

 private:
  const index::IndexReader* index_;
};

// The windows of streams that read ahead into files not opened yet: file id → window. Opening
// such a file soon after takes its window (Take), so the stream goes on at full speed. Bounded in
// number (the oldest entry goes first) and in age: a stream whose reader stopped, or a file opened
// much later for something else (a header read), must not start with a large window.
// Thread safety: all methods may be called from many threads.
class WindowHandoff {
 public:
  explicit WindowHandoff(Clock* clock, std::size_t capacity = 64,
                         Duration max_age = std::chrono::seconds(10))
      : clock_(clock), capacity_(capacity), max_age_(max_age) {}

  // Records that a stream with `window` read ahead into `file`; the larger window wins when the
  // file is already recorded.
  void Put(std::uint64_t file, std::uint64_t window);
  // The window recorded for `file` within max_age, which is forgotten; 0 when there is none.
  std::uint64_t Take(std::uint64_t file);

 private:
  struct Handoff {
    std::uint64_t file = 0;
    std::uint64_t window = 0;
    TimePoint at;
  };
  using Entries = std::deque<Handoff>;
  Entries::iterator Find(std::uint64_t file);  // REQUIRES: mu_ held.

  Clock* const clock_;
  const std::size_t capacity_;
  const Duration max_age_;
  std::mutex mu_;
  Entries windows_;  // GUARDED_BY(mu_): oldest first.
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
  // Sends the pieces of one read to whoever asked for it (the kernel, for OpRead).
  using Reply = std::function<void(const std::vector<Part>& parts)>;

  // The verified chunk pieces that make up bytes [offset, offset + length) of `file`, in order,
  // fetching the chunks it spans in parallel. REQUIRES: the range lies within the file.
  // With `early` set, a range within one chunk that has to be fetched is given to *early from
  // within the fetch, as soon as it is verified (ChunkStore::Get); the result is then empty, or
  // an error of the fetch that came after.
  Result<std::vector<Part>> GatherRange(std::uint64_t file, std::uint64_t offset,
                                        std::size_t length, Access access, TimePoint deadline,
                                        const Reply* early = nullptr);

  // GatherRange of a range within `extent`'s chunk, given to `early` from within the fetch when
  // the chunk has to be fetched.
  Result<std::vector<Part>> GatherEarly(const index::Extent& extent, std::uint64_t offset,
                                        std::size_t length, Access access, TimePoint deadline,
                                        const Reply& early);

  // GatherRange, copied into dst.
  Status ReadRange(std::uint64_t file, std::uint64_t offset, std::span<std::uint8_t> dst,
                   TimePoint deadline);
  // Queues background fetches for the chunks overlapping `range` of `file`.
  void PrefetchRange(std::uint64_t file, ByteRange range);

  // How far the readahead of one open file got into the files after it in its directory.
  struct SpillCursor {
    std::uint64_t file = 0;     // The sibling being read ahead (the open file itself at first).
    std::uint64_t size = 0;     // Its size (0 for the open file: nothing of it is spilled into).
    std::uint64_t covered = 0;  // Bytes of it queued, from offset 0.
    std::uint64_t total = 0;    // Bytes queued in all siblings; at most max_window.
    std::uint64_t first = 0;    // The first sibling: the file the stream opens next.
    bool done = false;          // The end of the directory was reached (or the index failed).
  };
  // State of one open file handle (fuse_file_info::fh). The two mutexes are never held together:
  // mu only around the Readahead decision, spill_mu across the index queries of a spill (local
  // SQLite, never the network), so concurrent reads of the handle do not wait for a spill.
  struct OpenFile {
    index::Entry entry;
    std::mutex mu;
    Readahead readahead;  // GUARDED_BY(mu)
    std::mutex spill_mu;
    SpillCursor spill;  // GUARDED_BY(spill_mu)
  };
  // A handle for `entry`, a regular file that passed validation; its readahead continues the
  // stream that read ahead into it, if any. The file system owns it until CloseHandle (the
  // kernel's RELEASE); handles never released, because a signal ended the session before the
  // kernel's RELEASE was read, are freed with the file system.
  OpenFile* OpenHandle(index::Entry entry);
  // Frees a handle of OpenHandle. REQUIRES: no read of it is running or will start.
  void CloseHandle(OpenFile* file);
  // Handles opened and not yet closed.
  std::size_t open_handles() const;
  // Bytes [offset, offset + length) of the open file as GatherRange gives them, after queuing the
  // readahead this read asks for, in this file and in the files after it (OpRead is this and the
  // reply). Calls `reply` exactly once with the bytes, or returns the error without calling it.
  // A read that has to fetch its chunk gets its reply from within the fetch, on this thread, as
  // soon as its bytes are verified; the call returns once the fetch has ended.
  // REQUIRES: length > 0 and the range lies within the file.
  Status ReadFile(OpenFile& file, std::uint64_t offset, std::size_t length, TimePoint deadline,
                  const Reply& reply);

  index::IndexReader& index() { return *index_; }
  ChunkStore& store() { return *store_; }
  const FileSystemOptions& options() const { return options_; }
  const FileSystemCounters& counters() const { return counters_; }
  FileSystemCounters& mutable_counters() { return counters_; }
  Clock& clock() { return *clock_; }

  // The names of the extended attributes of inode `ino`, each followed by a NUL, as listxattr
  // returns them: kStatsXattr for the root when stats_text is set, else nothing.
  std::string ListXattr(std::uint64_t ino) const;
  // The value of extended attribute `name` of inode `ino`; nullopt when there is no such
  // attribute (ENODATA).
  std::optional<std::string> GetXattr(std::uint64_t ino, std::string_view name) const;
  // Whether a name like `name` can name an attribute here at all: only the user. namespace can.
  // The others (security., system. for ACLs, trusted.) are answered EOPNOTSUPP rather than
  // ENODATA, because that is what makes `ls -l` stop asking for every file.
  static bool HasXattrNamespace(std::string_view name);

  // Runs ValidateFile once per file id; remembers successes only.
  Status ValidateOnce(std::uint64_t file);

 private:
  // Queues fetches of the next `excess` bytes of the regular files after `file` in its directory,
  // whole files from offset 0 and part of the last one. Records `window` for each file touched,
  // and for the first of them again, which the stream opens next with the window it has now.
  void SpillIntoNextFiles(OpenFile& file, std::uint64_t excess, std::uint64_t window);
  // Moves `cursor` to the next regular, non-empty, valid file after cursor.file among the
  // children of `parent`, in id order (which is name order). False at the end of the directory.
  bool NextSibling(std::uint64_t parent, SpillCursor& cursor);
  // Aligned space to read each of `lengths` bytes from a disk cache file, all taken at once; a
  // buffer goes back to a small pool when its last user drops it, so that replies do not map and
  // fault in fresh memory every time. At most kMaxScratchInUse are out (more only for one read
  // that needs more): a caller waits for the others' replies, which hold them only while they
  // read the disk and reply, since one read takes all it needs at once, after its fetches.
  // Without the bound their memory grew with the reads under way (kMaxBackgroundRequests).
  std::vector<std::shared_ptr<Buffer>> TakeScratch(std::span<const std::size_t> lengths);
  // The part of `data` at [offset, offset + length), read from disk into `scratch` (from
  // TakeScratch; may be null when data is in memory) if it is not in memory.
  Result<Part> Resolve(const ChunkKey& key, ChunkData data, std::uint64_t offset,
                       std::size_t length, std::shared_ptr<Buffer> scratch);
  // Resolve; when the part was to be read from a cache file and that failed, the entry is
  // dropped (ChunkStore::DropUnreadable) and the chunk got again, once: from the nodes then.
  Result<Part> ResolveOrRefetch(const ChunkKey& key, ChunkData data, std::uint64_t offset,
                                std::size_t length, Access access, TimePoint deadline,
                                const std::shared_ptr<Buffer>& scratch);

  index::IndexReader* index_;
  ChunkStore* store_;
  Clock* clock_;
  FileSystemOptions options_;
  FileSystemCounters counters_;
  std::mutex validated_mu_;
  std::unordered_set<std::uint64_t> validated_;  // GUARDED_BY(validated_mu_)
  std::mutex scratch_mu_;
  std::condition_variable scratch_cv_;
  std::vector<std::unique_ptr<Buffer>> scratch_;  // GUARDED_BY(scratch_mu_)
  std::size_t scratch_in_use_ = 0;                // GUARDED_BY(scratch_mu_)
  WindowHandoff handoff_;
  mutable std::mutex open_mu_;
  std::unordered_map<OpenFile*, std::unique_ptr<OpenFile>> open_files_;  // GUARDED_BY(open_mu_)
};

}  // namespace ckptfs::fs
