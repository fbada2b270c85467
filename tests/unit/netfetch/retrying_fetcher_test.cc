// RetryingFetcher against a scripted transport and a fake clock: no sockets, no real sleeps.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/digest.h"
#include "netfetch/fetcher.h"
#include "tests/support/fake_clock.h"
#include "tests/support/gate.h"
#include "tests/support/poll.h"
#include "tests/support/scripted_transport.h"
#include "tests/support/test_chunk.h"

namespace ckptfs {
namespace {

using namespace std::chrono_literals;
using netfetch::ChunkUrl;
using netfetch::NodeEndpoint;
using netfetch::RetryOptions;
using testing::FakeClock;
using testing::Gate;
using testing::PollUntil;
using testing::ScriptedResponse;
using testing::ScriptedTransport;
using testing::TestChunk;

// Whole-chunk digests only, as in a v1 index.
TestChunk MakeChunk(std::uint32_t seed, std::vector<std::int64_t> nodes, std::size_t size = 4096) {
  return testing::MakeTestChunk(seed, std::move(nodes), size, 0);
}

std::vector<std::uint8_t> Corrupted(std::vector<std::uint8_t> bytes) {
  bytes[bytes.size() / 2] ^= 0x01;
  return bytes;
}

Status Http503(const std::string& url) { return UnavailableError("HTTP 503 from GET " + url); }

// A node that accepts the request and then sends nothing fails only when the transport gives up
// on it: every fetch that tries it waits that long.
Status Stalled(const std::string& url) {
  return UnavailableError("transfer from " + url + " stalled below the low-speed limit");
}

class RetryingFetcher : public ::testing::Test {
 protected:
  // The test chunks are a few KiB: each of their transfers is a speed sample here.
  RetryingFetcher() { options_.min_speed_sample_bytes = 0; }

  std::unique_ptr<netfetch::RetryingFetcher> MakeFetcher() {
    return std::make_unique<netfetch::RetryingFetcher>(nodes_, &transport_, &clock_, options_);
  }
  // The URL of `chunk` on node `id` (1 → "http://node1", ...).
  static std::string Url(std::int64_t id, const TestChunk& chunk) {
    return ChunkUrl("http://node" + std::to_string(id), chunk.ref.digest);
  }
  void Serve(std::int64_t id, const TestChunk& chunk, Duration delay = Duration{0}) {
    transport_.SetResponse(Url(id, chunk), ScriptedResponse::Body(chunk.bytes, delay));
  }
  void Fail(std::int64_t id, const TestChunk& chunk) {
    transport_.SetResponse(Url(id, chunk), ScriptedResponse::Error(Http503(Url(id, chunk))));
  }
  void FailOnce(std::int64_t id, const TestChunk& chunk) {
    transport_.Enqueue(Url(id, chunk), ScriptedResponse::Error(Http503(Url(id, chunk))));
  }
  // Node `id` takes every request for `chunk` and sends nothing; after 3 s (the low-speed abort)
  // the request fails, unless its stall timeout ended it before.
  void Silence(std::int64_t id, const TestChunk& chunk) {
    transport_.SetResponse(Url(id, chunk), ScriptedResponse::Silent(3s, Stalled(Url(id, chunk))));
  }
  // The same for the next request only; after it node `id` serves the chunk.
  void SilenceOnce(std::int64_t id, const TestChunk& chunk) {
    transport_.Enqueue(Url(id, chunk), ScriptedResponse::Silent(3s, Stalled(Url(id, chunk))));
    Serve(id, chunk);
  }
  Status Fetch(netfetch::RetryingFetcher& fetcher, const TestChunk& chunk,
               std::vector<std::uint8_t>* out, Duration budget = 1h) {
    out->assign(chunk.ref.size, 0);
    return fetcher.Fetch(chunk.ref, *out, clock_.Now() + budget);
  }

  FakeClock clock_;
  ScriptedTransport transport_{&clock_};
  std::vector<NodeEndpoint> nodes_ = {{1, "node1", "http://node1"},
                                      {2, "node2", "http://node2"},
                                      {3, "node3", "http://node3"},
                                      {4, "node4", "http://node4"}};
  RetryOptions options_;
};

TEST(ChunkUrl, FansOutByTheFirstTwoHexDigits) {
  Digest d = Sha256("abc", 3);
  EXPECT_EQ(ChunkUrl("http://h:1/base", d), "http://h:1/base/chunks/ba/" + d.Hex());
}

TEST_F(RetryingFetcher, FailsOverToNextReplicaOn503) {
  TestChunk chunk = MakeChunk(1, {1, 2});
  Fail(1, chunk);
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(out, chunk.bytes);
  EXPECT_EQ(transport_.CallOrder(), (std::vector<std::string>{Url(1, chunk), Url(2, chunk)}));
}

TEST_F(RetryingFetcher, WrongDigestIsNeverReturnedAndNextReplicaIsTried) {
  TestChunk chunk = MakeChunk(2, {1, 2});
  transport_.SetResponse(Url(1, chunk), ScriptedResponse::Body(Corrupted(chunk.bytes)));
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(out, chunk.bytes);
  EXPECT_EQ(transport_.Calls(Url(1, chunk)), 1);
  EXPECT_EQ(transport_.Calls(Url(2, chunk)), 1);
  EXPECT_EQ(fetcher->counters().digest_mismatches, 1u);
}

TEST_F(RetryingFetcher, WrongBytesFromEveryReplicaAreAnErrorNeverASuccess) {
  TestChunk chunk = MakeChunk(3, {1, 2});
  transport_.SetResponse(Url(1, chunk), ScriptedResponse::Body(Corrupted(chunk.bytes)));
  transport_.SetResponse(Url(2, chunk), ScriptedResponse::Body(Corrupted(chunk.bytes)));
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  Status status = Fetch(*fetcher, chunk, &out, 2s);
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(status.message().find("SHA-256 mismatch"), std::string::npos) << status.ToString();
  EXPECT_GE(fetcher->counters().digest_mismatches, 2u);
}

TEST_F(RetryingFetcher, ShortBodyFailsOver) {
  TestChunk chunk = MakeChunk(4, {1, 2});
  std::vector<std::uint8_t> truncated(chunk.bytes.begin(), chunk.bytes.end() - 10);
  transport_.SetResponse(Url(1, chunk), ScriptedResponse::Body(truncated));
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(out, chunk.bytes);
  EXPECT_EQ(transport_.Calls(Url(1, chunk)), 1);
  EXPECT_EQ(fetcher->counters().failed_attempts, 1u);
}

TEST_F(RetryingFetcher, AllReplicasDownReturnsDeadlineExceededAtTheDeadline) {
  TestChunk chunk = MakeChunk(5, {1, 2});
  // Each failure takes some fake time too, as a refused connection or an error page would.
  transport_.SetResponse(Url(1, chunk), ScriptedResponse::Error(Http503(Url(1, chunk)), 30ms));
  transport_.SetResponse(Url(2, chunk), ScriptedResponse::Error(Http503(Url(2, chunk)), 30ms));
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out(chunk.ref.size);
  const TimePoint deadline = clock_.Now() + 2s;
  Status status = fetcher->Fetch(chunk.ref, out, deadline);
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(status.message().find("no replica of chunk " + chunk.ref.digest.Hex()),
            std::string::npos)
      << status.ToString();
  EXPECT_NE(status.message().find("HTTP 503"), std::string::npos) << status.ToString();
  EXPECT_GE(clock_.Now(), deadline);
  EXPECT_LE(clock_.Now(), deadline + 1ms);
  EXPECT_GT(transport_.TotalCalls(), 2);  // More than one round.
  EXPECT_EQ(fetcher->counters().failed_fetches, 1u);
}

TEST_F(RetryingFetcher, PausesBetweenRoundsGoToThePauseCallbackWhichMayEndTheFetch) {
  TestChunk chunk = MakeChunk(5, {1, 2});
  Fail(1, chunk);
  Fail(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out(chunk.ref.size);
  std::vector<Duration> pauses;
  const TimePoint start = clock_.Now();
  const netfetch::PauseCallback pause = [&](Duration d) {
    pauses.push_back(d);
    clock_.Advance(d);
    return pauses.size() < 3;
  };
  Status status = fetcher->Fetch(chunk.ref, out, clock_.Now() + 1h, {}, pause);
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded) << status.ToString();
  EXPECT_NE(status.message().find("HTTP 503"), std::string::npos) << status.ToString();
  // Each round asks both replicas, and the fetch ends at the pause that said no.
  EXPECT_EQ(pauses, (std::vector<Duration>{options_.round_pause, options_.round_pause * 2,
                                           options_.round_pause * 4}));
  EXPECT_EQ(transport_.TotalCalls(), 6);
  EXPECT_EQ(clock_.Now() - start, options_.round_pause * 7) << "the fetcher slept on its own";

  // The same for blocks.
  TestChunk blocks = testing::MakeTestChunk(6, {1, 2}, 4 * 4096, 4096);
  Fail(1, blocks);
  Fail(2, blocks);
  pauses.clear();
  std::vector<std::uint8_t> two(2 * 4096);
  status = fetcher->FetchBlocks(blocks.ref, 1, 3, two, clock_.Now() + 1h, pause);
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded) << status.ToString();
  EXPECT_EQ(pauses.size(), 3u);
}

TEST_F(RetryingFetcher, AFetchThatGoesOnAfterItsPausesStillDelivers) {
  TestChunk chunk = MakeChunk(5, {1, 2});
  FailOnce(1, chunk);
  FailOnce(2, chunk);
  Serve(1, chunk);
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out(chunk.ref.size);
  int pauses = 0;
  Status status = fetcher->Fetch(chunk.ref, out, clock_.Now() + 1h, {}, [&](Duration d) {
    ++pauses;
    clock_.Advance(d);
    return true;
  });
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(out, chunk.bytes);
  EXPECT_EQ(pauses, 1);
}

TEST_F(RetryingFetcher, FailedNodeIsTriedLastWhileBackingOff) {
  TestChunk chunk = MakeChunk(6, {1, 2});
  FailOnce(1, chunk);
  Serve(1, chunk);
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());  // node1 fails, node2 serves.
  ASSERT_EQ(transport_.Calls(Url(1, chunk)), 1);

  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(transport_.Calls(Url(1, chunk)), 1) << "node1 is backing off, node2 comes first";
  EXPECT_EQ(transport_.Calls(Url(2, chunk)), 2);

