// DiskCache on a real temporary directory, with a fake clock for its use times.
#include "fs/disk_cache.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/buffer.h"
#include "common/file_io.h"
#include "tests/support/fake_clock.h"
#include "tests/support/single_file_index.h"
#include "tests/support/status_testing.h"
#include "tests/support/temp_dir.h"

namespace ckptfs {
namespace {

using testing::FakeClock;
using testing::PatternBytes;
using testing::TempDir;

struct TestChunk {
  std::vector<std::uint8_t> bytes;
  Digest digest;
};

TestChunk MakeChunk(std::size_t size, std::uint64_t seed) {
  TestChunk chunk{PatternBytes(size, seed), {}};
  chunk.digest = Sha256(chunk.bytes.data(), chunk.bytes.size());
  return chunk;
}

bool Exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

void WriteFile(const std::string& path, std::span<const std::uint8_t> bytes) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

// Sets a file's mtime to `seconds` after the epoch.
void SetMtime(const std::string& path, std::int64_t seconds) {
  timespec times[2] = {{seconds, 0}, {seconds, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0) << path << ": " << errno;
}

std::int64_t MtimeSeconds(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return -1;
  return st.st_mtim.tv_sec;
}

// Every file name under the cache's "tmp" directory.
std::vector<std::string> TmpFiles(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir + "/tmp")) {
    names.push_back(e.path().filename());
  }
  return names;
}

// Sum of the sizes of the chunk files under the cache directory (the temporary area excluded).
std::uint64_t BytesOnDisk(const std::string& dir) {
  std::uint64_t total = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file() && e.path().parent_path().filename() != "tmp") total += e.file_size();
  }
  return total;
}

class DiskCache : public ::testing::Test {
 protected:
  std::string CacheDir() const { return temp_.Path("cache"); }

  Result<std::unique_ptr<fs::DiskCache>> Open(std::uint64_t capacity) {
    return fs::DiskCache::Open({.dir = CacheDir(), .capacity_bytes = capacity, .clock = &clock_});
  }

  // The whole content of `chunk` read through OpenChunk, or the error.
  Result<std::vector<std::uint8_t>> ReadBack(fs::DiskCache& cache, const TestChunk& chunk) {
    CKPTFS_ASSIGN_OR_RETURN(UniqueFd fd, cache.OpenChunk(chunk.digest, chunk.bytes.size()));
    // The descriptor may be open with O_DIRECT: read whole blocks into aligned memory, one
    // block more than the chunk needs, so that a longer file shows.
    Buffer block_aligned(AlignedReadSize(0, chunk.bytes.size()) + kDirectIoBlock);
    ssize_t n = ::pread(fd.get(), block_aligned.data(), block_aligned.size(), 0);
    if (n < 0) return ErrnoStatus(errno, "pread");
    return std::vector<std::uint8_t>(block_aligned.data(), block_aligned.data() + n);
  }

  TempDir temp_;
  FakeClock clock_;
};

TEST_F(DiskCache, InsertedChunkIsReturnedByOpenChunk) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1 << 20));
  TestChunk a = MakeChunk(5000, 1);
  EXPECT_FALSE(cache->Contains(a.digest));
  CKPTFS_ASSERT_OK(cache->Insert(a.digest, a.bytes));
  EXPECT_TRUE(cache->Contains(a.digest));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto read, ReadBack(*cache, a));
  EXPECT_EQ(read, a.bytes);
  EXPECT_EQ(cache->used_bytes(), 5000u);
  EXPECT_EQ(cache->entry_count(), 1u);
  std::string hex = a.digest.Hex();
  EXPECT_EQ(cache->PathOf(a.digest), CacheDir() + "/" + hex.substr(0, 2) + "/" + hex);
  EXPECT_TRUE(Exists(cache->PathOf(a.digest)));
  EXPECT_TRUE(TmpFiles(CacheDir()).empty());
}

TEST_F(DiskCache, UnknownChunkIsNotFoundAndNotContained) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1 << 20));
  TestChunk a = MakeChunk(100, 1);
  EXPECT_FALSE(cache->Contains(a.digest));
  EXPECT_EQ(cache->OpenChunk(a.digest, 100).status().code(), StatusCode::kNotFound);
}

