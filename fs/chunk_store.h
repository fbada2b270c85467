// ChunkStore: the one place the read path gets chunk bytes from.
//
// Order of sources: recently fetched chunks still in memory (the ready list), the disk cache
// (a descriptor of the chunk's file), a fetch already in flight for the same chunk (single-flight:
// concurrent readers of one chunk cause one network fetch), then a new fetch through the
// ChunkFetcher, whose verified bytes go to every waiting reader, into the ready list and into the
// disk cache. Unverified bytes are never returned or cached.
// The store must outlive every ChunkData it handed out (their buffers return to its spare list).
//
// Prefetch() queues background work (readahead): a fetch for a chunk that is not cached, a load
// from disk into memory for one that is, so that a sequential reader finds its next chunks in
// memory either way. A cached chunk whose every byte readers have had lately is not loaded: the
// kernel's page cache has it, and loading it again would take the room of chunks readers still
// need (concurrent readers of a directory's files, each spilling its readahead into the next
// files, asked for loads of files another reader had just read). A reader asking for such a
// chunk again shows that the page cache has lost it; the store then forgets them all.
// Background fetches never take the last `foreground_reserve` fetch slots, so foreground reads
// are not starved by readahead.
//
// Memory: chunk buffers being fetched or loaded plus the ready list stay within `memory_bytes`
// (the ready list gives way to a reader's fetch, oldest first; fetches in flight are bounded by
// `max_inflight`). Background work waits for room instead of pushing out fetched chunks that no
// reader has taken yet, which are the ones a stream reads next; a chunk gives way to it once
// readers are done with it (read part of it, then left it alone for `left_after`) or never came
// (unread for `stale_after`). Plus
// at most `max_spare_bytes` of idle buffers and whatever readers hold while they reply. A ready
// chunk leaves the list once its bytes have all been served (the kernel's page cache has them
// then).
//
// The blocks an isolated read fetched go to the chunk's partial file in the disk cache after the
// read has its bytes, on a thread of its own (at most `max_pending_block_writes` bytes waiting;
// beyond that a write is skipped, and the blocks are fetched again if read again): writing them
// first cost a cold random 4 KiB read about a quarter of its time.
//
// Start() spawns the prefetch threads and the block writer; it is separate from construction so
// that a mount can build the store before it daemonizes (fork) and start threads only afterwards.
// Until then block writes happen at once, in the reader's thread.
// Thread safety: all methods may be called from many threads. The destructor stops the prefetch
// threads and waits for them, then lets the block writer finish what is queued.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/buffer.h"
#include "common/clock.h"
#include "common/digest.h"
#include "common/log.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "fs/disk_cache.h"
#include "index/types.h"
#include "netfetch/fetcher.h"