  // Backing off is "last", not "never": when node2 fails too, node1 is asked at once.
  FailOnce(2, chunk);
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(out, chunk.bytes);
  EXPECT_EQ(transport_.CallOrder().back(), Url(1, chunk));
}

TEST_F(RetryingFetcher, NodeIsUsedAgainAfterItRecovers) {
  TestChunk chunk = MakeChunk(7, {1, 2});
  FailOnce(1, chunk);
  Serve(1, chunk);
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  ASSERT_EQ(transport_.CallOrder().back(), Url(2, chunk));

  // Past the longest first backoff (initial_backoff + 25% jitter).
  clock_.Advance(options_.initial_backoff * 2);
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(transport_.CallOrder().back(), Url(1, chunk));
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(transport_.CallOrder().back(), Url(1, chunk)) << "node1 is healthy again";
  EXPECT_EQ(transport_.Calls(Url(1, chunk)), 3);
  EXPECT_EQ(transport_.Calls(Url(2, chunk)), 2);
  EXPECT_EQ(fetcher->counters().probes, 0u) << "a quick failure costs a read nothing to retry";
}

TEST_F(RetryingFetcher, AttemptTimeoutIsBoundedByDeadline) {
  options_.attempt_timeout = 10s;
  TestChunk chunk = MakeChunk(8, {1, 2});
  transport_.SetResponse(Url(1, chunk), ScriptedResponse::Error(Http503(Url(1, chunk)), 2s));
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out, 3s).ok());
  EXPECT_EQ(transport_.Timeouts(Url(1, chunk)), std::vector<Duration>{3s});
  EXPECT_EQ(transport_.Timeouts(Url(2, chunk)), std::vector<Duration>{1s}) << "2 s were spent";

  TestChunk far = MakeChunk(9, {3});
  Serve(3, far);
  ASSERT_TRUE(Fetch(*fetcher, far, &out, 1h).ok());
  EXPECT_EQ(transport_.Timeouts(Url(3, far)), std::vector<Duration>{10s});
}

TEST_F(RetryingFetcher, SlowAttemptIsCutAtTheDeadline) {
  TestChunk chunk = MakeChunk(10, {1});
  Serve(1, chunk, 1h);  // Hangs for longer than any budget.
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  const TimePoint deadline = clock_.Now() + 5s;
  out.assign(chunk.ref.size, 0);
  Status status = fetcher->Fetch(chunk.ref, out, deadline);
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(clock_.Now(), deadline);
}

TEST_F(RetryingFetcher, NoReplicaGivesNotFound) {
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  TestChunk orphan = MakeChunk(11, {});
  EXPECT_EQ(Fetch(*fetcher, orphan, &out).code(), StatusCode::kNotFound);
  TestChunk unknown_node = MakeChunk(12, {99});
  EXPECT_EQ(Fetch(*fetcher, unknown_node, &out).code(), StatusCode::kNotFound);
  EXPECT_EQ(transport_.TotalCalls(), 0);
}

TEST_F(RetryingFetcher, PrefersFasterReplicaOnceMeasured) {
  TestChunk chunk = MakeChunk(13, {1, 2});
  Serve(1, chunk, 100ms);
  Serve(2, chunk, 10ms);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  // node1 first (index order), node2 next (not measured yet), then node2 as the faster one.
  EXPECT_EQ(transport_.Calls(Url(1, chunk)), 1);
  EXPECT_EQ(transport_.Calls(Url(2, chunk)), 3);
}

TEST_F(RetryingFetcher, PrefersReplicaWithFewerRequestsInFlight) {
  TestChunk chunk = MakeChunk(14, {1, 2});
  Serve(1, chunk);
  Serve(2, chunk);
  std::promise<void> first_call_started;
  std::promise<void> release_first_call;
  std::shared_future<void> released = release_first_call.get_future().share();
  std::atomic<bool> blocked_once{false};
  transport_.SetOnCall([&](const std::string& url) {
    // Only the first call to node1 (from `background`) blocks.
    if (url != Url(1, chunk) || blocked_once.exchange(true)) return;
    first_call_started.set_value();
    released.wait();
  });
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> background_out(chunk.ref.size);
  Status background_status;
  std::thread background(
      [&] { background_status = fetcher->Fetch(chunk.ref, background_out, clock_.Now() + 1h); });
  first_call_started.get_future().wait();
  std::vector<std::uint8_t> out;
  Status status = Fetch(*fetcher, chunk, &out);
  release_first_call.set_value();
  background.join();
  ASSERT_TRUE(status.ok());
  ASSERT_TRUE(background_status.ok());
  EXPECT_EQ(transport_.CallOrder(), (std::vector<std::string>{Url(1, chunk), Url(2, chunk)}));
}