TEST_F(DiskCache, InsertingAChunkTwiceKeepsOneEntry) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1 << 20));
  TestChunk a = MakeChunk(1000, 1);
  CKPTFS_ASSERT_OK(cache->Insert(a.digest, a.bytes));
  CKPTFS_ASSERT_OK(cache->Insert(a.digest, a.bytes));
  EXPECT_EQ(cache->entry_count(), 1u);
  EXPECT_EQ(cache->used_bytes(), 1000u);
}

TEST_F(DiskCache, ConcurrentInsertsOfOneChunkStoreItOnce) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1 << 20));
  TestChunk a = MakeChunk(64 << 10, 1);
  std::vector<std::thread> threads;
  std::vector<Status> results(8);
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] { results[i] = cache->Insert(a.digest, a.bytes); });
  }
  for (auto& t : threads) t.join();
  for (const Status& s : results) CKPTFS_EXPECT_OK(s);
  EXPECT_EQ(cache->entry_count(), 1u);
  EXPECT_EQ(cache->used_bytes(), a.bytes.size());
  EXPECT_TRUE(TmpFiles(CacheDir()).empty());
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto read, ReadBack(*cache, a));
  EXPECT_EQ(read, a.bytes);
}

TEST_F(DiskCache, EvictsTheLeastRecentlyUsedChunkFirst) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(3000));
  TestChunk a = MakeChunk(1000, 1), b = MakeChunk(1000, 2), c = MakeChunk(1000, 3);
  TestChunk d = MakeChunk(1000, 4), e = MakeChunk(1000, 5);
  for (const TestChunk* x : {&a, &b, &c}) CKPTFS_ASSERT_OK(cache->Insert(x->digest, x->bytes));
  // Using `a` makes `b` the least recently used.
  CKPTFS_ASSERT_OK(cache->OpenChunk(a.digest, 1000));

  CKPTFS_ASSERT_OK(cache->Insert(d.digest, d.bytes));
  EXPECT_FALSE(cache->Contains(b.digest));
  EXPECT_FALSE(Exists(cache->PathOf(b.digest)));
  for (const TestChunk* x : {&a, &c, &d}) {
    EXPECT_TRUE(cache->Contains(x->digest));
    EXPECT_TRUE(Exists(cache->PathOf(x->digest)));
  }

  CKPTFS_ASSERT_OK(cache->Insert(e.digest, e.bytes));
  EXPECT_FALSE(cache->Contains(c.digest));
  EXPECT_FALSE(Exists(cache->PathOf(c.digest)));
  for (const TestChunk* x : {&a, &d, &e}) EXPECT_TRUE(Exists(cache->PathOf(x->digest)));
  EXPECT_EQ(cache->used_bytes(), 3000u);
  EXPECT_EQ(BytesOnDisk(CacheDir()), 3000u);
}

TEST_F(DiskCache, UsedBytesNeverExceedCapacity) {
  constexpr std::uint64_t kCapacity = 10000;
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(kCapacity));
  std::mt19937 gen(7);
  for (int i = 0; i < 60; ++i) {
    TestChunk x = MakeChunk(100 + gen() % 3000, 100 + i);
    CKPTFS_ASSERT_OK(cache->Insert(x.digest, x.bytes));
    ASSERT_LE(cache->used_bytes(), kCapacity) << "after insert " << i;
    ASSERT_TRUE(cache->Contains(x.digest)) << "the newest chunk must stay, insert " << i;
    ASSERT_EQ(BytesOnDisk(CacheDir()), cache->used_bytes()) << "after insert " << i;
  }
}

TEST_F(DiskCache, ChunkLargerThanCapacityIsNotStoredAndEvictsNothing) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1000));
  TestChunk small = MakeChunk(600, 1), big = MakeChunk(1001, 2);
  CKPTFS_ASSERT_OK(cache->Insert(small.digest, small.bytes));
  CKPTFS_ASSERT_OK(cache->Insert(big.digest, big.bytes));
  EXPECT_FALSE(cache->Contains(big.digest));
  EXPECT_FALSE(Exists(cache->PathOf(big.digest)));
  EXPECT_TRUE(cache->Contains(small.digest));
  EXPECT_EQ(cache->used_bytes(), 600u);
  EXPECT_TRUE(TmpFiles(CacheDir()).empty());
}

