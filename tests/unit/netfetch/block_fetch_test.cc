// RetryingFetcher with block digests: progressive verification, resuming a failed-over fetch with
// a Range GET from the verified prefix, and FetchBlocks. Scripted transport, fake clock.
#include <gtest/gtest.h>

#include <optional>
#include <random>
#include <string>
#include <vector>

#include "common/digest.h"
#include "netfetch/fetcher.h"
#include "tests/support/fake_clock.h"
#include "tests/support/pattern_bytes.h"
#include "tests/support/scripted_fetcher_test.h"

namespace ckptfs {
namespace {

using namespace std::chrono_literals;
using netfetch::ChunkRef;
using netfetch::ChunkUrl;
using netfetch::NodeEndpoint;
using testing::CorruptedAt;
using testing::FakeClock;
using testing::MakeTestChunk;
using testing::PatternBytes;
using testing::ScriptedFetcherTest;
using testing::ScriptedRange;
using testing::ScriptedResponse;
using testing::ScriptedTransport;
using testing::TestChunk;

constexpr std::uint64_t kBlock = 4096;
// Three blocks: 4096, 4096 and a 1808-byte tail.
constexpr std::uint64_t kSize = 10000;

// A chunk with block digests of kBlock bytes, or none.
TestChunk MakeChunk(std::uint32_t seed, std::vector<std::int64_t> nodes, bool with_blocks = true,
                    std::size_t size = kSize) {
  return MakeTestChunk(seed, std::move(nodes), size, with_blocks ? kBlock : 0);
}

class BlockFetch : public ScriptedFetcherTest {};

TEST_F(BlockFetch, EachBlockIsReportedVerifiedAsSoonAsItHasArrived) {
  TestChunk chunk = MakeChunk(1, {1});
  Serve(1, chunk);
  transport_.SetPieceSize(3000);  // Lands at 3000, 6000, 9000, 10000.
  auto fetcher = MakeFetcher();
  ASSERT_TRUE(Fetch(*fetcher, chunk).ok());
  EXPECT_EQ(out_, chunk.bytes);
  EXPECT_EQ(verified_, (std::vector<std::size_t>{4096, 8192, 10000}));
  EXPECT_EQ(transport_.Ranges(Url(1, chunk)),
            (std::vector<std::optional<ScriptedRange>>{std::nullopt}))
      << "a whole chunk from its start is a plain GET";
  EXPECT_EQ(fetcher->counters().bytes_fetched, kSize);
}

TEST_F(BlockFetch, WithoutBlockDigestsTheChunkIsVerifiedWholeAndReportedOnce) {
  TestChunk chunk = MakeChunk(2, {1}, /*with_blocks=*/false);
  Serve(1, chunk);
  transport_.SetPieceSize(1000);
  auto fetcher = MakeFetcher();
  ASSERT_TRUE(Fetch(*fetcher, chunk).ok());
  EXPECT_EQ(out_, chunk.bytes);
  EXPECT_EQ(verified_, (std::vector<std::size_t>{kSize}));
}

TEST_F(BlockFetch, ThreeArgumentFetchStillVerifies) {
  TestChunk chunk = MakeChunk(3, {1, 2});
  transport_.SetResponse(Url(1, chunk), ScriptedResponse::Body(CorruptedAt(chunk.bytes, 9999)));
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out(kSize);
  netfetch::ChunkFetcher& base = *fetcher;
  ASSERT_TRUE(base.Fetch(chunk.ref, out, clock_.Now() + 1h).ok());
  EXPECT_EQ(out, chunk.bytes);
}

TEST_F(BlockFetch, MismatchInAMiddleBlockFailsOverAndResumesFromTheVerifiedPrefix) {
  TestChunk chunk = MakeChunk(4, {1, 2});
  transport_.SetResponse(Url(1, chunk), ScriptedResponse::Body(CorruptedAt(chunk.bytes, 5000)));
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  ASSERT_TRUE(Fetch(*fetcher, chunk).ok());
  EXPECT_EQ(out_, chunk.bytes);
  EXPECT_EQ(transport_.Ranges(Url(1, chunk)),
            (std::vector<std::optional<ScriptedRange>>{std::nullopt}));
  // Block 0 came from node1 and stays; node2 is asked only for the rest.
  EXPECT_EQ(transport_.Ranges(Url(2, chunk)),
            (std::vector<std::optional<ScriptedRange>>{ScriptedRange{4096, kSize - 4096}}));
  EXPECT_EQ(verified_, (std::vector<std::size_t>{4096, kSize}));
  const auto& counters = fetcher->counters();
  EXPECT_EQ(counters.digest_mismatches, 1u);
  EXPECT_EQ(counters.failed_attempts, 1u);
  EXPECT_EQ(counters.resumed_attempts, 1u);
  EXPECT_EQ(counters.bytes_fetched, kSize);
}

TEST_F(BlockFetch, VerifiedBytesAreNeverWrittenAgain) {
  TestChunk chunk = MakeChunk(5, {1, 2});
  transport_.SetResponse(Url(1, chunk), ScriptedResponse::Body(CorruptedAt(chunk.bytes, 9000)));
  // node2 would answer a whole GET with garbage: only a Range GET from 8192 reads right bytes.
  std::vector<std::uint8_t> tail_only(chunk.bytes.size(), 0xee);
  std::copy(chunk.bytes.begin() + 8192, chunk.bytes.end(), tail_only.begin() + 8192);
  transport_.SetResponse(Url(2, chunk), ScriptedResponse::Body(tail_only));
  auto fetcher = MakeFetcher();
  std::size_t checked_at = 0;
  std::vector<std::uint8_t> prefix_at_resume;
  transport_.SetOnCall([&](const std::string& url) {
    if (url == Url(2, chunk)) prefix_at_resume.assign(out_.begin(), out_.begin() + 8192);
  });
  out_.assign(kSize, 0);
  Status status = fetcher->Fetch(chunk.ref, out_, clock_.Now() + 1h, [&](std::size_t n) {
    // Whatever was reported verified holds the chunk's bytes from then on.
    EXPECT_TRUE(std::equal(out_.begin(), out_.begin() + n, chunk.bytes.begin()));
    checked_at = n;
  });
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(out_, chunk.bytes);
  EXPECT_EQ(checked_at, kSize);
  EXPECT_EQ(prefix_at_resume,
            std::vector<std::uint8_t>(chunk.bytes.begin(), chunk.bytes.begin() + 8192));
}

TEST_F(BlockFetch, BrokenConnectionMidBlockResumesFromTheLastWholeBlock) {
  TestChunk chunk = MakeChunk(6, {1, 2});
  transport_.SetResponse(Url(1, chunk), ScriptedResponse::BreakingAfter(chunk.bytes, 6000));
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  ASSERT_TRUE(Fetch(*fetcher, chunk).ok());
  EXPECT_EQ(out_, chunk.bytes);
  EXPECT_EQ(transport_.Ranges(Url(2, chunk)),
            (std::vector<std::optional<ScriptedRange>>{ScriptedRange{4096, kSize - 4096}}));
  EXPECT_EQ(fetcher->counters().digest_mismatches, 0u);
  EXPECT_EQ(verified_, (std::vector<std::size_t>{4096, kSize}));
}

TEST_F(BlockFetch, ResumeOnANodeThatIgnoresRangeFailsOverAgain) {
  nodes_.push_back({3, "node3", "http://node3"});
  TestChunk chunk = MakeChunk(7, {1, 2, 3});
  transport_.SetResponse(Url(1, chunk), ScriptedResponse::BreakingAfter(chunk.bytes, 4096));
  transport_.SetResponse(Url(2, chunk), ScriptedResponse::IgnoringRange(chunk.bytes));
  Serve(3, chunk);
  auto fetcher = MakeFetcher();
  ASSERT_TRUE(Fetch(*fetcher, chunk).ok());
  EXPECT_EQ(out_, chunk.bytes);
  EXPECT_EQ(transport_.Ranges(Url(3, chunk)),
            (std::vector<std::optional<ScriptedRange>>{ScriptedRange{4096, kSize - 4096}}));
  EXPECT_EQ(fetcher->counters().resumed_attempts, 2u);
}

TEST_F(BlockFetch, WrongBlockOnEveryReplicaIsAnErrorAtTheDeadline) {
  TestChunk chunk = MakeChunk(8, {1, 2});
  transport_.SetResponse(Url(1, chunk), ScriptedResponse::Body(CorruptedAt(chunk.bytes, 100)));
  transport_.SetResponse(Url(2, chunk), ScriptedResponse::Body(CorruptedAt(chunk.bytes, 100)));
  auto fetcher = MakeFetcher();
  Status status = Fetch(*fetcher, chunk, 2s);
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(status.message().find("SHA-256 mismatch in block 0"), std::string::npos)
      << status.ToString();
  EXPECT_TRUE(verified_.empty());
  EXPECT_EQ(fetcher->counters().failed_fetches, 1u);
}

TEST_F(BlockFetch, BlockListThatDoesNotFitTheChunkIsInvalid) {
  TestChunk chunk = MakeChunk(9, {1});
  Serve(1, chunk);
  chunk.ref.blocks.pop_back();
  auto fetcher = MakeFetcher();
  EXPECT_EQ(Fetch(*fetcher, chunk).code(), StatusCode::kInvalidArgument);
  chunk.ref.blocks.push_back(chunk.ref.blocks.back());
  chunk.ref.block_size = 0;
  EXPECT_EQ(Fetch(*fetcher, chunk).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(transport_.TotalCalls(), 0);
}

TEST_F(BlockFetch, FetchBlocksGetsOnlyThoseBlocksWithOneRangeRequest) {
  TestChunk chunk = MakeChunk(10, {1});
  Serve(1, chunk);
  transport_.SetPieceSize(1000);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out(kSize - 4096);
  Status status = fetcher->FetchBlocks(chunk.ref, 1, 3, out, clock_.Now() + 1h);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(out, std::vector<std::uint8_t>(chunk.bytes.begin() + 4096, chunk.bytes.end()));
  EXPECT_EQ(transport_.Ranges(Url(1, chunk)),
            (std::vector<std::optional<ScriptedRange>>{ScriptedRange{4096, kSize - 4096}}));
  const auto& counters = fetcher->counters();
  EXPECT_EQ(counters.range_fetches, 1u);
  EXPECT_EQ(counters.range_bytes_fetched, kSize - 4096);
  EXPECT_EQ(counters.fetches, 0u);
  EXPECT_EQ(counters.bytes_fetched, 0u);
}

TEST_F(BlockFetch, FetchBlocksVerifiesEachBlockAndFailsOverFromTheVerifiedPrefix) {
  TestChunk chunk = MakeChunk(11, {1, 2});
  // Block 1 is right on node1, block 2 is not.
  transport_.SetResponse(Url(1, chunk), ScriptedResponse::Body(CorruptedAt(chunk.bytes, 8200)));
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out(kSize - 4096);
  ASSERT_TRUE(fetcher->FetchBlocks(chunk.ref, 1, 3, out, clock_.Now() + 1h).ok());
  EXPECT_EQ(out, std::vector<std::uint8_t>(chunk.bytes.begin() + 4096, chunk.bytes.end()));
  EXPECT_EQ(transport_.Ranges(Url(1, chunk)),
            (std::vector<std::optional<ScriptedRange>>{ScriptedRange{4096, kSize - 4096}}));
  EXPECT_EQ(transport_.Ranges(Url(2, chunk)),
            (std::vector<std::optional<ScriptedRange>>{ScriptedRange{8192, kSize - 8192}}));
  EXPECT_EQ(fetcher->counters().digest_mismatches, 1u);
  EXPECT_EQ(fetcher->counters().range_bytes_fetched, kSize - 4096);
}

TEST_F(BlockFetch, FetchBlocksFromAServerIgnoringRangeFailsOver) {
  TestChunk chunk = MakeChunk(12, {1, 2});
  transport_.SetResponse(Url(1, chunk), ScriptedResponse::IgnoringRange(chunk.bytes));
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out(kBlock);
  ASSERT_TRUE(fetcher->FetchBlocks(chunk.ref, 0, 1, out, clock_.Now() + 1h).ok());
  EXPECT_EQ(out, std::vector<std::uint8_t>(chunk.bytes.begin(), chunk.bytes.begin() + kBlock));
  EXPECT_EQ(transport_.CallOrder(), (std::vector<std::string>{Url(1, chunk), Url(2, chunk)}));
  EXPECT_EQ(fetcher->counters().failed_attempts, 1u);
  EXPECT_EQ(fetcher->counters().digest_mismatches, 0u);
}

TEST_F(BlockFetch, FetchBlocksWithEveryReplicaDownFailsAtTheDeadline) {
  TestChunk chunk = MakeChunk(13, {1, 2});
  auto fetcher = MakeFetcher();  // No scripts: every GET is a 404.
  std::vector<std::uint8_t> out(kSize - 8192);
  const TimePoint deadline = clock_.Now() + 3s;
  Status status = fetcher->FetchBlocks(chunk.ref, 2, 3, out, deadline);
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded) << status.ToString();
  EXPECT_NE(status.message().find("blocks [2, 3) of chunk"), std::string::npos)
      << status.ToString();
  EXPECT_GE(clock_.Now(), deadline);
  EXPECT_GT(transport_.TotalCalls(), 2);
  EXPECT_EQ(fetcher->counters().failed_range_fetches, 1u);
}

TEST_F(BlockFetch, FetchBlocksRefusesChunksWithoutBlocksAndBadRanges) {
  TestChunk old = MakeChunk(14, {1}, /*with_blocks=*/false);
  TestChunk chunk = MakeChunk(15, {1});
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out(kBlock);
  const TimePoint deadline = clock_.Now() + 1h;
  EXPECT_EQ(fetcher->FetchBlocks(old.ref, 0, 1, out, deadline).code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(fetcher->FetchBlocks(chunk.ref, 1, 1, out, deadline).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(fetcher->FetchBlocks(chunk.ref, 2, 4, out, deadline).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(fetcher->FetchBlocks(chunk.ref, 0, 2, out, deadline).code(),
            StatusCode::kInvalidArgument)
      << "dst is one block, two were asked for";
  EXPECT_EQ(transport_.TotalCalls(), 0);
}

TEST(BlockBytes, CoversTheShortLastBlock) {
  ChunkRef ref;
  ref.size = kSize;
  ref.block_size = kBlock;
  ref.blocks.resize(3);
  EXPECT_EQ(netfetch::BlockBytes(ref, 0, 1).offset, 0u);
  EXPECT_EQ(netfetch::BlockBytes(ref, 0, 1).length, kBlock);
  EXPECT_EQ(netfetch::BlockBytes(ref, 2, 3).offset, 8192u);
  EXPECT_EQ(netfetch::BlockBytes(ref, 2, 3).length, kSize - 8192);
  EXPECT_EQ(netfetch::BlockBytes(ref, 0, 3).length, kSize);
}

}  // namespace
}  // namespace ckptfs
