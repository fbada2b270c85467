#include "index/placement.h"

#include <algorithm>
#include <numeric>

namespace ckptfs::index {

Placement::Placement(int node_count, int replicas)
    : replicas_(std::clamp(replicas, 0, std::max(node_count, 0))),
      bytes_(static_cast<std::size_t>(std::max(node_count, 0)), 0) {}

std::vector<int> Placement::Place(std::uint64_t size) {
  std::vector<int> order(bytes_.size());
  std::iota(order.begin(), order.end(), 0);
  // Least-loaded first, ties to the lower index: the order is total, so the result depends only
  // on the sizes placed so far and never on the sort's stability.
  auto less_loaded = [this](int a, int b) {
    if (bytes_[a] != bytes_[b]) return bytes_[a] < bytes_[b];
    return a < b;
  };
  std::partial_sort(order.begin(), order.begin() + replicas_, order.end(), less_loaded);
  order.resize(static_cast<std::size_t>(replicas_));
  for (int node : order) bytes_[node] += size;
  return order;
}

}  // namespace ckptfs::index
