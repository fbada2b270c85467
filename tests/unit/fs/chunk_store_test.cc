// ChunkStore over a real DiskCache, a FakeFetcher and a FakeClock: no network, no sleeps.
#include "fs/chunk_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "index/types.h"
#include "tests/support/fake_clock.h"
#include "tests/support/fake_fetcher.h"
#include "tests/support/poll.h"
#include "tests/support/single_file_index.h"
#include "tests/support/status_testing.h"
#include "tests/support/temp_dir.h"

namespace ckptfs {
namespace {

using namespace std::chrono_literals;
using fs::ChunkKey;
using fs::ChunkStoreOptions;
using testing::FakeClock;
using testing::FakeFetcher;
using testing::FakeReplicaSource;
using testing::PatternBytes;
using testing::PollUntil;
using testing::TempDir;

// The store's key of a chunk of `bytes` (chunk id 1).
fs::ChunkKey KeyOf(const std::vector<std::uint8_t>& bytes) {
  return {Sha256(bytes.data(), bytes.size()), bytes.size(), 1};
}

struct TestChunk {
  std::vector<std::uint8_t> bytes;
  ChunkKey key;
};

// Reader threads that are joined on destruction after the fetcher's gate is opened, so that a
// failed ASSERT never leaves a thread blocked or a std::thread unjoined.
class Readers {
 public:
  explicit Readers(FakeFetcher& fetcher) : fetcher_(fetcher) {}
  ~Readers() {
    fetcher_.Release();
    Join();
  }
  template <typename Body>
  void Start(Body body) {
    threads_.emplace_back(std::move(body));
  }
  void Join() {
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  FakeFetcher& fetcher_;
  std::vector<std::thread> threads_;
};

class ChunkStore : public ::testing::Test {
 protected:
  void SetUp() override { OpenCache(64 << 20); }
  // A held fetch would keep the store's destructor waiting for its prefetch threads.
  void TearDown() override { fetcher_.Release(); }

  void OpenCache(std::uint64_t capacity) {
    store_.reset();
    auto cache = fs::DiskCache::Open(
        {.dir = temp_.Path("cache"), .capacity_bytes = capacity, .clock = &clock_});
    ASSERT_TRUE(cache.ok()) << cache.status().ToString();
    cache_ = std::move(cache).value();
  }

  fs::ChunkStore& MakeStore(ChunkStoreOptions options = {}) {
    store_ =
        std::make_unique<fs::ChunkStore>(cache_.get(), &fetcher_, &replicas_, &clock_, options);
    return *store_;
  }

  // A chunk of `size` pattern bytes that the fake fetcher serves.
  TestChunk ServedChunk(std::size_t size, std::uint64_t seed) {
    TestChunk chunk{PatternBytes(size, seed), {}};
    chunk.key.digest = fetcher_.Serve(chunk.bytes);
    chunk.key.size = size;
    chunk.key.chunk_id = static_cast<std::int64_t>(seed);
    return chunk;
  }

  TimePoint Deadline() const { return clock_.Now() + 1h; }

  // Reads [offset, offset + length) of the chunk through the store.
  Result<std::vector<std::uint8_t>> Read(const TestChunk& chunk, std::uint64_t offset,
                                         std::size_t length) {
    std::vector<std::uint8_t> out(length);
    CKPTFS_RETURN_IF_ERROR(store_->Read(chunk.key, offset, out, Deadline()));
    return out;
  }
  Result<std::vector<std::uint8_t>> ReadAll(const TestChunk& chunk) {
    return Read(chunk, 0, chunk.bytes.size());
  }

  static std::vector<std::uint8_t> Slice(const TestChunk& chunk, std::size_t offset,
                                         std::size_t length) {
    return {chunk.bytes.begin() + offset, chunk.bytes.begin() + offset + length};
  }

  TempDir temp_;
  FakeClock clock_;
  FakeFetcher fetcher_;
  FakeReplicaSource replicas_{{3, 5}};
  std::unique_ptr<fs::DiskCache> cache_;
  std::unique_ptr<fs::ChunkStore> store_;  // Declared last: destroyed before what it uses.
};

TEST_F(ChunkStore, ReadFetchesOnceAndThenHitsTheCache) {
  MakeStore();
  TestChunk chunk = ServedChunk(4096, 1);
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto first, ReadAll(chunk));
  EXPECT_EQ(first, chunk.bytes);
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
  EXPECT_TRUE(cache_->Contains(chunk.key.digest));

