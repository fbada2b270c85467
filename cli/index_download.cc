#include "cli/index_download.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <fstream>
#include <string>
#include <string_view>

#include "common/file_io.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace ckptfs::cli {

namespace {

constexpr std::string_view kPinnedPrefix = "sha256-";
constexpr std::string_view kCopySuffix = ".ckptfs";

// "2026-12-06 17:05 UTC".
std::string UtcMinute(std::time_t t) {
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%d %H:%M UTC", &tm);
  return text;
}

std::string TemporaryName(const std::string& path) {
  return path + ".tmp." + std::to_string(::getpid());
}

Status SetTimes(const std::string& path, std::int64_t seconds) {
  const timespec times[2] = {{seconds, 0}, {seconds, 0}};
  if (::utimensat(AT_FDCWD, path.c_str(), times, 0) != 0) {
    return ErrnoStatus(errno, "cannot set the time of " + path);
  }
  return Status::Ok();
}

// What to do when an index URL could not be downloaded (`failed`) while a copy of it is kept at
// `path` (`copy`: its stat): with `fallback`, mount that copy and say so; without, fail, and tell
// the user how to use it.
Result<std::string> CopyAfterFailedDownload(const std::string& path, const struct stat& copy,
                                            const Status& failed, bool fallback) {
  // Stored (renamed into place) when it was last downloaded whole.
  const std::string stored = UtcMinute(copy.st_ctime);
  if (!fallback) {
    return Status(failed.code(), failed.message() + "; a copy stored " + stored +
                                     " by an earlier mount is kept: -o index_fallback mounts it");
  }
  LogWarning(failed.message() + "; mounting the copy stored " + stored +
             " by an earlier mount (index_fallback)");
  return path;
}

// The copy by URL (see the header).
Result<std::string> CopyByUrl(const IndexDownload& download, const std::string& dir,
                              netfetch::Transport& transport) {
  const std::string path =
      dir + "/" + Sha256(download.url.data(), download.url.size()).Hex() + std::string(kCopySuffix);
  const std::string etag_path = path + ".etag";
  const std::string tmp = TemporaryName(path);
  netfetch::FileVersion have;
  struct stat copy;
  const bool have_copy = ::stat(path.c_str(), &copy) == 0;
  if (have_copy) {
    if (copy.st_mtime > 0) have.last_modified = copy.st_mtime;
    std::ifstream(etag_path) >> have.etag;  // ETags hold no white space.
  }
  Result<netfetch::FileFetch> got = transport.GetToFile(download.url, tmp, download.timeout, have);
  if (!got.ok()) {
    ::unlink(tmp.c_str());
    // Network errors name the URL already; a local file error names the file it could not write.
    Status failed = got.status().WithContext("cannot download the index");
    if (!have_copy) return failed;
    return CopyAfterFailedDownload(path, copy, failed, download.fallback);
  }
  if (got->not_modified) return path;
  // The old ETag goes first: a crash part way leaves a copy that is asked for by its time alone.
  ::unlink(etag_path.c_str());
  Status stored = SetTimes(tmp, std::max<std::int64_t>(got->version.last_modified, 0));
  if (stored.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    stored = ErrnoStatus(errno, "cannot store index");
  }
  if (!stored.ok()) {
    ::unlink(tmp.c_str());
    return stored;
  }
  if (!got->version.etag.empty()) {
    // Best effort: without it the next mount asks by time, or downloads the index whole.
    const std::string etag_tmp = TemporaryName(etag_path);
    std::ofstream(etag_tmp) << got->version.etag;
    if (::rename(etag_tmp.c_str(), etag_path.c_str()) != 0) ::unlink(etag_tmp.c_str());
  }
  return path;
}

// The SHA-256 of the file at `path`; NotFound when there is none.
Result<Digest> Sha256OfPath(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return ErrnoStatus(errno, "cannot open " + path);
  return FileSha256(fd.get(), path);
}

// Whether the pinned copy at `path` is there with the SHA-256 `want`. One that differs (a disk
// that changed it; nothing else writes there) is removed, to be downloaded again.
bool HasPinnedCopy(const std::string& path, const Digest& want) {
  Result<Digest> got = Sha256OfPath(path);
  if (got.ok() && *got == want) return true;
  if (got.ok() || got.status().code() != StatusCode::kNotFound) {
    LogWarning("index copy " + path + " is not the version pinned (" +
               (got.ok() ? "SHA-256 " + got->Hex() : got.status().message()) +
               "); downloading it again");
    ::unlink(path.c_str());
  }
  return false;
}

bool IsPinnedCopyName(std::string_view name) {
  return name.size() == kPinnedPrefix.size() + 2 * kDigestSize + kCopySuffix.size() &&
         name.starts_with(kPinnedPrefix) && name.ends_with(kCopySuffix);
}

// Deletes the pinned copies in `dir` that no mount has used for kPinnedCopyLifetime.
void RemoveUnusedPinnedCopies(const std::string& dir, std::time_t now) {
  DIR* listing = ::opendir(dir.c_str());
  if (listing == nullptr) return;
  const auto lifetime = std::chrono::seconds(kPinnedCopyLifetime).count();
  while (const dirent* entry = ::readdir(listing)) {
    if (!IsPinnedCopyName(entry->d_name)) continue;
    struct stat st;
    if (::fstatat(::dirfd(listing), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (S_ISREG(st.st_mode) && now - st.st_mtime > lifetime) {
      ::unlinkat(::dirfd(listing), entry->d_name, 0);
    }
  }
  ::closedir(listing);
}

// The copy by content (see the header).
Result<std::string> PinnedCopy(const IndexDownload& download, const std::string& dir,
                               netfetch::Transport& transport) {
  const Digest& want = *download.sha256;
  const std::string path =
      dir + "/" + std::string(kPinnedPrefix) + want.Hex() + std::string(kCopySuffix);
  RemoveUnusedPinnedCopies(dir, download.now);
  if (HasPinnedCopy(path, want)) {
    // Best effort: a copy whose time stays old may be removed, and then is downloaded again.
    (void)SetTimes(path, download.now);
    return path;
  }
  const std::string tmp = TemporaryName(path);
  Result<netfetch::FileFetch> got = transport.GetToFile(download.url, tmp, download.timeout);
  Status stored = got.status().WithContext("cannot download the index");
  if (stored.ok()) {
    Result<Digest> digest = Sha256OfPath(tmp);
    stored = digest.status();
    if (digest.ok() && *digest != want) {
      stored = FailedPreconditionError("index " + download.url + " has SHA-256 " + digest->Hex() +
                                       ", not the " + want.Hex() + " of index_sha256=");
    }
  }
  if (stored.ok()) stored = SetTimes(tmp, download.now);
  if (stored.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    stored = ErrnoStatus(errno, "cannot store index");
  }
  if (!stored.ok()) {
    ::unlink(tmp.c_str());
    return stored;
  }
  return path;
}

}  // namespace

Result<std::string> LocalIndexCopy(const IndexDownload& download, netfetch::Transport& transport) {
  const std::string dir = download.cache_dir + "/indexes";
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus(errno, "cannot create " + dir);
  }
  return download.sha256.has_value() ? PinnedCopy(download, dir, transport)
                                     : CopyByUrl(download, dir, transport);
}

}  // namespace ckptfs::cli
