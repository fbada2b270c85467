// ScriptedFetcherTest: a fixture for RetryingFetcher tests with block digests, on a scripted
// transport and a fake clock, with two nodes "http://node1" and "http://node2".
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "netfetch/fetcher.h"
#include "tests/support/fake_clock.h"
#include "tests/support/scripted_transport.h"
#include "tests/support/test_chunk.h"

namespace ckptfs::testing {

class ScriptedFetcherTest : public ::testing::Test {
 protected:
  std::unique_ptr<netfetch::RetryingFetcher> MakeFetcher() {
    return std::make_unique<netfetch::RetryingFetcher>(nodes_, &transport_, &clock_, options_);
  }
  // The URL of `chunk` on node `id` (1 → "http://node1", ...).
  static std::string Url(std::int64_t id, const TestChunk& chunk) {
    return netfetch::ChunkUrl("http://node" + std::to_string(id), chunk.ref.digest);
  }
  void Serve(std::int64_t id, const TestChunk& chunk, Duration delay = Duration::zero()) {
    transport_.SetResponse(Url(id, chunk), ScriptedResponse::Body(chunk.bytes, delay));
  }
  // Fetches the whole chunk into out_, recording every on_verified call in verified_.
  Status Fetch(netfetch::RetryingFetcher& fetcher, const TestChunk& chunk,
               Duration budget = std::chrono::hours(1)) {
    out_.assign(chunk.ref.size, 0);
    verified_.clear();
    return fetcher.Fetch(chunk.ref, out_, clock_.Now() + budget,
                         [this](std::size_t n) { verified_.push_back(n); });
  }

  FakeClock clock_;
  ScriptedTransport transport_{&clock_};
  std::vector<netfetch::NodeEndpoint> nodes_ = {{1, "node1", "http://node1"},
                                                {2, "node2", "http://node2"}};
  netfetch::RetryOptions options_;  // For MakeFetcher.
  std::vector<std::uint8_t> out_;
  std::vector<std::size_t> verified_;
};

}  // namespace ckptfs::testing
