// RetryingFetcher splitting a lone whole-chunk Fetch into parallel Range GETs of its blocks: how
// the chunk is cut, which node each part goes to, the verified prefix, per-part failover, and
// when a fetch is not split. Scripted transport, fake clock.
#include <gtest/gtest.h>

#include <algorithm>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/digest.h"
#include "netfetch/fetcher.h"
#include "tests/support/fake_clock.h"
#include "tests/support/gate.h"
#include "tests/support/pattern_bytes.h"
#include "tests/support/scripted_fetcher_test.h"

namespace ckptfs {
namespace {

using namespace std::chrono_literals;
using netfetch::ChunkRef;
using netfetch::ChunkUrl;
using netfetch::NodeEndpoint;
using netfetch::RetryOptions;
using testing::CorruptedAt;
using testing::FakeClock;
using testing::MakeTestChunk;
using testing::PatternBytes;
using testing::ScriptedFetcherTest;
using testing::ScriptedRange;
using testing::ScriptedResponse;
using testing::ScriptedTransport;
using testing::TestChunk;

using Ranges = std::vector<std::optional<ScriptedRange>>;

constexpr std::uint64_t kBlock = 4096;
// Ten blocks, the last one 1000 bytes: four parts take 3, 3, 2 and 2 blocks.
constexpr std::uint64_t kSize = 9 * kBlock + 1000;
const ScriptedRange kPart0{0, 3 * kBlock};
const ScriptedRange kPart1{3 * kBlock, 3 * kBlock};
const ScriptedRange kPart2{6 * kBlock, 2 * kBlock};
const ScriptedRange kPart3{8 * kBlock, kBlock + 1000};

TestChunk MakeChunk(std::uint32_t seed, std::vector<std::int64_t> nodes, std::size_t size = kSize,
                    bool with_blocks = true) {
  return MakeTestChunk(seed, std::move(nodes), size, with_blocks ? kBlock : 0);
}

// By offset, a plain GET first.
Ranges Sorted(Ranges ranges) {
  std::sort(ranges.begin(), ranges.end(), [](const auto& a, const auto& b) {
    return a.has_value() && b.has_value() ? a->offset < b->offset : !a.has_value() && b.has_value();
  });
  return ranges;
}

class FetchParts : public ScriptedFetcherTest {
 protected:
  FetchParts() {
    options_.lone_fetch_parts = 4;
    options_.min_part_bytes = kBlock;
    options_.split_after = Duration::zero();  // Split every lone fetch, measured or not.
    options_.min_speed_sample_bytes = 0;      // The test chunks are a few KiB.
  }
};

TEST_F(FetchParts, ALoneFetchIsRangeGetsOfWholeBlocksAlternatingOverTheReplicas) {
  TestChunk chunk = MakeChunk(1, {1, 2});
  Serve(1, chunk);
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  Status status = Fetch(*fetcher, chunk);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(out_, chunk.bytes);
  EXPECT_EQ(Sorted(transport_.Ranges(Url(1, chunk))), (Ranges{kPart0, kPart2}));
  EXPECT_EQ(Sorted(transport_.Ranges(Url(2, chunk))), (Ranges{kPart1, kPart3}));
  const auto& counters = fetcher->counters();
  EXPECT_EQ(counters.fetches, 1u);
  EXPECT_EQ(counters.split_fetches, 1u);
  EXPECT_EQ(counters.attempts, 4u);
  EXPECT_EQ(counters.bytes_fetched, kSize);
  EXPECT_EQ(counters.range_fetches, 0u) << "the parts are not FetchBlocks calls";
}

TEST_F(FetchParts, TheVerifiedPrefixGrowsBlockByBlockWithTheFirstPartThenPartByPart) {
  TestChunk chunk = MakeChunk(2, {1, 2});
  Serve(1, chunk);
  Serve(2, chunk);
  transport_.SetPieceSize(kBlock);
  auto fetcher = MakeFetcher();
  ASSERT_TRUE(Fetch(*fetcher, chunk).ok());
  EXPECT_EQ(verified_, (std::vector<std::size_t>{kBlock, 2 * kBlock, 3 * kBlock, 6 * kBlock,
                                                 8 * kBlock, kSize}));
}

TEST_F(FetchParts, APartWithAWrongBlockFailsOverOnItsOwn) {
  TestChunk chunk = MakeChunk(3, {1, 2});
  // Part 2, which starts on node1, meets a bad byte in its first block there.
  transport_.SetResponse(Url(1, chunk),
                         ScriptedResponse::Body(CorruptedAt(chunk.bytes, 6 * kBlock + 10)));
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  Status status = Fetch(*fetcher, chunk);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(out_, chunk.bytes);
  EXPECT_EQ(Sorted(transport_.Ranges(Url(2, chunk))), (Ranges{kPart1, kPart2, kPart3}));
  EXPECT_EQ(fetcher->counters().digest_mismatches, 1u);
  EXPECT_EQ(fetcher->counters().failed_attempts, 1u);
}

TEST_F(FetchParts, APartNoReplicaDeliversFailsTheFetchAndOnlyEarlierPartsAreReported) {
  TestChunk chunk = MakeChunk(4, {1, 2});
  // Block 4 (in part 1) is wrong on both nodes.
  const std::vector<std::uint8_t> bad = CorruptedAt(chunk.bytes, 4 * kBlock + 1);
  transport_.SetResponse(Url(1, chunk), ScriptedResponse::Body(bad));
  transport_.SetResponse(Url(2, chunk), ScriptedResponse::Body(bad));
  // The clock is shared and fake: part 1's rounds would use up the deadline at once. The other
  // parts wait until part 0, on this thread, is verified.
  std::promise<void> part0_verified;
  std::shared_future<void> part0_done = part0_verified.get_future().share();
  const std::thread::id caller = std::this_thread::get_id();
  transport_.SetOnCall([&](const std::string&) {
    if (std::this_thread::get_id() != caller) part0_done.wait();
  });
  auto fetcher = MakeFetcher();
  out_.assign(kSize, 0);
  Status status = fetcher->Fetch(chunk.ref, out_, clock_.Now() + 2s, [&](std::size_t n) {
    verified_.push_back(n);
    if (n == 3 * kBlock) part0_verified.set_value();
  });
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(status.message().find("part 1 of chunk"), std::string::npos) << status.ToString();
  ASSERT_FALSE(verified_.empty());
  EXPECT_EQ(verified_.back(), 3 * kBlock) << "nothing past the failed part is reported";
  EXPECT_TRUE(std::equal(out_.begin(), out_.begin() + 3 * kBlock, chunk.bytes.begin()));
  EXPECT_EQ(fetcher->counters().bytes_fetched, 0u);
}

TEST_F(FetchParts, AFetchBesideAnotherIsOneGet) {
  TestChunk first = MakeChunk(5, {1}, kBlock);  // One block: never split.
  TestChunk second = MakeChunk(6, {1, 2});
  Serve(1, first);
  Serve(1, second);
  Serve(2, second);
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::promise<void> first_in_flight;
  transport_.SetOnCall([&](const std::string& url) {
    if (url == Url(1, first)) {
      first_in_flight.set_value();
      released.wait();
    }
  });
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> first_out(kBlock);
  std::thread other(
      [&] { EXPECT_TRUE(fetcher->Fetch(first.ref, first_out, clock_.Now() + 1h).ok()); });
  first_in_flight.get_future().wait();
  Status status = Fetch(*fetcher, second);
  release.set_value();
  other.join();
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(out_, second.bytes);
  // node2, since node1 is busy with the other fetch.
  EXPECT_EQ(transport_.Ranges(Url(1, second)), Ranges{});
  EXPECT_EQ(transport_.Ranges(Url(2, second)), (Ranges{std::nullopt}));
  EXPECT_EQ(fetcher->counters().split_fetches, 0u);

  // Alone again, the same chunk is split.
  ASSERT_TRUE(Fetch(*fetcher, second).ok());
  EXPECT_EQ(fetcher->counters().split_fetches, 1u);
}

TEST_F(FetchParts, SmallChunksChunksWithoutBlockDigestsAndOnePartAreOneGet) {
  TestChunk small = MakeChunk(7, {1}, 2 * kBlock - 1);  // Below two parts of min_part_bytes.
  TestChunk v1 = MakeChunk(8, {1}, kSize, /*with_blocks=*/false);
  Serve(1, small);
  Serve(1, v1);
  auto fetcher = MakeFetcher();
  ASSERT_TRUE(Fetch(*fetcher, small).ok());
  ASSERT_TRUE(Fetch(*fetcher, v1).ok());
  EXPECT_EQ(out_, v1.bytes);
  EXPECT_EQ(transport_.Ranges(Url(1, small)), (Ranges{std::nullopt}));
  EXPECT_EQ(transport_.Ranges(Url(1, v1)), (Ranges{std::nullopt}));

  options_.lone_fetch_parts = 1;
  TestChunk big = MakeChunk(9, {1});
  Serve(1, big);
  auto one_part = MakeFetcher();
  ASSERT_TRUE(Fetch(*one_part, big).ok());
  EXPECT_EQ(transport_.Ranges(Url(1, big)), (Ranges{std::nullopt}));
  EXPECT_EQ(fetcher->counters().split_fetches + one_part->counters().split_fetches, 0u);
}

TEST_F(FetchParts, ThereAreAsManyPartsAsTheMinimumPartSizeFitsInTheChunk) {
  options_.min_part_bytes = 3 * kBlock;  // kSize holds three such parts, not four.
  TestChunk chunk = MakeChunk(10, {1});
  Serve(1, chunk);
  auto fetcher = MakeFetcher();
  ASSERT_TRUE(Fetch(*fetcher, chunk).ok());
  EXPECT_EQ(out_, chunk.bytes);
  // Ten blocks in three parts: 4, 3 and 3.
  EXPECT_EQ(Sorted(transport_.Ranges(Url(1, chunk))),
            (Ranges{ScriptedRange{0, 4 * kBlock}, ScriptedRange{4 * kBlock, 3 * kBlock},
                    ScriptedRange{7 * kBlock, 2 * kBlock + 1000}}));
}

TEST_F(FetchParts, OnlyAChunkOneGetWouldTakeLongOnIsSplit) {
  options_.split_after = 20ms;
  TestChunk first = MakeChunk(11, {1});
  TestChunk fast = MakeChunk(12, {1});
  TestChunk slow_first = MakeChunk(13, {2});
  TestChunk slow = MakeChunk(14, {2});
  Serve(1, first, 1ms);
  Serve(1, fast, 1ms);
  Serve(2, slow_first, 100ms);
  Serve(2, slow);
  auto fetcher = MakeFetcher();

  // Nothing measured yet: one GET, which measures node1 at kSize bytes per ms.
  ASSERT_TRUE(Fetch(*fetcher, first).ok());
  EXPECT_EQ(transport_.Ranges(Url(1, first)), (Ranges{std::nullopt}));
  // One GET of kSize bytes from node1 takes about 1 ms: not worth parts.
  ASSERT_TRUE(Fetch(*fetcher, fast).ok());
  EXPECT_EQ(transport_.Ranges(Url(1, fast)), (Ranges{std::nullopt}));
  EXPECT_EQ(fetcher->counters().split_fetches, 0u);

  // node2 took 100 ms for kSize bytes: its next lone chunk comes in parts.
  ASSERT_TRUE(Fetch(*fetcher, slow_first).ok());
  ASSERT_TRUE(Fetch(*fetcher, slow).ok());
  EXPECT_EQ(out_, slow.bytes);
  EXPECT_EQ(Sorted(transport_.Ranges(Url(2, slow))), (Ranges{kPart0, kPart1, kPart2, kPart3}));
  EXPECT_EQ(fetcher->counters().split_fetches, 1u);
}

TEST_F(FetchParts, NoPartStartsOnANodeWhoseGreetingIsUnderWay) {
  TestChunk chunk = MakeChunk(21, {1, 2});
  Serve(1, chunk);
  Serve(2, chunk);
  testing::Gate greeting;
  transport_.SetOnHead([&](const std::string&) { greeting.Pass(); });
  auto fetcher = MakeFetcher();
  fetcher->Greet({{2, chunk.ref.digest}});
  greeting.WaitArrived();
  const Status status = Fetch(*fetcher, chunk);
  greeting.Open();
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(out_, chunk.bytes);
  EXPECT_TRUE(transport_.Ranges(Url(2, chunk)).empty())
      << "a part went to node2 before it answered";
  EXPECT_EQ(Sorted(transport_.Ranges(Url(1, chunk))), (Ranges{kPart0, kPart1, kPart2, kPart3}));
}

TEST_F(FetchParts, NoPartStartsOnANodeMeasuredFarSlowerThanTheOthers) {
  // Measured by one GET each: the parts of a split fetch would each take their delay on the one
  // fake clock, together, so that what each measured depended on how the threads took turns.
  TestChunk on_fast = MakeChunk(31, {1}, kSize, /*with_blocks=*/false);
  TestChunk on_slower = MakeChunk(32, {2}, kSize, /*with_blocks=*/false);
  TestChunk on_far_slower = MakeChunk(33, {3}, kSize, /*with_blocks=*/false);
  TestChunk chunk = MakeChunk(34, {1, 2, 3});
  Serve(1, on_fast, 10ms);
  Serve(2, on_slower, 30ms);       // 3 times slower than node1: parts still go to it.
  Serve(3, on_far_slower, 200ms);  // 20 times slower: its part would be left as too slow.
  for (std::int64_t id : {1, 2, 3}) Serve(id, chunk);
  nodes_.push_back({3, "node3", "http://node3"});
  auto fetcher = MakeFetcher();
  ASSERT_TRUE(Fetch(*fetcher, on_fast).ok());
  ASSERT_TRUE(Fetch(*fetcher, on_slower).ok());
  ASSERT_TRUE(Fetch(*fetcher, on_far_slower).ok());

  const Status status = Fetch(*fetcher, chunk);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(out_, chunk.bytes);
  EXPECT_TRUE(transport_.Ranges(Url(3, chunk)).empty()) << "a part went to the far slower node";
  EXPECT_EQ(Sorted(transport_.Ranges(Url(1, chunk))), (Ranges{kPart0, kPart2}));
  EXPECT_EQ(Sorted(transport_.Ranges(Url(2, chunk))), (Ranges{kPart1, kPart3}));
}

}  // namespace
}  // namespace ckptfs
