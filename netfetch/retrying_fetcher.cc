#include <algorithm>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "common/buffer.h"
#include "common/log.h"
#include "common/thread_name.h"
#include "common/units.h"
#include "netfetch/fetcher.h"

namespace ckptfs::netfetch {

namespace {

// Weight of the newest sample in a node's running averages (throughput, time to first byte):
// follows a node that slows down within a few chunks, yet one lucky transfer does not reorder
// everything.
constexpr double kNewestSampleWeight = 0.3;
// How often a long attempt looks again for a faster replica (RetryOptions::slow_transfer_factor).
constexpr Duration kSlowLookInterval = std::chrono::milliseconds(100);
// A zero pause would spin through rounds without letting time pass.
constexpr Duration kMinRoundPause = std::chrono::milliseconds(1);

// RunRounds's two ways of saying that no replica delivered: the deadline passed, or every replica
// was down and failed again.
bool IsNoReplicaDelivered(const Status& status) {
  return status.code() == StatusCode::kDeadlineExceeded ||
         status.code() == StatusCode::kUnavailable;
}

// Keeps an in-flight count (a node's requests, the fetcher's Fetch calls) right on every exit
// path.
class InFlightGuard {
 public:
  explicit InFlightGuard(std::atomic<int>& count) : count_(count), on_entry_(++count) {}
  ~InFlightGuard() { --count_; }
  InFlightGuard(const InFlightGuard&) = delete;
  InFlightGuard& operator=(const InFlightGuard&) = delete;

  // The count just after this guard entered, itself included.
  int on_entry() const { return on_entry_; }

 private:
  std::atomic<int>& count_;
  const int on_entry_;
};

double Seconds(Duration d) { return std::chrono::duration<double>(d).count(); }

std::string FormatRate(double bytes_per_second) {
  return FormatSize(static_cast<std::uint64_t>(bytes_per_second)) + "/s";
}

// Folds `sample` into a node's running average `average` (0: no sample yet).
void AddSample(double& average, double sample) {
  average =
      average > 0 ? kNewestSampleWeight * sample + (1 - kNewestSampleWeight) * average : sample;
}

// `base` doubled for each failure in a row after the first, at most `cap`.
Duration DoubledPerFailure(Duration base, int failures, Duration cap) {
  Duration d = std::min(base, cap);
  for (int i = 1; i < failures && d > Duration::zero() && d < cap; ++i) d = std::min(d * 2, cap);
  return d;
}

}  // namespace

struct RetryingFetcher::NodeState {
  explicit NodeState(NodeEndpoint e) : endpoint(std::move(e)) {}

  const NodeEndpoint endpoint;
  std::atomic<int> in_flight{0};
  // The fields below are guarded by RetryingFetcher::mu_.
  int consecutive_failures = 0;
  TimePoint not_before{};         // Backing off (tried last) until then.
  double bytes_per_second = 0;    // Average over verified transfers; 0 = not measured yet.
  TimePoint speed_measured_at{};  // When bytes_per_second last had a sample.
  double first_byte_seconds = 0;  // Average time to the first body byte; 0 = not measured yet.
  // Failed slowly since its last success: backing off until a probe of probe_url answers.
  bool awaiting_probe = false;
  bool probe_queued = false;  // Queued or running.
  std::string probe_url;      // The object of its latest slow failure.
  // Greeted, and no answer or failure from it since: asked after the nodes that answered.
  bool unanswered = false;
  bool left_as_slow = false;  // An attempt was left as too slow since its last success.
  // Its first failure since a read or probe last had an answer from it (RetryOptions::down_after).
  std::optional<TimePoint> failing_since;

  bool BackingOff(TimePoint now) const { return now < not_before || awaiting_probe; }
  bool Down(TimePoint now, Duration after) const {
    return after > Duration::zero() && failing_since && now - *failing_since >= after;
  }
  // Its measured speed if measured within `memory` of `now`, else 0.
  double RecentSpeed(TimePoint now, Duration memory) const {
    return now - speed_measured_at < memory ? bytes_per_second : 0;
  }
};

RetryingFetcher::RetryingFetcher(std::vector<NodeEndpoint> nodes, Transport* transport,
                                 Clock* clock, RetryOptions options)
    : transport_(transport), clock_(clock), options_(options), rng_(options.jitter_seed) {
  nodes_.reserve(nodes.size());
  for (NodeEndpoint& node : nodes) nodes_.push_back(std::make_unique<NodeState>(std::move(node)));
}

RetryingFetcher::~RetryingFetcher() {
  // Before the members the probe thread uses go; a probe under way ends at its own limits.
  prober_.request_stop();
  if (prober_.joinable()) prober_.join();
  for (std::jthread& greeter : greeters_) greeter.join();
}

// Verifies the bytes of one fetch as they land in dst: dst holds chunk bytes [base, base +
// dst.size()), base on a block boundary. Each byte is hashed once, right after the transport
// wrote it; a block's digest is compared as soon as its last byte is in. Without block digests
// the whole chunk is one block checked against the chunk digest. Used by one thread.
class RetryingFetcher::Verifier {
 public:
  Verifier(const ChunkRef& chunk, std::uint64_t base, std::span<std::uint8_t> dst,
           const VerifiedCallback& on_verified)
      : chunk_(chunk), dst_(dst), on_verified_(on_verified) {
    if (chunk.blocks.empty()) {
      block_size_ = chunk.size;
      digests_ = &chunk.digest;
    } else {
      block_size_ = chunk.block_size;
      first_block_ = static_cast<std::size_t>(base / chunk.block_size);
      digests_ = chunk.blocks.data() + first_block_;
    }
    base_ = base;
  }

