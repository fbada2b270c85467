#include <algorithm>
#include <limits>
#include <random>
#include <string>
#include <utility>

#include "common/log.h"
#include "netfetch/fetcher.h"

namespace ckptfs::netfetch {

namespace {

// Weight of the newest sample in a node's throughput average: follows a node that slows down
// within a few chunks, yet one lucky transfer does not reorder everything.
constexpr double kThroughputWeight = 0.3;
// A zero pause would spin through rounds without letting time pass.
constexpr Duration kMinRoundPause = std::chrono::milliseconds(1);

// Keeps a node's in-flight count right on every exit path of a transport call.
class InFlightGuard {
 public:
  explicit InFlightGuard(std::atomic<int>& count) : count_(count) { ++count_; }
  ~InFlightGuard() { --count_; }
  InFlightGuard(const InFlightGuard&) = delete;
  InFlightGuard& operator=(const InFlightGuard&) = delete;

 private:
  std::atomic<int>& count_;
};

double Seconds(Duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

struct RetryingFetcher::NodeState {
  explicit NodeState(NodeEndpoint e) : endpoint(std::move(e)) {}

  const NodeEndpoint endpoint;
  std::atomic<int> in_flight{0};
  // The fields below are guarded by RetryingFetcher::mu_.
  int consecutive_failures = 0;
  TimePoint not_before{};       // Backing off (tried last) until then.
  double bytes_per_second = 0;  // Average over verified transfers; 0 = not measured yet.
};

RetryingFetcher::RetryingFetcher(std::vector<NodeEndpoint> nodes, Transport* transport,
                                 Clock* clock, RetryOptions options)
    : transport_(transport), clock_(clock), options_(options), rng_(options.jitter_seed) {
  nodes_.reserve(nodes.size());
  for (NodeEndpoint& node : nodes) nodes_.push_back(std::make_unique<NodeState>(std::move(node)));
}

RetryingFetcher::~RetryingFetcher() = default;

Status RetryingFetcher::Fetch(const ChunkRef& chunk, std::span<std::uint8_t> dst,
                              TimePoint deadline) {
  ++counters_.fetches;
  const std::string hex = chunk.digest.Hex();
  if (dst.size() != chunk.size) {
    return InvalidArgumentError("buffer of " + std::to_string(dst.size()) + " bytes for chunk " +
                                hex + " of " + std::to_string(chunk.size) + " bytes");
  }
  std::vector<NodeState*> replicas = OrderReplicas(chunk);
  if (replicas.empty()) return NotFoundError("chunk " + hex + " has no replica on a known node");

  std::string last_error = "none: the deadline had passed before the first attempt";
  Duration pause = std::max(options_.round_pause, kMinRoundPause);
  while (true) {
    for (NodeState* node : replicas) {
      if (clock_->Now() >= deadline) break;
      Status status = TryReplica(*node, chunk, dst, deadline);
      if (status.ok()) return status;
      last_error = status.ToString();
    }
    const Duration left = deadline - clock_->Now();
    if (left <= Duration::zero()) break;
    clock_->SleepFor(std::min(pause, left));
    pause = std::min(pause * 2, std::max(options_.max_backoff, kMinRoundPause));
    replicas = OrderReplicas(chunk);  // Health changed during the round.
  }
  ++counters_.failed_fetches;
  return DeadlineExceededError("no replica of chunk " + hex +
                               " delivered within the deadline; last error: " + last_error);
}

RetryingFetcher::NodeState* RetryingFetcher::FindNode(std::int64_t id) {
  // nodes_ is fixed at construction, so no lock is needed; a mount has a handful of nodes.
  for (const auto& node : nodes_) {
    if (node->endpoint.id == id) return node.get();
  }
  return nullptr;
}

std::vector<RetryingFetcher::NodeState*> RetryingFetcher::OrderReplicas(const ChunkRef& chunk) {
  struct Candidate {
    NodeState* node;
    bool backing_off;
    TimePoint not_before;
    int in_flight;
    double speed;
  };
  // An unmeasured node counts as the fastest, so that every node gets measured.
  constexpr double kUnmeasured = std::numeric_limits<double>::infinity();
  const TimePoint now = clock_->Now();
  std::vector<Candidate> candidates;
  {
    std::lock_guard lock(mu_);
    for (std::int64_t id : chunk.nodes) {
      NodeState* node = FindNode(id);
      bool seen = std::any_of(candidates.begin(), candidates.end(),
                              [node](const Candidate& c) { return c.node == node; });
      if (node == nullptr || seen) continue;
      candidates.push_back(
          {node,
           now<node->not_before, node->not_before, node->in_flight.load(), node->bytes_per_second> 0
               ? node->bytes_per_second
               : kUnmeasured});
    }
  }
  // Stable, so that among equals the index's replica order decides.
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const Candidate& a, const Candidate& b) {
                     if (a.backing_off != b.backing_off) return !a.backing_off;
                     if (a.backing_off) return a.not_before < b.not_before;
                     if (a.in_flight != b.in_flight) return a.in_flight < b.in_flight;
                     return a.speed > b.speed;
                   });
  std::vector<NodeState*> ordered;
  ordered.reserve(candidates.size());
  for (const Candidate& c : candidates) ordered.push_back(c.node);
  return ordered;
}

Status RetryingFetcher::TryReplica(NodeState& node, const ChunkRef& chunk,
                                   std::span<std::uint8_t> dst, TimePoint deadline) {
  const TimePoint start = clock_->Now();
  const Duration timeout = std::min(options_.attempt_timeout, deadline - start);
  const std::string url = ChunkUrl(node.endpoint.url, chunk.digest);
  ++counters_.attempts;
  Status status;
  {
    InFlightGuard in_flight(node.in_flight);
    status = transport_->Get(url, dst, timeout);
  }
  const Duration took = clock_->Now() - start;
  // The transport checks the length; only the digest proves the bytes are the chunk's.
  if (status.ok() && Sha256(dst.data(), dst.size()) != chunk.digest) {
    ++counters_.digest_mismatches;
    status = DataLossError("SHA-256 mismatch for " + url);
  }
  if (!status.ok()) {
    ++counters_.failed_attempts;
    status = status.WithContext("node " + node.endpoint.name);
    LogDebug("fetch attempt failed: " + status.ToString());
    RecordFailure(node, status);
    return status;
  }
  counters_.bytes_fetched += dst.size();
  RecordSuccess(node, dst.size(), took);
  return status;
}

void RetryingFetcher::RecordSuccess(NodeState& node, std::uint64_t bytes, Duration took) {
  int failures = 0;
  {
    std::lock_guard lock(mu_);
    failures = node.consecutive_failures;
    node.consecutive_failures = 0;
    node.not_before = TimePoint{};
    // A transfer that took no measurable time says nothing about speed.
    if (took > Duration::zero() && bytes > 0) {
      const double sample = static_cast<double>(bytes) / Seconds(took);
      node.bytes_per_second =
          node.bytes_per_second > 0
              ? kThroughputWeight * sample + (1 - kThroughputWeight) * node.bytes_per_second
              : sample;
    }
  }
  if (failures > 0) {
    LogInfo("node " + node.endpoint.name + " (" + node.endpoint.url + ") recovered after " +
            std::to_string(failures) + " failed attempts");
  }
}

void RetryingFetcher::RecordFailure(NodeState& node, const Status& error) {
  const TimePoint now = clock_->Now();
  bool was_healthy = false;
  {
    std::lock_guard lock(mu_);
    was_healthy = node.consecutive_failures == 0;
    const int failures = ++node.consecutive_failures;
    Duration backoff = options_.initial_backoff;
    for (int i = 1; i < failures && backoff < options_.max_backoff; ++i) backoff *= 2;
    node.not_before = now + Jitter(std::min(backoff, options_.max_backoff));
  }
  if (was_healthy) {
    LogWarning("node " + node.endpoint.name + " (" + node.endpoint.url +
               ") is failing; trying other replicas first: " + error.ToString());
  }
}

Duration RetryingFetcher::Jitter(Duration d) {
  // +-25% so that many readers who saw a node fail together do not all come back at once.
  std::uniform_real_distribution<double> factor(0.75, 1.25);
  return std::chrono::duration_cast<Duration>(
      std::chrono::duration<double, std::nano>(static_cast<double>(d.count()) * factor(rng_)));
}

std::string ChunkUrl(const std::string& base_url, const Digest& digest) {
  const std::string hex = digest.Hex();
  return base_url + "/chunks/" + hex.substr(0, 2) + "/" + hex;
}

}  // namespace ckptfs::netfetch
