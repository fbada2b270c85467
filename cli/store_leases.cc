#include "cli/store_leases.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>
#include <span>
#include <string_view>
#include <system_error>
#include <utility>

#include "cli/object_uploads.h"
#include "common/file_io.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace ckptfs::cli {

namespace {

namespace fs = std::filesystem;
using SystemTime = std::chrono::system_clock::time_point;

constexpr auto kNoteTimeout = std::chrono::seconds(30);
constexpr auto kFoundListTimeout = std::chrono::seconds(120);
// A lease PUT that failed after this long met a server that does not answer, which the
// publish's own stores would wait for again; a quicker failure is a server that refuses it.
constexpr Duration kQuickFailure = std::chrono::seconds(1);

std::string HostName() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "unknown";
  return name;
}

// Unique among the publishes to a node: the host, the process and 32 random bits.
std::string LeaseId() {
  std::random_device random;
  char suffix[9];
  std::snprintf(suffix, sizeof(suffix), "%08x", static_cast<unsigned>(random()));
  return "publish-" + HostName() + "-" + std::to_string(::getpid()) + "-" + suffix;
}

std::span<const std::uint8_t> Bytes(const std::string& text) {
  return {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()};
}

std::string Seconds(Duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::seconds>(d).count()) + " s";
}

}  // namespace

PublishLeases::PublishLeases(netfetch::Transport& transport, Clock& clock, LeaseTimes times,
                             std::string id, std::string body, std::vector<Node> nodes)
    : transport_(transport),
      clock_(clock),
      times_(times),
      id_(std::move(id)),
      body_(std::move(body)),
      nodes_(std::move(nodes)),
      last_renewed_(clock.Now()) {}

Result<std::unique_ptr<PublishLeases>> PublishLeases::Take(const PublishOptions& options,
                                                           netfetch::Transport& transport,
                                                           Clock& clock, LeaseTimes times) {
  std::vector<Node> nodes;
  std::vector<std::size_t> node_of_option(options.nodes.size(), std::string::npos);
  for (std::size_t i = 0; i < options.nodes.size(); ++i) {
    const NodeSpec& spec = options.nodes[i];
    if (options.stores.count(spec.name) > 0) continue;  // The store lock covers it.
    node_of_option[i] = nodes.size();
    nodes.push_back(Node{spec.name, spec.url, false, {}, {}});
  }
  const std::string body = "ckptfs publish\nhost: " + HostName() +
                           "\npid: " + std::to_string(::getpid()) +
                           "\nindex: " + options.index_path + "\n";
  std::unique_ptr<PublishLeases> leases(new PublishLeases(
      transport, clock, times, options.lease_id.empty() ? LeaseId() : options.lease_id, body,
      std::move(nodes)));
  leases->node_of_option_ = std::move(node_of_option);
  if (leases->nodes_.empty()) return leases;
  CKPTFS_RETURN_IF_ERROR(leases->PutLeases());
  CKPTFS_RETURN_IF_ERROR(leases->LookForGc());
  leases->last_renewed_ = clock.Now();
  leases->renewer_ = std::thread([raw = leases.get()] { raw->RenewLoop(); });
  return leases;
}

std::string PublishLeases::LeaseUrl(const Node& node, const char* suffix) const {
  return node.url + "/" + kLeaseDir + "/" + id_ + suffix;
}

Status PublishLeases::PutLeases() {
  for (Node& node : nodes_) {
    const std::string url = LeaseUrl(node, kPublishingSuffix);
    const std::string context = "cannot upload to node " + node.name;
    const TimePoint start = clock_.Now();
    Status put = transport_.Put(url, Bytes(body_), kNoteTimeout);
    if (!put.ok() && clock_.Now() - start >= kQuickFailure) {
      return put.WithContext(context);  // No answer: its stores would wait as long again.
    }
    // An answer (a refusal, or a reset a moment later) is tried again as a chunk's PUT is.
    if (!put.ok()) {
      put = PutWithRetries(transport_, clock_, url, Bytes(body_), kNoteTimeout, nullptr, context);
    }
    if (put.ok()) {
      node.leased = true;
    } else {
      node.refusal = put.message();  // Said at the end, if the publish gets there.
    }
  }
  return Status::Ok();
}

Status PublishLeases::LookForGc() const {
  for (const Node& node : nodes_) {
    if (!node.leased) continue;
    const std::string url = node.url + "/" + kLeaseDir + "/" + kGcNote;
    Result<std::chrono::seconds> age = transport_.Age(url, kNoteTimeout);
    if (age.ok() && *age < times_.lifetime) {
      return FailedPreconditionError(
          "node " + node.name + ": `ckptfs gc` is removing unused objects from its store (" + url +
          " was renewed " + Seconds(std::max(*age, std::chrono::seconds(0))) +
          " ago); publish again once it has finished");
    }
    if (age.ok()) {
      LogWarning("node " + node.name + ": passing over " + url + ", not renewed for " +
                 Seconds(*age) + " (a gc that did not finish)");
    } else if (age.status().code() != StatusCode::kNotFound) {
      LogWarning("node " + node.name +
                 ": cannot tell whether a gc is at work there: " + age.status().message());
    }
  }
  return Status::Ok();
}