  std::span<std::uint8_t> dst() const { return dst_; }
  std::uint64_t base() const { return base_; }
  std::size_t verified() const { return verified_; }
  bool complete() const { return verified_ == dst_.size(); }
  bool has_blocks() const { return !chunk_.blocks.empty(); }
  // Block of the chunk that failed its digest in this attempt, if any.
  std::optional<std::size_t> mismatch() const { return mismatch_; }

  // A new attempt writes dst from verified() on; anything hashed past that is dropped.
  void StartAttempt() {
    if (hashed_ != verified_) hasher_.Finish();  // Resets it.
    hashed_ = verified_;
    mismatch_.reset();
  }

  // dst[0, end) has landed. Hashes the new bytes, checks every block completed by them and
  // reports a longer verified prefix. False (stop the transfer) at the first wrong block.
  bool Advance(std::size_t end) {
    if (mismatch_) return false;
    end = std::min(end, dst_.size());
    while (hashed_ < end) {
      // Blocks start at multiples of block_size_ in dst, since base_ is on a block boundary.
      const std::size_t block_end =
          std::min<std::uint64_t>(dst_.size(), (hashed_ / block_size_ + 1) * block_size_);
      const std::size_t upto = std::min(end, block_end);
      hasher_.Update(dst_.data() + hashed_, upto - hashed_);
      hashed_ = upto;
      if (hashed_ < block_end) break;
      const std::size_t index = (hashed_ - 1) / block_size_;
      if (hasher_.Finish() != digests_[index]) {
        mismatch_ = first_block_ + index;
        break;  // The blocks before it are still good and reported.
      }
      verified_ = hashed_;
    }
    if (verified_ > reported_) {
      reported_ = verified_;
      if (on_verified_) on_verified_(verified_);
    }
    return !mismatch_;
  }

