#include "cli/warmup.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <utility>

#include "common/buffer.h"
#include "common/thread_name.h"
#include "common/units.h"
#include "fs/chunk_store.h"
#include "fs/file_system.h"

namespace ckptfs::cli {

namespace {

constexpr std::size_t kPage = 1024;  // Rows asked of the index at a time.
constexpr std::size_t kFailuresShown = 10;

// The distinct chunks of the whole index.
Result<std::vector<index::ChunkRecord>> AllChunks(const index::IndexReader& index) {
  std::vector<index::ChunkRecord> chunks;
  for (;;) {
    const std::int64_t after = chunks.empty() ? 0 : chunks.back().id;
    CKPTFS_ASSIGN_OR_RETURN(std::vector<index::ChunkRecord> page, index.ChunksAfter(after, kPage));
    if (page.empty()) return chunks;
    chunks.insert(chunks.end(), page.begin(), page.end());
  }
}

// Gathers the chunks of an entry and everything below it into `chunks` (once each, by id).
class ChunkCollector {
 public:
  explicit ChunkCollector(const index::IndexReader& index) : index_(index) {}

  Status Add(const index::Entry& entry) {
    if (entry.type == index::EntryType::kFile) return AddFile(entry);
    if (entry.type != index::EntryType::kDirectory) return Status::Ok();
    std::vector<std::uint64_t> dirs = {entry.id};  // A stack: no recursion for deep trees.
    while (!dirs.empty()) {
      const std::uint64_t dir = dirs.back();
      dirs.pop_back();
      for (std::uint64_t after = 0;;) {
        // Until an empty page: a short one is not the last, since entries with an invalid
        // name are left out of it.
        CKPTFS_ASSIGN_OR_RETURN(std::vector<index::Entry> page,
                                index_.ListChildren(dir, after, kPage));
        if (page.empty()) break;
        for (const index::Entry& child : page) {
          if (child.type == index::EntryType::kDirectory) dirs.push_back(child.id);
          if (child.type == index::EntryType::kFile) CKPTFS_RETURN_IF_ERROR(AddFile(child));
        }
        after = page.back().id;
      }
    }
    return Status::Ok();
  }

  std::vector<index::ChunkRecord> Take() { return std::move(chunks_); }

 private:
  Status AddFile(const index::Entry& file) {
    if (file.size == 0) return Status::Ok();
    CKPTFS_ASSIGN_OR_RETURN(std::vector<index::Extent> extents,
                            index_.ExtentsInRange(file.id, 0, file.size));
    for (const index::Extent& e : extents) {
      if (seen_.insert(e.chunk_id).second) chunks_.push_back({e.chunk_id, e.digest, e.size});
    }
    return Status::Ok();
  }

  const index::IndexReader& index_;
  std::unordered_set<std::int64_t> seen_;
  std::vector<index::ChunkRecord> chunks_;
};

// The entry at `path` below the root; NotFound naming the path when there is none.
Result<index::Entry> Resolve(const index::IndexReader& index, const std::string& path) {
  CKPTFS_ASSIGN_OR_RETURN(index::Entry entry, index.GetEntry(index::kRootId));
  std::string_view rest = path;
  while (!rest.empty()) {
    const std::size_t slash = rest.find('/');
    const std::string_view name = rest.substr(0, slash);
    rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
    if (name.empty() || name == ".") continue;
    Result<index::Entry> child = entry.type == index::EntryType::kDirectory
                                     ? index.Lookup(entry.id, name)
                                     : Result<index::Entry>(NotFoundError(""));
    if (!child.ok()) {
      if (child.status().code() != StatusCode::kNotFound) return child.status();
      return NotFoundError("the checkpoint has no " + path);
    }
    entry = *std::move(child);
  }
  return entry;
}

Result<std::vector<index::ChunkRecord>> ChunksOf(const index::IndexReader& index,
                                                 const std::vector<std::string>& paths) {
  if (paths.empty()) return AllChunks(index);
  ChunkCollector collector(index);
  for (const std::string& path : paths) {
    CKPTFS_ASSIGN_OR_RETURN(index::Entry entry, Resolve(index, path));
    CKPTFS_RETURN_IF_ERROR(collector.Add(entry));
  }
  return collector.Take();
}

// The fetches of the chunks not cached yet, by `jobs` threads that take them in order.
class Fetches {
 public:
  Fetches(const index::IndexReader& index, netfetch::ChunkFetcher& fetcher, fs::DiskCache& cache,
          Clock& clock, const WarmupOptions& options, WarmupReport& report)
      : index_(index),
        fetcher_(fetcher),
        cache_(cache),
        clock_(clock),
        options_(options),
        report_(report),
        start_(clock.Now()),
        last_shown_(start_) {}