void PublishLeases::RenewLoop() {
  std::unique_lock lock(mu_);
  bool warned = false;
  while (!stop_cv_.wait_for(lock, times_.renewal, [this] { return stopping_; })) {
    lock.unlock();
    Status renewed = Status::Ok();
    for (const Node& node : nodes_) {
      if (!node.leased) continue;
      Status put = transport_.Put(LeaseUrl(node, kPublishingSuffix), Bytes(body_), kNoteTimeout);
      if (!put.ok() && renewed.ok()) renewed = put;
    }
    lock.lock();
    if (renewed.ok()) {
      const TimePoint now = clock_.Now();
      longest_gap_ = std::max(longest_gap_, now - last_renewed_);
      last_renewed_ = now;
    } else if (!warned) {
      warned = true;
      LogWarning("cannot renew this publish's lease: " + renewed.message());
    }
  }
}

void PublishLeases::Found(std::size_t node, const Digest& digest) {
  if (node >= node_of_option_.size() || node_of_option_[node] == std::string::npos) return;
  Node& leased = nodes_[node_of_option_[node]];
  if (!leased.leased) return;  // No list goes to it.
  std::lock_guard lock(mu_);
  leased.found.push_back(digest);
}

Status PublishLeases::Settle() {
  Duration gap;
  {
    std::lock_guard lock(mu_);
    gap = std::max(longest_gap_, clock_.Now() - last_renewed_);
  }
  if (gap > times_.lifetime) {
    return FailedPreconditionError(
        "this publish's lease went " + Seconds(gap) + " without renewal, past the " +
        Seconds(times_.lifetime) +
        " after which gc passes it over: objects it found on the nodes may have been removed "
        "meanwhile; publish again");
  }
  for (Node& node : nodes_) {
    if (!node.leased) {
      LogWarning("node " + node.name + " did not take this publish's lease (" + node.refusal +
                 "): a `ckptfs gc --delete` of its store meanwhile may have removed objects "
                 "this publish found there, and one within the next hour still may");
      continue;
    }
    std::vector<Digest> found;
    {
      std::lock_guard lock(mu_);
      found = node.found;
    }
    std::sort(found.begin(), found.end());
    found.erase(std::unique(found.begin(), found.end()), found.end());
    std::string list;
    list.reserve(found.size() * 65);
    for (const Digest& digest : found) list += digest.Hex() + "\n";
    CKPTFS_RETURN_IF_ERROR(PutWithRetries(
        transport_, clock_, LeaseUrl(node, kFoundSuffix), Bytes(list), kFoundListTimeout, nullptr,
        "cannot put the list of objects found on node " + node.name));
  }
  return Status::Ok();
}

PublishLeases::~PublishLeases() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (renewer_.joinable()) renewer_.join();
  for (const Node& node : nodes_) {
    if (!node.leased) continue;
    Status removed = transport_.Delete(LeaseUrl(node, kPublishingSuffix), kNoteTimeout);
    if (!removed.ok() && removed.code() != StatusCode::kNotFound) {
      LogWarning("cannot remove this publish's lease from node " + node.name + " (" +
                 removed.message() + "); gc removes it once it is " + Seconds(times_.lifetime) +
                 " old");
    }
  }
}