namespace ckptfs::fs {

// Identifies a chunk for the store: what to verify against and whom to ask for replicas.
struct ChunkKey {
  Digest digest;
  std::uint64_t size = 0;
  std::int64_t chunk_id = 0;
};

// Verified bytes of a chunk: an open descriptor of its cache file (possibly O_DIRECT: read it
// with PreadAligned), or bytes in memory, where bytes->data()[0] is byte `base` of the chunk.
// Exactly one of the two is set. In memory, only the range asked of Get() is sure to be there
// and verified: the rest may still be arriving (a whole chunk streaming in) or not be part of the
// buffer at all (a few blocks fetched for an isolated read).
struct ChunkData {
  UniqueFd fd;
  std::shared_ptr<const Buffer> bytes;
  std::uint64_t base = 0;
};

// How a read is expected to continue, which decides what a miss fetches.
enum class Access {
  kStream,    // Sequential: fetch the whole chunk (the next reads want the rest of it).
  kIsolated,  // A lone read: fetch only the blocks it touches, when the index lists blocks.
};

// Receives the bytes a Get asked for on the thread that fetches them, as soon as they are
// verified, while the rest of the chunk is still arriving (see ChunkStore::Get).
using EarlyServe = std::function<void(ChunkData data)>;

// Where a chunk's replicas live and what its blocks are; asked only when the chunk must come from
// the network.
class ReplicaSource {
 public:
  virtual ~ReplicaSource() = default;
  virtual Result<std::vector<std::int64_t>> Replicas(std::int64_t chunk_id) = 0;
  // The chunk's block digests; none (block_size 0) for an index without them.
  virtual Result<index::BlockList> Blocks(std::int64_t /*chunk_id*/) { return index::BlockList{}; }
};

// The chunk's replicas and blocks, as the fetcher wants them; the second form for blocks already
// looked up. For whatever fetches a chunk the index lists: the store, `ckptfs warmup`.
Result<netfetch::ChunkRef> LocateChunk(ReplicaSource& replicas, const ChunkKey& key);
Result<netfetch::ChunkRef> LocateChunk(ReplicaSource& replicas, const ChunkKey& key,
                                       index::BlockList blocks);

struct ChunkStoreOptions {
  int prefetch_threads = 8;
  // Threads that fetch for waiting readers, so a reader can take its bytes while the rest of
  // the chunk arrives; when all are busy the reader fetches itself.
  int foreground_threads = 4;
  int max_inflight = 12;       // Fetches and disk loads at once, foreground and background.
  int foreground_reserve = 2;  // Slots background fetches leave free.
  // Chunk buffers in flight plus the ready list of fetched chunks not yet served.
  std::uint64_t memory_bytes = 64ull << 20;
  // Idle buffers kept for reuse instead of being freed and mapped again, in bytes rather than
  // buffers so that the memory bound does not grow with the chunk size (4 buffers of the default
  // 4 MiB chunk, 1 of 16 MiB, none of a larger one).
  std::uint64_t max_spare_bytes = 16ull << 20;
  // When set, Start() fills the spare list with buffers of this size whose pages are already
  // present: the first fetches of a fresh mount do not wait for a megabyte of page faults each.
  std::uint64_t chunk_size = 0;
  std::size_t max_queued_prefetches = 512;
  // Chunks remembered as delivered whole (every byte served to readers), the oldest forgotten
  // first: 1024 of the default 4 MiB chunk cover 4 GiB, about what a page cache holds.
  std::size_t remembered_deliveries = 1024;
  // Bytes of fetched blocks waiting to be written to partial files; a write beyond it is skipped.
  std::uint64_t max_pending_block_writes = 8ull << 20;
  Duration prefetch_timeout = std::chrono::seconds(30);
  // A chunk whose fetch just failed fails again at once for this long. The kernel retries a
  // failed readahead page with a read of its own; without this, an unavailable chunk would hold
  // the reader for twice the deadline.
  Duration failure_memory = std::chrono::seconds(2);
  // Readahead waits for readers to take what it fetched (pushing those chunks out sent half of
  // a cold sequential read back to the disk cache), but not for ever: a fetched chunk no reader
  // has read any of for stale_after, or that readers read part of and then left alone for
  // left_after, gives way. Readers do not always take all of a chunk from memory: a memory-mapped
  // loader's page faults read around the fault, some of it as isolated reads before the chunk
  // was fetched whole.
  Duration stale_after = std::chrono::seconds(2);
  Duration left_after = std::chrono::milliseconds(250);
};

struct ChunkStoreCounters {
  std::atomic<std::uint64_t> memory_hits{0};  // Served from the ready list.
  std::atomic<std::uint64_t> cache_hits{0};
  std::atomic<std::uint64_t> disk_loads{0};  // Prefetches that loaded a cached chunk into memory.
  std::atomic<std::uint64_t> fetches{0};     // Network fetches started (foreground + prefetch).
  std::atomic<std::uint64_t> block_fetches{0};  // Isolated reads served by fetching blocks.
  std::atomic<std::uint64_t> partial_hits{0};   // Isolated reads served by a partial file.
  std::atomic<std::uint64_t> early_reads{0};    // Reads served from a chunk still arriving.
  std::atomic<std::uint64_t> joined{0};         // Reads that waited on another reader's fetch.
  std::atomic<std::uint64_t> fetch_errors{0};
  std::atomic<std::uint64_t> cache_write_errors{0};
  // Cached chunks whose file opened but could not be read: dropped and fetched again.
  std::atomic<std::uint64_t> cache_read_errors{0};
  std::atomic<std::uint64_t> prefetch_queued{0};
  std::atomic<std::uint64_t> prefetch_dropped{0};
  std::atomic<std::uint64_t> prefetch_skipped{0};      // Cached chunks readers have had whole.
  std::atomic<std::uint64_t> block_writes{0};          // Fetched blocks written to partial files.
  std::atomic<std::uint64_t> block_writes_skipped{0};  // Not written: the writer was behind.

