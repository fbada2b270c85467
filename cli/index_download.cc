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

// A copy's access time is its last mount (set here; a noatime file system leaves it alone), its
// mtime the server's Last-Modified. Best effort: a copy whose mark fails may be removed sooner,
// and is then downloaded again.
void MarkMounted(const std::string& path, std::time_t now) {
  const timespec times[2] = {{now, 0}, {0, UTIME_OMIT}};
  (void)::utimensat(AT_FDCWD, path.c_str(), times, 0);
}

bool IsHexName(std::string_view name) {
  return name.size() == 2 * kDigestSize && Digest::FromHex(name).has_value();
}

// "<64 hex>.ckptfs" (by URL) or "sha256-<64 hex>.ckptfs" (by content), or either with the
// ".tmp.<pid>" of a download that a crash left behind.
bool IsCopyName(std::string_view name) {
  if (const std::size_t tmp = name.rfind(".tmp."); tmp != std::string_view::npos) {
    const std::string_view pid = name.substr(tmp + 5);
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string_view::npos) return false;
    name = name.substr(0, tmp);
  }
  if (!name.ends_with(kCopySuffix)) return false;
  name.remove_suffix(kCopySuffix.size());
  if (name.starts_with(kPinnedPrefix)) name.remove_prefix(kPinnedPrefix.size());
  return IsHexName(name);
}

// Deletes the copies in `dir` (and the ETags of copies by URL) that no mount has used for
// kIndexCopyLifetime, and downloads left that long.
void RemoveUnusedCopies(const std::string& dir, std::time_t now) {
  DIR* listing = ::opendir(dir.c_str());
  if (listing == nullptr) return;
  const auto lifetime = std::chrono::seconds(kIndexCopyLifetime).count();
  while (const dirent* entry = ::readdir(listing)) {
    const std::string name = entry->d_name;
    if (!IsCopyName(name)) continue;
    struct stat st;
    if (::fstatat(::dirfd(listing), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (S_ISREG(st.st_mode) && now - st.st_atime > lifetime) {
      ::unlinkat(::dirfd(listing), name.c_str(), 0);
      ::unlinkat(::dirfd(listing), (name + ".etag").c_str(), 0);
    }
  }
  ::closedir(listing);
}

// Puts the download `tmp` in place as the copy `path`, marked mounted, when `checked` (what the
// caller found of it) is OK; otherwise, or when the rename fails, removes it and returns why.
Status StoreDownload(const std::string& tmp, const std::string& path, Status checked,
                     std::time_t now) {
  MarkMounted(tmp, now);
  if (checked.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    checked = ErrnoStatus(errno, "cannot store index");
  }
  if (!checked.ok()) ::unlink(tmp.c_str());
  return checked;
}

// What to do when an index URL could not be downloaded (`failed`) while a copy of it is kept at
// `path` (`copy`: its stat): with `fallback`, mount that copy and say so; without, fail, and tell
// the user how to use it. Either way the line says which version the copy is: the server's
// Last-Modified, its mtime (0 when the server gave none).
Result<std::string> CopyAfterFailedDownload(const std::string& path, const struct stat& copy,
                                            const Status& failed, bool fallback) {
  const std::string version =
      copy.st_mtime > 0 ? " (the server's version of " + UtcMinute(copy.st_mtime) + ")" : "";
  if (!fallback) {
    return Status(failed.code(), failed.message() + "; an earlier mount kept a copy" + version +
                                     ": -o index_fallback mounts it");
  }
  LogWarning(failed.message() + "; mounting the copy an earlier mount kept" + version +
             " (index_fallback)");
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
    MarkMounted(path, download.now);  // Before the request: it may end in using the copy.
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
  CKPTFS_RETURN_IF_ERROR(
      StoreDownload(tmp, path, SetTimes(tmp, std::max<std::int64_t>(got->version.last_modified, 0)),
                    download.now));
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

// The copy by content (see the header).
Result<std::string> PinnedCopy(const IndexDownload& download, const std::string& dir,
                               netfetch::Transport& transport) {
  const Digest& want = *download.sha256;
  const std::string path =
      dir + "/" + std::string(kPinnedPrefix) + want.Hex() + std::string(kCopySuffix);
  if (HasPinnedCopy(path, want)) {
    MarkMounted(path, download.now);
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
  CKPTFS_RETURN_IF_ERROR(StoreDownload(tmp, path, stored, download.now));
  return path;
}

}  // namespace

Result<std::string> LocalIndexCopy(const IndexDownload& download, netfetch::Transport& transport) {
  const std::string dir = download.cache_dir + "/indexes";
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus(errno, "cannot create " + dir);
  }
  RemoveUnusedCopies(dir, download.now);
  return download.sha256.has_value() ? PinnedCopy(download, dir, transport)
                                     : CopyByUrl(download, dir, transport);
}

}  // namespace ckptfs::cli