TEST_F(RetryingFetcher, ConcurrentFetchesFromManyThreadsAllVerify) {
  constexpr int kThreads = 8;
  constexpr int kFetchesPerThread = 50;
  std::vector<TestChunk> chunks;
  for (std::uint32_t i = 0; i < 8; ++i) {
    chunks.push_back(MakeChunk(100 + i, {1, i % 2 == 0 ? 2 : 3}));
    TestChunk& c = chunks.back();
    // node1 serves wrong bytes for everything; node3 fails a few times before it works.
    transport_.SetResponse(Url(1, c), ScriptedResponse::Body(Corrupted(c.bytes)));
    Serve(2, c);
    for (int k = 0; k < 3; ++k) FailOnce(3, c);
    Serve(3, c);
  }
  auto fetcher = MakeFetcher();
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::uint8_t> out;
      for (int i = 0; i < kFetchesPerThread; ++i) {
        const TestChunk& c = chunks[(t * 7 + i) % chunks.size()];
        if (Fetch(*fetcher, c, &out).ok() && out == c.bytes) ++good;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(good.load(), kThreads * kFetchesPerThread);
  const auto& counters = fetcher->counters();
  EXPECT_EQ(counters.fetches, static_cast<std::uint64_t>(kThreads * kFetchesPerThread));
  EXPECT_EQ(counters.failed_fetches, 0u);
  EXPECT_GE(counters.digest_mismatches, 1u);
  EXPECT_EQ(counters.bytes_fetched, counters.fetches * 4096);
  EXPECT_EQ(counters.attempts, counters.fetches + counters.failed_attempts);
}

TEST_F(RetryingFetcher, CountersCountAttemptsAndBytes) {
  TestChunk first = MakeChunk(20, {1, 2}, 1000);
  Fail(1, first);
  Serve(2, first);
  TestChunk second = MakeChunk(21, {3, 2}, 3000);
  transport_.SetResponse(Url(3, second), ScriptedResponse::Body(Corrupted(second.bytes)));
  Serve(2, second);
  TestChunk lost = MakeChunk(22, {4}, 500);
  Fail(4, lost);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, first, &out).ok());
  ASSERT_TRUE(Fetch(*fetcher, second, &out).ok());
  const auto& counters = fetcher->counters();
  EXPECT_EQ(counters.fetches, 2u);
  EXPECT_EQ(counters.attempts, 4u);
  EXPECT_EQ(counters.failed_attempts, 2u);
  EXPECT_EQ(counters.digest_mismatches, 1u);
  EXPECT_EQ(counters.bytes_fetched, 4000u);
  EXPECT_EQ(counters.failed_fetches, 0u);

  EXPECT_EQ(Fetch(*fetcher, lost, &out, 1s).code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(counters.fetches, 3u);
  EXPECT_EQ(counters.failed_fetches, 1u);
  EXPECT_EQ(counters.bytes_fetched, 4000u) << "no byte of the lost chunk counts";
  EXPECT_EQ(counters.attempts, counters.failed_attempts + 2);
  EXPECT_EQ(static_cast<int>(counters.attempts), transport_.TotalCalls());
}

// Health() of node `id` (ids 1..4 are the fixture's nodes, in order).
netfetch::NodeHealth HealthOf(const netfetch::RetryingFetcher& fetcher, std::int64_t id) {
  for (const netfetch::NodeHealth& node : fetcher.Health()) {
    if (node.id == id) return node;
  }
  ADD_FAILURE() << "no health reported for node " << id;
  return {};
}

TEST_F(RetryingFetcher, HealthListsEveryNodeInOrderHealthyAndUnmeasured) {
  auto fetcher = MakeFetcher();
  std::vector<netfetch::NodeHealth> health = fetcher->Health();
  ASSERT_EQ(health.size(), nodes_.size());
  for (std::size_t i = 0; i < health.size(); ++i) {
    EXPECT_EQ(health[i].id, nodes_[i].id);
    EXPECT_EQ(health[i].name, nodes_[i].name);
    EXPECT_EQ(health[i].in_flight, 0);
    EXPECT_EQ(health[i].consecutive_failures, 0);
    EXPECT_FALSE(health[i].backing_off);
    EXPECT_EQ(health[i].bytes_per_second, 0.0);
  }
}

TEST_F(RetryingFetcher, HealthShowsAFailedNodeBackingOffUntilItsBackoffEnds) {
  TestChunk chunk = MakeChunk(30, {1, 2});
  FailOnce(1, chunk);
  Serve(2, chunk, 10ms);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());  // node1 fails, node2 serves in 10 ms.

  netfetch::NodeHealth failed = HealthOf(*fetcher, 1);
  EXPECT_EQ(failed.consecutive_failures, 1);
  EXPECT_TRUE(failed.backing_off);
  EXPECT_EQ(failed.bytes_per_second, 0.0);
  netfetch::NodeHealth served = HealthOf(*fetcher, 2);
  EXPECT_EQ(served.consecutive_failures, 0);
  EXPECT_FALSE(served.backing_off);
  EXPECT_NEAR(served.bytes_per_second, 4096 / 0.010, 1.0);

  // Past the longest first backoff (initial_backoff + 25% jitter): no longer backing off, but
  // its failure is still on record until it delivers.
  clock_.Advance(options_.initial_backoff * 2);
  failed = HealthOf(*fetcher, 1);
  EXPECT_FALSE(failed.backing_off);
  EXPECT_EQ(failed.consecutive_failures, 1);
}

TEST_F(RetryingFetcher, HealthShowsRepeatedFailuresThenRecovery) {
  TestChunk chunk = MakeChunk(31, {1, 2});
  for (int i = 0; i < 3; ++i) FailOnce(1, chunk);
  Serve(1, chunk, 20ms);
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
    clock_.Advance(options_.max_backoff * 2);  // node1 comes first again next time.
  }
  EXPECT_EQ(transport_.Calls(Url(1, chunk)), 3);
  EXPECT_EQ(HealthOf(*fetcher, 1).consecutive_failures, 3);

  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  ASSERT_EQ(transport_.CallOrder().back(), Url(1, chunk)) << "node1 delivered this time";
  netfetch::NodeHealth recovered = HealthOf(*fetcher, 1);
  EXPECT_EQ(recovered.consecutive_failures, 0);
  EXPECT_FALSE(recovered.backing_off);
  EXPECT_NEAR(recovered.bytes_per_second, 4096 / 0.020, 1.0);
}

TEST_F(RetryingFetcher, NodeWhoseFailureTookLongIsBackedOffInProportion) {
  options_.probe_slow_nodes = false;  // The backoff alone; with probes, below.
  TestChunk chunk = MakeChunk(33, {1, 2});
  transport_.Enqueue(Url(1, chunk), ScriptedResponse::Error(Stalled(Url(1, chunk)), 3s));
  Serve(1, chunk);
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());  // node1 stalls for 3 s, node2 serves.
  ASSERT_EQ(transport_.Calls(Url(1, chunk)), 1);

  // Past the longest backoff a quick failure earns (max_backoff + 25% jitter), a node that cost
  // 3 s is still tried last: slow_failure_factor (10) x 3 s, less 25% jitter, is 22.5 s.
  ASSERT_EQ(options_.slow_failure_factor, 10);
  clock_.Advance(options_.max_backoff * 2);
  EXPECT_TRUE(HealthOf(*fetcher, 1).backing_off);
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(transport_.Calls(Url(1, chunk)), 1) << "the stalled node was asked again";

  // 30 s plus 25% jitter after the failure, it comes first again.
  clock_.Advance(40s - options_.max_backoff * 2);
  EXPECT_FALSE(HealthOf(*fetcher, 1).backing_off);
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(transport_.CallOrder().back(), Url(1, chunk));
  EXPECT_EQ(out, chunk.bytes);
}