  CKPTFS_ASSERT_OK_AND_ASSIGN(auto second, ReadAll(chunk));
  EXPECT_EQ(second, chunk.bytes);
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
  EXPECT_EQ(store_->counters().fetches.load(), 1u);
  EXPECT_EQ(store_->counters().cache_hits.load(), 1u);
}

TEST_F(ChunkStore, FetchAsksTheReplicaSourceForTheChunksNodes) {
  MakeStore();
  TestChunk chunk = ServedChunk(100, 1);
  CKPTFS_ASSERT_OK(ReadAll(chunk));
  EXPECT_EQ(replicas_.Calls(), 1);
  EXPECT_EQ(fetcher_.LastNodes(), (std::vector<std::int64_t>{3, 5}));
}

TEST_F(ChunkStore, ConcurrentReadersOfOneChunkCauseOneFetch) {
  MakeStore();
  TestChunk chunk = ServedChunk(8000, 1);
  fetcher_.Hold();
  constexpr int kReaders = 8;
  std::vector<Result<std::vector<std::uint8_t>>> results(kReaders, InternalError("not run"));
  Readers readers(fetcher_);
  for (int i = 0; i < kReaders; ++i) {
    // Each reader asks for its own sub-range, so joiners copy from the right offset too.
    readers.Start([&, i] { results[i] = Read(chunk, i * 900, 900 + i); });
  }
  ASSERT_TRUE(fetcher_.WaitForHeld(1));
  // Every other reader must be waiting on the leader's fetch before it is let go.
  ASSERT_TRUE(PollUntil([&] { return store_->counters().joined.load() == kReaders - 1; }))
      << "joined: " << store_->counters().joined.load();
  fetcher_.Release();
  readers.Join();
  for (int i = 0; i < kReaders; ++i) {
    ASSERT_TRUE(results[i].ok()) << "reader " << i << ": " << results[i].status().ToString();
    EXPECT_EQ(*results[i], Slice(chunk, i * 900, 900 + i)) << "reader " << i;
  }
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
  EXPECT_EQ(store_->counters().fetches.load(), 1u);
}

TEST_F(ChunkStore, FetchErrorReachesTheReaderAndNothingIsCached) {
  MakeStore();
  TestChunk chunk{PatternBytes(1000, 1), {}};
  chunk.key = {Sha256(chunk.bytes.data(), chunk.bytes.size()), 1000, 1};
  fetcher_.Fail(chunk.key.digest, UnavailableError("every replica is down"));
  auto read = ReadAll(chunk);
  EXPECT_EQ(read.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(read.status().message().find("every replica is down"), std::string::npos)
      << read.status().ToString();
  EXPECT_FALSE(cache_->Contains(chunk.key.digest));
  EXPECT_EQ(cache_->used_bytes(), 0u);
  EXPECT_EQ(store_->counters().fetch_errors.load(), 1u);
}

TEST_F(ChunkStore, ReadRightAfterAFailedFetchFailsAtOnceWithoutFetching) {
  MakeStore();
  TestChunk chunk{PatternBytes(1000, 1), {}};
  chunk.key = {Sha256(chunk.bytes.data(), chunk.bytes.size()), 1000, 1};
  fetcher_.Fail(chunk.key.digest, UnavailableError("node down"));
  EXPECT_EQ(ReadAll(chunk).status().code(), StatusCode::kUnavailable);
  fetcher_.Serve(chunk.bytes);
  EXPECT_EQ(ReadAll(chunk).status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
}

TEST_F(ChunkStore, ReadAfterAFailedFetchFetchesAgainOnceTheFailureIsOld) {
  MakeStore();
  TestChunk chunk{PatternBytes(1000, 1), {}};
  chunk.key = {Sha256(chunk.bytes.data(), chunk.bytes.size()), 1000, 1};
  fetcher_.Fail(chunk.key.digest, DataLossError("digest mismatch"));
  EXPECT_EQ(ReadAll(chunk).status().code(), StatusCode::kDataLoss);
  fetcher_.Serve(chunk.bytes);
  clock_.Advance(fs::ChunkStoreOptions{}.failure_memory);
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto read, ReadAll(chunk));
  EXPECT_EQ(read, chunk.bytes);
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 2);
}

TEST_F(ChunkStore, ConcurrentReadersAllGetTheLeadersError) {
  MakeStore();
  TestChunk chunk{PatternBytes(1000, 1), {}};
  chunk.key = {Sha256(chunk.bytes.data(), chunk.bytes.size()), 1000, 1};
  fetcher_.Fail(chunk.key.digest, UnavailableError("node down"));
  fetcher_.Hold();
  constexpr int kReaders = 4;
  std::vector<Status> results(kReaders);
  Readers readers(fetcher_);
  for (int i = 0; i < kReaders; ++i) {
    readers.Start([&, i] { results[i] = ReadAll(chunk).status(); });
  }
  ASSERT_TRUE(fetcher_.WaitForHeld(1));
  ASSERT_TRUE(PollUntil([&] { return store_->counters().joined.load() == kReaders - 1; }));
  fetcher_.Release();
  readers.Join();
  for (const Status& s : results) EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
  EXPECT_FALSE(cache_->Contains(chunk.key.digest));
}

TEST_F(ChunkStore, ReplicaLookupErrorReachesTheReaderWithoutAFetch) {
  MakeStore();
  TestChunk chunk = ServedChunk(100, 1);
  replicas_.Fail(DataLossError("index row is damaged"));
  EXPECT_EQ(ReadAll(chunk).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(fetcher_.TotalCalls(), 0);
  EXPECT_FALSE(cache_->Contains(chunk.key.digest));
}

TEST_F(ChunkStore, ReadsOfSubRangesReturnTheRightBytes) {
  MakeStore();
  TestChunk chunk = ServedChunk(4096, 1);
  struct Range {
    std::size_t offset, length;
  };
  // The first read is served from the fetched buffer, the others from the disk cache.
  for (Range r : {Range{100, 50}, Range{4095, 1}, Range{0, 1}, Range{1, 4095}, Range{2048, 2048},
                  Range{17, 0}}) {
    CKPTFS_ASSERT_OK_AND_ASSIGN(auto read, Read(chunk, r.offset, r.length));
    EXPECT_EQ(read, Slice(chunk, r.offset, r.length)) << r.offset << "+" << r.length;
  }
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
}

TEST_F(ChunkStore, ChunkTooLargeForTheCacheIsStillReturned) {
  OpenCache(1000);
  MakeStore();
  TestChunk chunk = ServedChunk(4096, 1);
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto first, Read(chunk, 10, 4000));
  EXPECT_EQ(first, Slice(chunk, 10, 4000));
  EXPECT_FALSE(cache_->Contains(chunk.key.digest));
  // Still in memory: part of it has not been served yet.
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto second, ReadAll(chunk));
  EXPECT_EQ(second, chunk.bytes);
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
  EXPECT_EQ(store_->counters().memory_hits.load(), 1u);
  // Served whole, it left memory; with no cache entry it is fetched again.
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto third, ReadAll(chunk));
  EXPECT_EQ(third, chunk.bytes);
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 2);
}

TEST_F(ChunkStore, ChunkServedWholeLeavesMemoryAndIsReadFromTheCache) {
  MakeStore();
  TestChunk chunk = ServedChunk(10000, 1);
  CKPTFS_ASSERT_OK(Read(chunk, 0, 6000));
  CKPTFS_ASSERT_OK(Read(chunk, 6000, 4000));
  EXPECT_EQ(store_->counters().memory_hits.load(), 1u);
  ASSERT_TRUE(PollUntil([&] { return cache_->Contains(chunk.key.digest); }));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto again, Read(chunk, 1, 9999));
  EXPECT_EQ(again, Slice(chunk, 1, 9999));
  EXPECT_EQ(store_->counters().cache_hits.load(), 1u);
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
}

TEST_F(ChunkStore, ReadaheadWaitsForReadersToTakeWhatItFetchedInsteadOfPushingItOut) {
  MakeStore({.memory_bytes = 3 * 8192}).Start();
  std::vector<TestChunk> chunks;
  for (std::uint64_t i = 0; i < 5; ++i) chunks.push_back(ServedChunk(8192, i + 1));
  for (const TestChunk& c : chunks) store_->Prefetch(c.key);
  for (std::size_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(PollUntil([&] { return cache_->Contains(chunks[i].key.digest); })) << i;
  }
  // The budget holds three chunks, none read yet: the fourth waits rather than push out the
  // first, which a stream reads next.
  EXPECT_FALSE(PollUntil([&] { return fetcher_.Calls(chunks[3].key.digest) > 0; }, 300ms));
  // Each chunk read whole leaves memory and lets one more in.
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    CKPTFS_ASSERT_OK_AND_ASSIGN(auto read, Read(chunks[i], 0, 8192));
    EXPECT_EQ(read, chunks[i].bytes) << i;
    if (i + 3 < chunks.size()) {
      ASSERT_TRUE(PollUntil([&] { return cache_->Contains(chunks[i + 3].key.digest); })) << i;
    }
  }
  EXPECT_EQ(store_->counters().memory_hits.load(), 5u);
  EXPECT_EQ(store_->counters().cache_hits.load(), 0u);
  for (const TestChunk& c : chunks) EXPECT_EQ(fetcher_.Calls(c.key.digest), 1);
}

// A store whose budget holds two chunks of 8 KiB, asked to prefetch three: the first two are
// fetched, the third waits for room.
class ChunkStoreRoom : public ChunkStore {
 protected:
  void PrefetchOneMoreThanTwoFit(std::vector<TestChunk>& chunks) {
    MakeStore({.memory_bytes = 2 * 8192}).Start();
    for (std::uint64_t i = 0; i < 3; ++i) chunks.push_back(ServedChunk(8192, i + 1));
    for (const TestChunk& c : chunks) store_->Prefetch(c.key);
    ASSERT_TRUE(PollUntil([&] { return cache_->Contains(chunks[1].key.digest); }));
  }
};

