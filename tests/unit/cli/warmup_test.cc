// cli::Warmup on a small index of three files (two in a subdirectory, one chunk shared between
// two files) with a FakeFetcher and a real DiskCache.
#include "cli/warmup.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "fs/disk_cache.h"
#include "index/reader.h"
#include "index/writer.h"
#include "tests/support/fake_clock.h"
#include "tests/support/fake_fetcher.h"
#include "tests/support/pattern_bytes.h"
#include "tests/support/single_file_index.h"
#include "tests/support/status_testing.h"
#include "tests/support/temp_dir.h"

namespace ckptfs {
namespace {

using cli::Warmup;
using cli::WarmupOptions;
using cli::WarmupReport;
using testing::PatternBytes;

constexpr std::uint64_t kChunk = 64 << 10;

class WarmupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string path = temp_.Path("index.db");
    CKPTFS_ASSERT_OK_AND_ASSIGN(auto writer,
                                index::IndexWriter::Create(path, kChunk, testing::kTestBlockSize));
    CKPTFS_ASSERT_OK_AND_ASSIGN(std::int64_t node, writer->AddNode("n1", "http://127.0.0.1:1"));
    index::IndexStats stats{.directories = 2};
    index::Entry dir;
    dir.parent = index::kRootId;
    dir.name = "sub";
    dir.type = index::EntryType::kDirectory;
    dir.mode = 0755;
    CKPTFS_ASSERT_OK_AND_ASSIGN(const std::uint64_t sub, writer->AddEntry(dir));
    const std::vector<std::uint8_t> shared = PatternBytes(kChunk, 9);
    auto add = [&](std::uint64_t parent, const std::string& name, std::vector<std::uint8_t> bytes) {
      auto file = testing::AddWrittenFile(*writer, parent, name, std::move(bytes), kChunk,
                                          testing::kTestBlockSize, {node}, stats);
      ASSERT_TRUE(file.ok()) << file.status().ToString();
      for (const auto& chunk : file->chunks) fetcher_.Serve(chunk.bytes);
      files_[name] = std::move(file).value();
    };
    ASSERT_NO_FATAL_FAILURE(add(index::kRootId, "a.bin", PatternBytes(2 * kChunk + 100, 1)));
    std::vector<std::uint8_t> b = shared;  // Its first chunk is c.bin's second.
    b.resize(kChunk + 7, 3);
    ASSERT_NO_FATAL_FAILURE(add(sub, "b.bin", b));
    std::vector<std::uint8_t> c = PatternBytes(kChunk, 4);
    c.insert(c.end(), shared.begin(), shared.end());
    ASSERT_NO_FATAL_FAILURE(add(sub, "c.bin", c));
    CKPTFS_ASSERT_OK(writer->Finish(stats));
    writer.reset();
    CKPTFS_ASSERT_OK_AND_ASSIGN(index_, index::IndexReader::Open(path));
    OpenCache(1 << 30);
  }

  void OpenCache(std::uint64_t capacity) {
    cache_.reset();
    CKPTFS_ASSERT_OK_AND_ASSIGN(cache_,
                                fs::DiskCache::Open({temp_.Path("cache"), capacity, &clock_}));
  }

  Result<WarmupReport> Run(std::vector<std::string> paths = {}) {
    WarmupOptions options;
    options.paths = std::move(paths);
    options.jobs = 3;
    options.chunk_timeout = std::chrono::seconds(5);
    return Warmup(*index_, fetcher_, *cache_, clock_, options);
  }

  // The distinct chunk digests of the named files.
  std::set<Digest> ChunksOf(const std::vector<std::string>& names) const {
    std::set<Digest> digests;
    for (const std::string& name : names) {
      for (const auto& chunk : files_.at(name).chunks) digests.insert(chunk.digest);
    }
    return digests;
  }

  void ExpectCachedExactly(const std::set<Digest>& digests) {
    for (const auto& [name, file] : files_) {
      for (const auto& chunk : file.chunks) {
        EXPECT_EQ(cache_->Has(chunk.digest, chunk.bytes.size()), digests.contains(chunk.digest))
            << name << " at " << chunk.offset;
      }
    }
    EXPECT_EQ(cache_->entry_count(), digests.size());
  }

  testing::TempDir temp_;
  testing::FakeClock clock_;
  testing::FakeFetcher fetcher_;
  std::unique_ptr<index::IndexReader> index_;
  std::unique_ptr<fs::DiskCache> cache_;
  std::map<std::string, testing::WrittenFile> files_;
};

