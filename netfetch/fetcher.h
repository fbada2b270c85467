// ChunkFetcher: gets the verified bytes of one chunk, or of some of its blocks, from whichever of
// its replicas can deliver.
//
// Verification. A chunk of a v2 index comes with the SHA-256 of each of its blocks (ChunkRef::
// blocks, from IndexReader::Blocks). Then every block is checked against its listed digest as
// soon as its last byte has arrived, while the body is still streaming in, and checking all the
// blocks is the whole check: the index is the root of trust, it lists both the chunk digest and
// the block digests, so bytes that match every block digest are the bytes publish hashed. The
// chunk digest still names the object (its URL) but is not recomputed. A chunk of a v1 index
// has no block digests and is verified whole against ChunkRef::digest once all of it arrived.
//
// RetryingFetcher is the real one: it owns replica order (healthy nodes first, then nodes that
// have answered before nodes greeted and not heard from yet, then the node that would deliver
// soonest: its requests in flight plus one, over its measured speed), failover on any error
// (connection refused, timeout, nothing received for RetryOptions::stall_timeout while another
// replica is healthy, far slower than a replica left to try, HTTP error, short body, wrong
// SHA-256), per-node backoff after failures with jitter, and the overall deadline. With block
// digests, a failover resumes on the next replica with a Range GET from the end of the verified
// prefix instead of starting over. Bytes that were not verified are never reported as such.
//
// Lone fetches in parts. A whole-chunk Fetch that starts while no other Fetch of this fetcher is
// under way (a file read on its own, the first chunk of a read) and that one GET would take long
// over (RetryOptions::split_after, at the fastest speed measured from the chunk's nodes) is split
// into up to RetryOptions::lone_fetch_parts Range GETs of consecutive runs of blocks, sent at
// once, each on its own thread and, where the replicas allow, to different nodes: where one
// connection is slow (a long round trip, a server that caps each connection) parts multiply
// it, and they are received and hashed on several cores. Each part fails over on its own. The
// verified prefix reported to on_verified grows block by block with the first part, then part
// by part. A fast single stream is left alone: on a box whose cores are the limit, parts only
// move the first bytes later. While other fetches run, connections and cores are busy already,
// and a chunk stays one GET.
// Greetings. Before the first read a mount asks each node for one object it holds (Greet), all
// at once: a node that is down is then known, and backed off, before a read would wait for it,
// and the others have their time to first byte measured, so a read is given less time to wait
// for an answer from the start (RetryOptions::first_byte_factor).
// Probes. A node whose attempt failed slowly (a stall, a timeout) would cost the next read that
// asks it as much again, so when its backoff ends reads still pass it over until a probe, sent
// on a thread of the fetcher's own, has had an answer from it (RetryOptions::slow_failure).
// Thread safety: Fetch and FetchBlocks may be called from many threads at once. The destructor
// waits for a probe under way (bounded by the stall timeout, or the attempt timeout).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
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
  // The block digests the index lists for this chunk (index::BlockList): the SHA-256 of each
  // consecutive block_size-byte block, the last one possibly shorter, ceil(size / block_size) of
  // them. Empty, with block_size 0, for a chunk of a v1 index.
  std::uint64_t block_size = 0;
  std::vector<Digest> blocks = {};
};

// InvalidArgument unless chunk.blocks is empty or holds exactly ceil(size / block_size) digests
// with a non-zero block_size.
Status CheckBlockList(const ChunkRef& chunk);

// Bytes [offset, offset + length) of the chunk are its blocks [first_block, end_block).
struct ByteRange {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
};
// REQUIRES: chunk.block_size > 0 and first_block <= end_block <= chunk.blocks.size().
ByteRange BlockBytes(const ChunkRef& chunk, std::size_t first_block, std::size_t end_block);

// Told how many leading bytes of a fetch's dst are verified and final; see ChunkFetcher::Fetch.
using VerifiedCallback = std::function<void(std::size_t verified_bytes)>;

