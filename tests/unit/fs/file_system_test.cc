// FileSystem::ReadRange, PrefetchRange and ValidateOnce over a real index (written with
// IndexWriter) and a ChunkStore whose chunks come from a FakeFetcher; no FUSE.
#include "fs/file_system.h"

#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "index/reader.h"
#include "index/writer.h"
#include "tests/support/fake_clock.h"
#include "tests/support/fake_fetcher.h"
#include "tests/support/poll.h"
#include "tests/support/single_file_index.h"
#include "tests/support/status_testing.h"
#include "tests/support/temp_dir.h"

namespace ckptfs {
namespace {

using namespace std::chrono_literals;
using testing::FakeClock;
using testing::FakeFetcher;
using testing::PatternBytes;
using testing::PollUntil;
using testing::TempDir;
using testing::WrittenFile;

constexpr std::uint64_t kChunk = 64 << 10;
constexpr std::uint64_t kFullChunks = 10;
constexpr std::uint64_t kTail = 1000;
constexpr std::uint64_t kFileSize = kFullChunks * kChunk + kTail;

class FileSystem : public ::testing::Test {
 protected:
  void SetUp() override {
    auto written =
        testing::WriteSingleFileIndex(temp_.Path("index.db"), PatternBytes(kFileSize, 42), kChunk,
                                      {{"n1", "http://127.0.0.1:1"}});
    ASSERT_TRUE(written.ok()) << written.status().ToString();
    file_ = std::move(written).value();
    ASSERT_EQ(file_.chunks.size(), kFullChunks + 1);
    for (const auto& chunk : file_.chunks) fetcher_.Serve(chunk.bytes);
    auto index = index::IndexReader::Open(temp_.Path("index.db"));
    ASSERT_TRUE(index.ok()) << index.status().ToString();
    index_ = std::move(index).value();
    replicas_ = std::make_unique<fs::IndexReplicas>(index_.get());
    auto cache = fs::DiskCache::Open(
        {.dir = temp_.Path("cache"), .capacity_bytes = 1 << 30, .clock = &clock_});
    ASSERT_TRUE(cache.ok()) << cache.status().ToString();
    cache_ = std::move(cache).value();
    store_ = std::make_unique<fs::ChunkStore>(cache_.get(), &fetcher_, replicas_.get(), &clock_);
    store_->Start();
    fs_ = std::make_unique<fs::FileSystem>(index_.get(), store_.get(), &clock_,
                                           fs::FileSystemOptions{});
  }
  void TearDown() override { fetcher_.Release(); }

  Result<std::vector<std::uint8_t>> Read(std::uint64_t offset, std::size_t length) {
    std::vector<std::uint8_t> out(length);
    CKPTFS_RETURN_IF_ERROR(fs_->ReadRange(file_.id, offset, out, clock_.Now() + 1h));
    return out;
  }
  std::vector<std::uint8_t> Expected(std::uint64_t offset, std::size_t length) const {
    return {file_.content.begin() + offset, file_.content.begin() + offset + length};
  }
  // Fetch count of every chunk, in file order.
  std::vector<int> FetchesPerChunk() const {
    std::vector<int> calls;
    for (const auto& chunk : file_.chunks) calls.push_back(fetcher_.Calls(chunk.digest));
    return calls;
  }
  // Fetch counts with 1 for the chunks in [first, last] and 0 elsewhere.
  static std::vector<int> Fetched(std::size_t first, std::size_t last) {
    std::vector<int> calls(kFullChunks + 1, 0);
    for (std::size_t i = first; i <= last; ++i) calls[i] = 1;
    return calls;
  }
  // Waits for the prefetch threads to finish, so that the fetch counts are final.
  void StopStore() {
    fs_.reset();
    store_.reset();
  }

  void ExpectReadMatches(std::uint64_t offset, std::size_t length) {
    auto read = Read(offset, length);
    ASSERT_TRUE(read.ok()) << offset << "+" << length << ": " << read.status().ToString();
    EXPECT_EQ(*read, Expected(offset, length)) << offset << "+" << length;
  }