TEST_F(DiskCache, ChunkOfExactlyTheCapacityIsStored) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1000));
  TestChunk x = MakeChunk(1000, 1);
  CKPTFS_ASSERT_OK(cache->Insert(x.digest, x.bytes));
  EXPECT_TRUE(cache->Contains(x.digest));
  EXPECT_EQ(cache->used_bytes(), 1000u);
}

// No process has this pid: it is above any pid_max.
constexpr pid_t kDeadPid = 2147483647;

TEST_F(DiskCache, OpenRemovesLeftoverTemporaryFilesAndNeverServesThem) {
  TestChunk a = MakeChunk(1000, 1);
  std::string leftover =
      CacheDir() + "/tmp/" + a.digest.Hex() + "." + std::to_string(kDeadPid) + ".0";
  WriteFile(leftover, a.bytes);
  ASSERT_TRUE(Exists(leftover));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1 << 20));
  EXPECT_FALSE(Exists(leftover));
  EXPECT_FALSE(cache->Contains(a.digest));
  EXPECT_EQ(cache->OpenChunk(a.digest, 1000).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(cache->used_bytes(), 0u);
}

// Mounts share a cache directory: a new one must not remove what another is writing, or that
// mount's rename fails and its chunk is not cached.
TEST_F(DiskCache, OpenKeepsTheTemporariesOfALiveWriterUnlessAnHourOld) {
  TestChunk a = MakeChunk(1000, 1);
  const std::string tmp = CacheDir() + "/tmp/" + a.digest.Hex();
  const std::string live = tmp + "." + std::to_string(::getpid()) + ".7";
  const std::string stale = tmp + "." + std::to_string(::getpid()) + ".8";
  const std::string dead = tmp + "." + std::to_string(kDeadPid) + ".9";
  const std::string unnamed = CacheDir() + "/tmp/stray";
  {
    CKPTFS_ASSERT_OK_AND_ASSIGN(auto first, Open(1 << 20));  // Makes tmp/.
  }
  for (const std::string& path : {live, stale, dead, unnamed}) WriteFile(path, a.bytes);
  SetMtime(stale, ::time(nullptr) - 7200);
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1 << 20));
  EXPECT_TRUE(Exists(live)) << "a live writer's write under way was removed";
  EXPECT_FALSE(Exists(stale));
  EXPECT_FALSE(Exists(dead));
  EXPECT_FALSE(Exists(unnamed));
  EXPECT_FALSE(cache->Contains(a.digest));
  EXPECT_EQ(cache->used_bytes(), 0u);
}

// Whole entries are served without being hashed again: a directory others may write to would
// let them put bytes into this user's mounts.
TEST_F(DiskCache, OpenRefusesADirectoryEveryUserMayWriteTo) {
  ASSERT_EQ(::mkdir(CacheDir().c_str(), 0700), 0);
  ASSERT_EQ(::chmod(CacheDir().c_str(), 01777), 0);  // As /tmp is.
  Result<std::unique_ptr<fs::DiskCache>> cache = Open(1 << 20);
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(cache.status().message().find("writable by every user"), std::string::npos)
      << cache.status().ToString();
  ASSERT_EQ(::chmod(CacheDir().c_str(), 0775), 0);  // A group the user chose is fine.
  Result<std::unique_ptr<fs::DiskCache>> shared = Open(1 << 20);
  EXPECT_TRUE(shared.ok()) << shared.status().ToString();
}

// Needs root, as the whole suite does, to give the directory to another user.
TEST_F(DiskCache, OpenRefusesADirectoryOfAnotherUser) {
  ASSERT_EQ(::geteuid(), 0u) << "the test suite runs as root";
  ASSERT_EQ(::mkdir(CacheDir().c_str(), 0700), 0);
  ASSERT_EQ(::chown(CacheDir().c_str(), 65534, 65534), 0);
  Result<std::unique_ptr<fs::DiskCache>> cache = Open(1 << 20);
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(cache.status().message().find("belongs to user 65534"), std::string::npos)
      << cache.status().ToString();
}

