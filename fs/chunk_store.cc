#include "fs/chunk_store.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <tuple>

#include "common/file_io.h"
#include "common/log.h"
#include "common/thread_name.h"

namespace ckptfs::fs {

struct ChunkStore::Flight {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;  // GUARDED_BY(mu)
  Status status;      // GUARDED_BY(mu)
  // The buffer being filled, set when the fetch starts; bytes [0, verified) are final. Null once
  // done if the fetch failed, or OK without a fetch (the chunk was in the cache).
  std::shared_ptr<const Buffer> bytes;  // GUARDED_BY(mu)
  std::uint64_t verified = 0;           // GUARDED_BY(mu)
  // GUARDED_BY(mu): bytes readers took (Served) until the chunk joined the ready list.
  std::uint64_t served = 0;
  // The fewest verified bytes a waiting reader needs. Progress wakes the waiters only once it
  // gets there, not at every 64 KiB block: a reader of a 1 MiB piece would wake 16 times.
  std::uint64_t wake_at = kNobodyWaits;  // GUARDED_BY(mu)
  static constexpr std::uint64_t kNobodyWaits = UINT64_MAX;

  // Records that bytes [0, now_verified) are final; wakes the waiters whose bytes are there.
  void Advance(std::uint64_t now_verified) {
    bool wake = false;
    {
      std::lock_guard lock(mu);
      verified = now_verified;
      wake = verified >= wake_at;
      if (wake) wake_at = kNobodyWaits;  // Waiters that need more register again.
    }
    if (wake) cv.notify_all();
  }
};

namespace {

// Waits on `cv` until `ready()` or the deadline (measured on `clock`). Uses the clock's remaining
// time rather than an absolute steady_clock point so a FakeClock deadline still means something.
template <typename Pred>
bool WaitUntil(std::unique_lock<std::mutex>& lock, std::condition_variable& cv, Clock* clock,
               TimePoint deadline, Pred ready) {
  while (!ready()) {
    Duration left = deadline - clock->Now();
    if (left <= Duration::zero()) return false;
    cv.wait_for(lock, left);
  }
  return true;
}

}  // namespace

// A fetch slot of `priority` (max_inflight), held from construction, when it could be had by the
// deadline, to destruction.
class ChunkStore::FetchSlot {
 public:
  FetchSlot(ChunkStore& store, Priority priority, TimePoint deadline)
      : store_(store),
        priority_(priority),
        deadline_(deadline),
        held_(store.AcquireSlot(priority, deadline)) {}
  ~FetchSlot() {
    if (held_) store_.ReleaseSlot();
  }
  FetchSlot(const FetchSlot&) = delete;
  FetchSlot& operator=(const FetchSlot&) = delete;

  bool held() const { return held_; }
  // The pauses between a fetch's rounds over its replicas: the slot goes back for the pause and
  // is taken again after it. A fetch whose nodes are all down pauses again and again until its
  // deadline, and holding the slot meanwhile made every other read wait behind a few such
  // fetches. False, ending the fetch, when no slot is had again (the deadline passed, or the
  // store is stopping). Used while this slot lives.
  netfetch::PauseCallback PauseWithout() {
    return [this](Duration pause) {
      store_.ReleaseSlot();
      held_ = false;
      store_.clock_->SleepFor(pause);
      held_ = store_.AcquireSlot(priority_, deadline_);
      return held_;
    };
  }

