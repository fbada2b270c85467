#include "fs/cache_verify.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <mutex>
#include <thread>

#include "common/buffer.h"
#include "common/digest.h"
#include "common/file_io.h"
#include "common/status.h"
#include "common/unique_fd.h"
#include "fs/disk_cache.h"

namespace ckptfs::fs {

namespace {

constexpr std::size_t kReadSize = 1 << 20;

// The names of the whole entries in one prefix directory, sorted; NotFound when it is missing
// (a cache directory made again under a mount makes them one at a time).
Result<std::vector<std::string>> ListEntries(const std::string& sub) {
  DIR* d = ::opendir(sub.c_str());
  if (d == nullptr) return ErrnoStatus(errno, "cannot read cache directory " + sub);
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    // Whole entries only: "<hex>.part" and anything else fail to parse.
    if (Digest::FromHex(e->d_name).has_value()) names.emplace_back(e->d_name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

// The SHA-256 of the regular file at `path` and its size. NotFound when it is gone or not a
// regular file (evicted, or not an entry).
Result<std::pair<Digest, std::uint64_t>> HashFile(const std::string& path, Buffer& scratch) {
  UniqueFd fd = OpenForDirectRead(path, O_NOFOLLOW);
  if (!fd.valid()) return ErrnoStatus(errno, "cannot open");
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, "cannot stat");
  if (!S_ISREG(st.st_mode)) return NotFoundError("not a regular file");
  const auto size = static_cast<std::uint64_t>(st.st_size);
  Sha256Hasher hasher;
  for (std::uint64_t offset = 0; offset < size; offset += kReadSize) {
    const std::size_t length =
        static_cast<std::size_t>(std::min<std::uint64_t>(kReadSize, size - offset));
    CKPTFS_ASSIGN_OR_RETURN(std::span<const std::uint8_t> bytes,
                            PreadAligned(fd.get(), offset, length, scratch.span()));
    hasher.Update(bytes.data(), bytes.size());
  }
  return std::make_pair(hasher.Finish(), size);
}

// Checks the entries of one prefix directory into `report` (under `mu`).
Status VerifyPrefix(const CacheVerifyOptions& options, const std::string& sub, Buffer& scratch,
                    std::mutex& mu, CacheVerifyReport& report) {
  Result<std::vector<std::string>> names = ListEntries(sub);
  if (!names.ok()) {
    return names.status().code() == StatusCode::kNotFound ? Status::Ok() : names.status();
  }
  for (const std::string& name : *names) {
    const std::string path = sub + "/" + name;
    Result<std::pair<Digest, std::uint64_t>> hashed = HashFile(path, scratch);
    if (!hashed.ok() && hashed.status().code() == StatusCode::kNotFound) continue;
    // Not the entry's fault: another user's cache. Nothing of it is to be called bad.
    if (!hashed.ok() && hashed.status().code() == StatusCode::kPermissionDenied) {
      return hashed.status().WithContext(path);
    }
    BadCacheEntry bad{path, "", false};
    if (!hashed.ok()) {
      bad.reason = "cannot be read: " + hashed.status().message();
    } else if (hashed->first != *Digest::FromHex(name)) {
      bad.reason = "SHA-256 is " + hashed->first.Hex();
    }
    if (!bad.reason.empty() && options.remove) {
      bad.removed = ::unlink(path.c_str()) == 0 || errno == ENOENT;
      if (!bad.removed)
        bad.reason.append("; ").append(ErrnoStatus(errno, "cannot remove it").message());
    }
    std::lock_guard lock(mu);
    ++report.entries;
    if (hashed.ok()) report.bytes += hashed->second;
    if (!bad.reason.empty()) report.bad.push_back(std::move(bad));
  }
  return Status::Ok();
}

}  // namespace

Result<CacheVerifyReport> VerifyCache(const CacheVerifyOptions& options) {
  struct stat st {};
  if (::stat(options.dir.c_str(), &st) != 0) {
    return ErrnoStatus(errno, "cannot use cache directory " + options.dir);
  }
  if (!S_ISDIR(st.st_mode)) return FailedPreconditionError(options.dir + " is not a directory");
  if (::access(options.dir.c_str(), R_OK | X_OK | (options.remove ? W_OK : 0)) != 0) {
    return ErrnoStatus(errno, "cannot use cache directory " + options.dir);
  }
  const std::vector<std::string> prefixes = DiskCache::PrefixDirs(options.dir);
  CacheVerifyReport report;
  std::mutex mu;
  std::atomic<std::size_t> next{0};
  Status first_error;
  auto work = [&] {
    Buffer scratch(kReadSize);
    for (std::size_t i = next++; i < prefixes.size(); i = next++) {
      Status status = VerifyPrefix(options, prefixes[i], scratch, mu, report);
      if (!status.ok()) {
        std::lock_guard lock(mu);
        if (first_error.ok()) first_error = status;
      }
    }
  };
  std::vector<std::jthread> helpers;
  for (int i = 1; i < std::max(options.jobs, 1); ++i) helpers.emplace_back(work);
  work();
  helpers.clear();  // Joins them.
  if (!first_error.ok()) return first_error;
  std::sort(report.bad.begin(), report.bad.end(),
            [](const BadCacheEntry& a, const BadCacheEntry& b) { return a.path < b.path; });
  return report;
}

}  // namespace ckptfs::fs