TEST_F(ChunkStoreRoom, ReadaheadTakesTheRoomOfAChunkReadersReadPartOfAndThenLeft) {
  std::vector<TestChunk> chunks;
  ASSERT_NO_FATAL_FAILURE(PrefetchOneMoreThanTwoFit(chunks));
  CKPTFS_ASSERT_OK(Read(chunks[1], 0, 100));
  EXPECT_FALSE(PollUntil([&] { return fetcher_.Calls(chunks[2].key.digest) > 0; }, 300ms));
  // Nobody took more of the second chunk for left_after: it gives way, not the unread first.
  clock_.Advance(fs::ChunkStoreOptions{}.left_after);
  ASSERT_TRUE(PollUntil([&] { return cache_->Contains(chunks[2].key.digest); }));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto first, Read(chunks[0], 0, 100));
  EXPECT_EQ(first, Slice(chunks[0], 0, 100));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto rest, Read(chunks[1], 100, 8092));
  EXPECT_EQ(rest, Slice(chunks[1], 100, 8092));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto third, Read(chunks[2], 0, 100));
  EXPECT_EQ(third, Slice(chunks[2], 0, 100));
  EXPECT_EQ(store_->counters().cache_hits.load(), 1u);   // The rest of the second.
  EXPECT_EQ(store_->counters().memory_hits.load(), 3u);  // Its start, the first, the third.
  for (const TestChunk& c : chunks) EXPECT_EQ(fetcher_.Calls(c.key.digest), 1);
}

TEST_F(ChunkStoreRoom, ReadaheadTakesTheRoomOfTheOldestChunkNoReaderCameForInStaleAfter) {
  std::vector<TestChunk> chunks;
  ASSERT_NO_FATAL_FAILURE(PrefetchOneMoreThanTwoFit(chunks));
  clock_.Advance(fs::ChunkStoreOptions{}.left_after);  // Only for chunks read in part.
  EXPECT_FALSE(PollUntil([&] { return fetcher_.Calls(chunks[2].key.digest) > 0; }, 300ms));
  clock_.Advance(fs::ChunkStoreOptions{}.stale_after);
  ASSERT_TRUE(PollUntil([&] { return cache_->Contains(chunks[2].key.digest); }));
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    CKPTFS_ASSERT_OK_AND_ASSIGN(auto read, Read(chunks[i], 0, 100));
    EXPECT_EQ(read, Slice(chunks[i], 0, 100)) << i;
  }
  EXPECT_EQ(store_->counters().cache_hits.load(), 1u);  // The first, pushed out.
  EXPECT_EQ(store_->counters().memory_hits.load(), 2u);
  for (const TestChunk& c : chunks) EXPECT_EQ(fetcher_.Calls(c.key.digest), 1);
}

TEST_F(ChunkStore, ReadJoinsAPrefetchInFlightForOneFetchTotal) {
  MakeStore().Start();
  TestChunk chunk = ServedChunk(4096, 1);
  fetcher_.Hold();
  store_->Prefetch(chunk.key);
  ASSERT_TRUE(fetcher_.WaitForHeld(1));
  Result<std::vector<std::uint8_t>> read = InternalError("not run");
  Readers readers(fetcher_);
  readers.Start([&] { read = Read(chunk, 5, 100); });
  ASSERT_TRUE(PollUntil([&] { return store_->counters().joined.load() == 1; }));
  fetcher_.Release();
  readers.Join();
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(*read, Slice(chunk, 5, 100));
  store_.reset();  // Joins the prefetch threads, so nothing more can be fetched.
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
}

TEST_F(ChunkStore, MemoryShowsBuffersInFlightAndChunksWaitingToBeRead) {
  MakeStore({.memory_bytes = 1 << 20}).Start();
  EXPECT_EQ(store_->memory().bytes, 0u);
  EXPECT_EQ(store_->memory().budget_bytes, 1u << 20);
  TestChunk chunk = ServedChunk(4096, 1);
  fetcher_.Hold();
  store_->Prefetch(chunk.key);
  ASSERT_TRUE(fetcher_.WaitForHeld(1));
  EXPECT_EQ(store_->memory().bytes, 4096u);
  EXPECT_EQ(store_->memory().ready_chunks, 0u);
  fetcher_.Release();
  ASSERT_TRUE(PollUntil([&] { return store_->memory().ready_chunks == 1; }));
  EXPECT_EQ(store_->memory().bytes, 4096u);
}

TEST_F(ChunkStore, StartKeepsSpareBuffersUpToABoundInBytesWhateverTheChunkSize) {
  MakeStore({.max_spare_bytes = 64 << 10, .chunk_size = 16 << 10}).Start();
  EXPECT_EQ(store_->memory().spare_bytes, 64u << 10);  // Four of 16 KiB.
  MakeStore({.max_spare_bytes = 64 << 10, .chunk_size = 64 << 10}).Start();
  EXPECT_EQ(store_->memory().spare_bytes, 64u << 10);  // One.
  MakeStore({.max_spare_bytes = 64 << 10, .chunk_size = 128 << 10}).Start();
  EXPECT_EQ(store_->memory().spare_bytes, 0u);  // A chunk larger than the bound keeps none.
}

TEST_F(ChunkStore, ReturnedBuffersStayWithinTheSpareBoundPreferringLargerOnes) {
  // A budget of one chunk: the ready list lets go of each chunk as the next is fetched, so the
  // buffers go back once `held` drops them, all but the last one fetched.
  MakeStore({.memory_bytes = 4096, .max_spare_bytes = 8192});
  {
    std::vector<fs::ChunkData> held;
    for (std::uint64_t seed = 1; seed <= 4; ++seed) {
      CKPTFS_ASSERT_OK_AND_ASSIGN(fs::ChunkData data,
                                  store_->Get(ServedChunk(4096, seed).key, Deadline()));
      held.push_back(std::move(data));
    }
    EXPECT_EQ(store_->memory().spare_bytes, 0u);
  }
  EXPECT_EQ(store_->memory().spare_bytes, 8192u);  // Of three returned, two kept.
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto larger, ReadAll(ServedChunk(8192, 4)));
  EXPECT_EQ(store_->memory().spare_bytes, 8192u);  // The two small ones gave way to it.
  // The larger buffer is reused for a chunk of its size, so none is left idle while it is held.
  fetcher_.Hold();
  TestChunk next = ServedChunk(8192, 5);
  Result<std::vector<std::uint8_t>> read = InternalError("not run");
  Readers readers(fetcher_);
  readers.Start([&] { read = ReadAll(next); });
  ASSERT_TRUE(fetcher_.WaitForHeld(1));
  EXPECT_EQ(store_->memory().spare_bytes, 0u);
  fetcher_.Release();
  readers.Join();
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(store_->memory().spare_bytes, 8192u);
}

