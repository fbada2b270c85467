#include "cli/mount_options.h"

#include <pwd.h>
#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <set>
#include <vector>

#include "common/units.h"

namespace ckptfs::cli {

Result<Digest> ParseIndexSha256(std::string_view hex, std::string_view option) {
  std::optional<Digest> digest = Digest::FromHex(hex);
  if (!digest.has_value()) {
    return InvalidArgumentError(std::string(option) +
                                " must be 64 hex digits, the SHA-256 that ckptfs publish printed "
                                "for the index; got '" +
                                std::string(hex) + "'");
  }
  return *digest;
}

namespace {

// Words that mount(8) and fstab(5) use for themselves, acted on before a mount runs (user mounts,
// boot order, failure handling), and generic flags that mean nothing for a mount that writes
// nothing: access times and synchronous writes.
const std::set<std::string>& NoOpWords() {
  static const std::set<std::string> kNoOps = {
      "ro",       "defaults",   "_netdev",  "noauto",     "auto",        "user",
      "users",    "nouser",     "owner",    "group",      "nofail",      "silent",
      "loud",     "sync",       "async",    "dirsync",    "atime",       "noatime",
      "diratime", "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime",
      "lazytime", "nolazytime"};
  return kNoOps;
}

// Generic mount flags passed on to the kernel's mount. libfuse adds nosuid and nodev by itself;
// suid and dev cannot be had (its fusermount3 path, which auto_unmount takes, drops them).
const std::set<std::string>& KernelMountFlags() {
  static const std::set<std::string> kFlags = {"exec", "noexec", "nosuid", "nodev"};
  return kFlags;
}

// A positive number of seconds for option `key`.
Result<Duration> ParseDuration(const std::string& key, const std::string& value) {
  Result<double> seconds = ParseSeconds(value);
  if (!seconds.ok()) return seconds.status().WithContext(key);
  return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(*seconds));
}

// A whole number in [low, high] for option `key`.
Result<int> ParseCount(const std::string& key, const std::string& value, int low, int high) {
  int n = 0;
  const char* end = value.data() + value.size();
  const auto [ptr, ec] = std::from_chars(value.data(), end, n);
  if (ec != std::errc() || ptr != end || n < low || n > high) {
    return InvalidArgumentError(key + " must be a whole number between " + std::to_string(low) +
                                " and " + std::to_string(high) + ", not '" + value + "'");
  }
  return n;
}

Status ApplyOne(const std::string& key, const std::string& value, bool has_value,
                MountOptions& options, OptionSource source) {
  auto need_value = [&]() -> Status {
    if (!has_value || value.empty())
      return InvalidArgumentError("option " + key + " needs a value");
    return Status::Ok();
  };
  if (key == "rw" && !has_value) {
    if (source == OptionSource::kMount8) return Status::Ok();
    return InvalidArgumentError("ckptfs mounts are read-only: option rw is not allowed");
  }
  if ((key == "suid" || key == "dev") && !has_value) {
    return InvalidArgumentError("ckptfs mounts are always nosuid and nodev: option " + key +
                                " is not allowed");
  }
  if (!has_value && NoOpWords().contains(key)) return Status::Ok();
  if (!has_value && KernelMountFlags().contains(key)) {
    options.mount_flags.push_back(key);
    return Status::Ok();
  }
  if (key == "allow_other" && !has_value) {
    options.allow_other = true;
  } else if (key == "index_fallback" && !has_value) {
    options.index_fallback = true;
  } else if (key == "debug" && !has_value) {
    options.debug = true;
  } else if (key == "index_sha256") {
    CKPTFS_RETURN_IF_ERROR(need_value());
    CKPTFS_ASSIGN_OR_RETURN(options.index_sha256, ParseIndexSha256(value, "option index_sha256"));
  } else if (key == "cache_dir") {
    CKPTFS_RETURN_IF_ERROR(need_value());
    options.cache_dir = value;
  } else if (key == "http_headers") {
    CKPTFS_RETURN_IF_ERROR(need_value());
    options.http_headers = value;
  } else if (key == "ca_file") {
    CKPTFS_RETURN_IF_ERROR(need_value());
    options.ca_file = value;
  } else if (key == "cache_size") {
    CKPTFS_RETURN_IF_ERROR(need_value());
    CKPTFS_ASSIGN_OR_RETURN(options.cache_size, ParseSize(value));
  } else if (key == "timeout") {
    CKPTFS_RETURN_IF_ERROR(need_value());
    CKPTFS_ASSIGN_OR_RETURN(options.timeout, ParseDuration(key, value));
  } else if (key == "stall_timeout") {
    CKPTFS_RETURN_IF_ERROR(need_value());
    if (value == "0") {
      options.stall_timeout = Duration::zero();
    } else {
      CKPTFS_ASSIGN_OR_RETURN(options.stall_timeout, ParseDuration(key, value));
    }
  } else if (key == "fetchers") {
    CKPTFS_RETURN_IF_ERROR(need_value());
    CKPTFS_ASSIGN_OR_RETURN(options.fetch_threads, ParseCount(key, value, 1, 64));
  } else if (key == "fetch_parts") {
    CKPTFS_RETURN_IF_ERROR(need_value());
    CKPTFS_ASSIGN_OR_RETURN(options.fetch_parts, ParseCount(key, value, 1, 16));
  } else if (key == "kernel_readahead") {
    CKPTFS_RETURN_IF_ERROR(need_value());
    CKPTFS_ASSIGN_OR_RETURN(options.kernel_readahead, ParseSize(value));
  } else if (key == "memory_cache") {
    CKPTFS_RETURN_IF_ERROR(need_value());
    CKPTFS_ASSIGN_OR_RETURN(options.memory_cache, ParseSize(value));
    if (options.memory_cache < (1ull << 20)) {
      return InvalidArgumentError("memory_cache must be at least 1M");
    }
  } else if (key == "index_cache") {
    CKPTFS_RETURN_IF_ERROR(need_value());
    CKPTFS_ASSIGN_OR_RETURN(options.index_cache, ParseSize(value));
  } else if (key == "readahead") {
    CKPTFS_RETURN_IF_ERROR(need_value());
    CKPTFS_ASSIGN_OR_RETURN(options.readahead, ParseSize(value));
  } else if (key == "dir_readahead") {
    CKPTFS_RETURN_IF_ERROR(need_value());
    if (value != "0" && value != "1") return InvalidArgumentError("dir_readahead must be 0 or 1");
    options.dir_readahead = value == "1";
  } else if (key.rfind("node.", 0) == 0 && key.size() > 5) {
    CKPTFS_RETURN_IF_ERROR(need_value());
    options.node_urls[key.substr(5)] = value;
  } else {
    return InvalidArgumentError("unknown mount option '" + key + "'");
  }
  return Status::Ok();
}

}  // namespace

