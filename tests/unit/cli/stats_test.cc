// The text of `ckptfs stats` (FormatStats over live counters), ParseProcStatus, and
// ReadMountStats on paths that are not a mount.
#include "cli/stats.h"

#include <gtest/gtest.h>

#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/status_testing.h"
#include "tests/support/temp_dir.h"

namespace ckptfs {
namespace {

using cli::FormatStats;
using cli::StatsSources;

// Live counters with every number different, so that a value under the wrong name shows.
struct NumberedCounters {
  fs::FileSystemCounters fs;
  fs::ChunkStoreCounters store;
  netfetch::FetchCounters fetch;

  NumberedCounters() {
    fs.reads = 1;
    fs.bytes_read = 2;
    fs.lookups = 8;
    fs.eio_fetch = 3;
    fs.eio_index = 4;
    fs.eio_invalid = 5;
    fs.eio_internal = 6;
    fs.xattr_requests = 7;
    store.memory_hits = 11;
    store.cache_hits = 12;
    store.disk_loads = 13;
    store.fetches = 14;
    store.block_fetches = 15;
    store.partial_hits = 16;
    store.early_reads = 17;
    store.joined = 18;
    store.fetch_errors = 19;
    store.cache_write_errors = 20;
    store.cache_read_errors = 26;
    store.prefetch_queued = 21;
    store.prefetch_dropped = 22;
    store.prefetch_skipped = 23;
    store.block_writes = 24;
    store.block_writes_skipped = 25;
    fetch.fetches = 31;
    fetch.attempts = 32;
    fetch.failed_attempts = 33;
    fetch.slow_attempts = 145;
    fetch.digest_mismatches = 34;
    fetch.bytes_fetched = 35;
    fetch.failed_fetches = 36;
    fetch.resumed_attempts = 37;
    fetch.range_fetches = 38;
    fetch.range_bytes_fetched = 39;
    fetch.failed_range_fetches = 40;
    fetch.down_fetches = 146;
    fetch.split_fetches = 140;
    fetch.probes = 141;
    fetch.failed_probes = 142;
    fetch.greetings = 143;
    fetch.failed_greetings = 144;
  }