TEST_F(ChunkStore, PrefetchThenReadCausesOneFetch) {
  MakeStore().Start();
  TestChunk chunk = ServedChunk(4096, 1);
  store_->Prefetch(chunk.key);
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto read, ReadAll(chunk));
  EXPECT_EQ(read, chunk.bytes);
  store_.reset();
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
}

TEST_F(ChunkStore, PrefetchedChunkIsReadFromMemory) {
  MakeStore().Start();
  TestChunk chunk = ServedChunk(4096, 1);
  store_->Prefetch(chunk.key);
  ASSERT_TRUE(PollUntil([&] { return cache_->Contains(chunk.key.digest); }));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto read, ReadAll(chunk));
  EXPECT_EQ(read, chunk.bytes);
  EXPECT_EQ(store_->counters().memory_hits.load(), 1u);
  EXPECT_EQ(store_->counters().cache_hits.load(), 0u);
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
}

TEST_F(ChunkStore, PrefetchOfAChunkAnEarlierMountCachedLoadsItFromDiskWithoutAFetch) {
  MakeStore();
  TestChunk chunk = ServedChunk(5000, 1);
  CKPTFS_ASSERT_OK(ReadAll(chunk));  // Served whole: on disk, no longer in memory.
  ASSERT_TRUE(PollUntil([&] { return cache_->Contains(chunk.key.digest); }));
  MakeStore();  // A new mount of the same cache: its readers have not had the chunk.
  store_->Prefetch(chunk.key);
  EXPECT_EQ(store_->counters().prefetch_queued.load(), 1u);
  store_->Start();
  ASSERT_TRUE(PollUntil([&] { return store_->counters().disk_loads.load() == 1u; }));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto read, ReadAll(chunk));
  EXPECT_EQ(read, chunk.bytes);
  EXPECT_EQ(store_->counters().memory_hits.load(), 1u);
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
}

TEST_F(ChunkStore, PrefetchOfACachedChunkReadersHadWholeIsSkipped) {
  MakeStore();
  TestChunk chunk = ServedChunk(5000, 1);
  CKPTFS_ASSERT_OK(ReadAll(chunk));  // Served whole: the page cache has it.
  ASSERT_TRUE(PollUntil([&] { return cache_->Contains(chunk.key.digest); }));
  store_->Prefetch(chunk.key);
  EXPECT_EQ(store_->counters().prefetch_queued.load(), 0u);
  EXPECT_EQ(store_->counters().prefetch_skipped.load(), 1u);
  store_->Start();
  store_.reset();
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
}

TEST_F(ChunkStore, QueuedPrefetchThatAReaderOvertookIsNotLoadedBackFromDisk) {
  MakeStore();  // Not started: the prefetch stays queued while the reader fetches.
  TestChunk chunk = ServedChunk(5000, 1);
  store_->Prefetch(chunk.key);
  CKPTFS_ASSERT_OK(ReadAll(chunk));  // The reader's own fetch, served whole.
  ASSERT_TRUE(PollUntil([&] { return cache_->Contains(chunk.key.digest); }));
  store_->Start();
  ASSERT_TRUE(PollUntil([&] { return store_->counters().prefetch_skipped.load() == 1u; }));
  EXPECT_EQ(store_->counters().disk_loads.load(), 0u);
  EXPECT_EQ(store_->memory().ready_chunks, 0u);
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
}

TEST_F(ChunkStore, ReadersAskingAgainForAChunkTheyHadWholeBringBackDiskLoads) {
  MakeStore();
  TestChunk first = ServedChunk(5000, 1);
  TestChunk second = ServedChunk(5000, 2);
  CKPTFS_ASSERT_OK(ReadAll(first));
  CKPTFS_ASSERT_OK(ReadAll(second));
  ASSERT_TRUE(PollUntil(
      [&] { return cache_->Contains(first.key.digest) && cache_->Contains(second.key.digest); }));
  // The page cache lost the first chunk (and, most likely, the second): it is read again.
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto again, ReadAll(first));
  EXPECT_EQ(again, first.bytes);
  EXPECT_EQ(store_->counters().cache_hits.load(), 1u);
  store_->Prefetch(second.key);
  EXPECT_EQ(store_->counters().prefetch_skipped.load(), 0u);
  store_->Start();
  ASSERT_TRUE(PollUntil([&] { return store_->counters().disk_loads.load() == 1u; }));
  EXPECT_EQ(fetcher_.Calls(second.key.digest), 1);
}

TEST_F(ChunkStore, OnlyTheLatestChunksReadersHadWholeAreRemembered) {
  MakeStore({.remembered_deliveries = 1});
  TestChunk older = ServedChunk(5000, 1);
  TestChunk newer = ServedChunk(5000, 2);
  CKPTFS_ASSERT_OK(ReadAll(older));
  CKPTFS_ASSERT_OK(ReadAll(newer));  // Pushes `older` out of the record.
  ASSERT_TRUE(PollUntil(
      [&] { return cache_->Contains(older.key.digest) && cache_->Contains(newer.key.digest); }));
  store_->Prefetch(newer.key);
  store_->Prefetch(older.key);
  EXPECT_EQ(store_->counters().prefetch_skipped.load(), 1u);
  EXPECT_EQ(store_->counters().prefetch_queued.load(), 1u);
  store_->Start();
  ASSERT_TRUE(PollUntil([&] { return store_->counters().disk_loads.load() == 1u; }));
  EXPECT_EQ(fetcher_.Calls(older.key.digest), 1);
}

TEST_F(ChunkStore, PrefetchOfAChunkInMemoryDoesNothing) {
  MakeStore();
  TestChunk chunk = ServedChunk(4096, 1);
  CKPTFS_ASSERT_OK(Read(chunk, 0, 10));  // Partly served: stays in memory.
  store_->Prefetch(chunk.key);
  EXPECT_EQ(store_->counters().prefetch_queued.load(), 0u);
  store_->Start();
  store_.reset();
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
}

TEST_F(ChunkStore, PrefetchOfAQueuedChunkQueuesItOnce) {
  MakeStore();  // Not started: prefetches stay queued.
  TestChunk chunk = ServedChunk(4096, 1);
  store_->Prefetch(chunk.key);
  store_->Prefetch(chunk.key);
  EXPECT_EQ(store_->counters().prefetch_queued.load(), 1u);
  EXPECT_EQ(fetcher_.TotalCalls(), 0);
}

TEST_F(ChunkStore, PrefetchBeyondTheQueueLimitIsDropped) {
  MakeStore({.max_queued_prefetches = 2});
  for (int i = 1; i <= 3; ++i) store_->Prefetch(ServedChunk(100, i).key);
  EXPECT_EQ(store_->counters().prefetch_queued.load(), 2u);
  EXPECT_EQ(store_->counters().prefetch_dropped.load(), 1u);
}