  void Run(const std::vector<index::ChunkRecord>& chunks) {
    work_ = &chunks;
    std::vector<std::jthread> workers;
    const std::size_t jobs = std::min<std::size_t>(std::max(options_.jobs, 1), chunks.size());
    for (std::size_t i = 0; i < jobs; ++i) {
      workers.emplace_back([this] {
        SetThreadName("ckptfs-warmup");
        Work();
      });
    }
    workers.clear();  // Joins them.
    report_.elapsed = clock_.Now() - start_;
    if (shown_) *options_.progress << "\n" << std::flush;
  }

 private:
  void Work() {
    Buffer buffer(index_.chunk_size());
    for (;;) {
      const std::size_t i = next_.fetch_add(1);
      if (i >= work_->size()) return;
      const index::ChunkRecord& chunk = (*work_)[i];
      Status status = FetchOne(chunk, buffer.span().first(chunk.size));
      Record(chunk, status);
    }
  }

  Status FetchOne(const index::ChunkRecord& chunk, std::span<std::uint8_t> dst) {
    CKPTFS_ASSIGN_OR_RETURN(netfetch::ChunkRef ref,
                            fs::LocateChunk(replicas_, {chunk.digest, chunk.size, chunk.id}));
    CKPTFS_RETURN_IF_ERROR(fetcher_.Fetch(ref, dst, clock_.Now() + options_.chunk_timeout));
    return cache_.Insert(chunk.digest, dst).WithContext("cannot cache it");
  }

  void Record(const index::ChunkRecord& chunk, const Status& status) {
    std::lock_guard lock(mu_);
    if (status.ok()) {
      report_.fetched_chunks++;
      report_.fetched_bytes += chunk.size;
    } else {
      report_.failed_chunks++;
      if (report_.failures.size() < kFailuresShown) {
        report_.failures.push_back("chunk " + chunk.digest.Hex() + ": " + status.message());
      }
    }
    ShowProgressLocked();
  }

  void ShowProgressLocked() {
    if (options_.progress == nullptr) return;
    const TimePoint now = clock_.Now();
    if (now - last_shown_ < std::chrono::seconds(1)) return;
    last_shown_ = now;
    shown_ = true;
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const auto rate = static_cast<std::uint64_t>(report_.fetched_bytes / seconds);
    *options_.progress << "\rwarmup: " << FormatSize(report_.fetched_bytes) << " of "
                       << FormatSize(report_.bytes - report_.cached_bytes) << " fetched, "
                       << FormatSize(rate) << "/s   " << std::flush;
  }

  const index::IndexReader& index_;
  fs::IndexReplicas replicas_{&index_};
  netfetch::ChunkFetcher& fetcher_;
  fs::DiskCache& cache_;
  Clock& clock_;
  const WarmupOptions& options_;
  WarmupReport& report_;  // GUARDED_BY(mu_) while Run runs.
  const std::vector<index::ChunkRecord>* work_ = nullptr;
  std::atomic<std::size_t> next_{0};
  std::mutex mu_;
  const TimePoint start_;
  TimePoint last_shown_;  // GUARDED_BY(mu_)
  bool shown_ = false;    // GUARDED_BY(mu_)
};

}  // namespace

Result<WarmupReport> Warmup(const index::IndexReader& index, netfetch::ChunkFetcher& fetcher,
                            fs::DiskCache& cache, Clock& clock, const WarmupOptions& options) {
  CKPTFS_ASSIGN_OR_RETURN(std::vector<index::ChunkRecord> chunks, ChunksOf(index, options.paths));
  WarmupReport report;
  std::vector<index::ChunkRecord> missing;
  for (const index::ChunkRecord& chunk : chunks) {
    report.chunks++;
    report.bytes += chunk.size;
    // Opened rather than looked up: that marks it used, so that the chunks fetched next do not
    // evict it as the least recently used.
    if (cache.OpenChunk(chunk.digest, chunk.size).ok()) {
      report.cached_chunks++;
      report.cached_bytes += chunk.size;
    } else {
      missing.push_back(chunk);
    }
  }
  if (report.bytes > cache.capacity_bytes()) {
    return FailedPreconditionError(
        "the " + FormatSize(report.bytes) + " of chunks asked for do not fit in the cache's " +
        FormatSize(cache.capacity_bytes()) + " (cache_size=), and would evict each other");
  }
  Fetches(index, fetcher, cache, clock, options, report).Run(missing);
  return report;
}

}  // namespace ckptfs::cli
