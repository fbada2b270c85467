#include "cli/object_uploads.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <utility>

#include "cli/store_leases.h"
#include "common/file_io.h"
#include "common/unique_fd.h"
#include "index/types.h"

namespace ckptfs::cli {

namespace {

constexpr auto kPutTimeout = std::chrono::seconds(120);
constexpr auto kHeadTimeout = std::chrono::seconds(30);
constexpr int kPutAttempts = 3;
constexpr Duration kFirstRetryDelay = std::chrono::milliseconds(250);
// A failed request that took at least this long waited for a server that did not answer.
constexpr Duration kQuickFailure = std::chrono::seconds(1);

Status WriteFileAtomically(const std::string& path, std::span<const std::uint8_t> bytes) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return ErrnoStatus(errno, "cannot create " + tmp);
  if (Status written = WriteAll(fd.get(), bytes); !written.ok()) {
    ::unlink(tmp.c_str());
    return written.WithContext("cannot write " + tmp);
  }
  fd.Reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    Status err = ErrnoStatus(errno, "cannot rename " + tmp);
    ::unlink(tmp.c_str());
    return err;
  }
  return Status::Ok();
}

}  // namespace

Status PutWithRetries(netfetch::Transport& transport, Clock& clock, const std::string& url,
                      std::span<const std::uint8_t> bytes, Duration timeout,
                      const std::atomic<bool>* abandoned, const std::string& what) {
  Duration delay = kFirstRetryDelay;
  for (int attempt = 1;; ++attempt) {
    const TimePoint start = clock.Now();
    Status put = transport.Put(url, bytes, timeout);
    if (put.ok()) return put;
    const bool may_pass =
        put.code() == StatusCode::kUnavailable && clock.Now() - start < kQuickFailure;
    if (!may_pass || attempt == kPutAttempts || (abandoned != nullptr && *abandoned)) {
      return put.WithContext(what + " (" + std::to_string(attempt) +
                             (attempt == 1 ? " attempt)" : " attempts)"));
    }
    clock.SleepFor(delay);
    delay *= 2;
  }
}

Result<bool> ObjectSink::Store(std::size_t node, const Digest& digest,
                               std::span<const std::uint8_t> bytes) {
  const NodeSpec& spec = options_.nodes[node];
  std::string object = index::ChunkObjectPath(digest);
  auto store = options_.stores.find(spec.name);
  if (store == options_.stores.end()) return Upload(node, digest, bytes);
  std::string path = store->second + "/" + object;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && static_cast<std::uint64_t>(st.st_size) == bytes.size()) {
    // Made recent, so that a `ckptfs gc` before this publish's index is written leaves it.
    if (::utimensat(AT_FDCWD, path.c_str(), nullptr, 0) != 0) {
      return ErrnoStatus(errno, "cannot mark " + path + " as in use");
    }
    return false;
  }
  CKPTFS_RETURN_IF_ERROR(MakeDirs(path.substr(0, path.rfind('/')), 0755));
  CKPTFS_RETURN_IF_ERROR(WriteFileAtomically(path, bytes));
  return true;
}

Result<bool> ObjectSink::Upload(std::size_t node, const Digest& digest,
                                std::span<const std::uint8_t> bytes) {
  const NodeSpec& spec = options_.nodes[node];
  const std::string url = spec.url + "/" + index::ChunkObjectPath(digest);
  const std::string context = "cannot upload to node " + spec.name;
  TimePoint start = clock_.Now();
  Result<std::uint64_t> there = transport_.Head(url, kHeadTimeout);
  if (there.ok() && *there == bytes.size()) {
    if (leases_ != nullptr) leases_->Found(node, digest);
    return false;
  }
  // Any answer (a 404, a server that does not do HEAD) means the object is sent. No answer for
  // seconds means the server has stopped answering, and a PUT would wait as long again.
  if (!there.ok() && there.status().code() != StatusCode::kNotFound &&
      clock_.Now() - start >= kQuickFailure) {
    return there.status().WithContext(context);
  }
  CKPTFS_RETURN_IF_ERROR(
      PutWithRetries(transport_, clock_, url, bytes, kPutTimeout, &abandoned_, context));
  return true;
}

ObjectUploads::ObjectUploads(ObjectSink& sink, std::size_t node_count, std::size_t chunk_size,
                             int threads, int buffers)
    : sink_(sink) {
  for (auto* counts : {&counts_.sent_objects, &counts_.sent_bytes, &counts_.present_objects,
                       &counts_.present_bytes}) {
    counts->resize(node_count);
  }
  for (int i = 0; i < std::max(buffers, 2); ++i) {
    slots_.push_back(std::make_unique<Slot>(chunk_size));
    free_.push_back(slots_.back().get());
  }
  for (int i = 0; i < std::max(threads, 1); ++i) threads_.emplace_back([this] { Work(); });
}

ObjectUploads::~ObjectUploads() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  sink_.Abandon();
  wake_workers_.notify_all();
  for (std::thread& thread : threads_) thread.join();
}

Result<ObjectUploads::Slot*> ObjectUploads::Acquire() {
  std::unique_lock lock(mu_);
  slot_freed_.wait(lock, [&] { return !free_.empty() || !failure_.ok(); });
  if (!failure_.ok()) return failure_;
  Slot* slot = free_.back();
  free_.pop_back();
  return slot;
}

void ObjectUploads::Submit(Slot* slot, const std::vector<int>& nodes) {
  if (nodes.empty()) return Release(slot);
  {
    std::lock_guard lock(mu_);
    slot->pending = static_cast<int>(nodes.size());
    for (int node : nodes) tasks_.push_back({slot, static_cast<std::size_t>(node)});
  }
  wake_workers_.notify_all();
}

void ObjectUploads::Release(Slot* slot) {
  {
    std::lock_guard lock(mu_);
    free_.push_back(slot);
  }
  slot_freed_.notify_all();
}

Status ObjectUploads::Finish() {
  std::unique_lock lock(mu_);
  slot_freed_.wait(lock, [&] { return free_.size() == slots_.size(); });
  return failure_;
}

void ObjectUploads::Work() {
  std::unique_lock lock(mu_);
  while (true) {
    wake_workers_.wait(lock, [&] { return stopping_ || !tasks_.empty(); });
    if (tasks_.empty()) return;  // Stopping, and nothing left to account for.
    Task task = tasks_.front();
    tasks_.pop_front();
    if (stopping_ || !failure_.ok()) {  // Stores after a failure would only be thrown away.
      Done(task.slot);
      continue;
    }
    lock.unlock();
    Slot& slot = *task.slot;
    Result<bool> stored = sink_.Store(task.node, slot.digest, {slot.bytes.data(), slot.size});
    lock.lock();
    if (!stored.ok()) {
      if (failure_.ok()) failure_ = stored.status();
      sink_.Abandon();
    } else {
      auto& objects = *stored ? counts_.sent_objects : counts_.present_objects;
      auto& bytes = *stored ? counts_.sent_bytes : counts_.present_bytes;
      objects[task.node]++;
      bytes[task.node] += slot.size;
    }
    Done(task.slot);
  }
}

void ObjectUploads::Done(Slot* slot) {
  if (--slot->pending == 0) free_.push_back(slot);
  // Acquire and Finish wait on this; a failure wakes Acquire even with no slot freed.
  slot_freed_.notify_all();
}

}  // namespace ckptfs::cli