  // Calls visit(name, value) for each counter, in the order above; the names are the ones
  // `ckptfs stats` shows.
  template <typename Visit>
  void ForEach(Visit&& visit) const {
    visit("memory_hits", memory_hits.load());
    visit("cache_hits", cache_hits.load());
    visit("disk_loads", disk_loads.load());
    visit("fetches", fetches.load());
    visit("block_fetches", block_fetches.load());
    visit("partial_hits", partial_hits.load());
    visit("early_reads", early_reads.load());
    visit("joined", joined.load());
    visit("fetch_errors", fetch_errors.load());
    visit("cache_write_errors", cache_write_errors.load());
    visit("cache_read_errors", cache_read_errors.load());
    visit("prefetch_queued", prefetch_queued.load());
    visit("prefetch_dropped", prefetch_dropped.load());
    visit("prefetch_skipped", prefetch_skipped.load());
    visit("block_writes", block_writes.load());
    visit("block_writes_skipped", block_writes_skipped.load());
  }
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

  // Verified bytes [offset, offset + length) of the chunk: from memory, the disk cache, a fetch
  // in flight (as soon as that range has arrived and been verified) or a new fetch, which is of
  // the whole chunk (single-flight) unless `access` is kIsolated and the index lists blocks: then
  // only the blocks covering the range, which are not cached.
  // REQUIRES: offset + length <= key.size.
  // Errors: whatever the fetch gave (Unavailable, DeadlineExceeded, DataLoss, NotFound) when the
  // bytes could not be had by `deadline`; DeadlineExceeded when waiting on another's fetch ran
  // out; the same error again, at once, for a chunk whose fetch failed within failure_memory.
  //
  // With `early` set, a call that has to start a whole-chunk fetch runs it on the calling thread
  // and calls *early once, as soon as the range is verified, instead of handing the fetch to a
  // worker and waiting to be woken: a cold read is answered without two thread wake-ups. The call
  // then returns when the fetch has ended, and may return a later failure of the fetch after
  // *early has had the bytes; the caller tells the two apart by whether *early ran. Any other
  // way of getting the bytes (memory, disk cache, a fetch in flight, blocks) does not call it.
  Result<ChunkData> Get(const ChunkKey& key, std::uint64_t offset, std::uint64_t length,
                        Access access, TimePoint deadline, const EarlyServe* early = nullptr);

  // Get of the whole chunk, streamed.
  Result<ChunkData> Get(const ChunkKey& key, TimePoint deadline) {
    return Get(key, 0, key.size, Access::kStream, deadline);
  }

  // Copies bytes [offset, offset + dst.size()) of the chunk into dst (Get, then a copy; a cache
  // file that cannot be read is dropped and the chunk got again).
  Status Read(const ChunkKey& key, std::uint64_t offset, std::span<std::uint8_t> dst,
              TimePoint deadline, Access access = Access::kStream);

  // For a reader whose Get answered with a cache file that then could not be read (a bad
  // sector, a file cut short by someone else): drops the entry from the disk cache, so that the
  // reader's next Get fetches the chunk from its nodes, and counts and logs it. The disk cache
  // is a copy of what the nodes hold; a copy that cannot be read must not fail the read.
  void DropUnreadable(const ChunkKey& key, const Status& error);

