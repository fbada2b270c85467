// Placement: which nodes store the replicas of each new chunk.
//
// Greedy and online: each chunk goes to the `replicas` distinct nodes that hold the fewest bytes
// so far (ties to the lower node index), so bytes per node stay within one chunk of each other
// whatever the order of chunks. Thread safety: one thread at a time.
#pragma once

#include <cstdint>
#include <vector>

namespace ckptfs::index {

class Placement {
 public:
  // REQUIRES: 1 <= replicas <= node_count.
  Placement(int node_count, int replicas);

  // Returns node indexes (0..node_count-1) for a chunk of `size` bytes and charges them.
  std::vector<int> Place(std::uint64_t size);

  const std::vector<std::uint64_t>& bytes_per_node() const { return bytes_; }

 private:
  int replicas_;
  std::vector<std::uint64_t> bytes_;
};

}  // namespace ckptfs::index
