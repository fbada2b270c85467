// FakeFetcher: a netfetch::ChunkFetcher whose answers a test sets per digest; FakeReplicaSource:
// a fs::ReplicaSource that answers the same node list for every chunk.
//
// A digest answers with the bytes given to Serve() (or ServeAs()) or the error given to Fail(); an
// unscripted digest answers Unavailable. Every call is counted per digest. A test can hold calls
// at a gate (Hold() for all digests, Hold(digest) for one) to look at the code under test while
// fetches are "in flight": held calls wait until Release() or until a permit from Allow() lets
// one through.
// Verification is RetryingFetcher's: with block digests in the ChunkRef every block is checked
// against its digest in order, on_verified is told the verified prefix after each good block
// (last call: the chunk size), and the first bad block ends the call with DataLoss (dst keeps
// the verified prefix; no retry, no other replica); without block digests the bytes are checked
// against the chunk digest and on_verified is called once with the size. FetchBlocks serves and
// checks blocks the same way. A size mismatch is DataLoss and leaves dst alone.
// Thread safety: every method may be called from many threads at once.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <span>
#include <utility>
#include <vector>

#include "common/digest.h"
#include "common/result.h"
#include "fs/chunk_store.h"
#include "index/types.h"
#include "netfetch/fetcher.h"

namespace ckptfs::testing {

class FakeFetcher final : public netfetch::ChunkFetcher {
 public:
  // Serves `bytes` under their SHA-256, which is returned.
  Digest Serve(std::vector<std::uint8_t> bytes) {
    Digest digest = Sha256(bytes.data(), bytes.size());
    std::lock_guard lock(mu_);
    scripts_[digest] = Script{Status::Ok(), std::move(bytes)};
    return digest;
  }
  // Serves `bytes` under `digest` whatever they hash to: a replica holding wrong bytes.
  void ServeAs(const Digest& digest, std::vector<std::uint8_t> bytes) {
    std::lock_guard lock(mu_);
    scripts_[digest] = Script{Status::Ok(), std::move(bytes)};
  }
  void Fail(const Digest& digest, Status error) {
    std::lock_guard lock(mu_);
    scripts_[digest] = Script{std::move(error), {}};
  }

  // Makes later (and current) calls for every digest, or for `digest`, wait at the gate.
  void Hold() {
    std::lock_guard lock(mu_);
    hold_all_ = true;
  }
  void Hold(const Digest& digest) {
    std::lock_guard lock(mu_);
    held_.insert(digest);
  }
  // Opens the gate for good.
  void Release() {
    {
      std::lock_guard lock(mu_);
      hold_all_ = false;
      held_.clear();
    }
    cv_.notify_all();
  }
  // Lets `n` held calls (present or future) through, the gate staying closed for the rest.
  void Allow(int n) {
    {
      std::lock_guard lock(mu_);
      permits_ += n;
    }
    cv_.notify_all();
  }