TEST_F(ChunkStore, ForegroundReadIsNotStarvedByPrefetches) {
  // Background fetches may use max_inflight - foreground_reserve = 1 slot.
  MakeStore({.prefetch_threads = 4, .max_inflight = 3, .foreground_reserve = 2});
  std::vector<TestChunk> ahead;
  for (int i = 1; i <= 5; ++i) {
    ahead.push_back(ServedChunk(100, i));
    fetcher_.Hold(ahead.back().key.digest);
    store_->Prefetch(ahead.back().key);
  }
  store_->Start();
  ASSERT_TRUE(fetcher_.WaitForHeld(1));
  TestChunk wanted = ServedChunk(2000, 99);
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto read, ReadAll(wanted));
  EXPECT_EQ(read, wanted.bytes);
  int background_calls = 0;
  for (const TestChunk& c : ahead) background_calls += fetcher_.Calls(c.key.digest);
  EXPECT_EQ(background_calls, 1) << "only one background fetch may hold a slot";
  fetcher_.Release();
}

TEST_F(ChunkStore, DestructorReturnsWhilePrefetchesAreQueued) {
  constexpr int kQueued = 400;
  MakeStore({.prefetch_threads = 2, .max_queued_prefetches = kQueued});
  fetcher_.Hold();
  for (int i = 1; i <= kQueued; ++i) store_->Prefetch(ServedChunk(64, i).key);
  store_->Start();
  ASSERT_TRUE(fetcher_.WaitForHeld(2));  // Both workers busy, the rest queued.

  // The destructor may wait for the fetches in progress, never for the queue to drain. It runs
  // on its own thread; held fetches are let through one at a time until it has returned, paced
  // so that a destructor thread the scheduler starts late (two busy cores under ctest -j2) does
  // not find the queue drained by the test itself.
  auto destroyed = std::make_shared<std::promise<void>>();
  std::future<void> done = destroyed->get_future();
  std::thread([store = store_.release(), destroyed] {
    delete store;
    destroyed->set_value();
  }).detach();
  const auto give_up = std::chrono::steady_clock::now() + testing::kPollLimit;
  while (done.wait_for(0s) != std::future_status::ready &&
         std::chrono::steady_clock::now() < give_up) {
    if (fetcher_.WaitForHeld(1, 10ms)) {
      fetcher_.Allow(1);
      if (!fetcher_.WaitForPermitsUsed()) break;
      std::this_thread::sleep_for(2ms);
    }
  }
  if (done.wait_for(0s) != std::future_status::ready) {
    // The store still uses the fixture's fetcher on its thread: end here, loudly.
    std::cerr << "FAILED: ~ChunkStore did not return with prefetches queued\n";
    std::abort();
  }
  EXPECT_LT(fetcher_.TotalCalls(), kQueued) << "the destructor drained the prefetch queue";
}

// A fetcher that delivers a chunk in steps the test releases: after Release(n), bytes [0, n) land
// and are reported verified. A chunk caught while it streams in.
class GatedFetcher final : public netfetch::ChunkFetcher {
 public:
  explicit GatedFetcher(std::vector<std::uint8_t> bytes) : bytes_(std::move(bytes)) {}

  Status Fetch(const netfetch::ChunkRef& chunk, std::span<std::uint8_t> dst, TimePoint,
               const netfetch::VerifiedCallback& on_verified,
               const netfetch::PauseCallback&) override {
    if (chunk.size != bytes_.size()) return DataLossError("unexpected chunk");
    started_ = true;
    std::size_t delivered = 0;
    while (delivered < bytes_.size()) {
      std::size_t upto = 0;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return released_ > delivered; });
        upto = released_;
      }
      std::memcpy(dst.data() + delivered, bytes_.data() + delivered, upto - delivered);
      delivered = upto;
      if (on_verified) on_verified(delivered);
    }
    return Status::Ok();
  }
  Status FetchBlocks(const netfetch::ChunkRef&, std::size_t, std::size_t, std::span<std::uint8_t>,
                     TimePoint, const netfetch::PauseCallback&) override {
    return InternalError("not expected");
  }
  void Release(std::size_t upto) {
    {
      std::lock_guard lock(mu_);
      released_ = std::min(upto, bytes_.size());
    }
    cv_.notify_all();
  }
  bool started() const { return started_; }

 private:
  std::vector<std::uint8_t> bytes_;
  std::atomic<bool> started_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::size_t released_ = 0;  // GUARDED_BY(mu_)
};

// Serves two chunks: `down`, whose every replica fails until Up(), so its fetch pauses between
// rounds through the store's PauseCallback, and `up`, served at once.
class DownThenUpFetcher final : public netfetch::ChunkFetcher {
 public:
  DownThenUpFetcher(std::vector<std::uint8_t> down, std::vector<std::uint8_t> up)
      : down_(std::move(down)), up_(std::move(up)) {}

  Status Fetch(const netfetch::ChunkRef& chunk, std::span<std::uint8_t> dst, TimePoint,
               const netfetch::VerifiedCallback& on_verified,
               const netfetch::PauseCallback& pause) override {
    const std::vector<std::uint8_t>& bytes = chunk.size == down_.size() ? down_ : up_;
    if (&bytes == &down_) {
      std::unique_lock lock(mu_);
      while (!up_now_) {
        lock.unlock();
        if (!pause(100ms)) return UnavailableError("paused past the deadline");
        lock.lock();
        ++pauses_;
        cv_.notify_all();
        cv_.wait_for(lock, 1ms);
      }
    }
    std::memcpy(dst.data(), bytes.data(), bytes.size());
    if (on_verified) on_verified(bytes.size());
    return Status::Ok();
  }
  Status FetchBlocks(const netfetch::ChunkRef&, std::size_t, std::size_t, std::span<std::uint8_t>,
                     TimePoint, const netfetch::PauseCallback&) override {
    return InternalError("not expected");
  }
  bool WaitForPause() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, testing::kPollLimit, [&] { return pauses_ > 0; });
  }
  void Up() {
    std::lock_guard lock(mu_);
    up_now_ = true;
  }

 private:
  std::vector<std::uint8_t> down_;
  std::vector<std::uint8_t> up_;
  std::mutex mu_;
  std::condition_variable cv_;
  int pauses_ = 0;       // GUARDED_BY(mu_)
  bool up_now_ = false;  // GUARDED_BY(mu_)
};

TEST_F(ChunkStore, AFetchPausingForItsNodesLeavesItsSlotToOtherReads) {
  std::vector<std::uint8_t> down = PatternBytes(8192, 1);
  std::vector<std::uint8_t> up = PatternBytes(4096, 2);
  DownThenUpFetcher fetcher(down, up);
  // One slot in all: the fetch whose nodes are down held it, in its pauses too, until its
  // deadline, and every other read waited that long.
  fs::ChunkStore store(
      cache_.get(), &fetcher, &replicas_, &clock_,
      {.prefetch_threads = 1, .foreground_threads = 1, .max_inflight = 1, .foreground_reserve = 0});
  store.Start();
  std::vector<std::uint8_t> down_read(down.size());
  std::thread waiting([&] { ASSERT_TRUE(store.Read(KeyOf(down), 0, down_read, Deadline()).ok()); });
  ASSERT_TRUE(fetcher.WaitForPause());

  std::vector<std::uint8_t> up_read(up.size());
  fs::ChunkKey up_key = KeyOf(up);
  up_key.chunk_id = 2;
  auto other =
      std::async(std::launch::async, [&] { return store.Read(up_key, 0, up_read, Deadline()); });
  const bool served = other.wait_for(20s) == std::future_status::ready;
  fetcher.Up();
  waiting.join();
  ASSERT_TRUE(served) << "a read waited for the slot of a fetch that pauses";
  CKPTFS_ASSERT_OK(other.get());
  EXPECT_EQ(up_read, up);
  EXPECT_EQ(down_read, down) << "the paused fetch took a slot again and delivered";
}

