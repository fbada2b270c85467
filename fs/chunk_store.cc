#include "fs/chunk_store.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/file_io.h"
#include "common/log.h"

namespace ckptfs::fs {

struct ChunkStore::Flight {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;                    // GUARDED_BY(mu)
  Status status;                        // GUARDED_BY(mu)
  std::shared_ptr<const Buffer> bytes;  // GUARDED_BY(mu); null with OK: it is in the cache now.
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

ChunkStore::ChunkStore(DiskCache* cache, netfetch::ChunkFetcher* fetcher, ReplicaSource* replicas,
                       Clock* clock, ChunkStoreOptions options)
    : cache_(cache), fetcher_(fetcher), replicas_(replicas), clock_(clock), options_(options) {}

void ChunkStore::Start() {
  for (int i = 0; i < options_.prefetch_threads; ++i) {
    workers_.emplace_back([this] { PrefetchLoop(); });
  }
}

ChunkStore::~ChunkStore() {
  {
    std::lock_guard lock(queue_mu_);
    stopping_ = true;
  }
  queue_cv_.notify_all();
  { std::lock_guard lock(slots_mu_); }
  slots_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
  // Ready buffers go back to spare_ when dropped, so drop them while spare_ still exists.
  std::lock_guard lock(ready_mu_);
  ready_index_.clear();
  ready_.clear();
}

Result<ChunkData> ChunkStore::Get(const ChunkKey& key, TimePoint deadline) {
  for (;;) {
    if (std::shared_ptr<const Buffer> bytes = FindReady(key.digest)) {
      counters_.memory_hits++;
      return ChunkData{UniqueFd(), std::move(bytes)};
    }
    if (Result<UniqueFd> fd = cache_->OpenChunk(key.digest, key.size); fd.ok()) {
      counters_.cache_hits++;
      return ChunkData{std::move(fd).value(), nullptr};
    }
    if (Status failed = RecentFailure(key.digest); !failed.ok()) return failed;
    std::shared_ptr<Flight> flight;
    bool leader = false;
    {
      std::lock_guard lock(flights_mu_);
      auto [it, inserted] = flights_.try_emplace(key.digest);
      if (inserted) it->second = std::make_shared<Flight>();
      flight = it->second;
      leader = inserted;
    }
    if (leader) {
      Lead(key, *flight, deadline, Priority::kForeground);
    } else {
      counters_.joined++;
    }
    std::unique_lock lock(flight->mu);
    if (!WaitUntil(lock, flight->cv, clock_, deadline, [&] { return flight->done; })) {
      return DeadlineExceededError("chunk " + key.digest.Hex() +
                                   " still being fetched at the read's deadline");
    }
    if (!flight->status.ok()) {
      // A background fetch may have given up on its own, shorter clock; try again ourselves.
      bool retry = !leader && flight->status.code() == StatusCode::kDeadlineExceeded &&
                   clock_->Now() < deadline;
      if (!retry) return flight->status;
      continue;
    }
    if (flight->bytes != nullptr) return ChunkData{UniqueFd(), flight->bytes};
    // The leader found the chunk in the cache: open it from there on the next round.
  }
}

Status ChunkStore::Read(const ChunkKey& key, std::uint64_t offset, std::span<std::uint8_t> dst,
                        TimePoint deadline) {
  CKPTFS_ASSIGN_OR_RETURN(ChunkData data, Get(key, deadline));
  if (data.bytes != nullptr) {
    std::memcpy(dst.data(), data.bytes->data() + offset, dst.size());
    Served(key.digest, dst.size());
    return Status::Ok();
  }
  Buffer scratch(AlignedReadSize(offset, dst.size()));
  Result<std::span<const std::uint8_t>> bytes =
      PreadAligned(data.fd.get(), offset, dst.size(), scratch.span());
  if (!bytes.ok()) {
    return bytes.status().WithContext("cannot read cached chunk " + key.digest.Hex());
  }
  std::memcpy(dst.data(), bytes->data(), dst.size());
  return Status::Ok();
}

void ChunkStore::Lead(const ChunkKey& key, Flight& flight, TimePoint deadline, Priority priority) {
  Status status;
  bool completed = false;
  if (cache_->Contains(key.digest)) {
    // Someone else's fetch completed between our cache miss and our taking the lead.
  } else if (!AcquireSlot(priority, deadline)) {
    status = priority == Priority::kForeground
                 ? DeadlineExceededError("no fetch slot free before the deadline")
                 : UnavailableError("shutting down");
  } else {
    counters_.fetches++;
    std::shared_ptr<Buffer> buffer = TakeBuffer(key.size);
    std::span<std::uint8_t> chunk_bytes = buffer->span().first(key.size);
    status = FetchInto(key, chunk_bytes, deadline);
    if (status.ok()) {
      // Waiting readers get the bytes now; the cache write follows while the flight stays
      // registered, so nobody starts a second fetch of a chunk that is between the two.
      Complete(flight, status, buffer);
      completed = true;
      AddReady(key.digest, key.size, buffer);
      Status cached = cache_->Insert(key.digest, chunk_bytes);
      if (!cached.ok()) {
        counters_.cache_write_errors++;
        LogWarning("cannot cache chunk " + key.digest.Hex() + ": " + cached.ToString());
      }
    } else {
      counters_.fetch_errors++;
      ReleaseBufferBytes(buffer->size());
    }
    ReleaseSlot();
  }
  {
    std::lock_guard lock(flights_mu_);
    flights_.erase(key.digest);
  }
  if (!completed) Complete(flight, status, nullptr);
}

Status ChunkStore::FetchInto(const ChunkKey& key, std::span<std::uint8_t> dst, TimePoint deadline) {
  Result<std::vector<std::int64_t>> nodes = replicas_->Replicas(key.chunk_id);
  if (!nodes.ok()) return nodes.status();
  netfetch::ChunkRef ref{key.digest, key.size, std::move(nodes).value()};
  Status status = fetcher_->Fetch(ref, dst, deadline);
  RememberOutcome(key.digest, status);
  return status;
}

void ChunkStore::Complete(Flight& flight, const Status& status,
                          std::shared_ptr<const Buffer> bytes) {
  {
    std::lock_guard lock(flight.mu);
    flight.done = true;
    flight.status = status;
    flight.bytes = std::move(bytes);
  }
  flight.cv.notify_all();
}

std::shared_ptr<Buffer> ChunkStore::TakeBuffer(std::size_t size) {
  // Whole blocks, so that a disk load can read the chunk's file with O_DIRECT.
  size = AlignedReadSize(0, size);
  {
    std::lock_guard lock(ready_mu_);
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
    }
  }
  if (buffer == nullptr) buffer = std::make_unique<Buffer>(size);
  return std::shared_ptr<Buffer>(buffer.release(),
                                 [this](Buffer* b) { GiveBack(std::unique_ptr<Buffer>(b)); });
}

void ChunkStore::GiveBack(std::unique_ptr<Buffer> buffer) {
  std::lock_guard lock(spare_mu_);
  if (spare_.size() < static_cast<std::size_t>(options_.max_spare)) {
    spare_.push_back(std::move(buffer));
    return;
  }
  // Full: keep the larger buffers, which fit the common (whole) chunks.
  auto smallest =
      std::min_element(spare_.begin(), spare_.end(),
                       [](const std::unique_ptr<Buffer>& a, const std::unique_ptr<Buffer>& b) {
                         return a->size() < b->size();
                       });
  if ((*smallest)->size() < buffer->size()) *smallest = std::move(buffer);
}

void ChunkStore::ReleaseBufferBytes(std::uint64_t bytes) {
  std::lock_guard lock(ready_mu_);
  inflight_bytes_ -= bytes;
}

std::shared_ptr<const Buffer> ChunkStore::FindReady(const Digest& digest) {
  std::lock_guard lock(ready_mu_);
  auto it = ready_index_.find(digest);
  if (it == ready_index_.end()) return nullptr;
  return it->second->bytes;
}

bool ChunkStore::IsReady(const Digest& digest) {
  std::lock_guard lock(ready_mu_);
  return ready_index_.contains(digest);
}

void ChunkStore::AddReady(const Digest& digest, std::uint64_t size,
                          std::shared_ptr<const Buffer> bytes) {
  std::lock_guard lock(ready_mu_);
  inflight_bytes_ -= bytes->size();
  if (ready_index_.contains(digest)) return;
  ready_bytes_ += bytes->size();
  ready_.push_front(Ready{digest, std::move(bytes), size, 0});
  ready_index_[digest] = ready_.begin();
  TrimReadyLocked();
}

void ChunkStore::TrimReadyLocked() {
  while (!ready_.empty() && ready_bytes_ + inflight_bytes_ > options_.memory_bytes) {
    ready_bytes_ -= ready_.back().bytes->size();
    ready_index_.erase(ready_.back().digest);
    ready_.pop_back();
  }
}

void ChunkStore::Served(const Digest& digest, std::uint64_t bytes) {
  std::lock_guard lock(ready_mu_);
  auto it = ready_index_.find(digest);
  if (it == ready_index_.end()) return;
  Ready& ready = *it->second;
  ready.served += bytes;
  if (ready.served < ready.size) return;
  ready_bytes_ -= ready.bytes->size();
  ready_.erase(it->second);
  ready_index_.erase(it);
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
  if (IsReady(key.digest)) return;
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

void ChunkStore::PrefetchLoop() {
  for (;;) {
    ChunkKey key;
    {
      std::unique_lock lock(queue_mu_);
      queue_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      key = queue_.front();
      queue_.pop_front();
      queued_.erase(key.digest);
    }
    if (IsReady(key.digest)) continue;
    if (cache_->Contains(key.digest)) {
      LoadFromDisk(key);
      continue;
    }
    std::shared_ptr<Flight> flight;
    {
      std::lock_guard lock(flights_mu_);
      auto [it, inserted] = flights_.try_emplace(key.digest);
      if (!inserted) continue;
      it->second = std::make_shared<Flight>();
      flight = it->second;
    }
    Lead(key, *flight, clock_->Now() + options_.prefetch_timeout, Priority::kBackground);
  }
}

void ChunkStore::LoadFromDisk(const ChunkKey& key) {
  if (!AcquireSlot(Priority::kBackground, clock_->Now() + options_.prefetch_timeout)) return;
  std::shared_ptr<Buffer> buffer = TakeBuffer(key.size);
  Status status;
  if (Result<UniqueFd> fd = cache_->OpenChunk(key.digest, key.size); !fd.ok()) {
    status = fd.status();
  } else {
    status = PreadAligned(fd->get(), 0, key.size, buffer->span()).status();
  }
  if (status.ok()) {
    counters_.disk_loads++;
    AddReady(key.digest, key.size, std::move(buffer));
  } else {
    // Evicted meanwhile, or unreadable: the foreground read will find out and fetch.
    ReleaseBufferBytes(buffer->size());
  }
  ReleaseSlot();
}

}  // namespace ckptfs::fs