  TempDir temp_;
  FakeClock clock_;
  FakeFetcher fetcher_;
  WrittenFile file_;
  std::unique_ptr<index::IndexReader> index_;
  std::unique_ptr<fs::IndexReplicas> replicas_;
  std::unique_ptr<fs::DiskCache> cache_;
  std::unique_ptr<fs::ChunkStore> store_;
  std::unique_ptr<fs::FileSystem> fs_;
};

TEST_F(FileSystem, ReadInsideOneChunkFetchesOnlyThatChunk) {
  ExpectReadMatches(3 * kChunk + 100, 1000);
  StopStore();
  EXPECT_EQ(FetchesPerChunk(), Fetched(3, 3));
}

TEST_F(FileSystem, ReadStartingAndEndingInsideChunksSpansThreeChunks) {
  ExpectReadMatches(kChunk + 10, 2 * kChunk + 10);  // Ends 20 bytes into chunk 3.
  StopStore();
  EXPECT_EQ(FetchesPerChunk(), Fetched(1, 3));
}

TEST_F(FileSystem, ReadOfExactlyOneChunkOnItsBoundariesFetchesOnlyIt) {
  ExpectReadMatches(2 * kChunk, kChunk);
  StopStore();
  EXPECT_EQ(FetchesPerChunk(), Fetched(2, 2));
}

TEST_F(FileSystem, ReadOfTwoWholeChunksFetchesExactlyThoseTwo) {
  ExpectReadMatches(4 * kChunk, 2 * kChunk);
  StopStore();
  EXPECT_EQ(FetchesPerChunk(), Fetched(4, 5));
}

TEST_F(FileSystem, ReadEndingOnAChunkBoundaryDoesNotTouchTheNextChunk) {
  ExpectReadMatches(100, kChunk - 100);
  StopStore();
  EXPECT_EQ(FetchesPerChunk(), Fetched(0, 0));
}

TEST_F(FileSystem, ReadOfTheBytesAroundABoundaryFetchesBothChunks) {
  ExpectReadMatches(7 * kChunk - 1, 2);
  StopStore();
  EXPECT_EQ(FetchesPerChunk(), Fetched(6, 7));
}

TEST_F(FileSystem, ReadOfTheLastByteFetchesOnlyTheShortLastChunk) {
  ExpectReadMatches(kFileSize - 1, 1);
  StopStore();
  EXPECT_EQ(FetchesPerChunk(), Fetched(kFullChunks, kFullChunks));
}

TEST_F(FileSystem, ReadOfTheShortLastChunkFromItsStart) {
  ExpectReadMatches(kFullChunks * kChunk, kTail);
  ExpectReadMatches(kFullChunks * kChunk - 5, kTail + 5);
  StopStore();
  EXPECT_EQ(FetchesPerChunk(), Fetched(kFullChunks - 1, kFullChunks));
}

TEST_F(FileSystem, WholeFileReadFetchesEveryChunkOnceAndRereadsFromTheCache) {
  ExpectReadMatches(0, kFileSize);
  ExpectReadMatches(0, kFileSize);
  StopStore();
  EXPECT_EQ(FetchesPerChunk(), Fetched(0, kFullChunks));
}

TEST_F(FileSystem, RandomReadsReturnTheFilesBytes) {
  std::mt19937_64 gen(9);
  for (int i = 0; i < 300; ++i) {
    std::uint64_t offset = gen() % kFileSize;
    std::size_t length = 1 + gen() % std::min<std::uint64_t>(kFileSize - offset, 3 * kChunk);
    ExpectReadMatches(offset, length);
  }
  StopStore();
  for (int calls : FetchesPerChunk()) EXPECT_LE(calls, 1);
}

TEST_F(FileSystem, EmptyReadFetchesNothing) {
  CKPTFS_ASSERT_OK(Read(5 * kChunk, 0));
  StopStore();
  EXPECT_EQ(fetcher_.TotalCalls(), 0);
}

TEST_F(FileSystem, FetchErrorOfOneChunkFailsTheRead) {
  fetcher_.Fail(file_.chunks[4].digest, UnavailableError("node n1 is down"));
  auto read = Read(3 * kChunk, 3 * kChunk);
  EXPECT_EQ(read.status().code(), StatusCode::kUnavailable) << read.status().ToString();
  // The chunks that were fine are still readable.
  ExpectReadMatches(3 * kChunk, kChunk);
}

TEST_F(FileSystem, PrefetchRangeFetchesTheChunksItOverlapsInTheBackground) {
  fs_->PrefetchRange(file_.id, {.begin = 5 * kChunk, .end = 7 * kChunk});
  ASSERT_TRUE(PollUntil([&] {
    return cache_->Contains(file_.chunks[5].digest) && cache_->Contains(file_.chunks[6].digest);
  }));
  StopStore();
  EXPECT_EQ(FetchesPerChunk(), Fetched(5, 6));
}

TEST_F(FileSystem, ValidateOnceAcceptsAWellFormedFile) {
  CKPTFS_EXPECT_OK(fs_->ValidateOnce(file_.id));
}

// An index whose only file has extents at 0 and 2 * kChunk, but nothing at kChunk.
class FileSystemWithGap : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string path = temp_.Path("gap.db");
    auto writer = index::IndexWriter::Create(path, kChunk);
    ASSERT_TRUE(writer.ok()) << writer.status().ToString();
    auto& w = **writer;
    CKPTFS_ASSERT_OK_AND_ASSIGN(std::int64_t node, w.AddNode("n1", "http://127.0.0.1:1"));
    index::Entry entry;
    entry.parent = index::kRootId;
    entry.name = "holey.bin";
    entry.type = index::EntryType::kFile;
    entry.mode = 0644;
    entry.size = 3 * kChunk;
    CKPTFS_ASSERT_OK_AND_ASSIGN(file_, w.AddEntry(entry));
    for (std::uint64_t offset : {std::uint64_t{0}, 2 * kChunk}) {
      auto bytes = PatternBytes(kChunk, offset + 1);
      fetcher_.Serve(bytes);
      CKPTFS_ASSERT_OK_AND_ASSIGN(auto chunk,
                                  w.AddChunk(Sha256(bytes.data(), bytes.size()), kChunk));
      CKPTFS_ASSERT_OK(w.AddReplica(chunk.id, node));
      CKPTFS_ASSERT_OK(w.AddExtent(file_, offset, chunk.id));
    }
    CKPTFS_ASSERT_OK(w.Finish({.files = 1, .directories = 1, .bytes = 3 * kChunk}));
    writer->reset();
    auto index = index::IndexReader::Open(path);
    ASSERT_TRUE(index.ok()) << index.status().ToString();
    index_ = std::move(index).value();
    replicas_ = std::make_unique<fs::IndexReplicas>(index_.get());
    auto cache = fs::DiskCache::Open(
        {.dir = temp_.Path("cache"), .capacity_bytes = 1 << 30, .clock = &clock_});
    ASSERT_TRUE(cache.ok()) << cache.status().ToString();
    cache_ = std::move(cache).value();
    store_ = std::make_unique<fs::ChunkStore>(cache_.get(), &fetcher_, replicas_.get(), &clock_);
    fs_ = std::make_unique<fs::FileSystem>(index_.get(), store_.get(), &clock_,
                                           fs::FileSystemOptions{});
  }

