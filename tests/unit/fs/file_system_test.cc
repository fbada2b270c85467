// FileSystem::ReadRange, PrefetchRange, ValidateOnce and ReadFile (readahead into the next files
// of a directory) over a real index (written with IndexWriter) and a ChunkStore whose chunks come
// from a FakeFetcher; no FUSE.
#include "fs/file_system.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "index/reader.h"
#include "index/writer.h"
#include "tests/support/fake_clock.h"
#include "tests/support/fake_fetcher.h"
#include "tests/support/poll.h"
#include "tests/support/read_denier.h"
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

// The read path of a mount without FUSE, over an index file a test wrote: IndexReader, DiskCache,
// ChunkStore (chunks from a FakeFetcher) and FileSystem.
class ReadStackTest : public ::testing::Test {
 protected:
  void OpenStack(const std::string& index_path, fs::ChunkStoreOptions store_options = {},
                 fs::FileSystemOptions options = {}) {
    CKPTFS_ASSERT_OK_AND_ASSIGN(index_, index::IndexReader::Open(index_path));
    replicas_ = std::make_unique<fs::IndexReplicas>(index_.get());
    CKPTFS_ASSERT_OK_AND_ASSIGN(
        cache_, fs::DiskCache::Open(
                    {.dir = temp_.Path("cache"), .capacity_bytes = 1 << 30, .clock = &clock_}));
    store_ = std::make_unique<fs::ChunkStore>(cache_.get(), &fetcher_, replicas_.get(), &clock_,
                                              store_options);
    store_->Start();
    fs_ = std::make_unique<fs::FileSystem>(index_.get(), store_.get(), &clock_, options);
  }
  // Waits for the prefetch threads to finish, so that the fetch counts are final.
  void StopStore() {
    fs_.reset();
    store_.reset();
  }
  void TearDown() override { fetcher_.Release(); }

  TempDir temp_;
  FakeClock clock_;
  FakeFetcher fetcher_;
  std::unique_ptr<index::IndexReader> index_;
  std::unique_ptr<fs::IndexReplicas> replicas_;
  std::unique_ptr<fs::DiskCache> cache_;
  std::unique_ptr<fs::ChunkStore> store_;
  std::unique_ptr<fs::FileSystem> fs_;
};

class FileSystem : public ReadStackTest {
 protected:
  void SetUp() override {
    auto written =
        testing::WriteSingleFileIndex(temp_.Path("index.db"), PatternBytes(kFileSize, 42), kChunk,
                                      {{"n1", "http://127.0.0.1:1"}});
    ASSERT_TRUE(written.ok()) << written.status().ToString();
    file_ = std::move(written).value();
    ASSERT_EQ(file_.chunks.size(), kFullChunks + 1);
    for (const auto& chunk : file_.chunks) fetcher_.Serve(chunk.bytes);
    ASSERT_NO_FATAL_FAILURE(OpenStack(temp_.Path("index.db")));
  }

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
  void ExpectReadMatches(std::uint64_t offset, std::size_t length) {
    auto read = Read(offset, length);
    ASSERT_TRUE(read.ok()) << offset << "+" << length << ": " << read.status().ToString();
    EXPECT_EQ(*read, Expected(offset, length)) << offset << "+" << length;
  }

  WrittenFile file_;
};

// A cache file that opens but cannot be read (a bad sector under the cache) is a copy of what the
// nodes hold: the read must get the chunk from them, not fail.
TEST_F(FileSystem, AChunkWhoseCacheFileCannotBeReadIsFetchedInsteadOfFailingTheRead) {
  const auto& chunk = file_.chunks[3];
  CKPTFS_ASSERT_OK(cache_->Insert(chunk.digest, chunk.bytes));
  testing::ReadDenier denier;
  denier.Deny(cache_->PathOf(chunk.digest));
  ExpectReadMatches(3 * kChunk + 100, 1000);
  EXPECT_GE(denier.denied(), 1) << "the read did not go to the cache file, so this proved nothing";
  EXPECT_EQ(store_->counters().cache_read_errors.load(), 1u);
  EXPECT_EQ(store_->counters().cache_hits.load(), 1u);
  // Another read that had opened the same file before the drop meets the same error: one
  // unreadable chunk, counted once.
  store_->DropUnreadable({chunk.digest, chunk.bytes.size()}, UnavailableError("EIO"));
  EXPECT_EQ(store_->counters().cache_read_errors.load(), 1u);
  StopStore();
  EXPECT_EQ(FetchesPerChunk()[3], 1) << "fetched from the nodes after the cache file failed";
}