 private:
  const ChunkRef& chunk_;
  std::span<std::uint8_t> dst_;
  const VerifiedCallback& on_verified_;
  std::uint64_t base_ = 0;
  std::uint64_t block_size_ = 0;
  std::size_t first_block_ = 0;
  const Digest* digests_ = nullptr;  // Of the blocks in dst, in order.
  Sha256Hasher hasher_;
  std::size_t hashed_ = 0;    // dst[0, hashed_) went into the digests.
  std::size_t verified_ = 0;  // dst[0, verified_) matched.
  std::size_t reported_ = 0;  // Last value given to on_verified_.
  std::optional<std::size_t> mismatch_;
};

Status CheckBlockList(const ChunkRef& chunk) {
  if (chunk.blocks.empty()) return Status::Ok();
  const std::uint64_t bs = chunk.block_size;
  const std::uint64_t expected = bs == 0 ? 0 : chunk.size / bs + (chunk.size % bs != 0 ? 1 : 0);
  if (bs == 0 || chunk.blocks.size() != expected) {
    return InvalidArgumentError("chunk " + chunk.digest.Hex() + " of " +
                                std::to_string(chunk.size) + " bytes has " +
                                std::to_string(chunk.blocks.size()) +
                                " block digests for blocks of " + std::to_string(bs) + " bytes");
  }
  return Status::Ok();
}

ByteRange BlockBytes(const ChunkRef& chunk, std::size_t first_block, std::size_t end_block) {
  const std::uint64_t begin = std::min<std::uint64_t>(first_block * chunk.block_size, chunk.size);
  const std::uint64_t end = std::min<std::uint64_t>(end_block * chunk.block_size, chunk.size);
  return {begin, end - begin};
}

Status RetryingFetcher::Fetch(const ChunkRef& chunk, std::span<std::uint8_t> dst,
                              TimePoint deadline, const VerifiedCallback& on_verified,
                              const PauseCallback& pause) {
  ++counters_.fetches;
  const std::string hex = chunk.digest.Hex();
  if (dst.size() != chunk.size) {
    return InvalidArgumentError("buffer of " + std::to_string(dst.size()) + " bytes for chunk " +
                                hex + " of " + std::to_string(chunk.size) + " bytes");
  }
  CKPTFS_RETURN_IF_ERROR(CheckBlockList(chunk));
  const InFlightGuard under_way(fetches_under_way_);
  Status status;
  if (const std::size_t parts = LoneFetchParts(chunk, under_way.on_entry()); parts > 1) {
    status = FetchInParts(chunk, dst, deadline, on_verified, parts);
  } else {
    Verifier verifier(chunk, 0, dst, on_verified);
    status = RunRounds(chunk, verifier, deadline, "chunk " + hex, pause);
  }
  if (status.ok()) {
    counters_.bytes_fetched += dst.size();
  } else if (IsNoReplicaDelivered(status)) {
    ++counters_.failed_fetches;
  }
  return status;
}

std::size_t RetryingFetcher::LoneFetchParts(const ChunkRef& chunk, int fetches_under_way) {
  if (fetches_under_way != 1 || chunk.blocks.empty() || options_.lone_fetch_parts <= 1) return 1;
  if (options_.split_after > Duration::zero()) {
    double fastest = 0;  // Bytes per second; 0: no node of the chunk measured.
    {
      std::lock_guard lock(mu_);
      for (std::int64_t id : chunk.nodes) {
        if (const NodeState* node = FindNode(id)) {
          fastest = std::max(fastest, node->bytes_per_second);
        }
      }
    }
    if (fastest <= 0 || static_cast<double>(chunk.size) / fastest < Seconds(options_.split_after)) {
      return 1;
    }
  }
  const std::uint64_t min_part = std::max<std::uint64_t>(options_.min_part_bytes, 1);
  const std::uint64_t most = std::min<std::uint64_t>(
      static_cast<std::uint64_t>(options_.lone_fetch_parts), chunk.blocks.size());
  return static_cast<std::size_t>(std::clamp<std::uint64_t>(chunk.size / min_part, 1, most));
}

Status RetryingFetcher::FetchInParts(const ChunkRef& chunk, std::span<std::uint8_t> dst,
                                     TimePoint deadline, const VerifiedCallback& on_verified,
                                     std::size_t parts) {
  ++counters_.split_fetches;
  const std::string hex = chunk.digest.Hex();
  // Whole blocks per part, the first parts taking one more when they do not divide evenly.
  std::vector<ByteRange> ranges;
  ranges.reserve(parts);
  const std::size_t blocks = chunk.blocks.size();
  for (std::size_t k = 0, first = 0; k < parts; ++k) {
    const std::size_t count = blocks / parts + (k < blocks % parts ? 1 : 0);
    ranges.push_back(BlockBytes(chunk, first, first + count));
    first += count;
  }
  // Part k starts on the k-th healthy replica, round robin, so that parts share out the nodes;
  // on those that have answered their greeting, when any has (a node down since the mount is
  // found by its greeting), and not on one far slower than the others (its part would be left
  // as too slow after the grace, and the whole chunk wait for it). The order is taken once:
  // parts starting together would all see the same nodes idle.
  std::size_t healthy = 0;
  std::size_t answered = 0;
  const std::vector<NodeState*> order = OrderReplicas(chunk, &healthy, &answered);
  if (answered > 0) healthy = answered;
  const std::vector<NodeState*> starts = WithoutFarSlower(std::span(order).first(healthy));
  static const PauseCallback kSleep;
  const auto run_part = [&](std::size_t k, const VerifiedCallback& progress) {
    Verifier verifier(chunk, ranges[k].offset, dst.subspan(ranges[k].offset, ranges[k].length),
                      progress);
    return RunRounds(chunk, verifier, deadline, "part " + std::to_string(k) + " of chunk " + hex,
                     kSleep, starts.empty() ? nullptr : starts[k % starts.size()]);
  };
  static const VerifiedCallback kNobody;
  // Helper thread k - 1 runs part k and writes results[k]; joining it is what makes that visible.
  std::vector<Status> results(parts);
  std::vector<std::thread> helpers;
  helpers.reserve(parts - 1);
  for (std::size_t k = 1; k < parts; ++k) {
    try {
      helpers.emplace_back([&, k] {
        SetThreadName("ckptfs-part");
        results[k] = run_part(k, kNobody);
      });
    } catch (const std::system_error&) {
      break;  // No thread to be had: the parts left run on this thread, after the first.
    }
  }
  // The first part runs here, so that on_verified follows it block by block: it is the prefix
  // that a reader of the chunk's start is waiting for.
  Status status = run_part(0, on_verified);
  for (std::size_t k = 1; k < parts; ++k) {
    if (k <= helpers.size()) {
      helpers[k - 1].join();  // Even after a failure: the helpers write into dst.
    } else if (status.ok()) {
      results[k] = run_part(k, kNobody);
    }
    if (!status.ok()) continue;
    status = results[k];
    if (status.ok() && on_verified) on_verified(ranges[k].offset + ranges[k].length);
  }
  return status;
}

Status RetryingFetcher::FetchBlocks(const ChunkRef& chunk, std::size_t first_block,
                                    std::size_t end_block, std::span<std::uint8_t> dst,
                                    TimePoint deadline, const PauseCallback& pause) {
  ++counters_.range_fetches;
  const std::string hex = chunk.digest.Hex();
  if (chunk.blocks.empty()) {
    return FailedPreconditionError("chunk " + hex + " has no block digests (a v1 index)");
  }
  CKPTFS_RETURN_IF_ERROR(CheckBlockList(chunk));
  if (first_block >= end_block || end_block > chunk.blocks.size()) {
    return InvalidArgumentError("blocks [" + std::to_string(first_block) + ", " +
                                std::to_string(end_block) + ") of chunk " + hex + " with " +
                                std::to_string(chunk.blocks.size()) + " blocks");
  }
  const ByteRange range = BlockBytes(chunk, first_block, end_block);
  if (dst.size() != range.length) {
    return InvalidArgumentError("buffer of " + std::to_string(dst.size()) + " bytes for " +
                                std::to_string(range.length) + " bytes of blocks of chunk " + hex);
  }
  static const VerifiedCallback kNobody;
  Verifier verifier(chunk, range.offset, dst, kNobody);
  Status status = RunRounds(chunk, verifier, deadline,
                            "blocks [" + std::to_string(first_block) + ", " +
                                std::to_string(end_block) + ") of chunk " + hex,
                            pause);
  if (status.ok()) {
    counters_.range_bytes_fetched += dst.size();
  } else if (IsNoReplicaDelivered(status)) {
    ++counters_.failed_range_fetches;
  }
  return status;
}

Status RetryingFetcher::RunRounds(const ChunkRef& chunk, Verifier& verifier, TimePoint deadline,
                                  const std::string& what, const PauseCallback& pause,
                                  NodeState* first_choice) {
  std::size_t healthy = 0;
  std::vector<NodeState*> replicas = OrderReplicas(chunk, &healthy);
  if (auto it = std::find(replicas.begin(), replicas.end(), first_choice); it != replicas.end()) {
    std::rotate(replicas.begin(), it, it + 1);
  }
  if (replicas.empty()) {
    return NotFoundError("chunk " + chunk.digest.Hex() + " has no replica on a known node");
  }
  if (const std::optional<std::vector<NodeState*>> once = AskOnceIfAllDown(replicas)) {
    return AskEachOnce(*once, chunk, verifier, deadline, what);
  }
  std::string last_error = "none: the deadline had passed before the first attempt";
  Duration round_pause = std::max(options_.round_pause, kMinRoundPause);
  while (true) {
    for (std::size_t i = 0; i < replicas.size(); ++i) {
      if (clock_->Now() >= deadline) break;
      // Healthy replicas lead the order. A first choice that has begun to back off since its
      // part was given it, rotated to the front, shifts them by one: then one attempt fewer
      // gets the stall timeout, the safe side.
      const bool another_healthy = i + 1 < healthy;
      const std::span<NodeState* const> alternatives =
          another_healthy ? std::span(replicas).subspan(i + 1, healthy - i - 1)
                          : std::span<NodeState* const>();
      Status status =
          TryReplica(*replicas[i], chunk, verifier, deadline, another_healthy, alternatives);
      if (status.ok()) return status;
      last_error = status.ToString();
    }
    const Duration left = deadline - clock_->Now();
    if (left <= Duration::zero()) break;
    // The bytes past the verified prefix are written again, if at all, by the next round.
    DiscardPages(verifier.dst().subspan(verifier.verified()));
    if (!pause) {
      clock_->SleepFor(std::min(round_pause, left));
    } else if (!pause(std::min(round_pause, left))) {
      break;
    }
    round_pause = std::min(round_pause * 2, std::max(options_.max_backoff, kMinRoundPause));
    replicas = OrderReplicas(chunk, &healthy);  // Health changed during the round.
  }
  return DeadlineExceededError("no replica of " + what +
                               " delivered within the deadline; last error: " + last_error);
}

Status RetryingFetcher::AskEachOnce(std::span<NodeState* const> nodes, const ChunkRef& chunk,
                                    Verifier& verifier, TimePoint deadline,
                                    const std::string& what) {
  std::string error = "each awaits a probe";
  for (NodeState* node : nodes) {
    if (clock_->Now() >= deadline) break;
    // A node back from the dead gets no longer to start answering than a live one would.
    Status status = TryReplica(*node, chunk, verifier, deadline, /*may_stall=*/true, {});
    if (status.ok()) return status;
    error = status.ToString();
  }
  ++counters_.down_fetches;
  return UnavailableError(
      "every replica of " + what + " is down (no answer for " +
      std::to_string(std::chrono::floor<std::chrono::milliseconds>(options_.down_after).count()) +
      " ms or more); last error: " + error);
}

std::vector<NodeHealth> RetryingFetcher::Health() const {
  const TimePoint now = clock_->Now();
  std::vector<NodeHealth> health;
  health.reserve(nodes_.size());
  std::lock_guard lock(mu_);
  for (const auto& node : nodes_) {
    health.push_back({node->endpoint.id, node->endpoint.name, node->in_flight.load(),
                      node->consecutive_failures, node->BackingOff(now), node->bytes_per_second,
                      std::max(node->not_before - now, Duration::zero()), node->awaiting_probe,
                      node->unanswered, node->Down(now, options_.down_after)});
  }
  return health;
}

RetryingFetcher::NodeState* RetryingFetcher::FindNode(std::int64_t id) {
  // nodes_ is fixed at construction, so no lock is needed; a mount has a handful of nodes.
  for (const auto& node : nodes_) {
    if (node->endpoint.id == id) return node.get();
  }
  return nullptr;
}

std::vector<RetryingFetcher::NodeState*> RetryingFetcher::OrderReplicas(const ChunkRef& chunk,
                                                                        std::size_t* healthy,
                                                                        std::size_t* answered) {
  struct Candidate {
    NodeState* node;
    bool backing_off;
    TimePoint not_before;
    bool unanswered;
    double cost;  // How long, relatively, it would take the node to deliver.
    bool measured;
  };
  const TimePoint now = clock_->Now();
  std::vector<Candidate> candidates;
  {
    std::lock_guard lock(mu_);
    const auto measured = [&](const NodeState& node) {
      return node.RecentSpeed(now, options_.speed_memory) > 0;
    };
    // A node not measured lately counts as fast as the fastest, so that it gets measured, and
    // a node that was slow once is tried again now and then.
    double fastest = 0;
    for (const auto& node : nodes_) {
      if (measured(*node)) fastest = std::max(fastest, node->bytes_per_second);
    }
    for (std::int64_t id : chunk.nodes) {
      NodeState* node = FindNode(id);
      bool seen = std::any_of(candidates.begin(), candidates.end(),
                              [node](const Candidate& c) { return c.node == node; });
      if (node == nullptr || seen) continue;
      // A read would ask it now, were it not for the probe: time to send one.
      if (node->awaiting_probe && now >= node->not_before && !node->probe_queued) {
        QueueProbe(*node);
      }
      const bool known = measured(*node);
      const double speed = known ? node->bytes_per_second : (fastest > 0 ? fastest : 1);
      // Its requests under way share it: a new one waits for them, as it were.
      const double cost = (node->in_flight.load() + 1) / speed;
      candidates.push_back(
          {node, node->BackingOff(now), node->not_before, node->unanswered, cost, known});
    }
  }
  // Stable, so that among equals the index's replica order decides.
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const Candidate& a, const Candidate& b) {
                     if (a.backing_off != b.backing_off) return !a.backing_off;
                     if (a.backing_off) return a.not_before < b.not_before;
                     if (a.unanswered != b.unanswered) return !a.unanswered;
                     if (a.cost != b.cost) return a.cost < b.cost;
                     return !a.measured && b.measured;
                   });
  if (healthy != nullptr) {
    *healthy = static_cast<std::size_t>(std::count_if(
        candidates.begin(), candidates.end(), [](const Candidate& c) { return !c.backing_off; }));
  }
  if (answered != nullptr) {
    *answered = static_cast<std::size_t>(
        std::count_if(candidates.begin(), candidates.end(),
                      [](const Candidate& c) { return !c.backing_off && !c.unanswered; }));
  }
  std::vector<NodeState*> ordered;
  ordered.reserve(candidates.size());
  for (const Candidate& c : candidates) ordered.push_back(c.node);
  return ordered;
}