  TempDir temp_;
  FakeClock clock_;
  FakeFetcher fetcher_;
  std::uint64_t file_ = 0;
  std::unique_ptr<index::IndexReader> index_;
  std::unique_ptr<fs::IndexReplicas> replicas_;
  std::unique_ptr<fs::DiskCache> cache_;
  std::unique_ptr<fs::ChunkStore> store_;
  std::unique_ptr<fs::FileSystem> fs_;
};

TEST_F(FileSystemWithGap, ValidateOnceRejectsTheFileWithDataLoss) {
  Status status = fs_->ValidateOnce(file_);
  EXPECT_EQ(status.code(), StatusCode::kDataLoss) << status.ToString();
  // Failures are not remembered as successes: a second open is rejected too.
  EXPECT_EQ(fs_->ValidateOnce(file_).code(), StatusCode::kDataLoss);
}

TEST_F(FileSystemWithGap, ReadAcrossTheGapIsDataLossAndNeverZeroFilled) {
  std::vector<std::uint8_t> out(100);
  Status status = fs_->ReadRange(file_, kChunk - 50, out, clock_.Now() + 1h);
  EXPECT_EQ(status.code(), StatusCode::kDataLoss) << status.ToString();
  std::vector<std::uint8_t> inside(10);
  EXPECT_EQ(fs_->ReadRange(file_, kChunk + 10, inside, clock_.Now() + 1h).code(),
            StatusCode::kDataLoss);
}

TEST_F(FileSystemWithGap, ReadOfTheChunksAroundTheGapStillWorks) {
  std::vector<std::uint8_t> out(kChunk);
  CKPTFS_ASSERT_OK(fs_->ReadRange(file_, 2 * kChunk, out, clock_.Now() + 1h));
  EXPECT_EQ(out, PatternBytes(kChunk, 2 * kChunk + 1));
}

}  // namespace
}  // namespace ckptfs