TEST_F(DiskCache, TornFileUnderFinalNameIsDroppedOnOpenChunk) {
  TestChunk a = MakeChunk(1000, 1);
  std::string path;
  {
    CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1 << 20));
    path = cache->PathOf(a.digest);
  }
  // What a power loss after rename but before the data reached the disk could leave.
  WriteFile(path, std::span(a.bytes).first(400));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1 << 20));
  EXPECT_EQ(cache->OpenChunk(a.digest, 1000).status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(Exists(path));
  EXPECT_FALSE(cache->Contains(a.digest));
  EXPECT_EQ(cache->used_bytes(), 0u);
  EXPECT_EQ(cache->entry_count(), 0u);
  // The slot is free again for the real bytes.
  CKPTFS_ASSERT_OK(cache->Insert(a.digest, a.bytes));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto read, ReadBack(*cache, a));
  EXPECT_EQ(read, a.bytes);
}

TEST_F(DiskCache, EntryTruncatedWhileCachedIsDroppedOnOpenChunk) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1 << 20));
  TestChunk a = MakeChunk(1000, 1);
  CKPTFS_ASSERT_OK(cache->Insert(a.digest, a.bytes));
  ASSERT_EQ(::truncate(cache->PathOf(a.digest).c_str(), 10), 0);
  EXPECT_EQ(cache->OpenChunk(a.digest, 1000).status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(Exists(cache->PathOf(a.digest)));
  EXPECT_EQ(cache->used_bytes(), 0u);
}

TEST_F(DiskCache, OnlyTheFirstDropOfAnEntryDropsIt) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1 << 20));
  TestChunk a = MakeChunk(1000, 1);
  CKPTFS_ASSERT_OK(cache->Insert(a.digest, a.bytes));
  EXPECT_TRUE(cache->Drop(a.digest));
  EXPECT_FALSE(Exists(cache->PathOf(a.digest)));
  EXPECT_EQ(cache->used_bytes(), 0u);
  EXPECT_FALSE(cache->Drop(a.digest)) << "a second read that met the same bad file";
}

TEST_F(DiskCache, EntryRemovedByAnotherProcessIsAMissAndLeavesTheAccounts) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1 << 20));
  TestChunk a = MakeChunk(1000, 1), b = MakeChunk(700, 2);
  CKPTFS_ASSERT_OK(cache->Insert(a.digest, a.bytes));
  CKPTFS_ASSERT_OK(cache->Insert(b.digest, b.bytes));
  ASSERT_EQ(::unlink(cache->PathOf(a.digest).c_str()), 0);
  EXPECT_EQ(cache->OpenChunk(a.digest, 1000).status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(cache->Contains(a.digest));
  EXPECT_EQ(cache->used_bytes(), 700u);
}

TEST_F(DiskCache, AnEntryAnotherMountWroteSinceOpenIsFoundAndAdopted) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto mine, Open(1 << 20));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto other, Open(1 << 20));
  TestChunk a = MakeChunk(1000, 1), b = MakeChunk(700, 2);
  CKPTFS_ASSERT_OK(other->Insert(a.digest, a.bytes));
  CKPTFS_ASSERT_OK(other->Insert(b.digest, b.bytes));
  EXPECT_FALSE(mine->Contains(a.digest));

  CKPTFS_ASSERT_OK_AND_ASSIGN(auto read, ReadBack(*mine, a));
  EXPECT_EQ(read, a.bytes);
  EXPECT_TRUE(mine->Has(b.digest, 700));
  EXPECT_TRUE(mine->Contains(a.digest) && mine->Contains(b.digest));
  EXPECT_EQ(mine->used_bytes(), 1700u);
  EXPECT_EQ(mine->entry_count(), 2u);
  EXPECT_FALSE(mine->Has(MakeChunk(10, 3).digest, 10));
}

TEST_F(DiskCache, AnEntryOfTheWrongSizeIsNotAdopted) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto mine, Open(1 << 20));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto other, Open(1 << 20));
  TestChunk a = MakeChunk(1000, 1);
  CKPTFS_ASSERT_OK(other->Insert(a.digest, a.bytes));
  EXPECT_FALSE(mine->Has(a.digest, 1001));
  EXPECT_EQ(mine->entry_count(), 0u);
  EXPECT_EQ(mine->used_bytes(), 0u);
}