TEST_F(RetryingFetcher, BackoffAfterASlowFailureIsCapped) {
  TestChunk chunk = MakeChunk(34, {1, 2});
  // Hangs until the attempt timeout (10 s) cuts it: 10 x 10 s would be 100 s.
  transport_.Enqueue(Url(1, chunk), ScriptedResponse::Body(chunk.bytes, 1h));
  Serve(1, chunk);
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  ASSERT_EQ(transport_.Timeouts(Url(1, chunk)), std::vector<Duration>{options_.attempt_timeout});

  clock_.Advance(options_.max_slow_failure_backoff * 3 / 4 - 1s);
  EXPECT_GT(HealthOf(*fetcher, 1).backoff_left, 0s);
  clock_.Advance(options_.max_slow_failure_backoff / 2 + 2s);  // Past the cap plus 25% jitter.
  EXPECT_EQ(HealthOf(*fetcher, 1).backoff_left, 0s);
}

TEST_F(RetryingFetcher, AQuickFailureDoesNotShortenTheBackoffOfASlowOne) {
  TestChunk chunk = MakeChunk(35, {1, 2});
  transport_.Enqueue(Url(1, chunk), ScriptedResponse::Error(Stalled(Url(1, chunk)), 3s));
  auto fetcher = MakeFetcher();
  Serve(2, chunk);
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());  // node1 stalls, node2 serves.

  // node2 fails at once, so node1 is asked although it is backing off, and fails at once too.
  FailOnce(2, chunk);
  FailOnce(1, chunk);
  Serve(1, chunk);
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  ASSERT_EQ(transport_.Calls(Url(1, chunk)), 2);

  clock_.Advance(options_.max_backoff * 2);
  EXPECT_TRUE(HealthOf(*fetcher, 1).backing_off) << "the quick failure cut the backoff short";
  EXPECT_EQ(HealthOf(*fetcher, 1).consecutive_failures, 2);
}

TEST_F(RetryingFetcher, ANodeThatSendsNothingIsLeftAtTheStallTimeoutForAHealthyReplica) {
  TestChunk chunk = MakeChunk(36, {1, 2});
  // Without a stall timeout the node would be left only at the low-speed abort, 3 s in.
  Silence(1, chunk);
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  const TimePoint start = clock_.Now();
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(out, chunk.bytes);
  ASSERT_EQ(options_.stall_timeout, 1s);
  EXPECT_EQ(clock_.Now() - start, 1s);
  EXPECT_EQ(transport_.StallTimeouts(Url(1, chunk)), std::vector<Duration>{1s});
  EXPECT_EQ(transport_.StallTimeouts(Url(2, chunk)), std::vector<Duration>{0s})
      << "the last healthy replica is given time to answer";
  // Its silence cost 1 s, so it is passed over for 10 x 1 s, +-25% jitter.
  const Duration left = HealthOf(*fetcher, 1).backoff_left;
  EXPECT_GE(left, 7500ms);
  EXPECT_LE(left, 12500ms);
  EXPECT_EQ(HealthOf(*fetcher, 2).backoff_left, 0s);
  clock_.Advance(7s);
  EXPECT_TRUE(HealthOf(*fetcher, 1).backing_off);
  EXPECT_EQ(HealthOf(*fetcher, 1).backoff_left, left - 7s);
  clock_.Advance(left - 7s);
  EXPECT_EQ(HealthOf(*fetcher, 1).backoff_left, 0s);
  EXPECT_TRUE(HealthOf(*fetcher, 1).awaiting_probe) << "reads would go back to it unasked";
  EXPECT_TRUE(HealthOf(*fetcher, 1).backing_off);
}

TEST_F(RetryingFetcher, AMeasuredNodeThatStopsAnsweringIsLeftAtItsFirstByteTimeout) {
  TestChunk warm1 = MakeChunk(70, {1});
  TestChunk warm2 = MakeChunk(71, {2});
  TestChunk chunk = MakeChunk(72, {1, 2});
  Serve(1, warm1, 10ms);  // node1 answers in 10 ms, node2 in 40 ms: node1 is asked first.
  Serve(2, warm2, 40ms);
  Silence(1, chunk);
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, warm1, &out).ok());
  ASSERT_TRUE(Fetch(*fetcher, warm2, &out).ok());
  EXPECT_EQ(transport_.FirstByteTimeouts(Url(1, warm1)), std::vector<Duration>{0s})
      << "a node not measured yet gets the stall timeout alone";
  const TimePoint start = clock_.Now();
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(out, chunk.bytes);
  // 8 x 10 ms is below the 250 ms floor.
  EXPECT_EQ(transport_.FirstByteTimeouts(Url(1, chunk)), std::vector<Duration>{250ms});
  EXPECT_EQ(transport_.FirstByteTimeouts(Url(2, chunk)), std::vector<Duration>{0s})
      << "the last healthy replica is given time to answer";
  EXPECT_EQ(clock_.Now() - start, 250ms) << "node1's silence should cost 250 ms, not 1 s";
  EXPECT_TRUE(HealthOf(*fetcher, 1).awaiting_probe);
}

TEST_F(RetryingFetcher, TheFirstByteTimeoutFollowsHowSoonANodeUsuallyAnswers) {
  TestChunk warm1 = MakeChunk(73, {1});
  TestChunk warm3 = MakeChunk(74, {3});
  TestChunk chunk = MakeChunk(75, {1, 2});
  TestChunk other = MakeChunk(76, {3, 2});
  Serve(1, warm1, 70ms);   // 8 x 70 ms = 560 ms, under the 1 s stall timeout.
  Serve(3, warm3, 200ms);  // 8 x 200 ms = 1.6 s: the stall timeout comes first.
  Serve(1, chunk);
  Serve(3, other);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, warm1, &out).ok());
  ASSERT_TRUE(Fetch(*fetcher, warm3, &out).ok());
  transport_.SetResponse(Url(2, chunk), ScriptedResponse::Body(chunk.bytes, 300ms));
  transport_.SetResponse(Url(2, other), ScriptedResponse::Body(other.bytes, 300ms));
  // node2, unmeasured, would be asked first: measure it as slower than both.
  TestChunk warm2 = MakeChunk(77, {2});
  Serve(2, warm2, 300ms);
  ASSERT_TRUE(Fetch(*fetcher, warm2, &out).ok());
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  ASSERT_TRUE(Fetch(*fetcher, other, &out).ok());
  EXPECT_EQ(transport_.FirstByteTimeouts(Url(1, chunk)), std::vector<Duration>{560ms});
  EXPECT_EQ(transport_.FirstByteTimeouts(Url(3, other)), std::vector<Duration>{0s});
  EXPECT_EQ(transport_.StallTimeouts(Url(3, other)), std::vector<Duration>{1s});
}

