// Leases: how a publish by HTTP PUT and `ckptfs gc` stay out of each other's way on a node.
//
// gc removes from a store directory the objects that no index it is given lists and that are
// older than its minimum age. A publish into a store directory marks the objects it finds there
// as new and holds the store's lock (store_lock.h). A publish by PUT can do neither over plain
// HTTP: an old object it found with HEAD, which its index is about to list, could be removed
// under it, or after it by a gc that was told only of the indexes before it. So each leaves the
// other a note in `leases/` of the node (the store directory's `leases/`, which the node serves):
//  - publish PUTs `leases/ID.publishing` to each node before anything else, renews it every
//    minute, and DELETEs it at the end;
//  - gc --delete writes `leases/gc` into each store before anything else, renews it, and removes
//    it at the end;
//  - each then looks for the other's note and refuses to go on while a live one is there. Since
//    each writes its own before it looks, two that start together cannot both miss the other.
//    A note not renewed for `lifetime` (10 minutes) is a crashed run's, and is passed over;
//  - before its index is written, publish PUTs `leases/ID.found`, the digests of the objects it
//    found on that node, and gc keeps every object a `.found` younger than its minimum age lists,
//    as it keeps the objects that were sent by their modification time.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cli/publish.h"
#include "common/clock.h"
#include "common/digest.h"
#include "common/result.h"
#include "netfetch/transport.h"

namespace ckptfs::cli {

inline constexpr char kLeaseDir[] = "leases";
inline constexpr char kGcNote[] = "gc";  // leases/gc
inline constexpr char kPublishingSuffix[] = ".publishing";
inline constexpr char kFoundSuffix[] = ".found";

struct LeaseTimes {
  std::chrono::seconds lifetime{600};  // A note not renewed for this long is a crashed run's.
  std::chrono::seconds renewal{60};    // How often a run renews its note.
};

// The publish's side, for the nodes it PUTs to (those without a --store directory).
class PublishLeases {
 public:
  // Puts a lease on each such node of `options`, then looks for a gc at work on each. A node
  // that answers with a refusal, however slowly (a server that takes PUT only under chunks/), or
  // refuses the connection (down, which the stores will find), is left out, and Settle warns of
  // it: a gc of its store cannot see this publish. A lease PUT that gets no answer for a second
  // fails the publish, as a store would; so does a gc at work on a node (FailedPrecondition).
  // `transport` and `clock` must outlive the leases.
  static Result<std::unique_ptr<PublishLeases>> Take(const PublishOptions& options,
                                                     netfetch::Transport& transport, Clock& clock,
                                                     LeaseTimes times = {});
  // Stops renewing and DELETEs the `.publishing` leases.
  ~PublishLeases();
  PublishLeases(const PublishLeases&) = delete;
  PublishLeases& operator=(const PublishLeases&) = delete;

  // Node `node` (an index into options.nodes) already held the object `digest`. Thread safe.
  void Found(std::size_t node, const Digest& digest);

  // Once every object is stored, before the index is written: checks that no lease went
  // unrenewed for its lifetime (a gc could have passed it over meanwhile: FailedPrecondition),
  // then PUTs each node's `.found` list, and warns of the nodes that took no lease.
  Status Settle();

 private:
  struct Node {
    std::string name;
    std::string url;            // Of the node; the lease is url/leases/ID.publishing.
    bool leased = false;        // The lease was put.
    std::string refusal;        // Why not, when not.
    std::vector<Digest> found;  // Guarded by mu_.
  };

  PublishLeases(netfetch::Transport& transport, Clock& clock, LeaseTimes times, std::string id,
                std::string body, std::vector<Node> nodes);
  Status PutLeases();
  Status LookForGc() const;
  void RenewLoop();
  std::string LeaseUrl(const Node& node, const char* suffix) const;

  netfetch::Transport& transport_;
  Clock& clock_;
  const LeaseTimes times_;
  const std::string id_;
  const std::string body_;  // Who holds the lease, for whoever finds it.
  std::vector<Node> nodes_;
  std::vector<std::size_t> node_of_option_;  // options.nodes index → nodes_ index, or npos.

  std::mutex mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;   // Guarded by mu_.
  TimePoint last_renewed_;  // Guarded by mu_.
  Duration longest_gap_{};  // Between renewals; guarded by mu_.
  std::thread renewer_;
};

// gc's side: what the leases of its stores say, and its own note in each.
class GcLeases {
 public:
  // Reads every store's `leases/`. With `place_notes` (gc --delete), first writes `leases/gc`
  // into each store, then fails with FailedPrecondition naming a live `.publishing` lease (the
  // notes are removed again), and removes notes and leases older than their lifetime or, for
  // `.found`, than `min_age`. Without it only reads, and `running()` names the publishes.
  static Result<GcLeases> Open(const std::vector<std::string>& stores,
                               std::chrono::system_clock::time_point now,
                               std::chrono::seconds min_age, bool place_notes,
                               LeaseTimes times = {});
  GcLeases(GcLeases&&) = default;
  GcLeases& operator=(GcLeases&&) = default;
  // Removes the notes this gc placed.
  ~GcLeases();

  // A publish that is still recent found `digest` on a node and lists it in its index.
  bool RecentlyFound(const Digest& digest) const;
  // Publishes by PUT under way, one line each ("STORE/leases/ID.publishing, host ..., renewed N s
  // ago"); empty when the notes were placed (Open failed otherwise).
  const std::vector<std::string>& running() const { return running_; }
  // Renews the notes once `renewal` has passed since the last time. FailedPrecondition when
  // more than their lifetime has passed: a publish may have taken this gc for a crashed one.
  Status Renew();

 private:
  GcLeases() = default;

  LeaseTimes times_;
  std::vector<std::string> notes_;  // Paths of the notes placed.
  std::vector<Digest> found_;       // Sorted.
  std::vector<std::string> running_;
  std::chrono::steady_clock::time_point renewed_;
};

}  // namespace ckptfs::cli