std::optional<std::vector<RetryingFetcher::NodeState*>> RetryingFetcher::AskOnceIfAllDown(
    std::span<NodeState* const> replicas) {
  const TimePoint now = clock_->Now();
  std::vector<NodeState*> once;
  std::lock_guard lock(mu_);
  for (NodeState* node : replicas) {
    if (!node->Down(now, options_.down_after)) return std::nullopt;
    if (!node->awaiting_probe) once.push_back(node);
  }
  return once;
}

std::vector<RetryingFetcher::NodeState*> RetryingFetcher::WithoutFarSlower(
    std::span<NodeState* const> nodes) {
  const TimePoint now = clock_->Now();
  std::lock_guard lock(mu_);
  double fastest = 0;
  for (const NodeState* node : nodes) {
    fastest = std::max(fastest, node->RecentSpeed(now, options_.speed_memory));
  }
  std::vector<NodeState*> kept;
  kept.reserve(nodes.size());
  for (NodeState* node : nodes) {
    const double speed = node->RecentSpeed(now, options_.speed_memory);
    // Not measured lately: as fast as the fastest, as in OrderReplicas.
    if (speed <= 0 || options_.slow_transfer_factor <= 0 ||
        speed * options_.slow_transfer_factor >= fastest) {
      kept.push_back(node);
    }
  }
  return kept;
}