  // Waits until at least `n` calls wait at the gate; false after `limit`.
  bool WaitForHeld(int n, std::chrono::milliseconds limit = std::chrono::seconds(60)) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, limit, [&] { return waiting_ >= n; });
  }
  // Waits until every permit given by Allow() has let a call through; false after `limit`.
  bool WaitForPermitsUsed(std::chrono::milliseconds limit = std::chrono::seconds(60)) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, limit, [&] { return permits_ == 0; });
  }
  int Held() const {
    std::lock_guard lock(mu_);
    return waiting_;
  }

  int Calls(const Digest& digest) const {
    std::lock_guard lock(mu_);
    auto it = calls_.find(digest);
    return it == calls_.end() ? 0 : it->second;
  }
  int TotalCalls() const {
    std::lock_guard lock(mu_);
    return total_calls_;
  }
  // FetchBlocks calls for `digest`, and the block range [first, end) of the most recent one.
  int BlockCalls(const Digest& digest) const {
    std::lock_guard lock(mu_);
    auto it = block_calls_.find(digest);
    return it == block_calls_.end() ? 0 : it->second;
  }
  std::pair<std::size_t, std::size_t> LastBlockRange() const {
    std::lock_guard lock(mu_);
    return last_block_range_;
  }
  // The replica list of the most recent call.
  std::vector<std::int64_t> LastNodes() const {
    std::lock_guard lock(mu_);
    return last_nodes_;
  }

  using netfetch::ChunkFetcher::Fetch;
  using netfetch::ChunkFetcher::FetchBlocks;
  Status Fetch(const netfetch::ChunkRef& chunk, std::span<std::uint8_t> dst, TimePoint /*deadline*/,
               const netfetch::VerifiedCallback& on_verified,
               const netfetch::PauseCallback& /*pause*/) override {
    std::unique_lock lock(mu_);
    ++calls_[chunk.digest];
    ++total_calls_;
    last_nodes_ = chunk.nodes;
    WaitAtGate(lock, chunk.digest);
    CKPTFS_ASSIGN_OR_RETURN(const Script* script, Find(chunk.digest));
    if (script->bytes.size() != dst.size() || dst.size() != chunk.size) {
      return DataLossError("scripted chunk has " + std::to_string(script->bytes.size()) +
                           " bytes, asked for " + std::to_string(dst.size()));
    }
    CKPTFS_RETURN_IF_ERROR(netfetch::CheckBlockList(chunk));
    std::vector<std::uint8_t> bytes = script->bytes;
    lock.unlock();  // on_verified may call back into the code under test.
    if (chunk.blocks.empty()) {
      std::memcpy(dst.data(), bytes.data(), dst.size());
      if (Sha256(dst.data(), dst.size()) != chunk.digest) {
        return DataLossError("SHA-256 mismatch for chunk " + chunk.digest.Hex());
      }
      if (on_verified) on_verified(dst.size());
      return Status::Ok();
    }
    return CopyBlocks(chunk, 0, chunk.blocks.size(), bytes, dst, on_verified);
  }

  Status FetchBlocks(const netfetch::ChunkRef& chunk, std::size_t first_block,
                     std::size_t end_block, std::span<std::uint8_t> dst, TimePoint /*deadline*/,
                     const netfetch::PauseCallback& /*pause*/) override {
    std::unique_lock lock(mu_);
    ++block_calls_[chunk.digest];
    ++total_calls_;
    last_nodes_ = chunk.nodes;
    last_block_range_ = {first_block, end_block};
    WaitAtGate(lock, chunk.digest);
    if (chunk.blocks.empty()) {
      return FailedPreconditionError("chunk " + chunk.digest.Hex() + " has no block digests");
    }
    CKPTFS_RETURN_IF_ERROR(netfetch::CheckBlockList(chunk));
    if (first_block >= end_block || end_block > chunk.blocks.size()) {
      return InvalidArgumentError("block range out of the chunk");
    }
    CKPTFS_ASSIGN_OR_RETURN(const Script* script, Find(chunk.digest));
    if (script->bytes.size() != chunk.size) {
      return DataLossError("scripted chunk has " + std::to_string(script->bytes.size()) +
                           " bytes, the chunk " + std::to_string(chunk.size));
    }
    if (dst.size() != netfetch::BlockBytes(chunk, first_block, end_block).length) {
      return InvalidArgumentError("buffer does not fit the blocks asked for");
    }
    std::vector<std::uint8_t> bytes = script->bytes;
    lock.unlock();
    return CopyBlocks(chunk, first_block, end_block, bytes, dst, nullptr);
  }

 private:
  struct Script {
    Status status;
    std::vector<std::uint8_t> bytes;
  };

  // The script of `digest`, or its error. REQUIRES: mu_ held.
  Result<const Script*> Find(const Digest& digest) const {
    auto it = scripts_.find(digest);
    if (it == scripts_.end()) return UnavailableError("no script for " + digest.Hex());
    if (!it->second.status.ok()) return it->second.status;
    return &it->second;
  }

  // Copies blocks [first, end) of the chunk `bytes` into dst one by one, each checked against
  // its digest before the verified prefix grows.
  static Status CopyBlocks(const netfetch::ChunkRef& chunk, std::size_t first, std::size_t end,
                           const std::vector<std::uint8_t>& bytes, std::span<std::uint8_t> dst,
                           const netfetch::VerifiedCallback& on_verified) {
    const std::uint64_t base = netfetch::BlockBytes(chunk, first, end).offset;
    for (std::size_t b = first; b < end; ++b) {
      const netfetch::ByteRange block = netfetch::BlockBytes(chunk, b, b + 1);
      std::memcpy(dst.data() + (block.offset - base), bytes.data() + block.offset, block.length);
      if (Sha256(bytes.data() + block.offset, block.length) != chunk.blocks[b]) {
        return DataLossError("SHA-256 mismatch in block " + std::to_string(b) + " of chunk " +
                             chunk.digest.Hex());
      }
      if (on_verified) on_verified(block.offset + block.length - base);
    }
    return Status::Ok();
  }

  void WaitAtGate(std::unique_lock<std::mutex>& lock, const Digest& digest) {
    auto held = [&] { return hold_all_ || held_.contains(digest); };
    if (!held()) return;
    ++waiting_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !held() || permits_ > 0; });
    if (held()) --permits_;
    --waiting_;
    cv_.notify_all();
  }

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<Digest, Script> scripts_;                      // Guarded by mu_.
  std::map<Digest, int> calls_;                           // Guarded by mu_.
  std::map<Digest, int> block_calls_;                     // Guarded by mu_.
  std::pair<std::size_t, std::size_t> last_block_range_;  // Guarded by mu_.
  int total_calls_ = 0;                                   // Guarded by mu_.
  std::vector<std::int64_t> last_nodes_;                  // Guarded by mu_.
  bool hold_all_ = false;                                 // Guarded by mu_.
  std::set<Digest> held_;                                 // Guarded by mu_.
  int permits_ = 0;                                       // Guarded by mu_.
  int waiting_ = 0;                                       // Guarded by mu_.
};

// Every chunk lives on `nodes`; Fail() makes every lookup answer an error instead.
class FakeReplicaSource final : public fs::ReplicaSource {
 public:
  explicit FakeReplicaSource(std::vector<std::int64_t> nodes = {1}) : nodes_(std::move(nodes)) {}

  void Fail(Status error) {
    std::lock_guard lock(mu_);
    error_ = std::move(error);
  }
  int Calls() const {
    std::lock_guard lock(mu_);
    return calls_;
  }

  Result<std::vector<std::int64_t>> Replicas(std::int64_t /*chunk_id*/) override {
    std::lock_guard lock(mu_);
    ++calls_;
    if (!error_.ok()) return error_;
    return nodes_;
  }

  // The block digests answered for `chunk_id`; a chunk without any answers none (a v1 index).
  void SetBlocks(std::int64_t chunk_id, index::BlockList blocks) {
    std::lock_guard lock(mu_);
    blocks_[chunk_id] = std::move(blocks);
  }
  Result<index::BlockList> Blocks(std::int64_t chunk_id) override {
    std::lock_guard lock(mu_);
    auto it = blocks_.find(chunk_id);
    return it == blocks_.end() ? index::BlockList{} : it->second;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::int64_t> nodes_;
  std::map<std::int64_t, index::BlockList> blocks_;  // Guarded by mu_.
  Status error_;                                     // Guarded by mu_.
  int calls_ = 0;                                    // Guarded by mu_.
};

}  // namespace ckptfs::testing
