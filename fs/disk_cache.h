// DiskCache: verified chunks on local disk, named by digest, bounded in size, kept across mounts.
//
// Layout: <dir>/<hh>/<64 hex> holds exactly the chunk's bytes; <dir>/tmp/ holds files being
// written. A chunk enters the cache only through Insert(), which the caller calls with bytes it
// has already verified: they are written under a temporary name and renamed into place, so a
// crash never leaves a partial file under a final name. Temporary files left by a crash are
// removed at Open(): those whose writer process is gone, or that are an hour old (another mount
// on the same directory may be writing the others). Entries whose size is not the chunk's size (a
// torn write that survived a power loss) are dropped on lookup.
//
// The least recently used entries are evicted when the total passes `capacity_bytes`. Use order
// survives restarts through file mtimes (refreshed at most once a minute per entry). When the
// file system fills up first (a write fails with no space left), the bound becomes what the cache
// holds at that moment, and least recently used entries make room for the write, which is tried
// once more: a cache_size larger than the disk has room for still caches the newest chunks,
// rather than none from then on. Once the file system has room again (other files deleted), a
// whole chunk written raises the bound towards it, up to capacity_bytes. A cache directory
// removed under a mount is made again, one <hh>/ at a time, by the writes that need it; its
// entries then are misses (OpenChunk finds them gone). Several mounts may share one directory:
// each accounts for what it found at Open(), what it inserted, and what another one wrote since
// that this one came to need (OpenChunk and Has look on disk for an entry they do not list, and
// adopt it); an entry another process evicted is simply a miss.
//
// Memory: one small record per cached chunk (about 100 bytes), so capacity / chunk size records.
// Thread safety: all methods may be called from many threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/clock.h"
#include "common/digest.h"
#include "common/log.h"
#include "common/result.h"
#include "common/unique_fd.h"

namespace ckptfs::fs {

struct DiskCacheOptions {
  std::string dir;
  std::uint64_t capacity_bytes = 10ull << 30;
  Clock* clock = nullptr;  // REQUIRED.
};

class DiskCache {
 public:
  // Creates the directory tree if needed, removes temporary files left by a crash and indexes
  // the entries already there (evicting down to capacity). Fails when the directory cannot be
  // created or written, and (FailedPrecondition) when someone other than this user and root may
  // write to it: another user owns it, or it is writable by every user.
  static Result<std::unique_ptr<DiskCache>> Open(DiskCacheOptions options);

  // The 256 prefix directories <dir>/<hh> that hold the entries, in order: the layout, for
  // whatever walks a cache directory (Open, VerifyCache).
  static std::vector<std::string> PrefixDirs(const std::string& dir);

  // Opens the cached chunk for reading and marks it used. The descriptor may be open with
  // O_DIRECT: read it with PreadAligned (common/file_io.h). NotFound when it is not cached (or
  // its file has the wrong size, in which case it is removed).
  Result<UniqueFd> OpenChunk(const Digest& digest, std::uint64_t size);

  // True when the chunk is listed as cached (no system call; does not mark it used).
  bool Contains(const Digest& digest) const;
  // True when the chunk is cached: listed, or written by another process on this directory
  // since Open(), which one stat finds and which is then listed as most recently used.
  bool Has(const Digest& digest, std::uint64_t size);

  // Removes the chunk's whole entry, if any: its file could be opened but not read (a bad
  // sector, a file cut short), so the next OpenChunk is a miss and the chunk is fetched again.
  // True when the entry was listed: of two reads that met the same bad file, only the first
  // drops it.
  bool Drop(const Digest& digest);

  // Stores verified bytes under `digest` and evicts older entries beyond capacity. A chunk
  // larger than the whole capacity is not stored (OK is returned: the cache is best effort).
  // Replaces the chunk's partial file, if any.
  Status Insert(const Digest& digest, std::span<const std::uint8_t> bytes);

  // Partial chunks: blocks fetched for isolated reads, written at their offsets into a sparse
  // file "<hex>.part". The file says nothing about which blocks it holds (holes read as zeros,
  // a crash may leave a torn block): whoever reads it checks each block against its digest.
  // Accounted by the bytes written; evicted like whole chunks. No-op when the whole chunk is
  // cached.
  Status InsertBlocks(const Digest& digest, std::uint64_t offset,
                      std::span<const std::uint8_t> bytes);
  // The chunk's partial file, marked used (and listed, when another mount on the directory
  // wrote it); NotFound when there is none.
  Result<UniqueFd> OpenPartial(const Digest& digest);

  std::uint64_t used_bytes() const;
  // The bound now: capacity_bytes of the options, or less while the file system is full.
  std::uint64_t capacity_bytes() const;
  std::size_t entry_count() const;
  const std::string& dir() const { return options_.dir; }

  // "<dir>/<hh>/<hex>", and "<dir>/<hh>/<hex>.part" for a partial chunk.
  std::string PathOf(const Digest& digest, bool partial = false) const;

 private:
  struct Entry {
    Digest digest;
    std::uint64_t size = 0;
    TimePoint last_touch;
    bool partial = false;
  };
  using Lru = std::list<Entry>;  // Front: most recently used.

  explicit DiskCache(DiskCacheOptions options);
  Status Scan();
  void EraseLocked(Lru::iterator it);
  void EvictLocked(std::uint64_t incoming);
  void AddLocked(const Digest& digest, std::uint64_t size, TimePoint touch, bool front,
                 bool partial = false);
  void RemovePartialLocked(const Digest& digest);
  // Lists a whole entry another process wrote, making room for it.
  void AdoptLocked(const Digest& digest, std::uint64_t size, TimePoint now);
  // After a write of `incoming` bytes found the file system full: lowers the bound to what the
  // cache holds and evicts to make room for them. True when anything was evicted, so that a
  // second try may succeed.
  bool ShrinkAfterNoSpace(std::uint64_t incoming);
  // After a write found its directory gone (someone removed the cache directory under a
  // mount): makes the cache directory, tmp/ and the digest's <hh>/ again. True when it made one.
  bool RemakeDirs(const Digest& digest);
  // While the bound is below capacity_bytes: raises it towards what the file system has room
  // for now, after a file of `written` bytes was written and before it is counted.
  void GrowIfRoomLocked(std::uint64_t written);

  DiskCacheOptions options_;
  mutable std::mutex mu_;
  Lru lru_;                                                          // GUARDED_BY(mu_)
  std::unordered_map<Digest, Lru::iterator, DigestHash> by_digest_;  // GUARDED_BY(mu_)
  std::unordered_map<Digest, Lru::iterator, DigestHash> partial_;    // GUARDED_BY(mu_)
  std::uint64_t used_ = 0;                                           // GUARDED_BY(mu_)
  std::uint64_t capacity_ = 0;                                       // GUARDED_BY(mu_)
  // Writes under way when the file system fills up fail together, each lowering the bound.
  ThrottledLog full_log_{LogLevel::kWarning, options_.clock};
  ThrottledLog gone_log_{LogLevel::kWarning, options_.clock};  // Its directories, removed.
  std::atomic<std::uint64_t> tmp_counter_{0};                  // Makes temporary names unique.
};

}  // namespace ckptfs::fs