TEST_F(RetryingFetcher, WhenEveryReplicaIsSlowToAnswerTheLastHealthyOneIsWaitedFor) {
  TestChunk chunk = MakeChunk(37, {1, 2, 3});
  for (std::int64_t id : {1, 2, 3}) {
    transport_.SetResponse(Url(id, chunk), ScriptedResponse::SlowToAnswer(chunk.bytes, 2s));
  }
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  const TimePoint start = clock_.Now();
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(out, chunk.bytes);
  EXPECT_EQ(clock_.Now() - start, 4s) << "1 s each on node1 and node2, then node3's answer";
  EXPECT_EQ(transport_.StallTimeouts(Url(1, chunk)), std::vector<Duration>{1s});
  EXPECT_EQ(transport_.StallTimeouts(Url(2, chunk)), std::vector<Duration>{1s});
  EXPECT_EQ(transport_.StallTimeouts(Url(3, chunk)), std::vector<Duration>{0s});

  // With node1 and node2 backing off, node3 is the only healthy replica and is waited for,
  // and a replica asked only because every healthy one failed is waited for too.
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(transport_.StallTimeouts(Url(3, chunk)), (std::vector<Duration>{0s, 0s}));
  EXPECT_EQ(transport_.TotalCalls(), 4);
}

TEST_F(RetryingFetcher, EachFurtherSlowFailureInARowDoublesTheBackoff) {
  TestChunk chunk = MakeChunk(38, {1, 2});
  transport_.Enqueue(Url(1, chunk), ScriptedResponse::Error(Stalled(Url(1, chunk)), 2s));
  transport_.Enqueue(Url(1, chunk), ScriptedResponse::Error(Stalled(Url(1, chunk)), 2s));
  Serve(1, chunk);
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());  // node1: 2 s, so 20 s (15-25 s).
  clock_.Advance(26s);
  ASSERT_EQ(HealthOf(*fetcher, 1).backoff_left, 0s);
  // The read goes to node2; the probe it sends to node1 fails, 2 s: now 40 s (30-50 s).
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  ASSERT_TRUE(PollUntil([&] { return HealthOf(*fetcher, 1).consecutive_failures == 2; }));
  ASSERT_EQ(fetcher->counters().failed_probes, 1u);
  ASSERT_EQ(transport_.Calls(Url(1, chunk)), 2);
  const TimePoint probed = clock_.Now();
  EXPECT_GT(HealthOf(*fetcher, 1).backoff_left, 26s) << "the second slow failure was not doubled";
  clock_.Advance(probed + 51s - clock_.Now());
  EXPECT_EQ(HealthOf(*fetcher, 1).backoff_left, 0s);
}

TEST_F(RetryingFetcher, ANodeThatFailedSlowlyIsProbedBeforeReadsAskItAgain) {
  TestChunk chunk = MakeChunk(39, {1, 2});
  SilenceOnce(1, chunk);
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());  // node1 silent for 1 s, node2 serves.
  clock_.Advance(13s);                             // Past 10 x 1 s + 25% jitter.
  ASSERT_EQ(HealthOf(*fetcher, 1).backoff_left, 0s);
  ASSERT_TRUE(HealthOf(*fetcher, 1).awaiting_probe);

  // This read would have asked node1 first: it goes to node2 and sends node1 a probe instead.
  const TimePoint start = clock_.Now();
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(out, chunk.bytes);
  ASSERT_TRUE(PollUntil([&] { return !HealthOf(*fetcher, 1).awaiting_probe; }));
  EXPECT_EQ(clock_.Now(), start) << "nobody waited";
  EXPECT_EQ(transport_.Ranges(Url(1, chunk)), (std::vector<std::optional<testing::ScriptedRange>>{
                                                  std::nullopt, testing::ScriptedRange{0, 1}}))
      << "one GET by the first read, then the 1-byte probe";
  EXPECT_EQ(transport_.StallTimeouts(Url(1, chunk)), (std::vector<Duration>{1s, 1s}));
  EXPECT_EQ(transport_.Calls(Url(2, chunk)), 2);
  EXPECT_EQ(fetcher->counters().probes, 1u);
  EXPECT_EQ(fetcher->counters().failed_probes, 0u);
  EXPECT_EQ(fetcher->counters().failed_attempts, 1u) << "a probe is not an attempt";
  netfetch::NodeHealth probed = HealthOf(*fetcher, 1);
  EXPECT_FALSE(probed.backing_off);
  EXPECT_EQ(probed.consecutive_failures, 1) << "only a read's success clears them";

  // It answered: the next read asks it first (unmeasured, so the fastest), and it delivers.
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(transport_.CallOrder().back(), Url(1, chunk));
  EXPECT_EQ(HealthOf(*fetcher, 1).consecutive_failures, 0);
}

TEST_F(RetryingFetcher, ANodeThatStaysSilentCostsNoReadASecondStall) {
  TestChunk chunk = MakeChunk(40, {1, 2});
  Silence(1, chunk);
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());  // The one stall: 1 s.
  for (std::uint64_t round = 1; round <= 3; ++round) {
    // Past the doubled backoff of the failures so far (10, 20, 40 s, +25% jitter).
    clock_.Advance(HealthOf(*fetcher, 1).backoff_left + 1ms);
    ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
    EXPECT_EQ(out, chunk.bytes);
    // The probe's end and the node's new backoff are one step.
    ASSERT_TRUE(PollUntil(
        [&] { return HealthOf(*fetcher, 1).consecutive_failures == static_cast<int>(round) + 1; }));
    EXPECT_EQ(fetcher->counters().failed_probes, round);
    const netfetch::NodeHealth health = HealthOf(*fetcher, 1);
    EXPECT_TRUE(health.awaiting_probe);
    // The probe was silent for 1 s: backed off for 10 s doubled per failure in a row.
    const Duration least = std::min<Duration>(10s * (1 << round), 60s) * 3 / 4;
    EXPECT_GE(health.backoff_left, least - 1s) << "round " << round;
  }
  EXPECT_EQ(fetcher->counters().probes, 3u);
  EXPECT_EQ(fetcher->counters().failed_attempts, 1u) << "a read asked the silent node again";
  std::vector<std::optional<testing::ScriptedRange>> ranges = transport_.Ranges(Url(1, chunk));
  ASSERT_EQ(ranges.size(), 4u);
  EXPECT_EQ(std::count(ranges.begin(), ranges.end(), std::nullopt), 1);
}

TEST_F(RetryingFetcher, WithoutProbesANodeIsAskedAgainWhenItsBackoffEnds) {
  options_.probe_slow_nodes = false;
  TestChunk chunk = MakeChunk(41, {1, 2});
  Silence(1, chunk);
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  clock_.Advance(13s);
  EXPECT_FALSE(HealthOf(*fetcher, 1).backing_off);
  const TimePoint start = clock_.Now();
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(clock_.Now() - start, 1s) << "the read stalled on node1 again";
  EXPECT_EQ(fetcher->counters().probes, 0u);
}

TEST_F(RetryingFetcher, TheDestructorWaitsForAProbeUnderWay) {
  TestChunk chunk = MakeChunk(42, {1, 2});
  SilenceOnce(1, chunk);
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  clock_.Advance(13s);

  std::promise<void> probe_started;
  std::promise<void> release_probe;
  std::shared_future<void> released = release_probe.get_future().share();
  std::atomic<bool> probe_returned{false};
  transport_.SetOnCall([&](const std::string& url) {
    if (url != Url(1, chunk)) return;
    probe_started.set_value();
    released.wait();
    probe_returned = true;  // Its answer is then handed to the fetcher.
  });
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());  // Sends the probe.
  probe_started.get_future().wait();
  std::thread destroying([&] { fetcher.reset(); });
  std::this_thread::sleep_for(20ms);
  release_probe.set_value();
  destroying.join();
  EXPECT_TRUE(probe_returned);
}

