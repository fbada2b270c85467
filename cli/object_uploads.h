// Where publish's chunk objects go, and the threads that put them there.
//
// ObjectSink stores one object on one node: into the node's --store directory, or with an HTTP
// PUT. Objects are named by their digest, so an object a node already holds at the right size
// is that chunk and is left as it is (a HEAD asks an HTTP node): publishing a checkpoint again,
// or the next one that shares most of its chunks, or once more after a failed publish, sends
// only what the nodes lack.
//
// ObjectUploads runs those stores on a few threads, so that the uploads of a chunk's replicas, of
// several chunks, and the reading and hashing of the next chunks all overlap: one PUT at a time
// leaves a long network idle for a round trip per chunk and is held to one TCP stream's speed.
// The chunk bytes wait in a fixed set of buffers, so memory stays bounded by
// buffers × chunk size whatever the size of the tree.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "cli/publish.h"
#include "common/buffer.h"
#include "common/clock.h"
#include "common/digest.h"
#include "common/result.h"
#include "netfetch/transport.h"

namespace ckptfs::cli {

// PUTs `bytes` to `url`. A failure that comes back quickly may pass (a reset connection, a 503
// or a refused connection while a server restarts): it is tried again 0.25 s later, then 0.5 s
// after that, so that one passing fault does not lose a long publish. One that took seconds (a
// server that stopped answering), a deadline, and any once `*abandoned` (may be null) is set,
// are not. The error reads "`what` (N attempts): ...".
Status PutWithRetries(netfetch::Transport& transport, Clock& clock, const std::string& url,
                      std::span<const std::uint8_t> bytes, Duration timeout,
                      const std::atomic<bool>* abandoned, const std::string& what);

class PublishLeases;

class ObjectSink {
 public:
  // All four must outlive the sink; `leases` (may be null) is told of the objects a HEAD found on
  // a node. Thread safe.
  ObjectSink(const PublishOptions& options, netfetch::Transport& transport, Clock& clock,
             PublishLeases* leases)
      : options_(options), transport_(transport), clock_(clock), leases_(leases) {}

  // Stores `bytes`, the chunk named `digest`, on node `node` (an index into options.nodes).
  // True when it was written or sent, false when the node already held it.
  Result<bool> Store(std::size_t node, const Digest& digest, std::span<const std::uint8_t> bytes);

  // The publish has failed: stores under way make no further attempts.
  void Abandon() { abandoned_ = true; }

 private:
  Result<bool> Upload(std::size_t node, const Digest& digest, std::span<const std::uint8_t> bytes);

  const PublishOptions& options_;
  netfetch::Transport& transport_;
  Clock& clock_;
  PublishLeases* const leases_;
  std::atomic<bool> abandoned_{false};
};

// What the stores did, per node (indexed like options.nodes).
struct UploadCounts {
  std::vector<std::uint64_t> sent_objects, sent_bytes;
  std::vector<std::uint64_t> present_objects, present_bytes;  // Already on the node.
};

class ObjectUploads {
 public:
  // One chunk's bytes on their way to their nodes.
  struct Slot {
    explicit Slot(std::size_t capacity) : bytes(capacity) {}
    Buffer bytes;
    std::size_t size = 0;
    Digest digest{};
    int pending = 0;  // Stores of this slot not yet done; guarded by ObjectUploads::mu_.
  };

  // `threads` stores at a time; `buffers` chunks of up to `chunk_size` bytes in memory at once
  // (at least 2: one being read while another is sent). `sink` must outlive this.
  ObjectUploads(ObjectSink& sink, std::size_t node_count, std::size_t chunk_size, int threads,
                int buffers);
  // Waits for the stores under way (those not yet started are dropped) and stops the threads.
  ~ObjectUploads();
  ObjectUploads(const ObjectUploads&) = delete;
  ObjectUploads& operator=(const ObjectUploads&) = delete;

  // A free slot to read the next chunk into; waits while every slot is in flight. Fails with
  // the first failed store's error, after which nothing more is stored.
  Result<Slot*> Acquire();
  // Stores the slot's chunk on each of `nodes`; the slot is free again when all are done.
  void Submit(Slot* slot, const std::vector<int>& nodes);
  // Gives back a slot whose chunk needs no store.
  void Release(Slot* slot);
  // Waits for every store submitted; the first failure, if any.
  Status Finish();

  // Valid after Finish.
  const UploadCounts& counts() const { return counts_; }

 private:
  struct Task {
    Slot* slot;
    std::size_t node;
  };

  void Work();
  void Done(Slot* slot);  // REQUIRES: mu_ held.

  ObjectSink& sink_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::mutex mu_;
  std::condition_variable wake_workers_;  // Tasks queued, or stopping.
  std::condition_variable slot_freed_;    // A slot was freed, a store failed, or all are done.
  std::vector<Slot*> free_;               // Guarded by mu_.
  std::deque<Task> tasks_;                // Guarded by mu_.
  int running_ = 0;                       // Stores under way; guarded by mu_.
  bool stopping_ = false;                 // Guarded by mu_.
  Status failure_;                        // The first failed store; guarded by mu_.
  UploadCounts counts_;                   // Guarded by mu_.
  std::vector<std::thread> threads_;
};

}  // namespace ckptfs::cli