// Spends a fetch's pause: every replica failed in a round, and the next round is to start
// `pause` later. It sleeps that long, and may give up meanwhile what the fetch holds that other
// fetches need (the caller's fetch slot), since a fetch whose nodes are down can pause again
// and again until its deadline. Returns whether the fetch goes on; false ends it with its last
// error. Called on the fetching thread. Empty: the fetcher sleeps itself.
using PauseCallback = std::function<bool(Duration pause)>;

class ChunkFetcher {
 public:
  virtual ~ChunkFetcher() = default;

  // Fills `dst` (REQUIRES: dst.size() == chunk.size) with the chunk's bytes, verified as the
  // header describes. `on_verified` (may be empty) is called on the calling thread, while the
  // fetch runs, with the number of leading bytes of dst that are verified: the values only grow,
  // bytes below the latest value are final and are never written again (other threads may read
  // them at once), and on success the last call is with chunk.size. With block digests that
  // happens block by block as the body streams in, and also during an attempt that fails later;
  // without them (v1) it is one call at the end. After a failure dst holds the verified prefix
  // last reported and unspecified bytes past it.
  // Between rounds over the replicas the fetch pauses through `pause` (see PauseCallback); the
  // pages of dst past the verified prefix may be given back to the system before a pause.
  // Errors: DeadlineExceeded or Unavailable when no replica delivered by `deadline` (the message
  // carries the last replica's error), NotFound for no known replica, InvalidArgument for a dst
  // of the wrong size or a block list that does not fit the chunk (CheckBlockList).
  virtual Status Fetch(const ChunkRef& chunk, std::span<std::uint8_t> dst, TimePoint deadline,
                       const VerifiedCallback& on_verified, const PauseCallback& pause) = 0;
  Status Fetch(const ChunkRef& chunk, std::span<std::uint8_t> dst, TimePoint deadline,
               const VerifiedCallback& on_verified) {
    return Fetch(chunk, dst, deadline, on_verified, PauseCallback());
  }
  // Fetch without following progress: dst is verified whole when it returns OK.
  Status Fetch(const ChunkRef& chunk, std::span<std::uint8_t> dst, TimePoint deadline) {
    return Fetch(chunk, dst, deadline, VerifiedCallback(), PauseCallback());
  }

  // Fills `dst` with blocks [first_block, end_block) of the chunk, that is bytes
  // BlockBytes(chunk, first_block, end_block) (REQUIRES: dst.size() is their length), with one
  // HTTP Range GET per attempt, each block verified against its listed digest; failover, backoff
  // and deadline as for Fetch, a failover resuming after the blocks already verified.
  // FailedPrecondition when the chunk has no block digests (v1 index); InvalidArgument for an
  // empty or out-of-range block range or a dst of the wrong size; other errors as for Fetch.
  virtual Status FetchBlocks(const ChunkRef& chunk, std::size_t first_block, std::size_t end_block,
                             std::span<std::uint8_t> dst, TimePoint deadline,
                             const PauseCallback& pause) = 0;
  Status FetchBlocks(const ChunkRef& chunk, std::size_t first_block, std::size_t end_block,
                     std::span<std::uint8_t> dst, TimePoint deadline) {
    return FetchBlocks(chunk, first_block, end_block, dst, deadline, PauseCallback());
  }
};

struct NodeEndpoint {
  std::int64_t id = 0;
  std::string name;
  std::string url;  // Base URL, no trailing slash.
};

// An object that node `node` holds: what RetryingFetcher::Greet asks it for.
struct NodeObject {
  std::int64_t node = 0;
  Digest digest;
};