// The same for readahead's load of a cached chunk into memory: it drops the entry, and the
// reader that comes for the chunk fetches it.
TEST_F(FileSystem, AChunkReadaheadCannotLoadFromTheCacheIsFetchedByItsReader) {
  const auto& chunk = file_.chunks[5];
  CKPTFS_ASSERT_OK(cache_->Insert(chunk.digest, chunk.bytes));
  testing::ReadDenier denier;
  denier.Deny(cache_->PathOf(chunk.digest));
  fs_->PrefetchRange(file_.id, {5 * kChunk, 6 * kChunk});
  ASSERT_TRUE(PollUntil([&] { return store_->counters().cache_read_errors.load() == 1; }));
  EXPECT_FALSE(cache_->Contains(chunk.digest)) << "the unreadable entry was kept";
  ExpectReadMatches(5 * kChunk, kChunk);
  StopStore();
  EXPECT_EQ(FetchesPerChunk()[5], 1);
}

TEST_F(FileSystem, ReadInsideOneChunkFetchesOnlyThatChunk) {
  ExpectReadMatches(3 * kChunk + 100, 1000);
  StopStore();
  EXPECT_EQ(FetchesPerChunk(), Fetched(3, 3));
}

TEST_F(FileSystem, ReadFileRepliesOnceFromWithinAFetchThatFailsAfterItsBytes) {
  // The chunk's last block is wrong on its only replica: the fetch verifies the blocks before it,
  // then fails.
  const auto& chunk = file_.chunks.front();
  std::vector<std::uint8_t> corrupt = chunk.bytes;
  ASSERT_FALSE(corrupt.empty());
  corrupt.back() ^= 0xff;
  fetcher_.ServeAs(chunk.digest, corrupt);
  CKPTFS_ASSERT_OK_AND_ASSIGN(index::Entry entry, index_->GetEntry(file_.id));
  fs::FileSystem::OpenFile* file = fs_->OpenHandle(std::move(entry));
  std::vector<std::uint8_t> got;
  int replies = 0;
  auto reply = [&](const std::vector<fs::FileSystem::Part>& parts) {
    ++replies;
    for (const auto& part : parts) got.insert(got.end(), part.bytes.begin(), part.bytes.end());
  };
  CKPTFS_EXPECT_OK(fs_->ReadFile(*file, 0, 100, clock_.Now() + 1h, reply));
  EXPECT_EQ(replies, 1);
  EXPECT_EQ(got, Expected(0, 100));
  // The bytes of the bad block are never served: that read fails, with no reply.
  replies = 0;
  Status tail = fs_->ReadFile(*file, kChunk - 100, 100, clock_.Now() + 1h, reply);
  EXPECT_EQ(tail.code(), StatusCode::kDataLoss) << tail.ToString();
  EXPECT_EQ(replies, 0);
}