  // Queues background work unless the chunk is in memory, in flight or already queued, or cached
  // with readers having had all of it lately (Delivered): a fetch, or a load from the disk cache
  // when it is cached. Never blocks. A full queue drops the request.
  void Prefetch(const ChunkKey& key);

  // Tells the store that `bytes` of a chunk it handed out from memory have reached a reader; once
  // a whole chunk has, it leaves the ready list.
  void Served(const Digest& digest, std::uint64_t bytes);

  // Waits until the block writes queued so far are on disk (in the partial files).
  void FlushBlockWrites();

  const ChunkStoreCounters& counters() const { return counters_; }

  // What the chunk buffers hold now, against memory_bytes.
  struct Memory {
    std::uint64_t bytes = 0;         // Buffers being filled plus fetched chunks not yet served.
    std::uint64_t budget_bytes = 0;  // memory_bytes.
    std::uint64_t ready_chunks = 0;  // Fetched chunks waiting in memory.
    std::uint64_t spare_bytes = 0;   // Idle buffers kept for reuse, max_spare_bytes at most.
  };
  Memory memory() const;

 private:
  struct Flight;
  enum class Priority { kForeground, kBackground };

  // Fetches the chunk as the leader of `flight` and completes it.
  struct Ready {
    Digest digest;
    std::shared_ptr<const Buffer> bytes;
    std::uint64_t size = 0;
    std::uint64_t served = 0;
    TimePoint added;
    TimePoint touched;  // The last time a reader took bytes of it.
  };