struct RetryOptions {
  // The longest one attempt may take; also bounded by what is left of the deadline.
  Duration attempt_timeout = std::chrono::seconds(10);
  // An attempt that receives nothing for this long is given up (RequestLimits::stall_timeout)
  // when a replica not backing off is left to try in the round; the last such replica is waited
  // for up to the transport's low-speed limit, so that servers that are all slow to answer are
  // still read from. Zero: never. A node that has stopped answering then costs a read this much
  // once, not the low-speed limit's seconds.
  Duration stall_timeout = std::chrono::seconds(1);
  // A node whose answers have been measured is given at most first_byte_factor times its usual
  // time to first byte (an average over verified transfers), and no less than
  // min_first_byte_timeout, to start answering, in the attempts that get the stall timeout: a
  // node that has stopped answering is left well before stall_timeout. A node not measured yet
  // gets stall_timeout alone; so does every node with a factor of zero.
  double first_byte_factor = 8;
  Duration min_first_byte_timeout = std::chrono::milliseconds(250);
  // After a failure a node is tried last for this long, doubling per consecutive failure up to
  // max_backoff, with +-25% jitter. It is still tried when every other replica failed.
  Duration initial_backoff = std::chrono::milliseconds(200);
  Duration max_backoff = std::chrono::seconds(5);
  // A failure that took long to show costs that long to every fetch that tries the node: a node
  // that accepts connections but has stopped answering fails only at the transport's low-speed
  // limit, one whose packets go nowhere at its connect timeout. Such a node is backed off for at
  // least slow_failure_factor times the failed attempt's duration, at most
  // max_slow_failure_backoff (jitter as above), so that it costs the reads a stall now and then
  // rather than one every max_backoff. A failure that shows at once keeps the short backoff.
  // The least backoff doubles with each further consecutive failure.
  double slow_failure_factor = 10;
  Duration max_slow_failure_backoff = std::chrono::seconds(60);
  // A failed attempt that took at least this long is slow: a read that tried the node again
  // would likely wait as long. Such a node is not handed to reads again when its backoff ends
  // (probe_slow_nodes): a probe, one 1-byte Range GET of the object that failed, sent on the
  // fetcher's own thread once a read would ask the node, must answer first. Until it has, the
  // node is still backing off (tried only when every other replica failed); a failed probe
  // backs it off again as a failed attempt does, so a node that stays hung costs reads no
  // further stall. A fetch from the node, or a probe, that succeeds ends that.
  Duration slow_failure = std::chrono::milliseconds(100);
  bool probe_slow_nodes = true;
  // A node that delivers, only slowly (a failing disk, a congested link, a server that caps each
  // connection), would hold up every read that waits for its chunk. An attempt that has run for
  // slow_transfer_grace and, at the speed it has had so far, would take more than
  // slow_transfer_factor times as long for its remaining bytes as the fastest measured healthy
  // replica still to try (at that node's measured speed), and more than slow_transfer_grace
  // longer, is left for that replica, its verified bytes kept (a resume). The speed it had
  // becomes the node's measured speed, which orders the replicas (speed_memory); the node is not
  // backed off, since it answers: a backoff would rank it with nodes that do not. Zero factor:
  // never.
  double slow_transfer_factor = 4;
  // A node's measured speed orders the replicas for this long after its last measured transfer
  // (the fastest node first, each request under way counting as one more for the node to
  // send); after that the node counts as fast as the fastest, so that one that was slow is
  // tried again now and then and, if it has recovered, used again.
  Duration speed_memory = std::chrono::seconds(10);
  // Only a transfer of at least this many bytes is a speed sample: a small one takes about a
  // round trip whatever the node's speed (22 bytes in a millisecond is not a 22 KB/s node).
  std::uint64_t min_speed_sample_bytes = 256 << 10;
  Duration slow_transfer_grace = std::chrono::milliseconds(500);
  // Pause between rounds when every replica failed, doubling up to max_backoff.
  Duration round_pause = std::chrono::milliseconds(100);
  // A node from which no read or probe has had an answer for at least this long since it failed
  // is down. A fetch whose replicas are all down as it starts asks each of them once (but not one
  // awaiting a probe, which its probe will find answering again) and fails if they fail, instead
  // of waiting for them until its deadline: the first reads to meet a dead server wait for it,
  // the reads after them fail at once (the mount: half of timeout=). Zero: never.
  Duration down_after = std::chrono::seconds(10);
  std::uint64_t jitter_seed = 0x5eed;
  // A lone Fetch (see the top of this file) is split into at most this many parts; 1: never.
  int lone_fetch_parts = 4;
  // No part is shorter than this, so a small chunk is split into fewer parts, or none.
  std::uint64_t min_part_bytes = 1ull << 20;
  // Only a chunk that one GET would take at least this long to bring is split. A chunk none of
  // whose nodes has been measured yet counts as instant (one GET measures them); zero splits
  // every lone fetch.
  Duration split_after = std::chrono::milliseconds(20);
};