  StatsSources Sources() const {
    return {.fs = fs,
            .store = store,
            .fetch = fetch,
            .cache = {.used_bytes = 41, .capacity_bytes = 42, .entries = 43},
            .memory = {.bytes = 44, .budget_bytes = 45, .ready_chunks = 46, .spare_bytes = 47},
            .nodes = {{.id = 1,
                       .name = "n1",
                       .in_flight = 2,
                       .consecutive_failures = 0,
                       .backing_off = false,
                       .bytes_per_second = 123456.6},
                      {.id = 2,
                       .name = "n2",
                       .in_flight = 0,
                       .consecutive_failures = 3,
                       .backing_off = true,
                       .bytes_per_second = 0,
                       .backoff_left = std::chrono::microseconds(2'500'001),
                       .awaiting_probe = true,
                       .unanswered = true,
                       .down = true}},
            .daemon = {.rss_bytes = 51, .peak_rss_bytes = 52}};
  }
};

// Counters that are all zero.
struct ZeroCounters {
  fs::FileSystemCounters fs;
  fs::ChunkStoreCounters store;
  netfetch::FetchCounters fetch;
  StatsSources Sources() const {
    return {.fs = fs,
            .store = store,
            .fetch = fetch,
            .cache = {},
            .memory = {},
            .nodes = {},
            .daemon = {}};
  }
};

TEST(FormatStats, WritesEveryNumberAsANameValueLineInAStableOrder) {
  EXPECT_EQ(FormatStats(NumberedCounters().Sources()),
            "fs.reads 1\n"
            "fs.bytes_read 2\n"
            "fs.lookups 8\n"
            "fs.eio_fetch 3\n"
            "fs.eio_index 4\n"
            "fs.eio_invalid 5\n"
            "fs.eio_internal 6\n"
            "fs.xattr_requests 7\n"
            "store.memory_hits 11\n"
            "store.cache_hits 12\n"
            "store.disk_loads 13\n"
            "store.fetches 14\n"
            "store.block_fetches 15\n"
            "store.partial_hits 16\n"
            "store.early_reads 17\n"
            "store.joined 18\n"
            "store.fetch_errors 19\n"
            "store.cache_write_errors 20\n"
            "store.cache_read_errors 26\n"
            "store.prefetch_queued 21\n"
            "store.prefetch_dropped 22\n"
            "store.prefetch_skipped 23\n"
            "store.block_writes 24\n"
            "store.block_writes_skipped 25\n"
            "fetch.fetches 31\n"
            "fetch.attempts 32\n"
            "fetch.failed_attempts 33\n"
            "fetch.slow_attempts 145\n"
            "fetch.digest_mismatches 34\n"
            "fetch.bytes_fetched 35\n"
            "fetch.failed_fetches 36\n"
            "fetch.resumed_attempts 37\n"
            "fetch.range_fetches 38\n"
            "fetch.range_bytes_fetched 39\n"
            "fetch.failed_range_fetches 40\n"
            "fetch.down_fetches 146\n"
            "fetch.split_fetches 140\n"
            "fetch.probes 141\n"
            "fetch.failed_probes 142\n"
            "fetch.greetings 143\n"
            "fetch.failed_greetings 144\n"
            "cache.used_bytes 41\n"
            "cache.capacity_bytes 42\n"
            "cache.entries 43\n"
            "memory.chunk_bytes 44\n"
            "memory.chunk_budget_bytes 45\n"
            "memory.ready_chunks 46\n"
            "memory.spare_bytes 47\n"
            "node.n1.in_flight 2\n"
            "node.n1.bytes_per_second 123457\n"
            "node.n1.consecutive_failures 0\n"
            "node.n1.backing_off 0\n"
            "node.n1.backoff_ms 0\n"
            "node.n1.awaiting_probe 0\n"
            "node.n1.unanswered 0\n"
            "node.n1.down 0\n"
            "node.n2.in_flight 0\n"
            "node.n2.bytes_per_second 0\n"
            "node.n2.consecutive_failures 3\n"
            "node.n2.backing_off 1\n"
            "node.n2.backoff_ms 2501\n"
            "node.n2.awaiting_probe 1\n"
            "node.n2.unanswered 1\n"
            "node.n2.down 1\n"
            "daemon.rss_bytes 51\n"
            "daemon.peak_rss_bytes 52\n");
}

TEST(FormatStats, AMountWithoutNodesHasNoNodeLines) {
  const std::string text = FormatStats(ZeroCounters().Sources());
  EXPECT_EQ(text.find("node."), std::string::npos) << text;
  EXPECT_NE(text.find("\nmemory.spare_bytes 0\ndaemon.rss_bytes 0\n"), std::string::npos) << text;
}

TEST(FormatStats, NodeNamesWithSpacesOrPercentStayOneField) {
  ZeroCounters zero;
  StatsSources s = zero.Sources();
  s.nodes = {{.id = 1, .name = "rack 1\t%a"}};
  const std::string text = FormatStats(s);
  EXPECT_NE(text.find("\nnode.rack%201%09%25a.in_flight 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nnode.rack%201%09%25a.backing_off 0\n"), std::string::npos) << text;
}

TEST(FormatStats, EveryLineIsANameAndANonNegativeInteger) {
  NumberedCounters numbered;
  StatsSources s = numbered.Sources();
  s.nodes[0].in_flight = -1;  // Cannot happen; must still print as a number.
  s.nodes[0].bytes_per_second = std::numeric_limits<double>::infinity();
  s.nodes[1].backoff_left = -std::chrono::seconds(1);  // Cannot happen either.
  const std::string text = FormatStats(s);
  std::size_t at = 0;
  int lines = 0;
  while (at < text.size()) {
    const std::size_t end = text.find('\n', at);
    ASSERT_NE(end, std::string::npos) << "unterminated last line";
    const std::string line = text.substr(at, end - at);
    const std::size_t space = line.find(' ');
    ASSERT_NE(space, std::string::npos) << line;
    EXPECT_EQ(line.find(' ', space + 1), std::string::npos) << line;
    const std::string value = line.substr(space + 1);
    EXPECT_FALSE(value.empty()) << line;
    EXPECT_EQ(value.find_first_not_of("0123456789"), std::string::npos) << line;
    at = end + 1;
    ++lines;
  }
  EXPECT_EQ(lines, 8 + 16 + 17 + 3 + 4 + 2 * 8 + 2);
}

TEST(FormatPrometheus, CountersGaugesAndNodesOfEachMountWithOneTypeLinePerFamily) {
  const std::vector<cli::MountStats> mounts = {
      {"/mnt/a", std::string("fs.reads 3\ncache.entries 7\nnode.n1.in_flight 2\n"
                             "node.rack%201.in_flight 0\n")},
      {"/mnt/b", std::string("fs.reads 5\ncache.entries 9\nnode.n1.in_flight 1\n")},
  };
  EXPECT_EQ(cli::FormatPrometheus(mounts),
            "# TYPE ckptfs_up gauge\n"
            "ckptfs_up{mountpoint=\"/mnt/a\"} 1\n"
            "ckptfs_up{mountpoint=\"/mnt/b\"} 1\n"
            "# TYPE ckptfs_fs_reads_total counter\n"
            "ckptfs_fs_reads_total{mountpoint=\"/mnt/a\"} 3\n"
            "ckptfs_fs_reads_total{mountpoint=\"/mnt/b\"} 5\n"
            "# TYPE ckptfs_cache_entries gauge\n"
            "ckptfs_cache_entries{mountpoint=\"/mnt/a\"} 7\n"
            "ckptfs_cache_entries{mountpoint=\"/mnt/b\"} 9\n"
            "# TYPE ckptfs_node_in_flight gauge\n"
            "ckptfs_node_in_flight{mountpoint=\"/mnt/a\",node=\"n1\"} 2\n"
            "ckptfs_node_in_flight{mountpoint=\"/mnt/a\",node=\"rack 1\"} 0\n"
            "ckptfs_node_in_flight{mountpoint=\"/mnt/b\",node=\"n1\"} 1\n");
}

TEST(FormatPrometheus, AMountThatCouldNotBeReadIsDown) {
  const std::vector<cli::MountStats> mounts = {
      {"/mnt/a", std::string("store.fetches 4\n")},
      {"/mnt/hung", DeadlineExceededError("did not answer")},
  };
  EXPECT_EQ(cli::FormatPrometheus(mounts),
            "# TYPE ckptfs_up gauge\n"
            "ckptfs_up{mountpoint=\"/mnt/a\"} 1\n"
            "ckptfs_up{mountpoint=\"/mnt/hung\"} 0\n"
            "# TYPE ckptfs_store_fetches_total counter\n"
            "ckptfs_store_fetches_total{mountpoint=\"/mnt/a\"} 4\n");
}

TEST(FormatPrometheus, LabelValuesAreEscapedAndNodeNamesUnescaped) {
  ZeroCounters zero;
  StatsSources s = zero.Sources();
  s.nodes = {{.id = 1, .name = "a\"b\\c.d%e\nf"}};
  const std::string text = cli::FormatPrometheus({{"/mnt/x\"y", FormatStats(s)}});
  EXPECT_NE(
      text.find(
          "ckptfs_node_backing_off{mountpoint=\"/mnt/x\\\"y\",node=\"a\\\"b\\\\c.d%e\\nf\"} 0\n"),
      std::string::npos)
      << text;
}

TEST(FormatPrometheus, EveryLineOfTheStatsTextBecomesOneSample) {
  NumberedCounters numbered;
  const std::string text = cli::FormatPrometheus({{"/m", FormatStats(numbered.Sources())}});
  int samples = 0, types = 0;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    (line.starts_with("# TYPE ") ? types : samples)++;
  }
  EXPECT_EQ(samples, 1 + 8 + 16 + 17 + 3 + 4 + 2 * 8 + 2) << text;
  EXPECT_EQ(types, 1 + 8 + 16 + 17 + 3 + 4 + 8 + 2) << text;
}

TEST(FormatPrometheus, LinesThatAreNotANameAndANumberAreLeftOut) {
  const std::string text = cli::FormatPrometheus(
      {{"/m", std::string("fs.reads 1\nno value\nfs.x -1\nnode.in_flight 1\nFs.Upper 2\n\n")}});
  EXPECT_EQ(text,
            "# TYPE ckptfs_up gauge\nckptfs_up{mountpoint=\"/m\"} 1\n"
            "# TYPE ckptfs_fs_reads_total counter\nckptfs_fs_reads_total{mountpoint=\"/m\"} 1\n");
}

TEST(ParseProcStatus, ReadsVmRssAndVmHwmInBytes) {
  const cli::DaemonMemory memory = cli::ParseProcStatus(
      "Name:\tckptfs\nVmPeak:\t  900000 kB\nVmHWM:\t   71234 kB\nVmRSS:\t   40960 kB\n"
      "RssAnon:\t   30000 kB\n");
  EXPECT_EQ(memory.rss_bytes, 40960ull * 1024);
  EXPECT_EQ(memory.peak_rss_bytes, 71234ull * 1024);
}

TEST(ParseProcStatus, MissingOrMalformedFieldsAreZero) {
  const cli::DaemonMemory memory = cli::ParseProcStatus("VmRSSx:\t5 kB\nVmHWM:\tlots\n");
  EXPECT_EQ(memory.rss_bytes, 0u);
  EXPECT_EQ(memory.peak_rss_bytes, 0u);
  EXPECT_EQ(cli::ParseProcStatus("").rss_bytes, 0u);
}

TEST(ReadMountStats, APlainDirectoryIsNotACkptfsMount) {
  testing::TempDir dir;
  Result<std::string> text = cli::ReadMountStats(dir.path());
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(text.status().message(), dir.path() +
                                         " is not the root of a ckptfs mount (it has no "
                                         "user.ckptfs.stats attribute)");
}

TEST(ReadMountStats, AMissingPathSaysSo) {
  testing::TempDir dir;
  Result<std::string> text = cli::ReadMountStats(dir.Path("nothing"));
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(text.status().message(), dir.Path("nothing") + ": no such file or directory");
}

}  // namespace
}  // namespace ckptfs