std::pair<double, std::string> RetryingFetcher::FastestMeasured(std::span<NodeState* const> nodes) {
  const TimePoint now = clock_->Now();
  std::pair<double, std::string> fastest;
  std::lock_guard lock(mu_);
  for (const NodeState* node : nodes) {
    if (!node->BackingOff(now) && node->bytes_per_second > fastest.first) {
      fastest = {node->bytes_per_second, node->endpoint.name};
    }
  }
  return fastest;
}

Status RetryingFetcher::TryReplica(NodeState& node, const ChunkRef& chunk, Verifier& verifier,
                                   TimePoint deadline, bool may_stall,
                                   std::span<NodeState* const> alternatives) {
  const TimePoint start = clock_->Now();
  RequestLimits limits{std::min(options_.attempt_timeout, deadline - start)};
  if (may_stall) {
    limits.stall_timeout = options_.stall_timeout;
    std::lock_guard lock(mu_);
    limits.first_byte_timeout = FirstByteTimeoutLocked(node);
  }
  const std::string url = ChunkUrl(node.endpoint.url, chunk.digest);
  verifier.StartAttempt();
  const std::size_t from = verifier.verified();
  const std::span<std::uint8_t> rest = verifier.dst().subspan(from);
  // Told of the attempt's bytes; hashes them while they are still in the CPU cache.
  std::optional<TimePoint> first_byte_at;
  std::optional<double> too_slow;              // Its speed, once it is left for `alternative`.
  std::pair<double, std::string> alternative;  // The fastest of `alternatives` at the last look.
  TimePoint next_look = start + options_.slow_transfer_grace;
  const ProgressCallback progress = [&](std::size_t received) {
    const TimePoint now = clock_->Now();
    if (!first_byte_at) first_byte_at = now;
    if (!verifier.Advance(from + received)) return false;
    if (now < next_look || alternatives.empty()) return true;
    // Looked up again now and then: the replicas left may have been measured since the start.
    next_look = now + kSlowLookInterval;
    alternative = FastestMeasured(alternatives);
    too_slow = TooSlow(now - start, received, rest.size(), alternative.first);
    return !too_slow;
  };
  // A whole chunk from its start is a plain GET, the request any cache in between knows best;
  // blocks, and a resumed chunk, are a Range GET of what is still missing. Verified bytes are
  // never written again: they lie before `rest`.
  const bool whole = verifier.base() == 0 && from == 0 && rest.size() == chunk.size;
  ++counters_.attempts;
  if (from > 0) ++counters_.resumed_attempts;
  Status status;
  {
    InFlightGuard in_flight(node.in_flight);
    status = whole ? transport_->Get(url, rest, limits, progress)
                   : transport_->GetRange(url, verifier.base() + from, rest, limits, progress);
  }
  const Duration took = clock_->Now() - start;
  // A transport need not report every byte: what it returned OK is verified here.
  if (status.ok()) verifier.Advance(verifier.dst().size());
  bool left_as_slow = false;
  if (const std::optional<std::size_t> block = verifier.mismatch()) {
    ++counters_.digest_mismatches;
    status =
        verifier.has_blocks()
            ? DataLossError("SHA-256 mismatch in block " + std::to_string(*block) + " of " + url)
            : DataLossError("SHA-256 mismatch for " + url);
  } else if (verifier.complete()) {
    // Every byte matched the index's digests; a transport complaint after that (say, a body
    // longer than asked for) does not make the verified bytes wrong.
    status = Status::Ok();
  } else if (too_slow) {
    ++counters_.slow_attempts;
    left_as_slow = true;
    status = UnavailableError(
        url + ": too slow, " + FormatRate(*too_slow) + " after " +
        std::to_string(std::chrono::ceil<std::chrono::milliseconds>(took).count()) +
        " ms, where node " + alternative.second + " delivers " + FormatRate(alternative.first));
  } else if (status.ok()) {
    status = InternalError("transport returned fewer bytes than asked from " + url);
  }
  if (!status.ok()) {
    ++counters_.failed_attempts;
    status = status.WithContext("node " + node.endpoint.name);
    LogDebug("fetch attempt failed: " + status.ToString());
    if (left_as_slow) {
      RecordSlow(node, *too_slow, status);
    } else {
      RecordFailure(node, status, took, url);
    }
    return status;
  }
  RecordSuccess(node, rest.size(), took, first_byte_at ? *first_byte_at - start : Duration{});
  return status;
}

