#include "cli/stats.h"

#include <sys/xattr.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <fstream>
#include <sstream>
#include <utility>

#include "common/status.h"

namespace ckptfs::cli {

namespace {

// getxattr(2) values are at most XATTR_SIZE_MAX (64 KiB) on Linux: no larger buffer can help.
constexpr std::size_t kMaxStatsText = 64 << 10;

// Writes "name value" lines with a common prefix.
class Lines {
 public:
  Lines(std::string& out, std::string prefix) : out_(out), prefix_(std::move(prefix)) {}
  Lines& Add(std::string_view name, std::uint64_t value) {
    out_ += prefix_;
    out_ += name;
    out_ += ' ';
    out_ += std::to_string(value);
    out_ += '\n';
    return *this;
  }

 private:
  std::string& out_;
  std::string prefix_;
};

// The node name with '%', whitespace and control bytes as %XX: one field on a line.
std::string EscapeName(std::string_view name) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char c : name) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte <= ' ' || byte == 0x7f || c == '%') {
      out += '%';
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
    } else {
      out += c;
    }
  }
  return out;
}

// The value of a "Name:   123 kB" line of /proc/<pid>/status, in bytes; 0 when missing.
std::uint64_t StatusKilobytes(std::string_view status, std::string_view field) {
  std::size_t at = 0;
  while (at < status.size()) {
    std::size_t end = status.find('\n', at);
    if (end == std::string_view::npos) end = status.size();
    std::string_view line = status.substr(at, end - at);
    at = end + 1;
    if (line.size() <= field.size() || line.substr(0, field.size()) != field ||
        line[field.size()] != ':') {
      continue;
    }
    line.remove_prefix(field.size() + 1);
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    std::uint64_t kilobytes = 0;
    if (std::from_chars(line.data(), line.data() + line.size(), kilobytes).ec != std::errc()) {
      return 0;
    }
    return kilobytes * 1024;
  }
  return 0;
}

}  // namespace

std::string FormatStats(const StatsSnapshot& stats) {
  std::string out;
  Lines(out, "fs.")
      .Add("reads", stats.fs.reads)
      .Add("bytes_read", stats.fs.bytes_read)
      .Add("eio_fetch", stats.fs.eio_fetch)
      .Add("eio_index", stats.fs.eio_index)
      .Add("eio_invalid", stats.fs.eio_invalid)
      .Add("eio_internal", stats.fs.eio_internal);
  Lines(out, "store.")
      .Add("memory_hits", stats.store.memory_hits)
      .Add("cache_hits", stats.store.cache_hits)
      .Add("disk_loads", stats.store.disk_loads)
      .Add("fetches", stats.store.fetches)
      .Add("block_fetches", stats.store.block_fetches)
      .Add("partial_hits", stats.store.partial_hits)
      .Add("early_reads", stats.store.early_reads)
      .Add("joined", stats.store.joined)
      .Add("fetch_errors", stats.store.fetch_errors)
      .Add("cache_write_errors", stats.store.cache_write_errors)
      .Add("prefetch_queued", stats.store.prefetch_queued)
      .Add("prefetch_dropped", stats.store.prefetch_dropped);
  Lines(out, "fetch.")
      .Add("fetches", stats.fetch.fetches)
      .Add("attempts", stats.fetch.attempts)
      .Add("failed_attempts", stats.fetch.failed_attempts)
      .Add("digest_mismatches", stats.fetch.digest_mismatches)
      .Add("bytes_fetched", stats.fetch.bytes_fetched)
      .Add("failed_fetches", stats.fetch.failed_fetches)
      .Add("resumed_attempts", stats.fetch.resumed_attempts)
      .Add("range_fetches", stats.fetch.range_fetches)
      .Add("range_bytes_fetched", stats.fetch.range_bytes_fetched)
      .Add("failed_range_fetches", stats.fetch.failed_range_fetches);
  Lines(out, "cache.")
      .Add("used_bytes", stats.cache.used_bytes)
      .Add("capacity_bytes", stats.cache.capacity_bytes)
      .Add("entries", stats.cache.entries);
  for (const netfetch::NodeHealth& node : stats.nodes) {
    const double speed = std::isfinite(node.bytes_per_second) && node.bytes_per_second > 0
                             ? std::round(node.bytes_per_second)
                             : 0;
    Lines(out, "node." + EscapeName(node.name) + ".")
        .Add("in_flight", static_cast<std::uint64_t>(std::max(node.in_flight, 0)))
        .Add("bytes_per_second", static_cast<std::uint64_t>(speed))
        .Add("consecutive_failures",
             static_cast<std::uint64_t>(std::max(node.consecutive_failures, 0)))
        .Add("backing_off", node.backing_off ? 1 : 0);
  }
  Lines(out, "daemon.")
      .Add("rss_bytes", stats.daemon.rss_bytes)
      .Add("peak_rss_bytes", stats.daemon.peak_rss_bytes);
  return out;
}