// Counters for `ckptfs stats` and the logs.
struct FetchCounters {
  std::atomic<std::uint64_t> fetches{0};   // Whole chunks asked for (Fetch).
  std::atomic<std::uint64_t> attempts{0};  // Requests sent, by Fetch and FetchBlocks.
  std::atomic<std::uint64_t> failed_attempts{0};
  // Failed attempts left for a faster replica (RetryOptions::slow_transfer_factor).
  std::atomic<std::uint64_t> slow_attempts{0};
  std::atomic<std::uint64_t> digest_mismatches{0};  // Attempts that failed a chunk or block digest.
  std::atomic<std::uint64_t> bytes_fetched{0};      // Verified bytes of whole chunks.
  std::atomic<std::uint64_t> failed_fetches{0};     // Fetch: deadline reached, no good replica.
  // Attempts that resumed a fetch on another replica with a Range GET after a verified prefix.
  std::atomic<std::uint64_t> resumed_attempts{0};
  std::atomic<std::uint64_t> range_fetches{0};         // FetchBlocks calls.
  std::atomic<std::uint64_t> range_bytes_fetched{0};   // Verified bytes delivered by FetchBlocks.
  std::atomic<std::uint64_t> failed_range_fetches{0};  // FetchBlocks that failed at the deadline.
  // Fetch and FetchBlocks calls (counted as failed above too) that asked each replica once and
  // failed, every replica being down (RetryOptions::down_after).
  std::atomic<std::uint64_t> down_fetches{0};
  std::atomic<std::uint64_t> split_fetches{0};  // Lone Fetch calls split into parallel parts.
  std::atomic<std::uint64_t> probes{0};         // Probes of slow nodes (RetryOptions).
  std::atomic<std::uint64_t> failed_probes{0};
  // Greetings (RetryingFetcher::Greet) answered or failed.
  std::atomic<std::uint64_t> greetings{0};
  std::atomic<std::uint64_t> failed_greetings{0};

  // Calls visit(name, value) for each counter, in the order above; the names are the ones
  // `ckptfs stats` shows.
  template <typename Visit>
  void ForEach(Visit&& visit) const {
    visit("fetches", fetches.load());
    visit("attempts", attempts.load());
    visit("failed_attempts", failed_attempts.load());
    visit("slow_attempts", slow_attempts.load());
    visit("digest_mismatches", digest_mismatches.load());
    visit("bytes_fetched", bytes_fetched.load());
    visit("failed_fetches", failed_fetches.load());
    visit("resumed_attempts", resumed_attempts.load());
    visit("range_fetches", range_fetches.load());
    visit("range_bytes_fetched", range_bytes_fetched.load());
    visit("failed_range_fetches", failed_range_fetches.load());
    visit("down_fetches", down_fetches.load());
    visit("split_fetches", split_fetches.load());
    visit("probes", probes.load());
    visit("failed_probes", failed_probes.load());
    visit("greetings", greetings.load());
    visit("failed_greetings", failed_greetings.load());
  }
};

// One node's health as RetryingFetcher sees it at one moment (for `ckptfs stats`).
struct NodeHealth {
  std::int64_t id = 0;
  std::string name;
  int in_flight = 0;             // Requests to the node under way.
  int consecutive_failures = 0;  // Failed attempts since its last success.
  bool backing_off = false;      // Tried after the other replicas until its backoff ends.
  double bytes_per_second = 0;   // Average over verified transfers; 0 = not measured yet.
  Duration backoff_left{};       // How long it is still backing off; zero when it is not.
  // It failed slowly: reads go back to it only once a probe answers (RetryOptions::slow_failure).
  // Backing off while this holds, even when backoff_left is zero.
  bool awaiting_probe = false;
  // Greeted (RetryingFetcher::Greet), and not heard from since: asked after nodes that answered.
  bool unanswered = false;
  // No read or probe has had an answer from it for RetryOptions::down_after since it failed.
  bool down = false;
};