TEST_F(ChunkStore, ReaderOfTheStartOfAChunkGoesBeforeTheRestHasArrived) {
  std::vector<std::uint8_t> bytes = PatternBytes(8192, 3);
  GatedFetcher gated(bytes);
  gated.Release(4096);
  fs::ChunkKey key = KeyOf(bytes);
  auto store = std::make_unique<fs::ChunkStore>(cache_.get(), &gated, &replicas_, &clock_);
  store->Start();
  std::vector<std::uint8_t> head(4096);
  CKPTFS_ASSERT_OK(store->Read(key, 0, head, Deadline()));
  EXPECT_EQ(head, std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + 4096));
  EXPECT_EQ(store->counters().early_reads.load(), 1u);
  EXPECT_FALSE(cache_->Contains(key.digest));  // The fetch is still waiting for the rest.
  // A reader of the tail waits for it, and then the chunk is cached.
  std::vector<std::uint8_t> tail(4096);
  std::thread finisher([&] { gated.Release(bytes.size()); });
  CKPTFS_ASSERT_OK(store->Read(key, 4096, tail, Deadline()));
  finisher.join();
  EXPECT_EQ(tail, std::vector<std::uint8_t>(bytes.begin() + 4096, bytes.end()));
  EXPECT_TRUE(PollUntil([&] { return cache_->Contains(key.digest); }));
}

// Delivers the first `prefix` bytes of a chunk, reports them verified, then fails: a replica that
// dies in the middle of the chunk with no other replica left.
class PrefixThenFailFetcher final : public netfetch::ChunkFetcher {
 public:
  PrefixThenFailFetcher(std::vector<std::uint8_t> bytes, std::size_t prefix)
      : bytes_(std::move(bytes)), prefix_(prefix) {}
  Status Fetch(const netfetch::ChunkRef&, std::span<std::uint8_t> dst, TimePoint,
               const netfetch::VerifiedCallback& on_verified,
               const netfetch::PauseCallback&) override {
    std::memcpy(dst.data(), bytes_.data(), prefix_);
    if (on_verified) on_verified(prefix_);
    return UnavailableError("connection reset in the middle of the chunk");
  }
  Status FetchBlocks(const netfetch::ChunkRef&, std::size_t, std::size_t, std::span<std::uint8_t>,
                     TimePoint, const netfetch::PauseCallback&) override {
    return InternalError("not expected");
  }

 private:
  std::vector<std::uint8_t> bytes_;
  std::size_t prefix_;
};

// What an EarlyServe saw: its bytes, on which thread, and how often it ran.
struct EarlyRecord {
  std::mutex mu;
  int calls = 0;                   // GUARDED_BY(mu)
  std::thread::id thread;          // GUARDED_BY(mu)
  std::vector<std::uint8_t> head;  // GUARDED_BY(mu)

  fs::EarlyServe Recorder(std::uint64_t offset, std::size_t length) {
    return [this, offset, length](fs::ChunkData data) {
      std::lock_guard lock(mu);
      ++calls;
      thread = std::this_thread::get_id();
      const std::uint8_t* at = data.bytes->data() + (offset - data.base);
      head.assign(at, at + length);
    };
  }
  int Calls() {
    std::lock_guard lock(mu);
    return calls;
  }
};

TEST_F(ChunkStore, EarlyServeGetsTheBytesFromWithinTheFetchOnTheReadersThread) {
  std::vector<std::uint8_t> bytes = PatternBytes(8192, 3);
  GatedFetcher gated(bytes);
  gated.Release(4096);
  fs::ChunkKey key = KeyOf(bytes);
  auto store = std::make_unique<fs::ChunkStore>(cache_.get(), &gated, &replicas_, &clock_);
  store->Start();
  EarlyRecord early;
  const fs::EarlyServe serve = early.Recorder(100, 1000);
  std::thread::id reader_id;
  std::atomic<bool> returned{false};
  Status status;
  std::thread reader([&] {
    reader_id = std::this_thread::get_id();
    status = store->Get(key, 100, 1000, fs::Access::kStream, Deadline(), &serve).status();
    returned = true;
  });
  const bool served_early = PollUntil([&] { return early.Calls() == 1; });
  // The bytes went out while the rest of the chunk was still arriving.
  const bool returned_before_the_rest = returned.load();
  gated.Release(bytes.size());
  reader.join();
  ASSERT_TRUE(served_early);
  EXPECT_FALSE(returned_before_the_rest);
  CKPTFS_EXPECT_OK(status);
  std::lock_guard lock(early.mu);
  EXPECT_EQ(early.calls, 1);
  EXPECT_EQ(early.thread, reader_id);
  EXPECT_EQ(early.head, std::vector<std::uint8_t>(bytes.begin() + 100, bytes.begin() + 1100));
  EXPECT_EQ(store->counters().early_reads.load(), 1u);
  EXPECT_TRUE(cache_->Contains(key.digest));
}

// The FUSE layer reports what it served (Served) after its reply, on its own thread, which can
// be while the fetch that served it early is ending: after the flight completed, before the chunk
// joined the ready list. Bytes reported in that gap must still count, or a chunk served whole
// stays in memory as if readers still needed it, and is not remembered as delivered. The gap is
// short, so each round sends its report a little later than the one before.
TEST_F(ChunkStore, BytesServedWhileTheFetchEndsStillCount) {
  MakeStore().Start();
  constexpr int kRounds = 3000;
  constexpr std::size_t kSize = 16 << 10;
  std::vector<TestChunk> chunks;
  for (int round = 0; round < kRounds; ++round) {
    chunks.push_back(ServedChunk(kSize, static_cast<std::uint64_t>(round) + 1));
  }
  std::atomic<int> served{-1};    // The latest round whose early serve ran.
  std::atomic<int> reported{-1};  // The latest round whose bytes were reported.
  std::atomic<bool> abandoned{false};
  // Stands for the FUSE thread that replied. It spins rather than sleeps, so that its report
  // lands within microseconds of the early serve; yielding, so that tests run beside it still
  // get the cores.
  std::thread reporter([&] {
    for (int round = 0; round < kRounds && !abandoned; ++round) {
      while (served.load() < round && !abandoned) std::this_thread::yield();
      for (int spin = 0; spin < round % 512; ++spin) {
        std::atomic_signal_fence(std::memory_order_seq_cst);
      }
      store_->Served(chunks[round].key.digest, kSize);
      reported = round;
    }
  });
  Status failed;
  for (int round = 0; round < kRounds && failed.ok(); ++round) {
    const fs::EarlyServe serve = [&served, round](fs::ChunkData) { served = round; };
    failed =
        store_->Get(chunks[round].key, 0, kSize, fs::Access::kStream, Deadline(), &serve).status();
    while (failed.ok() && reported.load() < round) std::this_thread::yield();
  }
  abandoned = true;
  reporter.join();
  CKPTFS_ASSERT_OK(failed);
  EXPECT_EQ(store_->memory().ready_chunks, 0u) << "chunks served whole still held in memory";
}