// Greets node `id`s with `chunk` as their object and waits until each has answered or failed.
void GreetAndWait(netfetch::RetryingFetcher& fetcher, const std::vector<std::int64_t>& ids,
                  const Digest& digest) {
  std::vector<netfetch::NodeObject> objects;
  for (std::int64_t id : ids) objects.push_back({id, digest});
  const std::uint64_t before = fetcher.counters().greetings;
  fetcher.Greet(objects);
  ASSERT_TRUE(PollUntil([&] { return fetcher.counters().greetings == before + ids.size(); }));
  for (std::int64_t id : ids) EXPECT_FALSE(HealthOf(fetcher, id).unanswered) << id;
}

TEST_F(RetryingFetcher, OnceEveryReplicaHasBeenDownForDownAfterAReadAsksEachOnceAndFails) {
  options_.down_after = 10s;
  TestChunk first = MakeChunk(120, {1, 2});
  TestChunk second = MakeChunk(121, {1, 2});
  TestChunk third = MakeChunk(122, {1, 2});
  for (const TestChunk* chunk : {&first, &second, &third}) {
    Fail(1, *chunk);
    Fail(2, *chunk);
  }
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  const TimePoint start = clock_.Now();
  // The nodes have failed for 4 s when this read ends, 8 s when the next one starts: both wait
  // out their deadline, in rounds.
  EXPECT_EQ(Fetch(*fetcher, first, &out, 4s).code(), StatusCode::kDeadlineExceeded);
  clock_.Advance(4s);
  EXPECT_FALSE(HealthOf(*fetcher, 1).down);
  EXPECT_EQ(Fetch(*fetcher, second, &out, 20s).code(), StatusCode::kDeadlineExceeded);
  ASSERT_EQ(clock_.Now() - start, 28s);
  EXPECT_GT(transport_.Calls(Url(1, second)), 1);
  EXPECT_TRUE(HealthOf(*fetcher, 1).down);
  EXPECT_TRUE(HealthOf(*fetcher, 2).down);

  // Down for 28 s now: a read asks each node once, and fails without waiting for its deadline.
  const Status status = Fetch(*fetcher, third, &out, 20s);
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status.ToString();
  EXPECT_NE(status.message().find("every replica of chunk " + third.ref.digest.Hex() +
                                  " is down (no answer for 10000 ms or more)"),
            std::string::npos)
      << status.ToString();
  EXPECT_NE(status.message().find("HTTP 503"), std::string::npos) << status.ToString();
  EXPECT_EQ(clock_.Now() - start, 28s) << "the read waited for the dead nodes";
  EXPECT_EQ(transport_.Calls(Url(1, third)), 1);
  EXPECT_EQ(transport_.Calls(Url(2, third)), 1);
  EXPECT_EQ(fetcher->counters().down_fetches, 1u);
  EXPECT_EQ(fetcher->counters().failed_fetches, 3u);

  // Blocks too.
  TestChunk blocks = testing::MakeTestChunk(123, {1, 2}, 4 * 4096, 4096);
  Fail(1, blocks);
  Fail(2, blocks);
  std::vector<std::uint8_t> two(2 * 4096);
  EXPECT_EQ(fetcher->FetchBlocks(blocks.ref, 1, 3, two, clock_.Now() + 20s).code(),
            StatusCode::kUnavailable);
  EXPECT_EQ(fetcher->counters().down_fetches, 2u);
  EXPECT_EQ(fetcher->counters().failed_range_fetches, 1u);

  // Still asked: a node that is back delivers to the next read, and is no longer down.
  Serve(1, third);
  ASSERT_TRUE(Fetch(*fetcher, third, &out, 20s).ok());
  EXPECT_EQ(out, third.bytes);
  EXPECT_FALSE(HealthOf(*fetcher, 1).down);
  EXPECT_TRUE(HealthOf(*fetcher, 2).down);
}

TEST_F(RetryingFetcher, AReadOfDownReplicasDoesNotAskOneAwaitingAProbe) {
  options_.down_after = 2s;
  TestChunk first = MakeChunk(124, {1, 2});
  TestChunk second = MakeChunk(125, {1, 2});
  TestChunk alone = MakeChunk(126, {1});
  Silence(1, first);
  Fail(2, first);
  Fail(2, second);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  // node1 stalls (1 s), node2 refuses, in rounds until the deadline.
  EXPECT_EQ(Fetch(*fetcher, first, &out, 1500ms).code(), StatusCode::kDeadlineExceeded);
  clock_.Advance(2s);
  ASSERT_TRUE(HealthOf(*fetcher, 1).awaiting_probe);
  ASSERT_GT(HealthOf(*fetcher, 1).backoff_left, 0s) << "a probe would be sent, and race the test";
  ASSERT_TRUE(HealthOf(*fetcher, 1).down);
  ASSERT_TRUE(HealthOf(*fetcher, 2).down);

  const TimePoint start = clock_.Now();
  Status status = Fetch(*fetcher, second, &out, 20s);
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status.ToString();
  EXPECT_NE(status.message().find("HTTP 503"), std::string::npos) << status.ToString();
  EXPECT_EQ(transport_.Calls(Url(1, second)), 0) << "the read stalled on the hung node";
  EXPECT_EQ(transport_.Calls(Url(2, second)), 1);
  EXPECT_EQ(clock_.Now(), start);

  // Its only replica awaits a probe: nothing is asked.
  status = Fetch(*fetcher, alone, &out, 20s);
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status.ToString();
  EXPECT_NE(status.message().find("each awaits a probe"), std::string::npos) << status.ToString();
  EXPECT_EQ(transport_.Calls(Url(1, alone)), 0);
  EXPECT_EQ(clock_.Now(), start);
  EXPECT_EQ(fetcher->counters().down_fetches, 2u);
}

TEST_F(RetryingFetcher, ANodeThatHangsAtItsGreetingCostsNoReadAStall) {
  TestChunk chunk = MakeChunk(80, {1, 2});
  Silence(1, chunk);  // Takes the HEAD and sends nothing.
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  GreetAndWait(*fetcher, {1, 2}, chunk.ref.digest);
  EXPECT_EQ(transport_.Heads().size(), 2u);
  EXPECT_EQ(fetcher->counters().greetings, 2u);
  EXPECT_EQ(fetcher->counters().failed_greetings, 1u);
  const netfetch::NodeHealth hung = HealthOf(*fetcher, 1);
  EXPECT_TRUE(hung.backing_off);
  EXPECT_TRUE(hung.awaiting_probe) << "a greeting that stalled 1 s is a slow failure";
  EXPECT_FALSE(HealthOf(*fetcher, 2).backing_off);

  // node1 comes first in the index's order: without the greeting this read would stall on it.
  const TimePoint start = clock_.Now();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(out, chunk.bytes);
  EXPECT_EQ(clock_.Now(), start) << "the read waited for the hung node";
  EXPECT_EQ(transport_.Calls(Url(1, chunk)), 0);
  EXPECT_EQ(fetcher->counters().failed_attempts, 0u) << "a greeting is not an attempt";
}

TEST_F(RetryingFetcher, AGreetingMeasuresHowSoonTheNodeAnswers) {
  TestChunk chunk = MakeChunk(81, {1, 2});
  Serve(1, chunk, 40ms);  // The HEAD takes 40 ms: 8 x 40 ms = 320 ms to answer a read.
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  GreetAndWait(*fetcher, {1}, chunk.ref.digest);
  EXPECT_EQ(fetcher->counters().failed_greetings, 0u);
  EXPECT_FALSE(HealthOf(*fetcher, 1).backing_off);
  EXPECT_EQ(HealthOf(*fetcher, 1).bytes_per_second, 0) << "a HEAD has no body to time";
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(transport_.FirstByteTimeouts(Url(1, chunk)), std::vector<Duration>{320ms})
      << "the read should know how soon node1 answers from its greeting";
}