std::optional<double> RetryingFetcher::TooSlow(Duration elapsed, std::size_t received,
                                               std::size_t wanted, double alternative_speed) const {
  if (options_.slow_transfer_factor <= 0 || alternative_speed <= 0 ||
      elapsed < options_.slow_transfer_grace || received >= wanted) {
    return std::nullopt;
  }
  const double speed = static_cast<double>(received) / Seconds(elapsed);
  const double left = static_cast<double>(wanted - received);
  const double here = speed > 0 ? left / speed : std::numeric_limits<double>::infinity();
  const double there = left / alternative_speed;
  if (here <= options_.slow_transfer_factor * there ||
      here - there <= Seconds(options_.slow_transfer_grace)) {
    return std::nullopt;
  }
  return speed;
}

Duration RetryingFetcher::FirstByteTimeoutLocked(const NodeState& node) const {
  if (options_.first_byte_factor <= 0 || node.first_byte_seconds <= 0) return Duration::zero();
  const double seconds = std::max(options_.first_byte_factor * node.first_byte_seconds,
                                  Seconds(options_.min_first_byte_timeout));
  // No shorter than the stall timeout would make it: then it adds nothing.
  if (options_.stall_timeout > Duration::zero() && seconds >= Seconds(options_.stall_timeout)) {
    return Duration::zero();
  }
  return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(seconds));
}