// Gets [offset, offset + length) of an 8 KiB chunk, with `early`, from a store whose fetch
// verifies the first 4 KiB and then fails. Returns the chunk's bytes and Get's status.
std::pair<std::vector<std::uint8_t>, Status> GetFromAFetchFailingAt4KiB(
    fs::DiskCache* cache, fs::ReplicaSource* replicas, Clock* clock, std::uint64_t offset,
    std::size_t length, EarlyRecord& early) {
  std::vector<std::uint8_t> bytes = PatternBytes(8192, 4);
  PrefixThenFailFetcher failing(bytes, 4096);
  fs::ChunkKey key = KeyOf(bytes);
  fs::ChunkStore store(cache, &failing, replicas, clock);
  store.Start();
  const fs::EarlyServe serve = early.Recorder(offset, length);
  Status status =
      store.Get(key, offset, length, fs::Access::kStream, clock->Now() + 1h, &serve).status();
  return {std::move(bytes), std::move(status)};
}

TEST_F(ChunkStore, FetchFailingAfterTheEarlyServeReturnsItsErrorAndCachesNothing) {
  EarlyRecord early;
  auto [bytes, status] =
      GetFromAFetchFailingAt4KiB(cache_.get(), &replicas_, &clock_, 0, 4096, early);
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  std::lock_guard lock(early.mu);
  EXPECT_EQ(early.calls, 1);
  EXPECT_EQ(early.head, std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + 4096));
  EXPECT_FALSE(cache_->Contains(Sha256(bytes.data(), bytes.size())));
}

TEST_F(ChunkStore, FetchFailingBeforeTheRangeArrivedNeverCallsTheEarlyServe) {
  EarlyRecord early;
  // The range ends past the verified prefix.
  auto [bytes, status] =
      GetFromAFetchFailingAt4KiB(cache_.get(), &replicas_, &clock_, 4000, 200, early);
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(early.Calls(), 0);
}

TEST_F(ChunkStore, EarlyServeIsNotUsedForAChunkInMemoryOrInTheCache) {
  TestChunk chunk = ServedChunk(8192, 7);
  MakeStore().Start();
  // The first read leaves half the chunk unserved, so the chunk stays in the ready list.
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::vector<std::uint8_t> head, Read(chunk, 0, 4096));
  EXPECT_EQ(head, Slice(chunk, 0, 4096));
  EarlyRecord early;
  const fs::EarlyServe serve = early.Recorder(4096, 4096);
  {
    // A chunk's buffer goes back to its store's pool: it must not outlive the store.
    CKPTFS_ASSERT_OK_AND_ASSIGN(
        fs::ChunkData in_memory,
        store_->Get(chunk.key, 4096, 4096, fs::Access::kStream, Deadline(), &serve));
    EXPECT_NE(in_memory.bytes, nullptr);
  }
  ASSERT_TRUE(PollUntil([&] { return cache_->Contains(chunk.key.digest); }));
  store_.reset();
  MakeStore().Start();  // Nothing in memory: the chunk is only in the disk cache now.
  CKPTFS_ASSERT_OK_AND_ASSIGN(
      fs::ChunkData cached,
      store_->Get(chunk.key, 0, 4096, fs::Access::kStream, Deadline(), &serve));
  EXPECT_TRUE(cached.fd.valid());
  EXPECT_EQ(early.Calls(), 0);
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
}

TEST_F(ChunkStore, WaitingReadersWakeOnceTheirOwnBytesHaveArrived) {
  std::vector<std::uint8_t> bytes = PatternBytes(3 * 4096, 5);
  GatedFetcher gated(bytes);
  fs::ChunkKey key = KeyOf(bytes);
  // A real clock: a reader that is not woken when its bytes land runs into the deadline and fails,
  // where a fake clock's deadline would never come.
  RealClock real_clock;
  auto store = std::make_unique<fs::ChunkStore>(cache_.get(), &gated, &replicas_, &real_clock);
  store->Start();
  const TimePoint deadline = real_clock.Now() + 10s;
  // The head's reader starts the fetch and waits first; the tail's, which needs more, joins.
  std::vector<std::uint8_t> head(4096);
  Status head_status;
  std::thread head_reader([&] { head_status = store->Read(key, 0, head, deadline); });
  ASSERT_TRUE(PollUntil([&] { return gated.started(); }));
  std::vector<std::uint8_t> tail(4096);
  Status tail_status;
  std::atomic<bool> tail_done{false};
  std::thread tail_reader([&] {
    tail_status = store->Read(key, 2 * 4096, tail, deadline);
    tail_done = true;
  });
  ASSERT_TRUE(PollUntil([&] { return store->counters().joined.load() == 1; }));
  gated.Release(4096);
  head_reader.join();
  CKPTFS_EXPECT_OK(head_status);
  EXPECT_EQ(head, std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + 4096));
  gated.Release(2 * 4096);
  EXPECT_FALSE(tail_done.load());
  gated.Release(3 * 4096);
  tail_reader.join();
  CKPTFS_EXPECT_OK(tail_status);
  EXPECT_EQ(tail, std::vector<std::uint8_t>(bytes.begin() + 2 * 4096, bytes.end()));
}

TEST_F(ChunkStore, IsolatedReadFetchesOnlyTheBlocksItTouches) {
  MakeStore();
  TestChunk chunk = ServedChunk(4 * 4096 + 100, 1);
  replicas_.SetBlocks(chunk.key.chunk_id, {4096, index::HashChunk(chunk.bytes, 4096).blocks});
  std::vector<std::uint8_t> out(5000);
  // Bytes 5000..10000 lie in blocks 1 and 2.
  CKPTFS_ASSERT_OK(store_->Read(chunk.key, 5000, out, Deadline(), fs::Access::kIsolated));
  EXPECT_EQ(out, Slice(chunk, 5000, 5000));
  EXPECT_EQ(fetcher_.BlockCalls(chunk.key.digest), 1);
  EXPECT_EQ(fetcher_.LastBlockRange(), (std::pair<std::size_t, std::size_t>{1, 3}));
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 0);
  EXPECT_EQ(store_->counters().block_fetches.load(), 1u);
  // The last, short block.
  std::vector<std::uint8_t> last(50);
  CKPTFS_ASSERT_OK(store_->Read(chunk.key, 4 * 4096 + 50, last, Deadline(), fs::Access::kIsolated));
  EXPECT_EQ(last, Slice(chunk, 4 * 4096 + 50, 50));
  EXPECT_EQ(fetcher_.LastBlockRange(), (std::pair<std::size_t, std::size_t>{4, 5}));
  EXPECT_FALSE(cache_->Contains(chunk.key.digest));  // Not whole.
}