  // A reader served from within the fetch it leads: `serve` gets bytes [0, end) of the chunk's
  // buffer once they are verified.
  struct EarlyReader {
    const EarlyServe* serve = nullptr;
    std::uint64_t end = 0;
  };
  // `room`: what WaitForRoom set aside for a background job's buffer (TakeBuffer uses it up).
  void Lead(const ChunkKey& key, Flight& flight, TimePoint deadline, Priority priority,
            const EarlyReader* early = nullptr, std::uint64_t* room = nullptr);
  // Fetches the blocks of the chunk covering [offset, offset + length), uncached.
  Result<ChunkData> FetchIsolated(const ChunkKey& key, const index::BlockList& blocks,
                                  std::uint64_t offset, std::uint64_t length, TimePoint deadline);
  // Fills dst with blocks [first, end) from the chunk's partial file in the disk cache when it
  // holds all of them, each matching its digest.
  bool ReadPartial(const ChunkKey& key, const index::BlockList& blocks, std::size_t first,
                   std::size_t end, std::span<std::uint8_t> dst);
  // Reads a cached chunk whole into memory (the ready list) as a flight readers can join. Runs
  // on a prefetch thread.
  void LoadFromDisk(const ChunkKey& key, std::uint64_t* room);
  Status ReadFromDisk(const ChunkKey& key, Buffer& buffer, Flight& flight);
  std::shared_ptr<const Buffer> FindReady(const Digest& digest);
  // Puts the chunk `flight` brought into the ready list, with the bytes readers took from the
  // flight (Served counts them there until the chunk is in the list; both under ready_mu_, so
  // no report falls between the two).
  void AddReady(const Digest& digest, std::uint64_t size, std::shared_ptr<const Buffer> bytes,
                Flight& flight);
  // Remembers that readers have had every byte of the chunk.
  void RememberDeliveredLocked(const Digest& digest);
  // Called when a reader reads the chunk from the disk cache: forgets every delivery when this
  // chunk was one, since then the page cache has lost what the record says it holds.
  void ForgetDeliveriesIfAskedAgain(const Digest& digest);
  // Whether readers have had every byte of the chunk lately: the kernel's page cache should have
  // it, so readahead does not load it back while the disk cache has it.
  bool Delivered(const Digest& digest);
  // Takes one chunk off the ready list and its bytes off ready_bytes_.
  void DropReadyLocked(std::list<Ready>::iterator it);  // REQUIRES: ready_mu_ held.
  // Drops the oldest ready chunks while memory in use exceeds the budget.
  void TrimReadyLocked();  // REQUIRES: ready_mu_ held.
  // Waits until background work may take a buffer of `size` bytes: the budget has room for it
  // beside the chunks in memory, in flight and set aside, or nothing else is there; meanwhile
  // drops ready chunks that give way (stale_after, left_after). Then sets the room aside
  // (reserved_bytes_) and returns its size, for TakeBuffer to use and ReturnRoom to give back
  // what it did not; nullopt when the store is stopping.
  std::optional<std::uint64_t> WaitForRoom(std::uint64_t size);
  void ReturnRoom(std::uint64_t bytes);
  // The next queued key, taken once the budget has room for its buffer (WaitForRoom, which sets
  // `*room` aside); nullopt when the store is stopping. One thread at a time waits here, so that
  // the room one chunk frees goes to one fetch, of the key at the queue's front when it comes.
  std::optional<ChunkKey> TakeQueued(std::uint64_t* room);
  // One fetch of the chunk from its replicas, telling `flight` how much has been verified;
  // remembers a failure for failure_memory.
  Status FetchInto(const netfetch::ChunkRef& ref, Flight& flight,
                   const std::shared_ptr<Buffer>& buffer, std::span<std::uint8_t> dst,
                   TimePoint deadline, const EarlyReader* early,
                   const netfetch::PauseCallback& pause);
  // Marks `flight` done and wakes its readers; `ok` with null bytes: the chunk is in the cache.
  static void Complete(Flight& flight, const Status& status, bool keep_bytes);
  std::shared_ptr<Flight> FindFlight(const Digest& digest);
  // The flight of `digest`, and whether this call started it (the caller then leads it and
  // ends it with EndFlight).
  std::pair<std::shared_ptr<Flight>, bool> FlightFor(const Digest& digest);
  void EndFlight(const Digest& digest);
  // Gives a foreground fetch to an idle foreground worker; false when none is idle.
  bool HandOff(const ChunkKey& key, std::shared_ptr<Flight> flight, TimePoint deadline);
  void ForegroundLoop();
  // A buffer of at least `size` bytes that goes back to the spare list when the last user drops
  // it: chunk-sized buffers are reused instead of being mapped, zeroed and unmapped per fetch.
  // Counts toward memory_bytes until handed to the ready list or dropped (ReleaseBufferBytes).
  // `room`, when set, is budget that WaitForRoom set aside for this buffer: it becomes the
  // buffer's share instead of being counted twice. A buffer made anew, when no spare fits,
  // starts as `fresh_start` says: a reader's own fetch asks for kQuickFirstBytes.
  std::shared_ptr<Buffer> TakeBuffer(std::size_t size, std::uint64_t* room = nullptr,
                                     BufferStart fresh_start = BufferStart::kHuge);
  void GiveBack(std::unique_ptr<Buffer> buffer);
  void ReleaseBufferBytes(std::uint64_t bytes);
  bool AcquireSlot(Priority priority, TimePoint deadline);
  void ReleaseSlot();
  class FetchSlot;
  void PrefetchLoop();
  // The error of a fetch of `digest` that failed within failure_memory, or OK.
  Status RecentFailure(const Digest& digest);
  void RememberOutcome(const Digest& digest, const Status& status);
  // Writes blocks an isolated read fetched to the chunk's partial file: queued for the block
  // writer once it runs, at once before.
  void WriteBlocks(const Digest& digest, std::uint64_t offset, std::shared_ptr<const Buffer> bytes);
  void WriteBlocksNow(const Digest& digest, std::uint64_t offset,
                      std::span<const std::uint8_t> bytes);
  void BlockWriterLoop();

