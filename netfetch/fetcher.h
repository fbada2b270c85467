// ChunkFetcher: gets the verified bytes of one chunk from whichever of its replicas can deliver.
//
// RetryingFetcher is the real one: it owns replica order (healthy nodes first, then the node with
// the fewest requests in flight, then the faster one), failover on any error (connection refused,
// timeout, HTTP error, short body, wrong SHA-256), per-node backoff after failures with jitter,
// and the overall deadline. Bytes whose digest does not match are never handed back.
// Thread safety: Fetch may be called from many threads at once.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/digest.h"
#include "common/status.h"
#include "netfetch/transport.h"

namespace ckptfs::netfetch {

struct ChunkRef {
  Digest digest;
  std::uint64_t size = 0;
  std::vector<std::int64_t> nodes;  // Node ids holding a replica.
};

class ChunkFetcher {
 public:
  virtual ~ChunkFetcher() = default;
  // Fills `dst` (REQUIRES: dst.size() == chunk.size) with the chunk's bytes, verified against
  // chunk.digest. Errors: DeadlineExceeded or Unavailable when no replica delivered by
  // `deadline` (the message carries the last replica's error), NotFound for no known replica.
  virtual Status Fetch(const ChunkRef& chunk, std::span<std::uint8_t> dst, TimePoint deadline) = 0;
};

struct NodeEndpoint {
  std::int64_t id = 0;
  std::string name;
  std::string url;  // Base URL, no trailing slash.
};

struct RetryOptions {
  // The longest one attempt may take; also bounded by what is left of the deadline.
  Duration attempt_timeout = std::chrono::seconds(10);
  // After a failure a node is tried last for this long, doubling per consecutive failure up to
  // max_backoff, with +-25% jitter. It is still tried when every other replica failed.
  Duration initial_backoff = std::chrono::milliseconds(200);
  Duration max_backoff = std::chrono::seconds(5);
  // Pause between rounds when every replica failed, doubling up to max_backoff.
  Duration round_pause = std::chrono::milliseconds(100);
  std::uint64_t jitter_seed = 0x5eed;
};

// Counters for `ckptfs stats` and the logs.
struct FetchCounters {
  std::atomic<std::uint64_t> fetches{0};   // Chunks asked for.
  std::atomic<std::uint64_t> attempts{0};  // Requests sent.
  std::atomic<std::uint64_t> failed_attempts{0};
  std::atomic<std::uint64_t> digest_mismatches{0};
  std::atomic<std::uint64_t> bytes_fetched{0};   // Verified bytes.
  std::atomic<std::uint64_t> failed_fetches{0};  // Deadline reached with no good replica.
};

class RetryingFetcher final : public ChunkFetcher {
 public:
  RetryingFetcher(std::vector<NodeEndpoint> nodes, Transport* transport, Clock* clock,
                  RetryOptions options = {});
  ~RetryingFetcher() override;

  Status Fetch(const ChunkRef& chunk, std::span<std::uint8_t> dst, TimePoint deadline) override;

  const FetchCounters& counters() const { return counters_; }

 private:
  struct NodeState;
  NodeState* FindNode(std::int64_t id);
  std::vector<NodeState*> OrderReplicas(const ChunkRef& chunk);
  // One GET of `chunk` from `node` with its digest check; updates the node's health.
  Status TryReplica(NodeState& node, const ChunkRef& chunk, std::span<std::uint8_t> dst,
                    TimePoint deadline);
  void RecordSuccess(NodeState& node, std::uint64_t bytes, Duration took);
  void RecordFailure(NodeState& node, const Status& error);
  Duration Jitter(Duration d);  // REQUIRES: mu_ held (uses rng_).

  Transport* transport_;
  Clock* clock_;
  RetryOptions options_;
  std::vector<std::unique_ptr<NodeState>> nodes_;
  std::mutex mu_;  // Guards the health fields of nodes_ and rng_.
  std::mt19937_64 rng_;
  FetchCounters counters_;
};

// "<base>/chunks/<hh>/<hex>".
std::string ChunkUrl(const std::string& base_url, const Digest& digest);

}  // namespace ckptfs::netfetch