TEST_F(ChunkStore, IsolatedReadAgainIsServedFromThePartialFileWithoutAFetch) {
  MakeStore();
  TestChunk chunk = ServedChunk(4 * 4096, 1);
  replicas_.SetBlocks(chunk.key.chunk_id, {4096, index::HashChunk(chunk.bytes, 4096).blocks});
  std::vector<std::uint8_t> out(100);
  CKPTFS_ASSERT_OK(store_->Read(chunk.key, 8200, out, Deadline(), fs::Access::kIsolated));
  CKPTFS_ASSERT_OK(store_->Read(chunk.key, 8300, out, Deadline(), fs::Access::kIsolated));
  EXPECT_EQ(out, Slice(chunk, 8300, 100));
  EXPECT_EQ(fetcher_.BlockCalls(chunk.key.digest), 1);
  EXPECT_EQ(store_->counters().partial_hits.load(), 1u);
  // A block the partial file does not hold (a hole) is fetched.
  CKPTFS_ASSERT_OK(store_->Read(chunk.key, 100, out, Deadline(), fs::Access::kIsolated));
  EXPECT_EQ(out, Slice(chunk, 100, 100));
  EXPECT_EQ(fetcher_.BlockCalls(chunk.key.digest), 2);
}

TEST_F(ChunkStore, OnceStartedTheBlocksOfAnIsolatedReadAreWrittenByTheBlockWriter) {
  MakeStore().Start();
  TestChunk chunk = ServedChunk(4 * 4096, 1);
  replicas_.SetBlocks(chunk.key.chunk_id, {4096, index::HashChunk(chunk.bytes, 4096).blocks});
  std::vector<std::uint8_t> out(100);
  CKPTFS_ASSERT_OK(store_->Read(chunk.key, 8200, out, Deadline(), fs::Access::kIsolated));
  EXPECT_EQ(out, Slice(chunk, 8200, 100));
  store_->FlushBlockWrites();
  EXPECT_EQ(store_->counters().block_writes.load(), 1u);
  CKPTFS_ASSERT_OK(store_->Read(chunk.key, 8300, out, Deadline(), fs::Access::kIsolated));
  EXPECT_EQ(out, Slice(chunk, 8300, 100));
  EXPECT_EQ(fetcher_.BlockCalls(chunk.key.digest), 1);
  EXPECT_EQ(store_->counters().partial_hits.load(), 1u);
}

TEST_F(ChunkStore, BlockWritesBeyondTheBoundAreSkippedAndTheBlocksFetchedAgain) {
  ChunkStoreOptions options;
  options.max_pending_block_writes = 4095;  // Less than one block: every write is skipped.
  MakeStore(options).Start();
  TestChunk chunk = ServedChunk(4 * 4096, 1);
  replicas_.SetBlocks(chunk.key.chunk_id, {4096, index::HashChunk(chunk.bytes, 4096).blocks});
  std::vector<std::uint8_t> out(100);
  CKPTFS_ASSERT_OK(store_->Read(chunk.key, 8200, out, Deadline(), fs::Access::kIsolated));
  store_->FlushBlockWrites();
  CKPTFS_ASSERT_OK(store_->Read(chunk.key, 8300, out, Deadline(), fs::Access::kIsolated));
  EXPECT_EQ(out, Slice(chunk, 8300, 100));
  EXPECT_EQ(store_->counters().block_writes_skipped.load(), 2u);
  EXPECT_EQ(store_->counters().block_writes.load(), 0u);
  EXPECT_EQ(fetcher_.BlockCalls(chunk.key.digest), 2);
}

TEST_F(ChunkStore, CorruptPartialFileIsNotTrusted) {
  MakeStore();
  TestChunk chunk = ServedChunk(4 * 4096, 1);
  replicas_.SetBlocks(chunk.key.chunk_id, {4096, index::HashChunk(chunk.bytes, 4096).blocks});
  std::vector<std::uint8_t> out(100);
  CKPTFS_ASSERT_OK(store_->Read(chunk.key, 4096, out, Deadline(), fs::Access::kIsolated));
  {
    std::FILE* f = std::fopen(cache_->PathOf(chunk.key.digest, /*partial=*/true).c_str(), "r+b");
    ASSERT_NE(f, nullptr);
    std::fseek(f, 4096 + 7, SEEK_SET);
    std::fputc(0x5a ^ chunk.bytes[4096 + 7], f);
    std::fclose(f);
  }
  CKPTFS_ASSERT_OK(store_->Read(chunk.key, 4096, out, Deadline(), fs::Access::kIsolated));
  EXPECT_EQ(out, Slice(chunk, 4096, 100));
  EXPECT_EQ(fetcher_.BlockCalls(chunk.key.digest), 2);
  EXPECT_EQ(store_->counters().partial_hits.load(), 0u);
}

TEST_F(ChunkStore, IsolatedReadWithoutBlockDigestsFetchesTheWholeChunk) {
  MakeStore();
  TestChunk chunk = ServedChunk(3 * 4096, 1);
  std::vector<std::uint8_t> out(10);
  CKPTFS_ASSERT_OK(store_->Read(chunk.key, 4096, out, Deadline(), fs::Access::kIsolated));
  EXPECT_EQ(out, Slice(chunk, 4096, 10));
  EXPECT_EQ(fetcher_.BlockCalls(chunk.key.digest), 0);
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
}

TEST_F(ChunkStore, IsolatedReadOfACachedChunkReadsTheCache) {
  MakeStore();
  TestChunk chunk = ServedChunk(3 * 4096, 1);
  replicas_.SetBlocks(chunk.key.chunk_id, {4096, index::HashChunk(chunk.bytes, 4096).blocks});
  CKPTFS_ASSERT_OK(ReadAll(chunk));
  ASSERT_TRUE(PollUntil([&] { return cache_->Contains(chunk.key.digest); }));
  std::vector<std::uint8_t> out(10);
  CKPTFS_ASSERT_OK(store_->Read(chunk.key, 9000, out, Deadline(), fs::Access::kIsolated));
  EXPECT_EQ(out, Slice(chunk, 9000, 10));
  EXPECT_EQ(fetcher_.BlockCalls(chunk.key.digest), 0);
  EXPECT_EQ(fetcher_.Calls(chunk.key.digest), 1);
}

TEST_F(ChunkStore, FailedIsolatedReadIsRememberedLikeAFailedFetch) {
  MakeStore();
  TestChunk chunk = ServedChunk(2 * 4096, 1);
  replicas_.SetBlocks(chunk.key.chunk_id, {4096, index::HashChunk(chunk.bytes, 4096).blocks});
  fetcher_.Fail(chunk.key.digest, UnavailableError("node down"));
  std::vector<std::uint8_t> out(10);
  Status first = store_->Read(chunk.key, 0, out, Deadline(), fs::Access::kIsolated);
  EXPECT_EQ(first.code(), StatusCode::kUnavailable);
  Status again = store_->Read(chunk.key, 0, out, Deadline(), fs::Access::kIsolated);
  EXPECT_EQ(again.code(), StatusCode::kUnavailable);
  EXPECT_EQ(fetcher_.BlockCalls(chunk.key.digest), 1);
}

}  // namespace
}  // namespace ckptfs