TEST_F(FileSystem, OpenHandlesAreOwnedUntilClosedAndFreedWithTheFileSystem) {
  // A signal can end the session before the kernel's RELEASE of a handle is read: the file
  // system still owns that handle, and frees it with itself (the sanitizer build checks leaks).
  CKPTFS_ASSERT_OK_AND_ASSIGN(index::Entry entry, index_->GetEntry(file_.id));
  fs::FileSystem::OpenFile* released = fs_->OpenHandle(entry);
  fs::FileSystem::OpenFile* kept = fs_->OpenHandle(std::move(entry));
  EXPECT_NE(released, kept);
  EXPECT_EQ(fs_->open_handles(), 2u);
  fs_->CloseHandle(released);
  EXPECT_EQ(fs_->open_handles(), 1u);
  EXPECT_EQ(kept->entry.id, file_.id);
  fs_.reset();
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

// The extended attributes, as OpGetxattr and OpListxattr answer them (less the size protocol).
class FileSystemXattr : public FileSystem {
 protected:
  // A FileSystem over the same index and store whose stats text counts its calls.
  std::unique_ptr<fs::FileSystem> WithStats() {
    fs::FileSystemOptions options;
    options.stats_text = [this] { return "fs.reads " + std::to_string(++calls_) + "\n"; };
    return std::make_unique<fs::FileSystem>(index_.get(), store_.get(), &clock_, options);
  }
  int calls_ = 0;
};

TEST_F(FileSystemXattr, TheRootListsExactlyTheStatsAttribute) {
  auto with_stats = WithStats();
  EXPECT_EQ(with_stats->ListXattr(index::kRootId), std::string("user.ckptfs.stats\0", 18));
  EXPECT_EQ(calls_, 0) << "listing the name does not make the text";
}

TEST_F(FileSystemXattr, TheStatsAttributeOfTheRootIsMadeAnewForEachGet) {
  auto with_stats = WithStats();
  EXPECT_EQ(with_stats->GetXattr(index::kRootId, "user.ckptfs.stats"), "fs.reads 1\n");
  EXPECT_EQ(with_stats->GetXattr(index::kRootId, fs::kStatsXattr), "fs.reads 2\n");
}

TEST(FileSystemXattrNamespace, OnlyUserNamesCanExist) {
  EXPECT_TRUE(fs::FileSystem::HasXattrNamespace("user.ckptfs.stats"));
  EXPECT_TRUE(fs::FileSystem::HasXattrNamespace("user.other"));
  for (const char* name :
       {"security.selinux", "security.capability", "system.posix_acl_access",
        "system.posix_acl_default", "trusted.ckptfs.stats", "user", "users.x", ""}) {
    EXPECT_FALSE(fs::FileSystem::HasXattrNamespace(name)) << name;
  }
}

TEST_F(FileSystemXattr, OtherNamesAndOtherInodesHaveNoAttribute) {
  auto with_stats = WithStats();
  EXPECT_EQ(with_stats->GetXattr(index::kRootId, "security.selinux"), std::nullopt);
  EXPECT_EQ(with_stats->GetXattr(index::kRootId, "user.ckptfs.stat"), std::nullopt);
  EXPECT_EQ(with_stats->GetXattr(index::kRootId, "user.ckptfs.stats.x"), std::nullopt);
  EXPECT_EQ(with_stats->GetXattr(file_.id, "user.ckptfs.stats"), std::nullopt);
  EXPECT_EQ(with_stats->ListXattr(file_.id), "");
  EXPECT_EQ(calls_, 0);
}

TEST_F(FileSystemXattr, WithoutStatsTextTheRootHasNoAttribute) {
  EXPECT_EQ(fs_->ListXattr(index::kRootId), "");
  EXPECT_EQ(fs_->GetXattr(index::kRootId, "user.ckptfs.stats"), std::nullopt);
}

// An index whose only file has extents at 0 and 2 * kChunk, but nothing at kChunk.
class FileSystemWithGap : public ReadStackTest {
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
    ASSERT_NO_FATAL_FAILURE(OpenStack(path));
  }

  std::uint64_t file_ = 0;
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

// A stream reading one file to its end reads ahead into the next files of the directory. The
// index: a.bin, b.bin, c.bin and d.bin in the root, with a file of another directory (other/x.bin)
// numbered between a and b, and a directory and a symlink between b and c. One prefetch thread
// works the queue in order, so once a chunk queued last has been fetched (Drain), everything
// queued before it has been too, and the fetch counts say exactly what was queued.
class FileSystemDirectory : public ReadStackTest {
 protected:
  static constexpr std::uint64_t kFile = 2 * kChunk;

  void SetUp() override { ASSERT_NO_FATAL_FAILURE(Build(fs::ReadaheadOptions{})); }

  void Build(fs::ReadaheadOptions readahead) {
    readahead.start_after = kChunk;
    readahead.start_after_seek = 4 * kChunk;
    readahead.max_window = 16 * kChunk;
    readahead.slack = kChunk;
    std::string path = temp_.Path("dir.db");
    CKPTFS_ASSERT_OK_AND_ASSIGN(auto writer,
                                index::IndexWriter::Create(path, kChunk, testing::kTestBlockSize));
    CKPTFS_ASSERT_OK_AND_ASSIGN(std::int64_t node, writer->AddNode("n1", "http://127.0.0.1:1"));
    index::IndexStats stats{.directories = 3};
    CKPTFS_ASSERT_OK_AND_ASSIGN(std::uint64_t other, AddEntry(*writer, index::kRootId, "other",
                                                              index::EntryType::kDirectory));
    auto add_file = [&](std::uint64_t parent, const std::string& name) {
      auto file = testing::AddWrittenFile(*writer, parent, name, PatternBytes(kFile, files_.size()),
                                          kChunk, testing::kTestBlockSize, {node}, stats);
      ASSERT_TRUE(file.ok()) << file.status().ToString();
      for (const auto& chunk : file->chunks) fetcher_.Serve(chunk.bytes);
      files_[name] = std::move(file).value();
    };
    ASSERT_NO_FATAL_FAILURE(add_file(index::kRootId, "a.bin"));
    ASSERT_NO_FATAL_FAILURE(add_file(other, "x.bin"));
    ASSERT_NO_FATAL_FAILURE(add_file(index::kRootId, "b.bin"));
    CKPTFS_ASSERT_OK_AND_ASSIGN(
        std::uint64_t sub, AddEntry(*writer, index::kRootId, "sub", index::EntryType::kDirectory));
    CKPTFS_ASSERT_OK_AND_ASSIGN(
        std::uint64_t lnk, AddEntry(*writer, index::kRootId, "lnk", index::EntryType::kSymlink));
    ASSERT_LT(sub, lnk);
    ASSERT_NO_FATAL_FAILURE(add_file(index::kRootId, "c.bin"));
    ASSERT_NO_FATAL_FAILURE(add_file(index::kRootId, "d.bin"));
    ASSERT_NO_FATAL_FAILURE(add_file(other, "z.bin"));
    CKPTFS_ASSERT_OK(writer->Finish(stats));
    writer.reset();

    fs::ChunkStoreOptions store_options;
    store_options.prefetch_threads = 1;
    fs::FileSystemOptions options;
    options.readahead = readahead;
    ASSERT_NO_FATAL_FAILURE(OpenStack(path, store_options, options));
  }

  static Result<std::uint64_t> AddEntry(index::IndexWriter& writer, std::uint64_t parent,
                                        const std::string& name, index::EntryType type) {
    index::Entry entry;
    entry.parent = parent;
    entry.name = name;
    entry.type = type;
    entry.mode = 0755;
    entry.target = "a.bin";
    return writer.AddEntry(entry);
  }

  fs::FileSystem::OpenFile* Open(const std::string& name) {
    Result<index::Entry> entry = index_->GetEntry(files_.at(name).id);
    EXPECT_TRUE(entry.ok()) << entry.status().ToString();
    return fs_->OpenHandle(std::move(entry).value());
  }

  // Reads [from, to) of the open file in 32 KiB reads, as the kernel would, checking the bytes.
  void ReadThrough(fs::FileSystem::OpenFile& file, std::uint64_t from, std::uint64_t to) {
    const WrittenFile& written = files_.at(file.entry.name);
    for (std::uint64_t offset = from; offset < to; offset += kChunk / 2) {
      const std::size_t length = std::min<std::uint64_t>(kChunk / 2, to - offset);
      std::vector<std::uint8_t> got;
      int replies = 0;
      CKPTFS_ASSERT_OK(fs_->ReadFile(file, offset, length, clock_.Now() + 1h,
                                     [&](const std::vector<fs::FileSystem::Part>& parts) {
                                       ++replies;
                                       for (const auto& part : parts) {
                                         got.insert(got.end(), part.bytes.begin(),
                                                    part.bytes.end());
                                       }
                                     }));
      ASSERT_EQ(replies, 1) << file.entry.name << " at " << offset;
      ASSERT_EQ(got, std::vector<std::uint8_t>(written.content.begin() + offset,
                                               written.content.begin() + offset + length))
          << file.entry.name << " at " << offset;
    }
  }

  // Waits until everything queued so far has been fetched, then stops the store.
  void Drain() {
    const WrittenFile& last = files_.at("z.bin");
    fs_->PrefetchRange(last.id, {0, kFile});
    ASSERT_TRUE(PollUntil([&] {
      return cache_->Contains(last.chunks.front().digest) &&
             cache_->Contains(last.chunks.back().digest);
    }));
    StopStore();
  }

  // Network fetches of each chunk of the file.
  std::vector<int> Fetches(const std::string& name) const {
    std::vector<int> calls;
    for (const auto& chunk : files_.at(name).chunks) calls.push_back(fetcher_.Calls(chunk.digest));
    return calls;
  }

  const std::vector<int> kOnce{1, 1};
  const std::vector<int> kNever{0, 0};

  std::map<std::string, WrittenFile> files_;
};

TEST_F(FileSystemDirectory, ReadingAFileToItsEndQueuesTheNextFilesOfItsDirectory) {
  auto a = Open("a.bin");
  ASSERT_NO_FATAL_FAILURE(ReadThrough(*a, 0, kFile));
  ASSERT_NO_FATAL_FAILURE(Drain());
  EXPECT_EQ(Fetches("a.bin"), kOnce);
  // The window at the end of a.bin is 4 chunks past its end: b.bin and c.bin, skipping the file
  // of the other directory, the directory and the symlink between them.
  EXPECT_EQ(Fetches("b.bin"), kOnce);
  EXPECT_EQ(Fetches("c.bin"), kOnce);
  EXPECT_EQ(Fetches("x.bin"), kNever) << "a file of another directory was read ahead";
  EXPECT_EQ(Fetches("d.bin"), kNever) << "read ahead beyond the window";
}

TEST_F(FileSystemDirectory, OpeningAFileTheStreamReachedContinuesTheStream) {
  auto a = Open("a.bin");
  ASSERT_NO_FATAL_FAILURE(ReadThrough(*a, 0, kFile));
  auto b = Open("b.bin");
  // One read of b.bin's start: its window, brought from a.bin, reaches on into d.bin.
  ASSERT_NO_FATAL_FAILURE(ReadThrough(*b, 0, kChunk / 2));
  ASSERT_NO_FATAL_FAILURE(Drain());
  EXPECT_EQ(Fetches("c.bin"), kOnce);
  EXPECT_EQ(Fetches("d.bin"), kOnce);
  EXPECT_EQ(Fetches("x.bin"), kNever);
}

TEST_F(FileSystemDirectory, FirstReadOfAFileNoStreamReachedReadsNothingAhead) {
  auto b = Open("b.bin");
  ASSERT_NO_FATAL_FAILURE(ReadThrough(*b, 0, kChunk / 2));
  ASSERT_NO_FATAL_FAILURE(Drain());
  EXPECT_EQ(Fetches("b.bin"), (std::vector<int>{1, 0}));
  EXPECT_EQ(Fetches("c.bin"), kNever);
  EXPECT_EQ(Fetches("d.bin"), kNever);
}

TEST_F(FileSystemDirectory, IsolatedReadReadsNothingOfTheNextFiles) {
  auto a = Open("a.bin");
  ASSERT_NO_FATAL_FAILURE(ReadThrough(*a, kFile - kChunk / 2 - 4096, kFile - kChunk / 2));
  ASSERT_NO_FATAL_FAILURE(Drain());
  for (const char* name : {"b.bin", "c.bin", "d.bin", "x.bin"}) {
    EXPECT_EQ(Fetches(name), kNever) << name;
  }
}

class FileSystemDirectoryAcrossFilesOff : public FileSystemDirectory {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(Build(fs::ReadaheadOptions{.across_files = false}));
  }
};