TEST_F(WarmupTest, FetchesEveryDistinctChunkOnceAndThenNothing) {
  const std::set<Digest> all = ChunksOf({"a.bin", "b.bin", "c.bin"});
  ASSERT_EQ(all.size(), 6u) << "the shared chunk counts once";
  CKPTFS_ASSERT_OK_AND_ASSIGN(WarmupReport report, Run());
  EXPECT_EQ(report.chunks, 6u);
  EXPECT_EQ(report.fetched_chunks, 6u);
  EXPECT_EQ(report.fetched_bytes, report.bytes);
  EXPECT_EQ(report.bytes, 2 * kChunk + 100 + kChunk + 7 + kChunk);
  EXPECT_EQ(report.failed_chunks, 0u);
  ExpectCachedExactly(all);
  for (const Digest& d : all) EXPECT_EQ(fetcher_.Calls(d), 1) << d.Hex();

  CKPTFS_ASSERT_OK_AND_ASSIGN(report, Run());
  EXPECT_EQ(report.cached_chunks, 6u);
  EXPECT_EQ(report.fetched_chunks, 0u);
  for (const Digest& d : all) EXPECT_EQ(fetcher_.Calls(d), 1) << d.Hex();
}

TEST_F(WarmupTest, PathsLimitItToThoseFilesAndDirectories) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(WarmupReport report, Run({"sub/b.bin"}));
  EXPECT_EQ(report.chunks, 2u);
  ExpectCachedExactly(ChunksOf({"b.bin"}));

  CKPTFS_ASSERT_OK_AND_ASSIGN(report, Run({"./sub/"}));
  EXPECT_EQ(report.chunks, 3u) << "one of b.bin's is c.bin's too";
  EXPECT_EQ(report.cached_chunks, 2u);
  EXPECT_EQ(report.fetched_chunks, 1u);
  ExpectCachedExactly(ChunksOf({"b.bin", "c.bin"}));
  EXPECT_EQ(fetcher_.Calls(files_.at("a.bin").chunks[0].digest), 0);
}

TEST_F(WarmupTest, AMissingPathIsNotFoundAndFetchesNothing) {
  for (const std::string path : {"nope", "sub/nope", "a.bin/x"}) {
    const auto report = Run({"a.bin", path});
    ASSERT_FALSE(report.ok()) << path;
    EXPECT_EQ(report.status().code(), StatusCode::kNotFound);
    EXPECT_EQ(report.status().message(), "the checkpoint has no " + path);
  }
  EXPECT_EQ(cache_->entry_count(), 0u);
}

TEST_F(WarmupTest, AChunkThatFailsIsReportedAndTheOthersAreCached) {
  const Digest bad = files_.at("a.bin").chunks[1].digest;
  fetcher_.Fail(bad, UnavailableError("every replica failed"));
  CKPTFS_ASSERT_OK_AND_ASSIGN(WarmupReport report, Run());
  EXPECT_EQ(report.failed_chunks, 1u);
  EXPECT_EQ(report.fetched_chunks, 5u);
  ASSERT_EQ(report.failures.size(), 1u);
  EXPECT_EQ(report.failures[0], "chunk " + bad.Hex() + ": every replica failed");
  std::set<Digest> rest = ChunksOf({"a.bin", "b.bin", "c.bin"});
  rest.erase(bad);
  ExpectCachedExactly(rest);
}

TEST_F(WarmupTest, ChunksThatDoNotFitInTheCacheAreRefusedBeforeAnyFetch) {
  OpenCache(3 * kChunk);
  const auto report = Run();
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(report.status().message().find("do not fit in the cache"), std::string::npos)
      << report.status().message();
  EXPECT_EQ(cache_->entry_count(), 0u);
  CKPTFS_ASSERT_OK_AND_ASSIGN(WarmupReport some, Run({"sub/b.bin"}));
  EXPECT_EQ(some.fetched_chunks, 2u);
}

TEST_F(WarmupTest, ChunksAlreadyCachedAreMarkedUsedSoTheNewOnesDoNotEvictThem) {
  OpenCache(4 * kChunk);
  CKPTFS_ASSERT_OK_AND_ASSIGN(WarmupReport report, Run({"sub/b.bin"}));
  clock_.Advance(std::chrono::minutes(5));
  CKPTFS_ASSERT_OK_AND_ASSIGN(report, Run({"a.bin"}));  // Now b.bin's chunks are the oldest.
  clock_.Advance(std::chrono::minutes(5));
  // c.bin: one chunk of b.bin's and one new; the full cache evicts a.bin's, never b.bin's.
  CKPTFS_ASSERT_OK_AND_ASSIGN(report, Run({"sub/b.bin", "sub/c.bin"}));
  EXPECT_EQ(report.cached_chunks, 2u);
  EXPECT_EQ(report.fetched_chunks, 1u);
  for (const Digest& d : ChunksOf({"b.bin", "c.bin"})) EXPECT_TRUE(cache_->Contains(d));
}

}  // namespace
}  // namespace ckptfs