 private:
  ChunkStore& store_;
  const Priority priority_;
  const TimePoint deadline_;
  bool held_;
};

ChunkStore::ChunkStore(DiskCache* cache, netfetch::ChunkFetcher* fetcher, ReplicaSource* replicas,
                       Clock* clock, ChunkStoreOptions options)
    : cache_(cache), fetcher_(fetcher), replicas_(replicas), clock_(clock), options_(options) {}

void ChunkStore::Start() {
  if (options_.chunk_size != 0) {
    const std::uint64_t size = AlignedReadSize(0, options_.chunk_size);
    std::lock_guard lock(spare_mu_);
    while (spare_bytes_ + size <= options_.max_spare_bytes) {
      auto buffer = std::make_unique<Buffer>(size);
      std::memset(buffer->data(), 0, buffer->size());
      spare_bytes_ += size;
      spare_.push_back(std::move(buffer));
    }
  }
  for (int i = 0; i < options_.prefetch_threads; ++i) {
    workers_.emplace_back([this] {
      SetThreadName("ckptfs-prefetch");
      PrefetchLoop();
    });
  }
  {
    // Counted idle from the start, so a reader arriving before they run still hands off.
    std::lock_guard lock(queue_mu_);
    foreground_idle_ = options_.foreground_threads;
  }
  for (int i = 0; i < options_.foreground_threads; ++i) {
    workers_.emplace_back([this] {
      SetThreadName("ckptfs-fetch");
      ForegroundLoop();
    });
  }
  {
    std::lock_guard lock(writes_mu_);
    writer_running_ = true;
  }
  writer_ = std::thread([this] {
    SetThreadName("ckptfs-cachewr");
    BlockWriterLoop();
  });
}

ChunkStore::~ChunkStore() {
  {
    std::lock_guard lock(queue_mu_);
    stopping_ = true;
  }
  {
    std::lock_guard lock(ready_mu_);
    room_stopping_ = true;
  }
  room_cv_.notify_all();
  queue_cv_.notify_all();
  foreground_cv_.notify_all();
  { std::lock_guard lock(slots_mu_); }
  slots_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
  {
    std::lock_guard lock(writes_mu_);
    writer_stopping_ = true;  // It writes what is queued first.
  }
  writes_cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  // Ready buffers go back to spare_ when dropped, so drop them while spare_ still exists.
  std::lock_guard lock(ready_mu_);
  ready_index_.clear();
  ready_.clear();
}

ChunkStore::Memory ChunkStore::memory() const {
  std::lock_guard lock(ready_mu_);
  std::lock_guard spare_lock(spare_mu_);
  return {.bytes = ready_bytes_ + inflight_bytes_,
          .budget_bytes = options_.memory_bytes,
          .ready_chunks = ready_.size(),
          .spare_bytes = spare_bytes_};
}

Result<netfetch::ChunkRef> LocateChunk(ReplicaSource& replicas, const ChunkKey& key) {
  CKPTFS_ASSIGN_OR_RETURN(index::BlockList blocks, replicas.Blocks(key.chunk_id));
  return LocateChunk(replicas, key, std::move(blocks));
}

Result<netfetch::ChunkRef> LocateChunk(ReplicaSource& replicas, const ChunkKey& key,
                                       index::BlockList blocks) {
  CKPTFS_ASSIGN_OR_RETURN(std::vector<std::int64_t> nodes, replicas.Replicas(key.chunk_id));
  return netfetch::ChunkRef{key.digest, key.size, std::move(nodes), blocks.block_size,
                            std::move(blocks.digests)};
}

Result<ChunkData> ChunkStore::Get(const ChunkKey& key, std::uint64_t offset, std::uint64_t length,
                                  Access access, TimePoint deadline, const EarlyServe* early) {
  const std::uint64_t need_end = offset + length;
  for (;;) {
    if (std::shared_ptr<const Buffer> bytes = FindReady(key.digest)) {
      counters_.memory_hits++;
      return ChunkData{UniqueFd(), std::move(bytes), 0};
    }
    // A fetch or a disk load in flight comes first: joining it beats a second read of the same
    // bytes, from the network or from the disk.
    std::shared_ptr<Flight> flight = FindFlight(key.digest);
    if (flight == nullptr) {
      if (Result<UniqueFd> fd = cache_->OpenChunk(key.digest, key.size); fd.ok()) {
        counters_.cache_hits++;
        ForgetDeliveriesIfAskedAgain(key.digest);
        return ChunkData{std::move(fd).value(), nullptr, 0};
      }
      if (Status failed = RecentFailure(key.digest); !failed.ok()) return failed;
      if (access == Access::kIsolated) {
        CKPTFS_ASSIGN_OR_RETURN(index::BlockList blocks, replicas_->Blocks(key.chunk_id));
        if (blocks.block_size != 0) return FetchIsolated(key, blocks, offset, length, deadline);
      }
    }
    bool leader = false;
    if (flight == nullptr) std::tie(flight, leader) = FlightFor(key.digest);
    if (leader && early != nullptr) {
      // This thread fetches and hands its bytes over from within the transfer.
      const EarlyReader reader{early, need_end};
      Lead(key, *flight, deadline, Priority::kForeground, &reader);
    } else if (leader) {
      // The fetch runs on a worker when one is idle, so that this reader can go as soon as its
      // bytes have arrived rather than when the whole chunk has.
      if (!HandOff(key, flight, deadline)) Lead(key, *flight, deadline, Priority::kForeground);
    } else {
      counters_.joined++;
    }
    std::unique_lock lock(flight->mu);
    auto have_bytes = [&] { return flight->bytes != nullptr && flight->verified >= need_end; };
    auto ready = [&] {
      if (flight->done || have_bytes()) return true;
      flight->wake_at = std::min(flight->wake_at, need_end);
      return false;
    };
    if (!WaitUntil(lock, flight->cv, clock_, deadline, ready)) {
      return DeadlineExceededError("chunk " + key.digest.Hex() +
                                   " still being fetched at the read's deadline");
    }
    if (have_bytes()) {
      if (!flight->done) counters_.early_reads++;
      return ChunkData{UniqueFd(), flight->bytes, 0};
    }
    if (!flight->status.ok()) {
      // A background fetch may have given up on its own, shorter clock; try again ourselves.
      bool retry = !leader && flight->status.code() == StatusCode::kDeadlineExceeded &&
                   clock_->Now() < deadline;
      if (!retry) return flight->status;
      continue;
    }
    // The leader found the chunk in the cache: open it from there on the next round.
  }
}

std::shared_ptr<ChunkStore::Flight> ChunkStore::FindFlight(const Digest& digest) {
  std::lock_guard lock(flights_mu_);
  auto it = flights_.find(digest);
  return it == flights_.end() ? nullptr : it->second;
}

std::pair<std::shared_ptr<ChunkStore::Flight>, bool> ChunkStore::FlightFor(const Digest& digest) {
  std::lock_guard lock(flights_mu_);
  auto [it, started] = flights_.try_emplace(digest);
  if (started) it->second = std::make_shared<Flight>();
  return {it->second, started};
}

void ChunkStore::EndFlight(const Digest& digest) {
  std::lock_guard lock(flights_mu_);
  flights_.erase(digest);
}

Status ChunkStore::Read(const ChunkKey& key, std::uint64_t offset, std::span<std::uint8_t> dst,
                        TimePoint deadline, Access access) {
  if (dst.empty()) return Status::Ok();
  for (int attempt = 0;; ++attempt) {
    CKPTFS_ASSIGN_OR_RETURN(ChunkData data, Get(key, offset, dst.size(), access, deadline));
    if (data.bytes != nullptr) {
      std::memcpy(dst.data(), data.bytes->data() + (offset - data.base), dst.size());
      Served(key.digest, dst.size());
      return Status::Ok();
    }
    Buffer scratch(AlignedReadSize(offset, dst.size()));
    Result<std::span<const std::uint8_t>> bytes =
        PreadAligned(data.fd.get(), offset, dst.size(), scratch.span());
    if (bytes.ok()) {
      std::memcpy(dst.data(), bytes->data(), dst.size());
      return Status::Ok();
    }
    Status failed = bytes.status().WithContext("cannot read cached chunk " + key.digest.Hex());
    if (attempt > 0) return failed;
    DropUnreadable(key, failed);
  }
}

void ChunkStore::DropUnreadable(const ChunkKey& key, const Status& error) {
  // Concurrent reads of one chunk (the kernel's, readahead's) may all meet its bad file: it is
  // one unreadable chunk, counted and logged once.
  if (!cache_->Drop(key.digest)) return;
  counters_.cache_read_errors++;
  cache_read_log_.Log(error.ToString() + "; dropped it from the disk cache, fetching it again");
}

Result<ChunkData> ChunkStore::FetchIsolated(const ChunkKey& key, const index::BlockList& blocks,
                                            std::uint64_t offset, std::uint64_t length,
                                            TimePoint deadline) {
  const std::uint64_t block = blocks.block_size;
  const std::size_t first = static_cast<std::size_t>(offset / block);
  const std::size_t end = static_cast<std::size_t>(
      std::min<std::uint64_t>((offset + length + block - 1) / block, blocks.digests.size()));
  const std::uint64_t begin_byte = first * block;
  const std::uint64_t end_byte = std::min<std::uint64_t>(end * block, key.size);
  auto buffer = std::make_shared<Buffer>(end_byte - begin_byte);
  if (ReadPartial(key, blocks, first, end, buffer->span())) {
    counters_.partial_hits++;
    return ChunkData{UniqueFd(), std::move(buffer), begin_byte};
  }
  Status status;
  {
    FetchSlot slot(*this, Priority::kForeground, deadline);
    if (!slot.held()) return DeadlineExceededError("no fetch slot free before the deadline");
    counters_.block_fetches++;
    Result<netfetch::ChunkRef> ref = LocateChunk(*replicas_, key, blocks);
    if (!ref.ok()) {
      status = ref.status();
    } else {
      status =
          fetcher_->FetchBlocks(*ref, first, end, buffer->span(), deadline, slot.PauseWithout());
      RememberOutcome(key.digest, status);
    }
  }
  if (!status.ok()) {
    counters_.fetch_errors++;
    return status;
  }
  WriteBlocks(key.digest, begin_byte, buffer);
  return ChunkData{UniqueFd(), std::move(buffer), begin_byte};
}

void ChunkStore::WriteBlocks(const Digest& digest, std::uint64_t offset,
                             std::shared_ptr<const Buffer> bytes) {
  {
    std::lock_guard lock(writes_mu_);
    if (writer_running_) {
      if (pending_write_bytes_ + bytes->size() > options_.max_pending_block_writes) {
        counters_.block_writes_skipped++;
        return;
      }
      pending_write_bytes_ += bytes->size();
      writes_.push_back(BlockWrite{digest, offset, std::move(bytes)});
      writes_cv_.notify_one();
      return;
    }
  }
  WriteBlocksNow(digest, offset, bytes->span());
}

void ChunkStore::WriteBlocksNow(const Digest& digest, std::uint64_t offset,
                                std::span<const std::uint8_t> bytes) {
  if (Status cached = cache_->InsertBlocks(digest, offset, bytes); !cached.ok()) {
    counters_.cache_write_errors++;
    cache_write_log_.Log("cannot cache blocks of " + digest.Hex() + ": " + cached.ToString());
    return;
  }
  counters_.block_writes++;
}

void ChunkStore::BlockWriterLoop() {
  std::unique_lock lock(writes_mu_);
  for (;;) {
    writes_cv_.wait(lock, [&] { return writer_stopping_ || !writes_.empty(); });
    if (writes_.empty()) return;  // Stopping, and everything queued is written.
    BlockWrite write = std::move(writes_.front());
    writes_.pop_front();
    lock.unlock();
    WriteBlocksNow(write.digest, write.offset, write.bytes->span());
    lock.lock();
    pending_write_bytes_ -= write.bytes->size();
    if (pending_write_bytes_ == 0) writes_done_cv_.notify_all();
  }
}

void ChunkStore::FlushBlockWrites() {
  std::unique_lock lock(writes_mu_);
  writes_done_cv_.wait(lock, [&] { return pending_write_bytes_ == 0; });
}

bool ChunkStore::ReadPartial(const ChunkKey& key, const index::BlockList& blocks, std::size_t first,
                             std::size_t end, std::span<std::uint8_t> dst) {
  Result<UniqueFd> fd = cache_->OpenPartial(key.digest);
  if (!fd.ok()) return false;
  // Blocks never written are holes of the sparse file: a miss without reading and hashing them.
  if (RangeHasHole(fd->get(), first * blocks.block_size, dst.size())) return false;
  if (!PreadExactly(fd->get(), first * blocks.block_size, dst).ok()) return false;
  // Holes and torn writes fail here; only blocks that match the index count as cached.
  for (std::size_t i = first; i < end; ++i) {
    std::span<const std::uint8_t> block =
        std::span<const std::uint8_t>(dst).subspan((i - first) * blocks.block_size);
    block = block.first(std::min<std::size_t>(block.size(), blocks.block_size));
    if (Sha256(block.data(), block.size()) != blocks.digests[i]) return false;
  }
  return true;
}

bool ChunkStore::HandOff(const ChunkKey& key, std::shared_ptr<Flight> flight, TimePoint deadline) {
  {
    std::lock_guard lock(queue_mu_);
    if (stopping_ || foreground_idle_ <= static_cast<int>(foreground_jobs_.size())) return false;
    foreground_jobs_.push_back(ForegroundJob{key, std::move(flight), deadline});
  }
  foreground_cv_.notify_one();
  return true;
}

void ChunkStore::ForegroundLoop() {
  std::unique_lock lock(queue_mu_);
  for (;;) {
    foreground_cv_.wait(lock, [&] { return stopping_ || !foreground_jobs_.empty(); });
    if (foreground_jobs_.empty()) return;  // Stopping.
    ForegroundJob job = std::move(foreground_jobs_.front());
    foreground_jobs_.pop_front();
    --foreground_idle_;
    const bool stopping = stopping_;
    lock.unlock();
    if (stopping) {
      EndFlight(job.key.digest);
      Complete(*job.flight, UnavailableError("shutting down"), /*keep_bytes=*/false);
    } else {
      Lead(job.key, *job.flight, job.deadline, Priority::kForeground);
    }
    lock.lock();
    ++foreground_idle_;
  }
}

void ChunkStore::Lead(const ChunkKey& key, Flight& flight, TimePoint deadline, Priority priority,
                      const EarlyReader* early, std::uint64_t* room) {
  Status status;
  bool kept = false;
  if (cache_->Contains(key.digest)) {
    // Someone else's fetch completed between our cache miss and our taking the lead. (Whoever
    // leads has just looked on disk for another mount's entry: OpenChunk or Has.)
  } else if (FetchSlot slot(*this, priority, deadline); !slot.held()) {
    status = priority == Priority::kForeground
                 ? DeadlineExceededError("no fetch slot free before the deadline")
                 : UnavailableError("shutting down");
  } else {
    counters_.fetches++;
    std::shared_ptr<Buffer> buffer = TakeBuffer(
        key.size, room,
        priority == Priority::kForeground ? BufferStart::kQuickFirstBytes : BufferStart::kHuge);
    std::span<std::uint8_t> chunk_bytes = buffer->span().first(key.size);
    Result<netfetch::ChunkRef> ref = LocateChunk(*replicas_, key);
    if (!ref.ok()) {
      status = ref.status();
    } else {
      {
        std::lock_guard lock(flight.mu);
        flight.bytes = buffer;
      }
      status = FetchInto(*ref, flight, buffer, chunk_bytes, deadline, early, slot.PauseWithout());
    }
    if (status.ok()) {
      // Readers have the bytes now; the cache write follows while the flight stays registered,
      // so nobody starts a second fetch of a chunk that is between the two.
      Complete(flight, status, /*keep_bytes=*/true);
      kept = true;
      AddReady(key.digest, key.size, buffer, flight);
      Status cached = cache_->Insert(key.digest, chunk_bytes);
      if (!cached.ok()) {
        counters_.cache_write_errors++;
        cache_write_log_.Log("cannot cache chunk " + key.digest.Hex() + ": " + cached.ToString());
      }
    } else {
      counters_.fetch_errors++;
      ReleaseBufferBytes(buffer->size());
    }
  }
  EndFlight(key.digest);
  if (!kept) Complete(flight, status, /*keep_bytes=*/false);
}

Status ChunkStore::FetchInto(const netfetch::ChunkRef& ref, Flight& flight,
                             const std::shared_ptr<Buffer>& buffer, std::span<std::uint8_t> dst,
                             TimePoint deadline, const EarlyReader* early,
                             const netfetch::PauseCallback& pause) {
  bool served_early = false;
  auto on_verified = [&](std::size_t verified) {
    flight.Advance(verified);
    if (early != nullptr && !served_early && verified >= early->end) {
      served_early = true;
      if (verified < dst.size()) counters_.early_reads++;
      (*early->serve)(ChunkData{UniqueFd(), buffer, 0});
    }
  };
  Status status = fetcher_->Fetch(ref, dst, deadline, on_verified, pause);
  RememberOutcome(ref.digest, status);
  return status;
}

void ChunkStore::Complete(Flight& flight, const Status& status, bool keep_bytes) {
  {
    std::lock_guard lock(flight.mu);
    flight.done = true;
    flight.status = status;
    if (!keep_bytes) flight.bytes = nullptr;
  }
  flight.cv.notify_all();
}

std::shared_ptr<Buffer> ChunkStore::TakeBuffer(std::size_t size, std::uint64_t* room,
                                               BufferStart fresh_start) {
  // Whole blocks, so that a disk load can read the chunk's file with O_DIRECT.
  size = AlignedReadSize(0, size);
  {
    std::lock_guard lock(ready_mu_);
    if (room != nullptr) {
      reserved_bytes_ -= *room;
      *room = 0;
    }
    inflight_bytes_ += size;
    TrimReadyLocked();
  }
  std::unique_ptr<Buffer> buffer;
  {
    std::lock_guard lock(spare_mu_);
    auto fits = std::find_if(spare_.begin(), spare_.end(),
                             [&](const std::unique_ptr<Buffer>& b) { return b->size() == size; });
    if (fits != spare_.end()) {
      buffer = std::move(*fits);
      spare_.erase(fits);
      spare_bytes_ -= size;
    }
  }
  if (buffer == nullptr) buffer = std::make_unique<Buffer>(size, fresh_start);
  return std::shared_ptr<Buffer>(buffer.release(),
                                 [this](Buffer* b) { GiveBack(std::unique_ptr<Buffer>(b)); });
}

void ChunkStore::GiveBack(std::unique_ptr<Buffer> buffer) {
  if (buffer->size() > options_.max_spare_bytes) return;
  std::lock_guard lock(spare_mu_);
  // Full: make room by dropping smaller buffers, since the larger ones fit the common (whole)
  // chunks; a buffer that would need a larger one dropped is freed instead.
  while (spare_bytes_ + buffer->size() > options_.max_spare_bytes) {
    auto smallest =
        std::min_element(spare_.begin(), spare_.end(),
                         [](const std::unique_ptr<Buffer>& a, const std::unique_ptr<Buffer>& b) {
                           return a->size() < b->size();
                         });
    if (smallest == spare_.end() || (*smallest)->size() >= buffer->size()) return;
    spare_bytes_ -= (*smallest)->size();
    spare_.erase(smallest);
  }
  spare_bytes_ += buffer->size();
  spare_.push_back(std::move(buffer));
}

void ChunkStore::ReleaseBufferBytes(std::uint64_t bytes) {
  {
    std::lock_guard lock(ready_mu_);
    inflight_bytes_ -= bytes;
  }
  room_cv_.notify_all();
}

std::shared_ptr<const Buffer> ChunkStore::FindReady(const Digest& digest) {
  std::lock_guard lock(ready_mu_);
  auto it = ready_index_.find(digest);
  if (it == ready_index_.end()) return nullptr;
  return it->second->bytes;
}

void ChunkStore::AddReady(const Digest& digest, std::uint64_t size,
                          std::shared_ptr<const Buffer> bytes, Flight& flight) {
  const TimePoint now = clock_->Now();
  {
    std::lock_guard lock(ready_mu_);
    std::uint64_t served = 0;
    {
      std::lock_guard flight_lock(flight.mu);
      served = flight.served;
    }
    inflight_bytes_ -= bytes->size();
    // Served whole while it was arriving: the page cache has it, the disk cache will.
    if (served >= size) RememberDeliveredLocked(digest);
    if (served < size && !ready_index_.contains(digest)) {
      ready_bytes_ += bytes->size();
      ready_.push_front(Ready{digest, std::move(bytes), size, served, now, now});
      ready_index_[digest] = ready_.begin();
      TrimReadyLocked();
    }
  }
  room_cv_.notify_all();
}

void ChunkStore::RememberDeliveredLocked(const Digest& digest) {
  if (!delivered_.insert(digest).second) return;
  delivered_order_.push_back(digest);
  if (delivered_order_.size() > options_.remembered_deliveries) {
    delivered_.erase(delivered_order_.front());
    delivered_order_.pop_front();
  }
}

void ChunkStore::ForgetDeliveriesIfAskedAgain(const Digest& digest) {
  std::lock_guard lock(ready_mu_);
  if (!delivered_.contains(digest)) return;
  // Readers had this chunk whole and ask for it again: the page cache has lost it, and most
  // likely the chunks read around it too. The record no longer says what the kernel holds.
  delivered_.clear();
  delivered_order_.clear();
}

bool ChunkStore::Delivered(const Digest& digest) {
  std::lock_guard lock(ready_mu_);
  return delivered_.contains(digest);
}

void ChunkStore::DropReadyLocked(std::list<Ready>::iterator it) {
  ready_bytes_ -= it->bytes->size();
  ready_index_.erase(it->digest);
  ready_.erase(it);
}

void ChunkStore::TrimReadyLocked() {
  while (!ready_.empty() && ready_bytes_ + inflight_bytes_ > options_.memory_bytes) {
    DropReadyLocked(std::prev(ready_.end()));
  }
}

std::optional<std::uint64_t> ChunkStore::WaitForRoom(std::uint64_t size) {
  // Giving way is a matter of the clock, which nobody signals: look again at least this often.
  constexpr Duration kRecheck = std::chrono::milliseconds(100);
  size = AlignedReadSize(0, size);
  std::unique_lock lock(ready_mu_);
  for (;;) {
    if (room_stopping_) return std::nullopt;
    const std::uint64_t used = ready_bytes_ + inflight_bytes_ + reserved_bytes_;
    // A budget smaller than one chunk still lets one in at a time.
    if (used == 0 || used + size <= options_.memory_bytes) {
      reserved_bytes_ += size;
      return size;
    }
    // The ready chunk that gives way first (the older one of a tie): readers are done with it,
    // or never came.
    auto first = ready_.end();
    TimePoint first_at = TimePoint::max();
    for (auto it = ready_.begin(); it != ready_.end(); ++it) {
      const TimePoint at =
          it->served > 0 ? it->touched + options_.left_after : it->added + options_.stale_after;
      if (at <= first_at) std::tie(first, first_at) = std::tie(it, at);
    }
    const Duration left = first_at - clock_->Now();
    if (left <= Duration::zero()) {
      DropReadyLocked(first);
      continue;
    }
    room_cv_.wait_for(lock, std::min(left, kRecheck));
  }
}

void ChunkStore::ReturnRoom(std::uint64_t bytes) {
  if (bytes == 0) return;
  {
    std::lock_guard lock(ready_mu_);
    reserved_bytes_ -= bytes;
  }
  room_cv_.notify_all();
}

void ChunkStore::Served(const Digest& digest, std::uint64_t bytes) {
  std::unique_lock lock(ready_mu_);
  auto it = ready_index_.find(digest);
  if (it == ready_index_.end()) {
    // Counted on the flight, still under ready_mu_: AddReady takes the count under it too, so a
    // report that comes as the fetch ends is in the count or finds the chunk in the list.
    if (std::shared_ptr<Flight> flight = FindFlight(digest)) {
      std::lock_guard flight_lock(flight->mu);
      flight->served += bytes;
    }
    return;
  }
  Ready& ready = *it->second;
  ready.served += bytes;
  ready.touched = clock_->Now();
  if (ready.served < ready.size) return;
  RememberDeliveredLocked(digest);
  DropReadyLocked(it->second);
  lock.unlock();
  room_cv_.notify_all();
}

bool ChunkStore::AcquireSlot(Priority priority, TimePoint deadline) {
  std::unique_lock lock(slots_mu_);
  if (priority == Priority::kForeground) {
    if (!WaitUntil(lock, slots_cv_, clock_, deadline,
                   [&] { return inflight_ < options_.max_inflight; })) {
      return false;
    }
  } else {
    int limit = std::max(1, options_.max_inflight - options_.foreground_reserve);
    slots_cv_.wait(lock, [&] {
      std::lock_guard queue_lock(queue_mu_);
      return stopping_ || inflight_ < limit;
    });
    std::lock_guard queue_lock(queue_mu_);
    if (stopping_) return false;
  }
  ++inflight_;
  return true;
}

void ChunkStore::ReleaseSlot() {
  {
    std::lock_guard lock(slots_mu_);
    --inflight_;
  }
  slots_cv_.notify_all();
}

Status ChunkStore::RecentFailure(const Digest& digest) {
  std::lock_guard lock(failures_mu_);
  auto it = failures_.find(digest);
  if (it == failures_.end()) return Status::Ok();
  if (clock_->Now() >= it->second.until) {
    failures_.erase(it);
    return Status::Ok();
  }
  return it->second.status;
}

void ChunkStore::RememberOutcome(const Digest& digest, const Status& status) {
  std::lock_guard lock(failures_mu_);
  if (status.ok()) {
    failures_.erase(digest);
    return;
  }
  TimePoint now = clock_->Now();
  if (failures_.size() >= 1024) {
    std::erase_if(failures_, [&](const auto& entry) { return now >= entry.second.until; });
    if (failures_.size() >= 1024) failures_.clear();  // Bounded memory beats a perfect record.
  }
  failures_[digest] = Failure{now + options_.failure_memory, status};
}

void ChunkStore::Prefetch(const ChunkKey& key) {
  if (FindReady(key.digest) != nullptr) return;
  if (Delivered(key.digest) && cache_->Contains(key.digest)) {
    counters_.prefetch_skipped++;
    return;
  }
  {
    std::lock_guard lock(flights_mu_);
    if (flights_.contains(key.digest)) return;
  }
  {
    std::lock_guard lock(queue_mu_);
    if (stopping_ || queued_.contains(key.digest)) return;
    if (queue_.size() >= options_.max_queued_prefetches) {
      counters_.prefetch_dropped++;
      return;
    }
    queue_.push_back(key);
    queued_.insert(key.digest);
    counters_.prefetch_queued++;
  }
  queue_cv_.notify_one();
}

std::optional<ChunkKey> ChunkStore::TakeQueued(std::uint64_t* room) {
  std::lock_guard admission(admission_mu_);
  ChunkKey key;
  {
    std::unique_lock lock(queue_mu_);
    queue_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (stopping_) return std::nullopt;
    key = queue_.front();
  }
  std::optional<std::uint64_t> reserved = WaitForRoom(key.size);
  if (!reserved.has_value()) return std::nullopt;
  *room = *reserved;
  std::lock_guard lock(queue_mu_);
  // Only the admitted thread takes from the queue, which others only append to: its front is
  // still `key`.
  queue_.pop_front();
  queued_.erase(key.digest);
  return key;
}

void ChunkStore::PrefetchLoop() {
  for (;;) {
    std::uint64_t room = 0;
    std::optional<ChunkKey> key = TakeQueued(&room);
    if (!key.has_value()) return;
    if (FindReady(key->digest) == nullptr) {
      if (!cache_->Has(key->digest, key->size)) {
        if (auto [flight, started] = FlightFor(key->digest); started) {
          Lead(*key, *flight, clock_->Now() + options_.prefetch_timeout, Priority::kBackground,
               nullptr, &room);
        }
      } else if (Delivered(key->digest)) {
        counters_.prefetch_skipped++;  // A reader overtook readahead.
      } else {
        LoadFromDisk(*key, &room);
      }
    }
    ReturnRoom(room);  // Whatever no buffer took.
  }
}

void ChunkStore::LoadFromDisk(const ChunkKey& key, std::uint64_t* room) {
  auto [flight, started] = FlightFor(key.digest);
  if (!started) return;
  bool loaded = false;
  if (FetchSlot slot(*this, Priority::kBackground, clock_->Now() + options_.prefetch_timeout);
      slot.held()) {
    std::shared_ptr<Buffer> buffer = TakeBuffer(key.size, room);
    {
      std::lock_guard lock(flight->mu);
      flight->bytes = buffer;
    }
    if (Status read = ReadFromDisk(key, *buffer, *flight); read.ok()) {
      counters_.disk_loads++;
      Complete(*flight, Status::Ok(), /*keep_bytes=*/true);
      AddReady(key.digest, key.size, std::move(buffer), *flight);
      loaded = true;
    } else {
      ReleaseBufferBytes(buffer->size());
      // Before the readers waiting on the load look in the cache again: they are to fetch it.
      if (read.code() != StatusCode::kNotFound) {
        DropUnreadable(key, read.WithContext("cannot load cached chunk " + key.digest.Hex()));
      }
    }
  }
  EndFlight(key.digest);
  // Not loaded (evicted meanwhile, unreadable, shutting down): readers waiting on it look in the
  // cache again and fetch if it is gone, as after a fetch that found the chunk cached.
  if (!loaded) Complete(*flight, Status::Ok(), /*keep_bytes=*/false);
}

Status ChunkStore::ReadFromDisk(const ChunkKey& key, Buffer& buffer, Flight& flight) {
  // In pieces, so that a reader of the start of the chunk can go before the whole has been read.
  constexpr std::uint64_t kPiece = 1u << 20;
  CKPTFS_ASSIGN_OR_RETURN(UniqueFd fd, cache_->OpenChunk(key.digest, key.size));
  for (std::uint64_t offset = 0; offset < key.size; offset += kPiece) {
    const std::uint64_t length = std::min(kPiece, key.size - offset);
    CKPTFS_RETURN_IF_ERROR(
        PreadAligned(fd.get(), offset, length, buffer.span().subspan(offset)).status());
    flight.Advance(offset + length);
  }
  return Status::Ok();
}

}  // namespace ckptfs::fs