TEST_F(FileSystemDirectoryAcrossFilesOff, ReadingAFileToItsEndReadsNothingOfTheNextFiles) {
  auto a = Open("a.bin");
  ASSERT_NO_FATAL_FAILURE(ReadThrough(*a, 0, kFile));
  ASSERT_NO_FATAL_FAILURE(Drain());
  EXPECT_EQ(Fetches("a.bin"), kOnce);
  for (const char* name : {"b.bin", "c.bin", "d.bin", "x.bin"}) {
    EXPECT_EQ(Fetches(name), kNever) << name;
  }
}

TEST(WindowHandoff, TakeReturnsTheRecordedWindowOnce) {
  FakeClock clock;
  fs::WindowHandoff handoff(&clock);
  handoff.Put(7, 100);
  EXPECT_EQ(handoff.Take(8), 0u);
  EXPECT_EQ(handoff.Take(7), 100u);
  EXPECT_EQ(handoff.Take(7), 0u);
}

TEST(WindowHandoff, TheLargerWindowWins) {
  FakeClock clock;
  fs::WindowHandoff handoff(&clock);
  handoff.Put(7, 100);
  handoff.Put(7, 300);
  handoff.Put(7, 200);
  EXPECT_EQ(handoff.Take(7), 300u);
}

TEST(WindowHandoff, KeepsOnlyTheNewestEntriesUpToItsCapacity) {
  FakeClock clock;
  fs::WindowHandoff handoff(&clock, 3);
  for (std::uint64_t file = 1; file <= 5; ++file) handoff.Put(file, file * 10);
  EXPECT_EQ(handoff.Take(1), 0u);
  EXPECT_EQ(handoff.Take(2), 0u);
  EXPECT_EQ(handoff.Take(3), 30u);
  EXPECT_EQ(handoff.Take(5), 50u);
  EXPECT_EQ(handoff.Take(4), 40u);
}

TEST(WindowHandoff, AWindowOlderThanMaxAgeIsNotHandedOn) {
  FakeClock clock;
  fs::WindowHandoff handoff(&clock, 64, std::chrono::seconds(10));
  handoff.Put(7, 100);
  handoff.Put(8, 100);
  clock.Advance(std::chrono::seconds(10));
  EXPECT_EQ(handoff.Take(7), 100u);
  clock.Advance(std::chrono::milliseconds(1));
  EXPECT_EQ(handoff.Take(8), 0u);
  // A stale window does not win over a fresh, smaller one either.
  handoff.Put(9, 300);
  clock.Advance(std::chrono::seconds(11));
  handoff.Put(9, 100);
  EXPECT_EQ(handoff.Take(9), 100u);
}

}  // namespace
}  // namespace ckptfs
