#include "index/placement.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <set>
#include <vector>

namespace ckptfs::index {
namespace {

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;

// Places `count` chunks of random sizes 1..4 MiB and checks every placement and the balance.
void PlaceRandomChunksAndCheckBalance(int nodes, int replicas, int count) {
  SCOPED_TRACE("nodes=" + std::to_string(nodes) + " replicas=" + std::to_string(replicas));
  Placement placement(nodes, replicas);
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<std::uint64_t> size_dist(1, 4 * kMiB);
  std::vector<std::uint64_t> expected(nodes, 0);
  std::uint64_t total = 0;
  for (int i = 0; i < count; ++i) {
    const std::uint64_t size = size_dist(rng);
    const std::vector<int> chosen = placement.Place(size);
    ASSERT_EQ(chosen.size(), static_cast<std::size_t>(replicas));
    ASSERT_EQ(std::set<int>(chosen.begin(), chosen.end()).size(), chosen.size())
        << "replicas of chunk " << i << " are not on distinct nodes";
    for (int node : chosen) {
      ASSERT_GE(node, 0);
      ASSERT_LT(node, nodes);
      expected[node] += size;
    }
    total += size;
  }
  const std::vector<std::uint64_t>& bytes = placement.bytes_per_node();
  EXPECT_EQ(bytes, expected);
  EXPECT_EQ(std::accumulate(bytes.begin(), bytes.end(), std::uint64_t{0}), total * replicas);
  const double mean = static_cast<double>(total) * replicas / nodes;
  const auto [min, max] = std::minmax_element(bytes.begin(), bytes.end());
  EXPECT_LE(static_cast<double>(*max), mean * 1.05);
  // The header's promise: bytes per node within one (largest) chunk of each other.
  EXPECT_LE(*max - *min, 4 * kMiB);
}

TEST(IndexPlacement, TwoReplicasOnThreeNodesAreDistinctAndBalanced) {
  PlaceRandomChunksAndCheckBalance(3, 2, 300);
}

TEST(IndexPlacement, OneReplicaOnThreeNodesIsBalanced) {
  PlaceRandomChunksAndCheckBalance(3, 1, 300);
}

TEST(IndexPlacement, ReplicasEqualToNodesPutsEveryChunkEverywhere) {
  PlaceRandomChunksAndCheckBalance(3, 3, 300);
  Placement placement(3, 3);
  std::vector<int> chosen = placement.Place(5);
  std::sort(chosen.begin(), chosen.end());
  EXPECT_EQ(chosen, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(placement.bytes_per_node(), (std::vector<std::uint64_t>{5, 5, 5}));
}

TEST(IndexPlacement, PicksLeastLoadedNodesWithTiesToLowerIndex) {
  Placement placement(3, 2);
  std::vector<int> first = placement.Place(10);
  std::sort(first.begin(), first.end());
  EXPECT_EQ(first, (std::vector<int>{0, 1}));
  std::vector<int> second = placement.Place(10);  // Loads 10, 10, 0: node 2, then 0 (tie).
  std::sort(second.begin(), second.end());
  EXPECT_EQ(second, (std::vector<int>{0, 2}));
  EXPECT_EQ(placement.bytes_per_node(), (std::vector<std::uint64_t>{20, 10, 10}));
}

TEST(IndexPlacement, IsDeterministic) {
  Placement a(5, 2);
  Placement b(5, 2);
  std::mt19937_64 rng(7);
  for (int i = 0; i < 200; ++i) {
    const std::uint64_t size = 1 + rng() % (4 * kMiB);
    ASSERT_EQ(a.Place(size), b.Place(size)) << "chunk " << i;
  }
  EXPECT_EQ(a.bytes_per_node(), b.bytes_per_node());
}

}  // namespace
}  // namespace ckptfs::index