void RetryingFetcher::RecordSuccess(NodeState& node, std::uint64_t bytes, Duration took,
                                    Duration first_byte) {
  int failures = 0;
  {
    std::lock_guard lock(mu_);
    failures = node.consecutive_failures;
    node.consecutive_failures = 0;
    node.not_before = TimePoint{};
    node.awaiting_probe = false;
    node.unanswered = false;
    node.left_as_slow = false;
    node.failing_since.reset();
    // A transfer that took no measurable time says nothing about speed, nor a first byte that
    // came at once (a test's clock) about how soon the node answers.
    if (took > Duration::zero() && bytes > 0 && bytes >= options_.min_speed_sample_bytes) {
      AddSample(node.bytes_per_second, static_cast<double>(bytes) / Seconds(took));
      node.speed_measured_at = clock_->Now();
    }
    if (first_byte > Duration::zero()) AddSample(node.first_byte_seconds, Seconds(first_byte));
  }
  if (failures > 0) {
    LogInfo("node " + node.endpoint.name + " (" + node.endpoint.url + ") recovered after " +
            std::to_string(failures) + " failed attempts");
  }
}

void RetryingFetcher::RecordFailure(NodeState& node, const Status& error, Duration took,
                                    const std::string& url, bool ends_probe) {
  const TimePoint now = clock_->Now();
  bool was_healthy = false;
  {
    std::lock_guard lock(mu_);
    was_healthy = node.consecutive_failures == 0;
    // With the new backoff in place, so that no read sees the node between the two.
    if (ends_probe) node.probe_queued = false;
    node.unanswered = false;
    if (options_.probe_slow_nodes && took >= options_.slow_failure) {
      node.awaiting_probe = true;
      node.probe_url = url;
    }
    if (!node.failing_since) node.failing_since = now;
    const int failures = ++node.consecutive_failures;
    const Duration backoff =
        std::max(DoubledPerFailure(options_.initial_backoff, failures, options_.max_backoff),
                 SlowFailureBackoff(took, failures));
    node.not_before = std::max(node.not_before, now + Jitter(backoff));
  }
  if (was_healthy) {
    LogWarning("node " + node.endpoint.name + " (" + node.endpoint.url +
               ") is failing; trying other replicas first: " + error.ToString());
  }
}

void RetryingFetcher::RecordSlow(NodeState& node, double speed, const Status& why) {
  bool newly_slow = false;
  {
    std::lock_guard lock(mu_);
    // Its speed now, not an average: the attempt ran for the grace at least, and was far below
    // what the node had been measured at. No backoff: that would rank the node with nodes that
    // do not answer at all, and a read whose other replicas are those would wait for them.
    node.bytes_per_second = speed;
    node.speed_measured_at = clock_->Now();
    node.unanswered = false;
    node.failing_since.reset();
    newly_slow = !node.left_as_slow;
    node.left_as_slow = true;
  }
  if (newly_slow) {
    LogWarning("node " + node.endpoint.name + " (" + node.endpoint.url +
               ") is slow; reading from faster replicas first: " + why.ToString());
  }
}

Duration RetryingFetcher::SlowFailureBackoff(Duration took, int failures) const {
  const Duration cap = options_.max_slow_failure_backoff;
  // Capped as a double first: a Duration cannot hold every product.
  const double seconds = options_.slow_failure_factor * Seconds(took);
  const Duration base =
      seconds < Seconds(cap)
          ? std::chrono::duration_cast<Duration>(std::chrono::duration<double>(seconds))
          : cap;
  return DoubledPerFailure(base, failures, cap);
}

Duration RetryingFetcher::Jitter(Duration d) {
  // +-25% so that many readers who saw a node fail together do not all come back at once.
  std::uniform_real_distribution<double> factor(0.75, 1.25);
  return std::chrono::duration_cast<Duration>(
      std::chrono::duration<double, std::nano>(static_cast<double>(d.count()) * factor(rng_)));
}