TEST_F(DiskCache, AdoptingAnEntryEvictsTheLeastRecentlyUsedBeyondCapacity) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto mine, Open(2000));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto other, Open(1 << 20));
  TestChunk old = MakeChunk(1000, 1), kept = MakeChunk(600, 2), theirs = MakeChunk(900, 3);
  CKPTFS_ASSERT_OK(mine->Insert(old.digest, old.bytes));
  clock_.Advance(std::chrono::seconds(1));
  CKPTFS_ASSERT_OK(mine->Insert(kept.digest, kept.bytes));
  CKPTFS_ASSERT_OK(other->Insert(theirs.digest, theirs.bytes));

  EXPECT_TRUE(mine->Has(theirs.digest, 900));
  EXPECT_FALSE(mine->Contains(old.digest));
  EXPECT_FALSE(Exists(mine->PathOf(old.digest)));
  EXPECT_TRUE(mine->Contains(kept.digest));
  EXPECT_EQ(mine->used_bytes(), 1500u);
}

TEST_F(DiskCache, AdoptingAWholeChunkDropsItsPartialFile) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto mine, Open(1 << 20));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto other, Open(1 << 20));
  TestChunk a = MakeChunk(8192, 1);
  CKPTFS_ASSERT_OK(mine->InsertBlocks(a.digest, 0, std::span(a.bytes).first(4096)));
  CKPTFS_ASSERT_OK(other->Insert(a.digest, a.bytes));
  EXPECT_TRUE(mine->Has(a.digest, 8192));
  EXPECT_EQ(mine->OpenPartial(a.digest).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(mine->used_bytes(), 8192u);
}

TEST_F(DiskCache, APartialFileAnotherMountWroteIsOpenedAndCounted) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto mine, Open(1 << 20));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto other, Open(1 << 20));
  TestChunk a = MakeChunk(64 << 10, 1);
  CKPTFS_ASSERT_OK(
      other->InsertBlocks(a.digest, 16 << 10, std::span(a.bytes).subspan(16 << 10, 4096)));
  EXPECT_EQ(mine->used_bytes(), 0u);

  CKPTFS_ASSERT_OK_AND_ASSIGN(UniqueFd fd, mine->OpenPartial(a.digest));
  std::vector<std::uint8_t> block(4096);
  CKPTFS_ASSERT_OK(PreadExactly(fd.get(), 16 << 10, block));
  EXPECT_EQ(block,
            std::vector<std::uint8_t>(a.bytes.begin() + (16 << 10), a.bytes.begin() + (20 << 10)));
  EXPECT_EQ(mine->entry_count(), 1u);
  EXPECT_EQ(mine->used_bytes(), other->used_bytes()) << "counted as the blocks it occupies";
  EXPECT_EQ(mine->OpenPartial(MakeChunk(10, 2).digest).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(mine->entry_count(), 1u);
}

TEST_F(DiskCache, EntriesSurviveReopen) {
  TestChunk a = MakeChunk(1000, 1), b = MakeChunk(2500, 2);
  {
    CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1 << 20));
    CKPTFS_ASSERT_OK(cache->Insert(a.digest, a.bytes));
    CKPTFS_ASSERT_OK(cache->Insert(b.digest, b.bytes));
  }
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1 << 20));
  EXPECT_TRUE(cache->Contains(a.digest));
  EXPECT_TRUE(cache->Contains(b.digest));
  EXPECT_EQ(cache->used_bytes(), 3500u);
  EXPECT_EQ(cache->entry_count(), 2u);
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto read_a, ReadBack(*cache, a));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto read_b, ReadBack(*cache, b));
  EXPECT_EQ(read_a, a.bytes);
  EXPECT_EQ(read_b, b.bytes);
}

