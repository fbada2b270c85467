#include "cli/stats.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>

#include "common/file_io.h"
#include "common/status.h"
#include "common/unique_fd.h"

namespace ckptfs::cli {

namespace {

// getxattr(2) values are at most XATTR_SIZE_MAX (64 KiB) on Linux: no larger buffer can help.
constexpr std::size_t kMaxStatsText = 64 << 10;

// Writes "name value" lines with a common prefix.
class Lines {
 public:
  Lines(std::string& out, std::string prefix) : out_(out), prefix_(std::move(prefix)) {}
  Lines& Add(std::string_view name, std::uint64_t value) {
    out_ += prefix_;
    out_ += name;
    out_ += ' ';
    out_ += std::to_string(value);
    out_ += '\n';
    return *this;
  }

 private:
  std::string& out_;
  std::string prefix_;
};

// The node name with '%', whitespace and control bytes as %XX: one field on a line.
std::string EscapeName(std::string_view name) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char c : name) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte <= ' ' || byte == 0x7f || c == '%') {
      out += '%';
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
    } else {
      out += c;
    }
  }
  return out;
}

// The value of a "Name:   123 kB" line of /proc/<pid>/status, in bytes; 0 when missing.
std::uint64_t StatusKilobytes(std::string_view status, std::string_view field) {
  std::size_t at = 0;
  while (at < status.size()) {
    std::size_t end = status.find('\n', at);
    if (end == std::string_view::npos) end = status.size();
    std::string_view line = status.substr(at, end - at);
    at = end + 1;
    if (line.size() <= field.size() || line.substr(0, field.size()) != field ||
        line[field.size()] != ':') {
      continue;
    }
    line.remove_prefix(field.size() + 1);
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    std::uint64_t kilobytes = 0;
    if (std::from_chars(line.data(), line.data() + line.size(), kilobytes).ec != std::errc()) {
      return 0;
    }
    return kilobytes * 1024;
  }
  return 0;
}

// The inverse of EscapeName: %XX back to its byte; a '%' not followed by two hex digits stays.
std::string UnescapeName(std::string_view escaped) {
  std::string out;
  for (std::size_t i = 0; i < escaped.size(); ++i) {
    unsigned byte = 0;
    if (escaped[i] == '%' && i + 2 < escaped.size() &&
        std::from_chars(escaped.data() + i + 1, escaped.data() + i + 3, byte, 16).ptr ==
            escaped.data() + i + 3) {
      out += static_cast<char>(byte);
      i += 2;
    } else {
      out += escaped[i];
    }
  }
  return out;
}