FsStats CopyStats(const fs::FileSystemCounters& c) {
  return {.reads = c.reads,
          .bytes_read = c.bytes_read,
          .eio_fetch = c.eio_fetch,
          .eio_index = c.eio_index,
          .eio_invalid = c.eio_invalid,
          .eio_internal = c.eio_internal};
}

StoreStats CopyStats(const fs::ChunkStoreCounters& c) {
  return {.memory_hits = c.memory_hits,
          .cache_hits = c.cache_hits,
          .disk_loads = c.disk_loads,
          .fetches = c.fetches,
          .block_fetches = c.block_fetches,
          .partial_hits = c.partial_hits,
          .early_reads = c.early_reads,
          .joined = c.joined,
          .fetch_errors = c.fetch_errors,
          .cache_write_errors = c.cache_write_errors,
          .prefetch_queued = c.prefetch_queued,
          .prefetch_dropped = c.prefetch_dropped};
}

FetchStats CopyStats(const netfetch::FetchCounters& c) {
  return {.fetches = c.fetches,
          .attempts = c.attempts,
          .failed_attempts = c.failed_attempts,
          .digest_mismatches = c.digest_mismatches,
          .bytes_fetched = c.bytes_fetched,
          .failed_fetches = c.failed_fetches,
          .resumed_attempts = c.resumed_attempts,
          .range_fetches = c.range_fetches,
          .range_bytes_fetched = c.range_bytes_fetched,
          .failed_range_fetches = c.failed_range_fetches};
}

CacheStats CopyStats(const fs::DiskCache& cache) {
  return {.used_bytes = cache.used_bytes(),
          .capacity_bytes = cache.capacity_bytes(),
          .entries = cache.entry_count()};
}

DaemonMemory ParseProcStatus(std::string_view status) {
  return {.rss_bytes = StatusKilobytes(status, "VmRSS"),
          .peak_rss_bytes = StatusKilobytes(status, "VmHWM")};
}

StatsSnapshot CollectStats(const fs::FileSystem& file_system, const fs::ChunkStore& store,
                           const netfetch::RetryingFetcher& fetcher, const fs::DiskCache& cache) {
  StatsSnapshot stats;
  stats.fs = CopyStats(file_system.counters());
  stats.store = CopyStats(store.counters());
  stats.fetch = CopyStats(fetcher.counters());
  stats.cache = CopyStats(cache);
  stats.nodes = fetcher.Health();
  std::ifstream status("/proc/self/status");
  std::ostringstream text;
  text << status.rdbuf();
  stats.daemon = ParseProcStatus(text.str());
  return stats;
}

Result<std::string> ReadMountStats(const std::string& mountpoint) {
  const std::string name(fs::kStatsXattr);
  std::string text(kMaxStatsText, '\0');
  const ssize_t n = ::getxattr(mountpoint.c_str(), name.c_str(), text.data(), text.size());
  if (n < 0) {
    const int err = errno;
    if (err == ENODATA || err == ENOTSUP) {
      return FailedPreconditionError(mountpoint + " is not the root of a ckptfs mount (it has no " +
                                     name + " attribute)");
    }
    if (err == ENOENT) return NotFoundError(mountpoint + ": no such file or directory");
    if (err == ERANGE) {
      return InternalError("the statistics of " + mountpoint + " are larger than " +
                           std::to_string(kMaxStatsText >> 10) + " KiB");
    }
    return ErrnoStatus(err, "cannot read the statistics of " + mountpoint);
  }
  text.resize(static_cast<std::size_t>(n));
  return text;
}

}  // namespace ckptfs::cli