TEST_F(DiskCache, ReopenOrdersEntriesByFileMtime) {
  TestChunk a = MakeChunk(1000, 1), b = MakeChunk(1000, 2), c = MakeChunk(1000, 3);
  TestChunk d = MakeChunk(1000, 4), e = MakeChunk(1000, 5);
  {
    CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(3000));
    for (const TestChunk* x : {&a, &b, &c}) CKPTFS_ASSERT_OK(cache->Insert(x->digest, x->bytes));
    // Insertion order was a, b, c; the mtimes say b is the oldest, then c, then a.
    SetMtime(cache->PathOf(b.digest), 1'600'000'000);
    SetMtime(cache->PathOf(c.digest), 1'600'000'100);
    SetMtime(cache->PathOf(a.digest), 1'600'000'200);
  }
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(3000));
  CKPTFS_ASSERT_OK(cache->Insert(d.digest, d.bytes));
  EXPECT_FALSE(Exists(cache->PathOf(b.digest)));
  EXPECT_TRUE(Exists(cache->PathOf(c.digest)));
  EXPECT_TRUE(Exists(cache->PathOf(a.digest)));
  CKPTFS_ASSERT_OK(cache->Insert(e.digest, e.bytes));
  EXPECT_FALSE(Exists(cache->PathOf(c.digest)));
  EXPECT_TRUE(Exists(cache->PathOf(a.digest)));
  EXPECT_TRUE(Exists(cache->PathOf(d.digest)));
  EXPECT_TRUE(Exists(cache->PathOf(e.digest)));
}

TEST_F(DiskCache, ReopenWithSmallerCapacityEvictsTheOldestFiles) {
  TestChunk a = MakeChunk(1000, 1), b = MakeChunk(1000, 2), c = MakeChunk(1000, 3);
  std::string path_a, path_b, path_c;
  {
    CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(3000));
    for (const TestChunk* x : {&a, &b, &c}) CKPTFS_ASSERT_OK(cache->Insert(x->digest, x->bytes));
    path_a = cache->PathOf(a.digest);
    path_b = cache->PathOf(b.digest);
    path_c = cache->PathOf(c.digest);
    SetMtime(path_a, 1'600'000'300);
    SetMtime(path_b, 1'600'000'100);
    SetMtime(path_c, 1'600'000'200);
  }
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(2000));
  EXPECT_EQ(cache->used_bytes(), 2000u);
  EXPECT_FALSE(Exists(path_b));
  EXPECT_TRUE(Exists(path_a));
  EXPECT_TRUE(Exists(path_c));
}

// A chunk found at Open() and then used must count as recently used at the next Open(), or a
// restarted mount would evict exactly the chunks its reader is working on.
TEST_F(DiskCache, UseOfAnEntryFoundAtOpenIsRememberedAtTheNextOpen) {
  TestChunk a = MakeChunk(1000, 1), b = MakeChunk(1000, 2), c = MakeChunk(1000, 3);
  std::string path_a, path_b;
  {
    CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(2000));
    CKPTFS_ASSERT_OK(cache->Insert(a.digest, a.bytes));
    CKPTFS_ASSERT_OK(cache->Insert(b.digest, b.bytes));
    path_a = cache->PathOf(a.digest);
    path_b = cache->PathOf(b.digest);
    SetMtime(path_a, 1'600'000'000);  // a is the older one...
    SetMtime(path_b, 1'600'000'100);
  }
  {
    CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(2000));
    CKPTFS_ASSERT_OK(cache->OpenChunk(a.digest, 1000));  // ...until it is used.
  }
  EXPECT_GT(MtimeSeconds(path_a), MtimeSeconds(path_b));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(2000));
  CKPTFS_ASSERT_OK(cache->Insert(c.digest, c.bytes));
  EXPECT_TRUE(Exists(path_a));
  EXPECT_FALSE(Exists(path_b));
}

TEST_F(DiskCache, OpenFailsWhenTheDirectoryCannotBeCreated) {
  // Tests run as root, which ignores permission bits: a path under a regular file fails for all.
  std::string file = temp_.Path("file");
  WriteFile(file, std::vector<std::uint8_t>{1, 2, 3});
  auto cache =
      fs::DiskCache::Open({.dir = file + "/cache", .capacity_bytes = 1 << 20, .clock = &clock_});
  EXPECT_FALSE(cache.ok());
  EXPECT_NE(cache.status().message().find(file + "/cache"), std::string::npos)
      << cache.status().ToString();
}

TEST_F(DiskCache, OpenOfAnEmptyPathIsInvalidArgument) {
  auto cache = fs::DiskCache::Open({.dir = "", .capacity_bytes = 1 << 20, .clock = &clock_});
  EXPECT_EQ(cache.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(DiskCache, BlocksGoToASparsePartialFileThatSurvivesReopen) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1 << 20));
  TestChunk a = MakeChunk(4 * 4096, 1);
  std::span<const std::uint8_t> bytes(a.bytes);
  CKPTFS_ASSERT_OK(cache->InsertBlocks(a.digest, 8192, bytes.subspan(8192, 4096)));
  EXPECT_FALSE(cache->Contains(a.digest));
  EXPECT_EQ(cache->used_bytes(), 4096u);
  CKPTFS_ASSERT_OK_AND_ASSIGN(UniqueFd fd, cache->OpenPartial(a.digest));
  std::vector<std::uint8_t> got(4096);
  CKPTFS_ASSERT_OK(PreadExactly(fd.get(), 8192, got));
  EXPECT_TRUE(std::equal(got.begin(), got.end(), a.bytes.begin() + 8192));
  cache.reset();
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto reopened, Open(1 << 20));
  EXPECT_TRUE(reopened->OpenPartial(a.digest).ok());
  EXPECT_EQ(reopened->used_bytes(), 4096u);  // What the sparse file occupies.
}