TEST_F(RetryingFetcher, ANodeThatRefusesItsGreetingIsBackedOffBriefly) {
  TestChunk chunk = MakeChunk(82, {1, 2});
  Fail(1, chunk);
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  GreetAndWait(*fetcher, {1}, chunk.ref.digest);
  const netfetch::NodeHealth refused = HealthOf(*fetcher, 1);
  EXPECT_TRUE(refused.backing_off);
  EXPECT_FALSE(refused.awaiting_probe) << "a quick failure needs no probe";
  EXPECT_LE(refused.backoff_left, 250ms);
  EXPECT_EQ(fetcher->counters().failed_greetings, 1u);
}

TEST_F(RetryingFetcher, ANodeThatDoesNotDoHeadHasAnsweredItsGreeting) {
  TestChunk chunk = MakeChunk(84, {1, 2});
  Serve(1, chunk);
  transport_.SetHeadResponse(
      Url(1, chunk), ScriptedResponse::Error(FailedPreconditionError("HTTP 405 from HEAD"), 30ms));
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  GreetAndWait(*fetcher, {1}, chunk.ref.digest);
  EXPECT_EQ(fetcher->counters().failed_greetings, 0u);
  EXPECT_FALSE(HealthOf(*fetcher, 1).backing_off) << "its GETs work";
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(out, chunk.bytes);
  EXPECT_EQ(transport_.Calls(Url(1, chunk)), 1) << "the read did not ask node1 first";
  EXPECT_EQ(transport_.FirstByteTimeouts(Url(1, chunk)), std::vector<Duration>{250ms})
      << "its refusal came as soon as a GET's first byte would";
}

TEST_F(RetryingFetcher, AnAnsweredGreetingDoesNotEndTheBackoffOfAReadThatFailedMeanwhile) {
  TestChunk chunk = MakeChunk(86, {1});
  Serve(1, chunk);  // What the HEAD finds.
  Gate greeting;
  transport_.SetOnHead([&](const std::string&) { greeting.Pass(); });
  auto fetcher = MakeFetcher();
  fetcher->Greet({{1, chunk.ref.digest}});
  greeting.WaitArrived();
  // While the HEAD is under way, a read's GET hangs for 3 s (a node whose disk hangs may still
  // answer a HEAD), and the read runs out of time.
  transport_.Enqueue(Url(1, chunk), ScriptedResponse::Silent(3s, Stalled(Url(1, chunk))));
  std::vector<std::uint8_t> out;
  EXPECT_FALSE(Fetch(*fetcher, chunk, &out, 3s + 50ms).ok());
  greeting.Open();
  ASSERT_TRUE(PollUntil([&] { return fetcher->counters().greetings == 1; }));
  EXPECT_EQ(fetcher->counters().failed_greetings, 0u);
  const netfetch::NodeHealth after = HealthOf(*fetcher, 1);
  EXPECT_TRUE(after.backing_off);
  EXPECT_TRUE(after.awaiting_probe);
  EXPECT_EQ(after.consecutive_failures, 1);
}

TEST_F(RetryingFetcher, ReadsAskANodeThatAnsweredBeforeOneWhoseGreetingIsUnderWay) {
  TestChunk busy = MakeChunk(83, {2});
  TestChunk chunk = MakeChunk(84, {1, 2});
  Serve(1, chunk);
  Serve(2, chunk);
  Serve(2, busy);
  Gate greeting;
  Gate read;
  transport_.SetOnHead([&](const std::string&) { greeting.Pass(); });
  transport_.SetOnCall([&](const std::string& url) {
    if (url == Url(2, busy)) read.Pass();
  });
  auto fetcher = MakeFetcher();
  fetcher->Greet({{1, chunk.ref.digest}});
  greeting.WaitArrived();
  std::thread reader([&] {
    std::vector<std::uint8_t> out;
    EXPECT_TRUE(Fetch(*fetcher, busy, &out).ok());
  });
  read.WaitArrived();
  // One request in flight on each node, neither measured: only the greeting tells them apart.
  ASSERT_TRUE(HealthOf(*fetcher, 1).unanswered);
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(out, chunk.bytes);
  EXPECT_EQ(transport_.Calls(Url(1, chunk)), 0);
  EXPECT_EQ(transport_.Calls(Url(2, chunk)), 1);
  greeting.Open();
  read.Open();
  reader.join();
}

TEST_F(RetryingFetcher, TheDestructorWaitsForAGreetingUnderWay) {
  TestChunk chunk = MakeChunk(85, {1});
  Serve(1, chunk);
  Gate greeting;
  std::atomic<bool> greeting_returned{false};
  transport_.SetOnHead([&](const std::string&) {
    greeting.Pass();
    greeting_returned = true;
  });
  auto fetcher = MakeFetcher();
  fetcher->Greet({{1, chunk.ref.digest}});
  greeting.WaitArrived();
  std::thread destroying([&] { fetcher.reset(); });
  std::this_thread::sleep_for(20ms);
  greeting.Open();
  destroying.join();
  EXPECT_TRUE(greeting_returned);
}

TEST_F(RetryingFetcher, HealthCountsTheRequestsInFlight) {
  TestChunk chunk = MakeChunk(32, {3});
  Serve(3, chunk);
  std::promise<void> call_started;
  std::promise<void> release_call;
  std::shared_future<void> released = release_call.get_future().share();
  transport_.SetOnCall([&](const std::string&) {
    call_started.set_value();
    released.wait();
  });
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out(chunk.ref.size);
  Status status;
  std::thread fetching([&] { status = fetcher->Fetch(chunk.ref, out, clock_.Now() + 1h); });
  call_started.get_future().wait();
  const std::vector<netfetch::NodeHealth> during = fetcher->Health();
  release_call.set_value();
  fetching.join();
  ASSERT_TRUE(status.ok());
  ASSERT_EQ(during.size(), 4u);
  EXPECT_EQ(during[2].in_flight, 1);
  EXPECT_EQ(during[0].in_flight + during[1].in_flight + during[3].in_flight, 0);
  EXPECT_EQ(HealthOf(*fetcher, 3).in_flight, 0);
}

// A fetcher that has measured node1 at 40 KiB/s (a 4 KiB chunk in 100 ms) and node2 at 400 KiB/s
// (`fast`, only on node2, in 10 ms); `chunk` is on both and served at once.
struct SlowAndFast {
  std::unique_ptr<netfetch::RetryingFetcher> fetcher;
  TestChunk fast;
  TestChunk chunk;
};

class RetryingFetcherSpeeds : public RetryingFetcher {
 protected:
  SlowAndFast MeasureSlowAndFast(std::uint32_t seed) {
    TestChunk slow = MakeChunk(seed, {1});
    SlowAndFast m{nullptr, MakeChunk(seed + 1, {2}), MakeChunk(seed + 2, {1, 2})};
    Serve(1, slow, 100ms);
    Serve(2, m.fast, 10ms);
    Serve(1, m.chunk);
    Serve(2, m.chunk);
    m.fetcher = MakeFetcher();
    std::vector<std::uint8_t> out;
    EXPECT_TRUE(Fetch(*m.fetcher, slow, &out).ok());
    EXPECT_TRUE(Fetch(*m.fetcher, m.fast, &out).ok());
    return m;
  }
};