class RetryingFetcher final : public ChunkFetcher {
 public:
  RetryingFetcher(std::vector<NodeEndpoint> nodes, Transport* transport, Clock* clock,
                  RetryOptions options = {});
  ~RetryingFetcher() override;

  using ChunkFetcher::Fetch;
  using ChunkFetcher::FetchBlocks;
  // A fetch split into parts (see above) pauses each part by sleeping: parts run on threads of
  // their own, and a slot the caller gave back for one would be given back once per part.
  Status Fetch(const ChunkRef& chunk, std::span<std::uint8_t> dst, TimePoint deadline,
               const VerifiedCallback& on_verified, const PauseCallback& pause) override;
  Status FetchBlocks(const ChunkRef& chunk, std::size_t first_block, std::size_t end_block,
                     std::span<std::uint8_t> dst, TimePoint deadline,
                     const PauseCallback& pause) override;

  // Greets each node of `objects` with a HEAD of the object listed for it, each on a thread of
  // its own, and returns at once. Until a node has answered (a greeting or a read), reads ask
  // it after the nodes that have; an answer measures its time to first byte, a failure backs it
  // off as a failed attempt does, slow ones (a hung or unreachable node) until a probe answers.
  // The HEADs have the limits of an attempt with the stall timeout. Meant to be called once, as
  // a mount starts; calls must not overlap. The destructor waits for greetings under way.
  void Greet(const std::vector<NodeObject>& objects);

  const FetchCounters& counters() const { return counters_; }
  // The health of every node, in the order the constructor was given them. Thread safe: the
  // failures, backoff and throughput are copied under the lock that guards them, in_flight is
  // read as it stands.
  std::vector<NodeHealth> Health() const;