void RetryingFetcher::QueueProbe(NodeState& node) {
  if (!prober_.joinable()) {
    try {
      prober_ = std::jthread([this](std::stop_token stop) {
        SetThreadName("ckptfs-probe");
        RunProbes(stop);
      });
    } catch (const std::system_error&) {
      // No thread to be had: the node goes back to reads when its backoff ends, as a node that
      // failed quickly does, and its next stall shows again.
      node.awaiting_probe = false;
      return;
    }
  }
  node.probe_queued = true;
  probe_queue_.push_back(&node);
  probe_wake_.notify_one();
}

void RetryingFetcher::RunProbes(std::stop_token stop) {
  std::unique_lock lock(mu_);
  // wait() is true with probes queued even once a stop is requested; the stop wins.
  while (probe_wake_.wait(lock, stop, [this] { return !probe_queue_.empty(); }) &&
         !stop.stop_requested()) {
    NodeState* node = probe_queue_.front();
    probe_queue_.pop_front();
    const std::string url = node->probe_url;
    lock.unlock();
    Probe(*node, url);
    lock.lock();
  }
}

void RetryingFetcher::Probe(NodeState& node, const std::string& url) {
  ++counters_.probes;
  const TimePoint start = clock_->Now();
  // One byte: the answer, not the object, is what is asked for. Its bytes are not verified, and
  // need not be: reads verify everything they take from the node afterwards.
  std::uint8_t byte = 0;
  const RequestLimits limits{options_.attempt_timeout, options_.stall_timeout};
  Status status;
  {
    InFlightGuard in_flight(node.in_flight);
    status =
        transport_->GetRange(url, 0, std::span<std::uint8_t>(&byte, 1), limits, ProgressCallback());
  }
  if (!status.ok()) {
    ++counters_.failed_probes;
    status = status.WithContext("probe of node " + node.endpoint.name);
    // Once per backoff at most: an operator sees that the node is still down, and why.
    LogInfo(status.ToString() + "; reads still pass it over");
    RecordFailure(node, status, clock_->Now() - start, url, /*ends_probe=*/true);
    return;
  }
  {
    std::lock_guard lock(mu_);
    node.probe_queued = false;
    // Its failures in a row still count until a read succeeds there: should it fail again, its
    // backoff goes on doubling.
    node.awaiting_probe = false;
    node.not_before = TimePoint{};
    node.failing_since.reset();
  }
  LogInfo("node " + node.endpoint.name + " (" + node.endpoint.url +
          ") answered a probe; reads use it again");
}

void RetryingFetcher::Greet(const std::vector<NodeObject>& objects) {
  for (const NodeObject& object : objects) {
    NodeState* node = FindNode(object.node);
    if (node == nullptr) continue;
    std::string url = ChunkUrl(node->endpoint.url, object.digest);
    {
      std::lock_guard lock(mu_);
      node->unanswered = true;
    }
    try {
      greeters_.emplace_back([this, node, url = std::move(url)] {
        SetThreadName("ckptfs-greet");
        GreetOne(*node, url);
      });
    } catch (const std::system_error&) {
      // No thread to be had: reads meet the node as they would have without a greeting.
      std::lock_guard lock(mu_);
      node->unanswered = false;
    }
  }
}

void RetryingFetcher::GreetOne(NodeState& node, const std::string& url) {
  const TimePoint start = clock_->Now();
  const RequestLimits limits{options_.attempt_timeout, options_.stall_timeout};
  Result<std::uint64_t> answer = [&] {
    InFlightGuard in_flight(node.in_flight);
    return transport_->Head(url, limits);
  }();
  const Duration took = clock_->Now() - start;
  // A server that does not do HEAD still answered, as soon as it would answer a GET.
  const bool refused_head = answer.status().code() == StatusCode::kFailedPrecondition;
  if (!answer.ok() && !refused_head) {
    RecordFailure(node, answer.status().WithContext("greeting of node " + node.endpoint.name), took,
                  url);
    ++counters_.failed_greetings;
  } else {
    // The answer's headers are its first bytes; a HEAD has no body to measure a speed by. A read
    // that failed there meanwhile keeps its backoff: a node may answer a HEAD and hang on a GET.
    std::lock_guard lock(mu_);
    node.unanswered = false;
    if (took > Duration::zero()) AddSample(node.first_byte_seconds, Seconds(took));
  }
  // Last, so that a greeting counted has had its effect on the node's health.
  ++counters_.greetings;
}

std::string ChunkUrl(const std::string& base_url, const Digest& digest) {
  const std::string hex = digest.Hex();
  return base_url + "/chunks/" + hex.substr(0, 2) + "/" + hex;
}

}  // namespace ckptfs::netfetch