TEST_F(DiskCache, ABlockWrittenTwiceIsCountedOnce) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1 << 20));
  TestChunk a = MakeChunk(4 * 4096, 1);
  std::span<const std::uint8_t> bytes(a.bytes);
  CKPTFS_ASSERT_OK(cache->InsertBlocks(a.digest, 4096, bytes.subspan(4096, 4096)));
  CKPTFS_ASSERT_OK(cache->InsertBlocks(a.digest, 4096, bytes.subspan(4096, 4096)));
  EXPECT_EQ(cache->used_bytes(), 4096u);
  CKPTFS_ASSERT_OK(cache->InsertBlocks(a.digest, 12288, bytes.subspan(12288, 4096)));
  EXPECT_EQ(cache->used_bytes(), 8192u);
  cache.reset();
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto reopened, Open(1 << 20));
  EXPECT_EQ(reopened->used_bytes(), 8192u);  // The same figure as the scan at Open finds.
}

TEST_F(DiskCache, WholeChunkReplacesItsPartialFile) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(1 << 20));
  TestChunk a = MakeChunk(4 * 4096, 1);
  CKPTFS_ASSERT_OK(
      cache->InsertBlocks(a.digest, 0, std::span<const std::uint8_t>(a.bytes).first(4096)));
  CKPTFS_ASSERT_OK(cache->Insert(a.digest, a.bytes));
  EXPECT_EQ(cache->OpenPartial(a.digest).status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(Exists(cache->PathOf(a.digest, /*partial=*/true)));
  EXPECT_EQ(cache->used_bytes(), a.bytes.size());
  // Blocks of a chunk cached whole are not written again.
  CKPTFS_ASSERT_OK(
      cache->InsertBlocks(a.digest, 0, std::span<const std::uint8_t>(a.bytes).first(4096)));
  EXPECT_FALSE(Exists(cache->PathOf(a.digest, /*partial=*/true)));
}

TEST_F(DiskCache, PartialFilesAreEvictedLikeChunks) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto cache, Open(3 * 4096));
  TestChunk a = MakeChunk(4 * 4096, 1);
  TestChunk b = MakeChunk(3 * 4096, 2);
  CKPTFS_ASSERT_OK(
      cache->InsertBlocks(a.digest, 0, std::span<const std::uint8_t>(a.bytes).first(4096)));
  CKPTFS_ASSERT_OK(cache->Insert(b.digest, b.bytes));
  EXPECT_EQ(cache->OpenPartial(a.digest).status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(Exists(cache->PathOf(a.digest, /*partial=*/true)));
  EXPECT_TRUE(cache->Contains(b.digest));
  EXPECT_EQ(cache->used_bytes(), b.bytes.size());
}

}  // namespace
}  // namespace ckptfs