// A Prometheus label value: backslash, double quote and newline escaped.
std::string LabelValue(std::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

bool IsMetricName(std::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

// The samples of one metric family, in the order they were added.
struct Family {
  std::string name;
  bool counter = false;
  std::string samples;
};

// Metric families in the order first seen, so that each one's samples come out together under
// one TYPE line, as the format requires, whichever mount they came from.
class Families {
 public:
  void Add(const std::string& name, bool counter, const std::string& labels,
           std::string_view value) {
    auto [it, added] = index_.try_emplace(name, families_.size());
    if (added) families_.push_back({name, counter, {}});
    std::string& out = families_[it->second].samples;
    out.append(name).append("{").append(labels).append("} ").append(value).append("\n");
  }

  std::string Text() const {
    std::string out;
    for (const Family& family : families_) {
      out += "# TYPE " + family.name + (family.counter ? " counter\n" : " gauge\n");
      out += family.samples;
    }
    return out;
  }

 private:
  std::vector<Family> families_;
  std::map<std::string, std::size_t> index_;
};

// One "name value" line of a mount's text into `families`; a line that is not one is skipped.
void AddStatsLine(std::string_view line, const std::string& mount_label, Families& families) {
  const std::size_t space = line.find(' ');
  if (space == std::string_view::npos) return;
  std::string_view key = line.substr(0, space);
  const std::string_view value = line.substr(space + 1);
  if (value.empty() || value.find_first_not_of("0123456789") != std::string_view::npos) return;
  std::string labels = mount_label;
  std::string metric(key);
  if (key.starts_with("node.")) {
    const std::size_t dot = key.rfind('.');
    if (dot <= 5) return;
    labels += ",node=\"" + LabelValue(UnescapeName(key.substr(5, dot - 5))) + "\"";
    metric = "node" + std::string(key.substr(dot));
  }
  const bool counter =
      metric.starts_with("fs.") || metric.starts_with("store.") || metric.starts_with("fetch.");
  std::replace(metric.begin(), metric.end(), '.', '_');
  if (!IsMetricName(metric)) return;
  families.Add("ckptfs_" + metric + (counter ? "_total" : ""), counter, labels, value);
}

}  // namespace

std::string FormatStats(const StatsSources& stats) {
  std::string out;
  auto add_all = [&out](const auto& counters, const std::string& prefix) {
    Lines lines(out, prefix);
    counters.ForEach(
        [&lines](std::string_view name, std::uint64_t value) { lines.Add(name, value); });
  };
  add_all(stats.fs, "fs.");
  add_all(stats.store, "store.");
  add_all(stats.fetch, "fetch.");
  Lines(out, "cache.")
      .Add("used_bytes", stats.cache.used_bytes)
      .Add("capacity_bytes", stats.cache.capacity_bytes)
      .Add("entries", stats.cache.entries);
  Lines(out, "memory.")
      .Add("chunk_bytes", stats.memory.bytes)
      .Add("chunk_budget_bytes", stats.memory.budget_bytes)
      .Add("ready_chunks", stats.memory.ready_chunks)
      .Add("spare_bytes", stats.memory.spare_bytes);
  for (const netfetch::NodeHealth& node : stats.nodes) {
    const double speed = std::isfinite(node.bytes_per_second) && node.bytes_per_second > 0
                             ? std::round(node.bytes_per_second)
                             : 0;
    Lines(out, "node." + EscapeName(node.name) + ".")
        .Add("in_flight", static_cast<std::uint64_t>(std::max(node.in_flight, 0)))
        .Add("bytes_per_second", static_cast<std::uint64_t>(speed))
        .Add("consecutive_failures",
             static_cast<std::uint64_t>(std::max(node.consecutive_failures, 0)))
        .Add("backing_off", node.backing_off ? 1 : 0)
        .Add("backoff_ms",
             static_cast<std::uint64_t>(std::chrono::ceil<std::chrono::milliseconds>(
                                            std::max(node.backoff_left, Duration::zero()))
                                            .count()))
        .Add("awaiting_probe", node.awaiting_probe ? 1 : 0)
        .Add("unanswered", node.unanswered ? 1 : 0)
        .Add("down", node.down ? 1 : 0);
  }
  Lines(out, "daemon.")
      .Add("rss_bytes", stats.daemon.rss_bytes)
      .Add("peak_rss_bytes", stats.daemon.peak_rss_bytes);
  return out;
}

DaemonMemory ParseProcStatus(std::string_view status) {
  return {.rss_bytes = StatusKilobytes(status, "VmRSS"),
          .peak_rss_bytes = StatusKilobytes(status, "VmHWM")};
}

std::string MountStatsText(const fs::FileSystem& file_system, const fs::ChunkStore& store,
                           const netfetch::RetryingFetcher& fetcher, const fs::DiskCache& cache) {
  std::ifstream status("/proc/self/status");
  std::ostringstream text;
  text << status.rdbuf();
  return FormatStats({.fs = file_system.counters(),
                      .store = store.counters(),
                      .fetch = fetcher.counters(),
                      .cache = {.used_bytes = cache.used_bytes(),
                                .capacity_bytes = cache.capacity_bytes(),
                                .entries = cache.entry_count()},
                      .memory = store.memory(),
                      .nodes = fetcher.Health(),
                      .daemon = ParseProcStatus(text.str())});
}

namespace {

// What getxattr gave the child that asked: its return value and errno, then the value's bytes.
struct XattrAnswer {
  ssize_t n = -1;
  int err = 0;
};

// Reads from `fd` until EOF or `deadline`; false when the deadline came first.
bool ReadAll(int fd, std::string& out, std::chrono::steady_clock::time_point deadline) {
  char buffer[16384];
  for (;;) {
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) return false;
    if (ready < 0) return true;  // As at EOF: the caller finds the reply short.
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return true;
    out.append(buffer, static_cast<std::size_t>(n));
  }
}

}  // namespace