 private:
  struct NodeState;
  class Verifier;
  NodeState* FindNode(std::int64_t id);
  // Best replica first; `*healthy` (if given) is told how many lead the list not backing off,
  // `*answered` (if given) how many of those lead it not waiting for their greeting either.
  std::vector<NodeState*> OrderReplicas(const ChunkRef& chunk, std::size_t* healthy = nullptr,
                                        std::size_t* answered = nullptr);
  // Rounds over the replicas until `verifier` has all of its bytes or the deadline passes.
  // `what` names the bytes in the final error. The first round starts with `first_choice` if it
  // holds a replica (the parts of one fetch start on different nodes).
  // Between rounds it pauses through `pause` (sleeps when empty), after giving back the pages of
  // the verifier's unverified bytes.
  // When every replica is down (RetryOptions::down_after) as it starts, it asks each once instead.
  Status RunRounds(const ChunkRef& chunk, Verifier& verifier, TimePoint deadline,
                   const std::string& what, const PauseCallback& pause,
                   NodeState* first_choice = nullptr);
  // The replicas to ask once when every one of `replicas` is down: those not awaiting a probe
  // (possibly none). Nothing when one of them is not down.
  std::optional<std::vector<NodeState*>> AskOnceIfAllDown(std::span<NodeState* const> replicas);
  // RunRounds for replicas that are all down: one attempt on each of `nodes` (those of them not
  // awaiting a probe), then an Unavailable error naming `what`.
  Status AskEachOnce(std::span<NodeState* const> nodes, const ChunkRef& chunk, Verifier& verifier,
                     TimePoint deadline, const std::string& what);
  // How many parts a Fetch of `chunk` is split into, given how many Fetch calls are under way
  // counting this one, and the speed measured from its nodes; 1: not split.
  std::size_t LoneFetchParts(const ChunkRef& chunk, int fetches_under_way);
  // Fetch of `chunk` as `parts` parallel Range GETs (REQUIRES: parts > 1, block digests).
  Status FetchInParts(const ChunkRef& chunk, std::span<std::uint8_t> dst, TimePoint deadline,
                      const VerifiedCallback& on_verified, std::size_t parts);
  // `nodes` but those measured lately as more than slow_transfer_factor times slower than the
  // fastest of them: the nodes that a part of a split fetch may start on without being left as
  // too slow.
  std::vector<NodeState*> WithoutFarSlower(std::span<NodeState* const> nodes);
  // The measured speed (bytes per second) of the fastest of `nodes` that is not backing off,
  // and its name; 0 when none is measured.
  std::pair<double, std::string> FastestMeasured(std::span<NodeState* const> nodes);
  // One GET (or Range GET, resuming after the verified prefix) from `node`, verifying as the
  // body arrives; updates the node's health. With `may_stall`, the attempt gets the stall
  // timeout and, for a measured node, a first-byte timeout (RetryOptions). `alternatives`: the
  // healthy replicas left to try, which it may be left for when it is too slow
  // (RetryOptions::slow_transfer_factor).
  Status TryReplica(NodeState& node, const ChunkRef& chunk, Verifier& verifier, TimePoint deadline,
                    bool may_stall, std::span<NodeState* const> alternatives);
  // An attempt that has run `elapsed` and received `received` of its `wanted` bytes is to be
  // left for a replica that delivers `alternative_speed` bytes per second (0: none known): its
  // speed so far when it is (RetryOptions::slow_transfer_factor), else nothing.
  std::optional<double> TooSlow(Duration elapsed, std::size_t received, std::size_t wanted,
                                double alternative_speed) const;
  // The first-byte timeout of an attempt on `node` (zero: none). REQUIRES: mu_ held.
  Duration FirstByteTimeoutLocked(const NodeState& node) const;
  // `first_byte`: how long the first body byte took to come (zero: not known).
  void RecordSuccess(NodeState& node, std::uint64_t bytes, Duration took, Duration first_byte);
  // `took`: how long the failed attempt (or probe: `ends_probe`) on `url` ran.
  void RecordFailure(NodeState& node, const Status& error, Duration took, const std::string& url,
                     bool ends_probe = false);
  // An attempt on `node` was left as too slow (`why`) at `speed` bytes per second: that is its
  // measured speed now, which puts it behind faster replicas for speed_memory.
  void RecordSlow(NodeState& node, double speed, const Status& why);
  // The least backoff after an attempt that failed after `took`, the node's `failures`-th failure
  // in a row (RetryOptions::slow_failure_factor).
  Duration SlowFailureBackoff(Duration took, int failures) const;
  Duration Jitter(Duration d);  // REQUIRES: mu_ held (uses rng_).
  // Queues a probe of `node`, starting the probe thread the first time. REQUIRES: mu_ held.
  void QueueProbe(NodeState& node);
  // The probe thread: probes the queued nodes one at a time until stopped.
  void RunProbes(std::stop_token stop);
  // One probe of `node` at `url`; updates the node's health.
  void Probe(NodeState& node, const std::string& url);
  // The greeting of `node`, a HEAD of `url`; updates the node's health.
  void GreetOne(NodeState& node, const std::string& url);

  Transport* transport_;
  Clock* clock_;
  RetryOptions options_;
  std::vector<std::unique_ptr<NodeState>> nodes_;
  mutable std::mutex mu_;  // Guards the health fields of nodes_ and rng_.
  std::mt19937_64 rng_;
  FetchCounters counters_;
  std::atomic<int> fetches_under_way_{0};  // Fetch calls running now.
  std::deque<NodeState*> probe_queue_;     // Guarded by mu_.
  std::condition_variable_any probe_wake_;
  std::jthread prober_;  // Started by the first probe; the destructor stops it first.
  std::vector<std::jthread> greeters_;  // One per greeting (Greet); joined by the destructor.
};

// "<base>/chunks/<hh>/<hex>".
std::string ChunkUrl(const std::string& base_url, const Digest& digest);

}  // namespace ckptfs::netfetch