  DiskCache* cache_;
  netfetch::ChunkFetcher* fetcher_;
  ReplicaSource* replicas_;
  Clock* clock_;
  ChunkStoreOptions options_;
  ChunkStoreCounters counters_;
  // Cache writes that fail (a disk full of other files) would fail for every chunk read.
  ThrottledLog cache_write_log_{LogLevel::kWarning, clock_};
  ThrottledLog cache_read_log_{LogLevel::kWarning, clock_};

  // The ready list, most recently added first. Lock order: ready_mu_ before spare_mu_.
  mutable std::mutex ready_mu_;
  std::list<Ready> ready_;                                                          // GUARDED_BY
  std::unordered_map<Digest, std::list<Ready>::iterator, DigestHash> ready_index_;  // GUARDED_BY
  std::uint64_t ready_bytes_ = 0;       // GUARDED_BY(ready_mu_)
  std::uint64_t inflight_bytes_ = 0;    // GUARDED_BY(ready_mu_): buffers being filled.
  std::uint64_t reserved_bytes_ = 0;    // GUARDED_BY(ready_mu_): set aside by WaitForRoom.
  std::condition_variable room_cv_;     // Chunk memory was freed, or stopping.
  bool room_stopping_ = false;          // GUARDED_BY(ready_mu_)
  std::deque<Digest> delivered_order_;  // GUARDED_BY(ready_mu_), oldest first.
  std::unordered_set<Digest, DigestHash> delivered_;  // GUARDED_BY(ready_mu_)

  std::mutex flights_mu_;
  std::unordered_map<Digest, std::shared_ptr<Flight>, DigestHash> flights_;  // GUARDED_BY

  // Lock order: slots_mu_ before queue_mu_ (AcquireSlot reads stopping_).
  mutable std::mutex spare_mu_;
  std::vector<std::unique_ptr<Buffer>> spare_;  // GUARDED_BY(spare_mu_)
  std::uint64_t spare_bytes_ = 0;               // GUARDED_BY(spare_mu_); <= max_spare_bytes.

  std::mutex failures_mu_;
  struct Failure {
    TimePoint until;
    Status status;
  };
  std::unordered_map<Digest, Failure, DigestHash> failures_;  // GUARDED_BY(failures_mu_)

  std::mutex slots_mu_;
  std::condition_variable slots_cv_;
  int inflight_ = 0;  // GUARDED_BY(slots_mu_)

  // Held by the one prefetch thread waiting for work and room (TakeQueued). Lock order:
  // admission_mu_ before queue_mu_ and ready_mu_.
  std::mutex admission_mu_;
  std::mutex queue_mu_;
  std::condition_variable queue_cv_;
  std::deque<ChunkKey> queue_;                     // GUARDED_BY(queue_mu_)
  std::unordered_set<Digest, DigestHash> queued_;  // GUARDED_BY(queue_mu_)
  bool stopping_ = false;                          // GUARDED_BY(queue_mu_)
  struct ForegroundJob {
    ChunkKey key;
    std::shared_ptr<Flight> flight;
    TimePoint deadline;
  };
  std::condition_variable foreground_cv_;
  std::deque<ForegroundJob> foreground_jobs_;  // GUARDED_BY(queue_mu_)
  int foreground_idle_ = 0;                    // GUARDED_BY(queue_mu_): workers without a job.
  std::vector<std::thread> workers_;

  struct BlockWrite {
    Digest digest;
    std::uint64_t offset = 0;
    std::shared_ptr<const Buffer> bytes;
  };
  std::mutex writes_mu_;
  std::condition_variable writes_cv_;       // Work queued, or stopping.
  std::condition_variable writes_done_cv_;  // The queue ran empty.
  std::deque<BlockWrite> writes_;           // GUARDED_BY(writes_mu_)
  std::uint64_t pending_write_bytes_ = 0;   // GUARDED_BY(writes_mu_): queued or being written.
  bool writer_running_ = false;             // GUARDED_BY(writes_mu_)
  bool writer_stopping_ = false;            // GUARDED_BY(writes_mu_)
  std::thread writer_;
};

}  // namespace ckptfs::fs