Result<std::string> ReadMountStats(const std::string& mountpoint, Duration timeout) {
  // getxattr on a mount whose daemon is stopped or hung waits for it for ever, and only a fatal
  // signal ends that wait: a child process asks, and is killed if it has not answered in time.
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return ErrnoStatus(errno, "cannot make a pipe");
  UniqueFd from_child(fds[0]);
  UniqueFd to_parent(fds[1]);
  const std::string name(fs::kStatsXattr);
  const pid_t child = ::fork();
  if (child < 0) return ErrnoStatus(errno, "cannot fork");
  if (child == 0) {
    std::string text(kMaxStatsText, '\0');
    XattrAnswer answer;
    answer.n = ::getxattr(mountpoint.c_str(), name.c_str(), text.data(), text.size());
    answer.err = errno;
    const std::size_t length = answer.n > 0 ? static_cast<std::size_t>(answer.n) : 0;
    const bool sent =
        WriteAll(to_parent.get(), {reinterpret_cast<const std::uint8_t*>(&answer), sizeof(answer)})
            .ok() &&
        WriteAll(to_parent.get(), {reinterpret_cast<const std::uint8_t*>(text.data()), length})
            .ok();
    ::_exit(sent ? 0 : 1);  // No exit handlers: they belong to the parent.
  }
  to_parent.Reset();
  std::string reply;
  const bool in_time = ReadAll(from_child.get(), reply, std::chrono::steady_clock::now() + timeout);
  if (!in_time) ::kill(child, SIGKILL);
  int wait_status = 0;
  while (::waitpid(child, &wait_status, 0) < 0 && errno == EINTR) {
  }
  if (!in_time) {
    return DeadlineExceededError(
        "the daemon of " + mountpoint + " did not answer within " +
        std::to_string(std::chrono::duration_cast<std::chrono::seconds>(timeout).count()) +
        " s: it is stopped or hung (umount -l " + mountpoint + " detaches the mount)");
  }
  XattrAnswer answer;
  if (reply.size() < sizeof(answer)) {
    return InternalError("the process reading the statistics of " + mountpoint + " failed");
  }
  std::memcpy(&answer, reply.data(), sizeof(answer));
  if (answer.n < 0) {
    const int err = answer.err;
    if (err == ENODATA || err == ENOTSUP) {
      return FailedPreconditionError(mountpoint + " is not the root of a ckptfs mount (it has no " +
                                     name + " attribute)");
    }
    if (err == ENOENT) return NotFoundError(mountpoint + ": no such file or directory");
    if (err == ERANGE) {
      return InternalError("the statistics of " + mountpoint + " are larger than " +
                           std::to_string(kMaxStatsText >> 10) + " KiB");
    }
    return ErrnoStatus(err, "cannot read the statistics of " + mountpoint);
  }
  return reply.substr(sizeof(answer));
}

std::string FormatPrometheus(const std::vector<MountStats>& mounts) {
  Families families;
  auto mount_label = [](const MountStats& mount) {
    return "mountpoint=\"" + LabelValue(mount.mountpoint) + "\"";
  };
  for (const MountStats& mount : mounts) {
    families.Add("ckptfs_up", false, mount_label(mount), mount.text.ok() ? "1" : "0");
  }
  for (const MountStats& mount : mounts) {
    if (!mount.text.ok()) continue;
    const std::string label = mount_label(mount);
    std::istringstream lines(*mount.text);
    for (std::string line; std::getline(lines, line);) AddStatsLine(line, label, families);
  }
  return families.Text();
}

}  // namespace ckptfs::cli