namespace {

// The note a gc leaves in each store while it removes objects.
Result<std::string> PlaceGcNote(const std::string& store) {
  const std::string dir = store + "/" + kLeaseDir;
  bool made = false;
  if (::mkdir(dir.c_str(), 0755) == 0) {
    made = true;
  } else if (errno != EEXIST) {
    return ErrnoStatus(errno, "cannot make " + dir);
  }
  struct stat owner;
  // The node's server writes publishes' leases here: the directory is the store's owner's.
  if (made && ::stat(store.c_str(), &owner) == 0 &&
      ::chown(dir.c_str(), owner.st_uid, owner.st_gid) != 0 && errno != EPERM) {
    return ErrnoStatus(errno, "cannot hand " + dir + " to the owner of " + store);
  }
  const std::string path = dir + "/" + kGcNote;
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return ErrnoStatus(errno, "cannot write " + path);
  const std::string body =
      "ckptfs gc\nhost: " + HostName() + "\npid: " + std::to_string(::getpid()) + "\n";
  CKPTFS_RETURN_IF_ERROR(WriteAll(fd.get(), Bytes(body)).WithContext("cannot write " + path));
  return path;
}

// "host H, pid P" from a lease's body, for the line that names it.
std::string Holder(const std::string& path) {
  Result<std::vector<std::uint8_t>> bytes = ReadWholeFile(path);
  if (!bytes.ok()) return "holder unknown";
  const std::string text(bytes->begin(), bytes->end());
  auto field = [&text](std::string_view name) {
    const std::size_t at = text.find(std::string("\n") + std::string(name) + ": ");
    if (at == std::string::npos) return std::string("?");
    const std::size_t start = at + name.size() + 3;
    return text.substr(start, text.find('\n', start) - start);
  };
  return "host " + field("host") + ", pid " + field("pid");
}

Status ReadFoundList(const std::string& path, std::vector<Digest>& found) {
  CKPTFS_ASSIGN_OR_RETURN(std::vector<std::uint8_t> bytes, ReadWholeFile(path));
  std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  int line_number = 0;
  while (!text.empty()) {
    ++line_number;
    const std::size_t end = text.find('\n');
    const std::string_view line = text.substr(0, end);
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    std::optional<Digest> digest = Digest::FromHex(line);
    if (!digest) {
      return DataLossError(path + " is not a list of object digests (line " +
                           std::to_string(line_number) + "); remove it if no publish wrote it");
    }
    found.push_back(*digest);
  }
  return Status::Ok();
}

}  // namespace

Result<GcLeases> GcLeases::Open(const std::vector<std::string>& stores, SystemTime now,
                                std::chrono::seconds min_age, bool place_notes, LeaseTimes times) {
  GcLeases leases;
  leases.times_ = times;
  if (place_notes) {
    for (const std::string& store : stores) {
      CKPTFS_ASSIGN_OR_RETURN(std::string note, PlaceGcNote(store));
      leases.notes_.push_back(std::move(note));
    }
  }
  leases.renewed_ = std::chrono::steady_clock::now();
  for (const std::string& store : stores) {
    const fs::path dir = fs::path(store) / kLeaseDir;
    std::error_code error;
    for (fs::directory_iterator it(dir, error), end; !error && it != end; it.increment(error)) {
      const std::string name = it->path().filename().string();
      const std::string path = it->path().string();
      struct stat st;
      if (name == kGcNote || ::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      const auto age = now - ModifiedTime(st);
      bool expired = false;
      if (name.ends_with(kPublishingSuffix)) {
        const std::string id = name.substr(0, name.size() - std::strlen(kPublishingSuffix));
        std::error_code unused;  // Not `error`, which ends the listing.
        const bool finished = fs::exists(dir / (id + kFoundSuffix), unused);
        expired = finished || age >= times.lifetime;
        if (!expired) {
          leases.running_.push_back(path + " (" + Holder(path) + "), renewed " +
                                    Seconds(std::max<Duration>(age, Duration::zero())) + " ago");
        }
      } else if (name.ends_with(kFoundSuffix)) {
        expired = age >= min_age;
        if (!expired) CKPTFS_RETURN_IF_ERROR(ReadFoundList(path, leases.found_));
      }
      if (expired && place_notes && ::unlink(path.c_str()) != 0 && errno != ENOENT) {
        return ErrnoStatus(errno, "cannot remove " + path);
      }
    }
    if (error && error != std::errc::no_such_file_or_directory) {
      return ErrnoStatus(error.value(), "cannot list " + dir.string());
    }
  }
  if (place_notes && !leases.running_.empty()) {
    return FailedPreconditionError("a publish by PUT is under way: " + leases.running_.front() +
                                   "; run gc once it has finished");
  }
  std::sort(leases.found_.begin(), leases.found_.end());
  leases.found_.erase(std::unique(leases.found_.begin(), leases.found_.end()), leases.found_.end());
  return leases;
}

GcLeases::~GcLeases() {
  for (const std::string& note : notes_) ::unlink(note.c_str());
}

bool GcLeases::RecentlyFound(const Digest& digest) const {
  return std::binary_search(found_.begin(), found_.end(), digest);
}

Status GcLeases::Renew() {
  const auto now = std::chrono::steady_clock::now();
  const Duration since = now - renewed_;
  if (since < times_.renewal || notes_.empty()) return Status::Ok();
  if (since > times_.lifetime) {
    return FailedPreconditionError("this gc was held up for " + Seconds(since) + ", past the " +
                                   Seconds(times_.lifetime) +
                                   " after which a publish takes its note for a crashed gc's; "
                                   "run it again");
  }
  for (const std::string& note : notes_) {
    if (::utimensat(AT_FDCWD, note.c_str(), nullptr, 0) != 0) {
      return ErrnoStatus(errno, "cannot renew " + note);
    }
  }
  renewed_ = now;
  return Status::Ok();
}

}  // namespace ckptfs::cli