Status ApplyMountOptionList(const std::string& list, MountOptions& options, OptionSource source) {
  std::size_t start = 0;
  while (start <= list.size()) {
    std::size_t comma = list.find(',', start);
    std::string item =
        list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!item.empty()) {
      std::size_t eq = item.find('=');
      bool has_value = eq != std::string::npos;
      std::string key = item.substr(0, eq);
      std::string value = has_value ? item.substr(eq + 1) : "";
      CKPTFS_RETURN_IF_ERROR(ApplyOne(key, value, has_value, options, source));
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return Status::Ok();
}

Result<std::string> CacheDirFor(const CacheDirSources& from) {
  if (from.euid == 0) return std::string("/var/cache/ckptfs");
  // XDG: a relative XDG_CACHE_HOME is invalid and to be ignored.
  if (!from.xdg_cache_home.empty() && from.xdg_cache_home[0] == '/') {
    return from.xdg_cache_home + "/ckptfs";
  }
  for (const std::string& home : {from.home, from.passwd_home}) {
    if (!home.empty() && home[0] == '/') return home + "/.cache/ckptfs";
  }
  return FailedPreconditionError(
      "no home directory to keep the disk cache in (HOME is not set and the password database "
      "has none): give one with -o cache_dir=DIR");
}

Result<std::string> DefaultCacheDir() {
  CacheDirSources from;
  from.euid = ::geteuid();
  if (const char* xdg = std::getenv("XDG_CACHE_HOME")) from.xdg_cache_home = xdg;
  if (const char* home = std::getenv("HOME")) from.home = home;
  // mount(8) clears the environment of the helper it runs for a user's fstab entry.
  std::vector<char> buffer(16384);
  passwd entry{};
  passwd* found = nullptr;
  if (::getpwuid_r(from.euid, &entry, buffer.data(), buffer.size(), &found) == 0 &&
      found != nullptr && found->pw_dir != nullptr) {
    from.passwd_home = found->pw_dir;
  }
  return CacheDirFor(from);
}

}  // namespace ckptfs::cli
