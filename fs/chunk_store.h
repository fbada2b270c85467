// ChunkStore: the one place the read path gets chunk bytes from.
//
// Order of sources: the disk cache (a pread of just the bytes asked for), then a fetch that is
// already in flight for the same chunk (single-flight: concurrent readers of one chunk cause one
// network fetch), then a new fetch through the ChunkFetcher, whose verified bytes go into the disk
// cache and to every waiting reader. Unverified bytes are never returned or cached.
// The store must outlive every ChunkData it handed out (their buffers return to its spare list).
//
// Prefetch() queues background fetches (readahead). Background fetches never take the last
// `foreground_reserve` fetch slots, so foreground reads are not starved by readahead. Memory is
// bounded: at most `max_inflight` chunk buffers exist at once, plus the prefetch queue's keys.
//
// Start() spawns the prefetch threads; it is separate from construction so that a mount can build
// the store before it daemonizes (fork) and start threads only afterwards.
// Thread safety: all methods may be called from many threads. The destructor stops the prefetch
// threads and waits for them.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/buffer.h"
#include "common/clock.h"
#include "common/digest.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "fs/disk_cache.h"
#include "netfetch/fetcher.h"

namespace ckptfs::fs {

// Identifies a chunk for the store: what to verify against and whom to ask for replicas.
struct ChunkKey {
  Digest digest;
  std::uint64_t size = 0;
  std::int64_t chunk_id = 0;
};

// Verified bytes of one whole chunk: an open descriptor of its cache file (so a reply can be
// spliced from the page cache without copying) or, when it could not be cached, the bytes.
// Exactly one of the two is set.
struct ChunkData {
  UniqueFd fd;
  std::shared_ptr<const Buffer> bytes;
};

// Where a chunk's replicas live; asked only when the chunk must come from the network.
class ReplicaSource {
 public:
  virtual ~ReplicaSource() = default;
  virtual Result<std::vector<std::int64_t>> Replicas(std::int64_t chunk_id) = 0;
};

struct ChunkStoreOptions {
  int prefetch_threads = 8;
  int max_inflight = 12;       // Chunk buffers in memory at once, foreground and background.
  int foreground_reserve = 2;  // Slots background fetches leave free.
  std::size_t max_queued_prefetches = 512;
  Duration prefetch_timeout = std::chrono::seconds(30);
  // A chunk whose fetch just failed fails again at once for this long. The kernel retries a
  // failed readahead page with a read of its own; without this, an unavailable chunk would hold
  // the reader for twice the deadline.
  Duration failure_memory = std::chrono::seconds(2);
};

struct ChunkStoreCounters {
  std::atomic<std::uint64_t> cache_hits{0};
  std::atomic<std::uint64_t> fetches{0};  // Network fetches started (foreground + prefetch).
  std::atomic<std::uint64_t> joined{0};   // Reads that waited on another reader's fetch.
  std::atomic<std::uint64_t> fetch_errors{0};
  std::atomic<std::uint64_t> cache_write_errors{0};
  std::atomic<std::uint64_t> prefetch_queued{0};
  std::atomic<std::uint64_t> prefetch_dropped{0};
};

class ChunkStore {
 public:
  // All pointers must outlive the store.
  ChunkStore(DiskCache* cache, netfetch::ChunkFetcher* fetcher, ReplicaSource* replicas,
             Clock* clock, ChunkStoreOptions options = {});
  ~ChunkStore();
  ChunkStore(const ChunkStore&) = delete;

  // Spawns the prefetch threads. Until then Prefetch() only queues. Call once.
  void Start();
  ChunkStore& operator=(const ChunkStore&) = delete;

  // The verified chunk, from the cache or fetched (single-flight).
  // Errors: whatever the fetch gave (Unavailable, DeadlineExceeded, DataLoss, NotFound) when the
  // chunk could not be had by `deadline`; DeadlineExceeded when waiting on another's fetch ran out;
  // the same error again, at once, for a chunk whose fetch failed within failure_memory.
  Result<ChunkData> Get(const ChunkKey& key, TimePoint deadline);

  // Copies bytes [offset, offset + dst.size()) of the chunk into dst.
  // REQUIRES: offset + dst.size() <= key.size.
  // Errors: whatever the fetch gave (Unavailable, DeadlineExceeded, DataLoss, NotFound) when the
  // chunk could not be had by `deadline`; DeadlineExceeded when waiting on another's fetch ran out.
  Status Read(const ChunkKey& key, std::uint64_t offset, std::span<std::uint8_t> dst,
              TimePoint deadline);

  // Queues a background fetch unless the chunk is cached, in flight or already queued. Never
  // blocks on the network. A full queue drops the request.
  void Prefetch(const ChunkKey& key);

  const ChunkStoreCounters& counters() const { return counters_; }

 private:
  struct Flight;
  enum class Priority { kForeground, kBackground };

  // Fetches the chunk as the leader of `flight` and completes it.
  void Lead(const ChunkKey& key, Flight& flight, TimePoint deadline, Priority priority);
  // A buffer of at least `size` bytes that goes back to the spare list when the last user drops
  // it: chunk-sized buffers are reused instead of being mapped, zeroed and unmapped per fetch.
  std::shared_ptr<Buffer> TakeBuffer(std::size_t size);
  void GiveBack(std::unique_ptr<Buffer> buffer);
  bool AcquireSlot(Priority priority, TimePoint deadline);
  void ReleaseSlot();
  void PrefetchLoop();
  // The error of a fetch of `digest` that failed within failure_memory, or OK.
  Status RecentFailure(const Digest& digest);
  void RememberOutcome(const Digest& digest, const Status& status);

  DiskCache* cache_;
  netfetch::ChunkFetcher* fetcher_;
  ReplicaSource* replicas_;
  Clock* clock_;
  ChunkStoreOptions options_;
  ChunkStoreCounters counters_;

  std::mutex flights_mu_;
  std::unordered_map<Digest, std::shared_ptr<Flight>, DigestHash> flights_;  // GUARDED_BY

  // Lock order: slots_mu_ before queue_mu_ (AcquireSlot reads stopping_).
  std::mutex spare_mu_;
  std::vector<std::unique_ptr<Buffer>> spare_;  // GUARDED_BY(spare_mu_); at most max_inflight.

  std::mutex failures_mu_;
  struct Failure {
    TimePoint until;
    Status status;
  };
  std::unordered_map<Digest, Failure, DigestHash> failures_;  // GUARDED_BY(failures_mu_)

  std::mutex slots_mu_;
  std::condition_variable slots_cv_;
  int inflight_ = 0;  // GUARDED_BY(slots_mu_)

  std::mutex queue_mu_;
  std::condition_variable queue_cv_;
  std::deque<ChunkKey> queue_;                     // GUARDED_BY(queue_mu_)
  std::unordered_set<Digest, DigestHash> queued_;  // GUARDED_BY(queue_mu_)
  bool stopping_ = false;                          // GUARDED_BY(queue_mu_)
  std::vector<std::thread> workers_;
};

}  // namespace ckptfs::fs