TEST_F(RetryingFetcherSpeeds, AMuchFasterNodeIsAskedEvenWithARequestUnderWay) {
  auto [fetcher, fast, chunk] = MeasureSlowAndFast(90);
  std::vector<std::uint8_t> out;
  Gate busy;
  transport_.SetOnCall([&](const std::string& url) {
    if (url == Url(2, fast)) busy.Pass();
  });
  std::thread reader([&] {
    std::vector<std::uint8_t> mine;
    EXPECT_TRUE(Fetch(*fetcher, fast, &mine).ok());
  });
  busy.WaitArrived();
  // node2 with one request under way would still deliver in a fifth of node1's time.
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  busy.Open();
  reader.join();
  EXPECT_EQ(transport_.Calls(Url(1, chunk)), 0);
  EXPECT_EQ(transport_.Calls(Url(2, chunk)), 1);
}

TEST_F(RetryingFetcherSpeeds, ANodeMeasuredSlowIsTriedAgainOnceItsMeasurementIsOld) {
  auto [fetcher, fast, chunk] = MeasureSlowAndFast(93);
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(transport_.CallOrder().back(), Url(2, chunk));

  clock_.Advance(options_.speed_memory);
  ASSERT_TRUE(Fetch(*fetcher, fast, &out).ok());  // node2's speed is recent again; node1's is not.
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());
  EXPECT_EQ(transport_.CallOrder().back(), Url(1, chunk))
      << "node1 should count as fast as node2 once its slow measurement is old";
}

TEST_F(RetryingFetcher, AnAttemptFarSlowerThanAMeasuredReplicaIsLeftForItAfterTheGrace) {
  TestChunk fast = MakeChunk(96, {2});
  TestChunk chunk = MakeChunk(97, {1, 2}, 64 * 1024);
  Serve(2, fast, 10ms);  // node2: 400 KiB/s.
  transport_.SetPieceSize(1024);
  transport_.SetResponse(Url(1, chunk), ScriptedResponse::Body(chunk.bytes, 2s));
  Serve(2, chunk);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, fast, &out).ok());
  ASSERT_TRUE(Fetch(*fetcher, chunk, &out).ok());  // node1 first: it is not measured.
  EXPECT_EQ(out, chunk.bytes);
  EXPECT_EQ(transport_.Calls(Url(1, chunk)), 1);
  EXPECT_EQ(transport_.Calls(Url(2, chunk)), 1);
  EXPECT_EQ(fetcher->counters().slow_attempts, 1u);
  EXPECT_EQ(fetcher->counters().failed_attempts, 1u);
  // It answers, only slowly: its speed, not a backoff, keeps the next reads on node2.
  const netfetch::NodeHealth left = HealthOf(*fetcher, 1);
  EXPECT_FALSE(left.backing_off);
  EXPECT_FALSE(left.awaiting_probe);
  EXPECT_EQ(left.consecutive_failures, 0);
  EXPECT_GT(left.bytes_per_second, 0);
  EXPECT_LT(left.bytes_per_second * 4, HealthOf(*fetcher, 2).bytes_per_second);
  TestChunk next = MakeChunk(95, {1, 2});
  Serve(1, next);
  Serve(2, next);
  ASSERT_TRUE(Fetch(*fetcher, next, &out).ok());
  EXPECT_EQ(transport_.Calls(Url(1, next)), 0);
}

TEST_F(RetryingFetcher, ANodeLeftAsTooSlowIsStillAskedBeforeOneThatDoesNotAnswer) {
  TestChunk stalled = MakeChunk(110, {3, 2});
  TestChunk fast = MakeChunk(111, {2});
  TestChunk slow = MakeChunk(112, {1, 2}, 64 * 1024);
  TestChunk both = MakeChunk(113, {1, 3});
  Silence(3, stalled);
  Serve(2, stalled);
  Serve(2, fast, 10ms);
  transport_.SetPieceSize(1024);
  transport_.SetResponse(Url(1, slow), ScriptedResponse::Body(slow.bytes, 2s));
  Serve(2, slow);
  Serve(1, both);
  Silence(3, both);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, stalled, &out).ok());  // node3 stalls 1 s; node2 serves.
  clock_.Advance(13s);                               // Past node3's backoff: it awaits a probe.
  ASSERT_TRUE(HealthOf(*fetcher, 3).awaiting_probe);
  ASSERT_TRUE(Fetch(*fetcher, fast, &out).ok());  // node2 measured.
  ASSERT_TRUE(Fetch(*fetcher, slow, &out).ok());  // node1 left as too slow for node2.
  ASSERT_EQ(fetcher->counters().slow_attempts, 1u);

  // node1 answers, only slowly; node3 answers nothing. A chunk of both asks node1.
  ASSERT_TRUE(Fetch(*fetcher, both, &out).ok());
  EXPECT_EQ(out, both.bytes);
  EXPECT_EQ(transport_.Calls(Url(3, both)), 0) << "the read stalled on node3 again";
  EXPECT_EQ(transport_.Calls(Url(1, both)), 1);
  EXPECT_EQ(fetcher->counters().failed_attempts, 2u);
}

TEST_F(RetryingFetcher, ASlowAttemptIsNotLeftWithoutAMeasuredReplicaOrBeforeTheGrace) {
  TestChunk fast = MakeChunk(98, {2});
  TestChunk unmeasured = MakeChunk(99, {1, 3}, 64 * 1024);
  TestChunk quick = MakeChunk(100, {1, 2}, 64 * 1024);
  Serve(2, fast, 10ms);
  transport_.SetPieceSize(1024);
  transport_.SetResponse(Url(1, unmeasured), ScriptedResponse::Body(unmeasured.bytes, 2s));
  Serve(3, unmeasured);
  // 400 ms in all: far slower than node2, but done within the 500 ms grace.
  transport_.SetResponse(Url(1, quick), ScriptedResponse::Body(quick.bytes, 400ms));
  Serve(2, quick);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, fast, &out).ok());
  ASSERT_TRUE(Fetch(*fetcher, unmeasured, &out).ok());  // node3, the other replica: unmeasured.
  EXPECT_EQ(out, unmeasured.bytes);
  EXPECT_EQ(transport_.Calls(Url(3, unmeasured)), 0);
  auto fresh = MakeFetcher();
  ASSERT_TRUE(Fetch(*fresh, fast, &out).ok());
  ASSERT_TRUE(Fetch(*fresh, quick, &out).ok());
  EXPECT_EQ(out, quick.bytes);
  EXPECT_EQ(transport_.Calls(Url(2, quick)), 0);
  EXPECT_EQ(fetcher->counters().slow_attempts + fresh->counters().slow_attempts, 0u);
}

TEST_F(RetryingFetcher, ASmallTransferIsNoSpeedSample) {
  options_.min_speed_sample_bytes = 256 << 10;
  TestChunk small = MakeChunk(101, {1});
  TestChunk big = MakeChunk(102, {1}, 256 << 10);
  Serve(1, small, 10ms);
  Serve(1, big, 10ms);
  auto fetcher = MakeFetcher();
  std::vector<std::uint8_t> out;
  ASSERT_TRUE(Fetch(*fetcher, small, &out).ok());
  EXPECT_EQ(HealthOf(*fetcher, 1).bytes_per_second, 0) << "4 KiB in 10 ms is a round trip";
  ASSERT_TRUE(Fetch(*fetcher, big, &out).ok());
  EXPECT_EQ(HealthOf(*fetcher, 1).bytes_per_second, (256 << 10) / 0.01);
}

}  // namespace
}  // namespace ckptfs
