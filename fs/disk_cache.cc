#include "fs/disk_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <climits>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <vector>

#include "common/file_io.h"
#include "common/log.h"
#include "common/units.h"

namespace ckptfs::fs {

namespace {

constexpr auto kTouchInterval = std::chrono::seconds(60);
constexpr std::string_view kPartialSuffix = ".part";
constexpr char kHex[] = "0123456789abcdef";

// Writes what O_DIRECT can take (whole blocks from an aligned address) straight to the disk and
// the rest through the page cache. The bytes of a freshly fetched chunk are in the mount's page
// cache already; a second copy in the cache file's page cache would double the memory a cold read
// dirties, and allocating and filling those pages costs as much CPU as the read itself (more on
// VMs that hand free memory back to the host). Filesystems without O_DIRECT (tmpfs) take the
// plain write.
Status WriteChunkFile(int fd, std::span<const std::uint8_t> bytes) {
  constexpr std::size_t kBlock = kDirectIoBlock;
  std::size_t direct = 0;
  if (reinterpret_cast<std::uintptr_t>(bytes.data()) % kBlock == 0) {
    direct = bytes.size() / kBlock * kBlock;
  }
  int flags = ::fcntl(fd, F_GETFL);
  if (direct > 0 && flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_DIRECT) == 0) {
    Status status = WriteAll(fd, bytes.first(direct));
    ::fcntl(fd, F_SETFL, flags);
    if (!status.ok()) {
      // EINVAL: the filesystem or device refuses this alignment; start over buffered.
      if (::ftruncate(fd, 0) != 0 || ::lseek(fd, 0, SEEK_SET) != 0) {
        return ErrnoStatus(errno, "cannot rewind cache file");
      }
      direct = 0;
    }
  } else {
    direct = 0;
  }
  return WriteAll(fd, bytes.subspan(direct));
}

// Writes `bytes` into a new file at `path`; a write that fails leaves no file.
Status WriteNewFile(const std::string& path, std::span<const std::uint8_t> bytes) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid()) return ErrnoStatus(errno, "cannot create " + path);
  Status written = WriteChunkFile(fd.get(), bytes).WithContext("write to cache");
  if (!written.ok()) ::unlink(path.c_str());
  return written;
}

// A write that failed so found the file system full: ENOSPC or EDQUOT (see ErrnoStatus; the
// other errnos of that code come from open, not write).
bool NoSpace(const Status& write_error) {
  return write_error.code() == StatusCode::kResourceExhausted;
}

// `*made` (if given) is set when the directory did not exist before.
Status MakeDir(const std::string& path, bool* made = nullptr) {
  if (::mkdir(path.c_str(), 0700) == 0) {
    if (made != nullptr) *made = true;
    return Status::Ok();
  }
  if (errno == EEXIST) return Status::Ok();
  return ErrnoStatus(errno, "cannot create cache directory " + path);
}

// Unlinks an entry's file; one already gone is fine, other failures are logged ("cannot <what>").
void UnlinkEntryFile(const std::string& path, const char* what) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    LogWarning(std::string("cannot ") + what + " " + path + ": " + std::strerror(errno));
  }
}

// Whole entries are served without being hashed again, so whoever may write the directory may
// put bytes into every mount that uses it: it must belong to this user or root, and not be
// writable by every user (as /tmp is).
Status CheckOnlyTrustedWriters(const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) return ErrnoStatus(errno, "cache directory " + dir);
  const std::string why =
      ": its chunks are served without being hashed again, so only you (or "
      "root) may write to it; choose another with cache_dir=";
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    return FailedPreconditionError("cache directory " + dir + " belongs to user " +
                                   std::to_string(st.st_uid) + why);
  }
  if ((st.st_mode & S_IWOTH) != 0) {
    return FailedPreconditionError("cache directory " + dir + " is writable by every user" + why);
  }
  return Status::Ok();
}

// A temporary ("<hex>.<pid>.<n>", see Insert) that may be a write under way: its writer is alive
// and it is younger than an hour, which no write takes. Mounts share the directory, and
// removing another mount's temporary made that mount's rename fail. A writer in another pid
// namespace may look dead (its temporary goes, as before) or alive (it stays an hour).
bool MayBeWriteUnderWay(std::string_view name, const struct stat& st, std::time_t now) {
  constexpr std::time_t kLongestWrite = 3600;
  const std::size_t last_dot = name.rfind('.');
  const std::size_t pid_dot = last_dot == std::string_view::npos || last_dot == 0
                                  ? std::string_view::npos
                                  : name.rfind('.', last_dot - 1);
  if (pid_dot == std::string_view::npos) return false;
  pid_t pid = 0;
  const char* first = name.data() + pid_dot + 1;
  const char* last = name.data() + last_dot;
  const auto [end, ec] = std::from_chars(first, last, pid);
  if (ec != std::errc() || end != last || pid <= 0) return false;
  const bool alive = ::kill(pid, 0) == 0 || errno == EPERM;
  return alive && now - st.st_mtime < kLongestWrite;
}

// Removes the temporaries in `dir` (not recursive) that no live writer may still be writing:
// those left by a crash.
void RemoveLeftoverTemporaries(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  const std::time_t now = ::time(nullptr);
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    struct stat st;
    if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        MayBeWriteUnderWay(e->d_name, st, now)) {
      continue;
    }
    ::unlinkat(::dirfd(d), e->d_name, 0);
  }
  ::closedir(d);
}

}  // namespace

DiskCache::DiskCache(DiskCacheOptions options)
    : options_(std::move(options)), capacity_(options_.capacity_bytes) {}

Result<std::unique_ptr<DiskCache>> DiskCache::Open(DiskCacheOptions options) {
  if (options.dir.empty()) return InvalidArgumentError("cache directory is empty");
  while (options.dir.size() > 1 && options.dir.back() == '/') options.dir.pop_back();
  std::unique_ptr<DiskCache> cache(new DiskCache(std::move(options)));
  CKPTFS_RETURN_IF_ERROR(MakeDir(cache->options_.dir));
  // Absolute from here on: a daemonized mount runs with "/" as its working directory.
  char resolved[PATH_MAX];
  if (::realpath(cache->options_.dir.c_str(), resolved) == nullptr) {
    return ErrnoStatus(errno, "cache directory " + cache->options_.dir);
  }
  cache->options_.dir = resolved;
  const std::string& dir = cache->options_.dir;
  CKPTFS_RETURN_IF_ERROR(CheckOnlyTrustedWriters(dir));
  CKPTFS_RETURN_IF_ERROR(MakeDir(dir + "/tmp"));
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    return ErrnoStatus(errno, "cache directory " + dir + " is not writable");
  }
  for (const std::string& sub : PrefixDirs(dir)) CKPTFS_RETURN_IF_ERROR(MakeDir(sub));
  RemoveLeftoverTemporaries(dir + "/tmp");
  CKPTFS_RETURN_IF_ERROR(cache->Scan());
  return cache;
}

Status DiskCache::Scan() {
  struct Found {
    Digest digest;
    std::uint64_t size;
    std::int64_t mtime_ns;
    bool partial;
  };
  std::vector<Found> found;
  for (const std::string& sub : PrefixDirs(options_.dir)) {
    DIR* d = ::opendir(sub.c_str());
    if (d == nullptr) return ErrnoStatus(errno, "cannot read cache directory " + sub);
    while (dirent* e = ::readdir(d)) {
      std::string_view name = e->d_name;
      const bool partial = name.ends_with(kPartialSuffix);
      if (partial) name.remove_suffix(kPartialSuffix.size());
      auto digest = Digest::FromHex(std::string(name));
      if (!digest.has_value()) continue;
      struct stat st;
      if (::fstatat(::dirfd(d), e->d_name, &st, 0) != 0 || !S_ISREG(st.st_mode)) continue;
      // A partial file is sparse: what it occupies, not its length.
      std::uint64_t size = partial ? static_cast<std::uint64_t>(st.st_blocks) * 512
                                   : static_cast<std::uint64_t>(st.st_size);
      found.push_back(
          {*digest, size, st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec, partial});
    }
    ::closedir(d);
  }
  // Newest first, so that the oldest end up at the back of the LRU list.
  std::sort(found.begin(), found.end(),
            [](const Found& a, const Found& b) { return a.mtime_ns > b.mtime_ns; });
  std::lock_guard lock(mu_);
  for (const Found& f : found) {
    if (f.partial && (by_digest_.contains(f.digest) || partial_.contains(f.digest))) continue;
    AddLocked(f.digest, f.size, TimePoint::min(), /*front=*/false, f.partial);
  }
  EvictLocked(0);
  return Status::Ok();
}

std::vector<std::string> DiskCache::PrefixDirs(const std::string& dir) {
  std::vector<std::string> dirs;
  dirs.reserve(256);
  for (char hi : std::string_view(kHex, 16)) {
    for (char lo : std::string_view(kHex, 16)) dirs.push_back(dir + "/" + hi + lo);
  }
  return dirs;
}

std::string DiskCache::PathOf(const Digest& digest, bool partial) const {
  std::string hex = digest.Hex();
  std::string path = options_.dir + "/" + hex.substr(0, 2) + "/" + hex;
  if (partial) path += kPartialSuffix;
  return path;
}

void DiskCache::AddLocked(const Digest& digest, std::uint64_t size, TimePoint touch, bool front,
                          bool partial) {
  Entry entry{digest, size, touch, partial};
  auto it = front ? lru_.insert(lru_.begin(), entry) : lru_.insert(lru_.end(), entry);
  (partial ? partial_ : by_digest_)[digest] = it;
  used_ += size;
}

void DiskCache::EraseLocked(Lru::iterator it) {
  used_ -= it->size;
  (it->partial ? partial_ : by_digest_).erase(it->digest);
  lru_.erase(it);
}

void DiskCache::RemovePartialLocked(const Digest& digest) {
  auto it = partial_.find(digest);
  if (it == partial_.end()) return;
  ::unlink(PathOf(digest, /*partial=*/true).c_str());
  EraseLocked(it->second);
}

Status DiskCache::InsertBlocks(const Digest& digest, std::uint64_t offset,
                               std::span<const std::uint8_t> bytes) {
  {
    std::lock_guard lock(mu_);
    if (by_digest_.contains(digest) || bytes.size() > capacity_) return Status::Ok();
  }
  const std::string path = PathOf(digest, /*partial=*/true);
  const auto open_partial = [&] {
    return UniqueFd(::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
  };
  UniqueFd fd = open_partial();
  int err = fd.valid() ? 0 : errno;
  if (err == ENOENT && RemakeDirs(digest)) {
    fd = open_partial();
    err = fd.valid() ? 0 : errno;
  }
  if (!fd.valid()) return ErrnoStatus(err, "cannot create " + path);
  const auto write = [&] {
    if (::lseek(fd.get(), static_cast<off_t>(offset), SEEK_SET) < 0) {
      return ErrnoStatus(errno, "seek in " + path);
    }
    return WriteAll(fd.get(), bytes).WithContext("write to " + path);
  };
  Status written = write();
  if (NoSpace(written) && ShrinkAfterNoSpace(bytes.size())) written = write();
  CKPTFS_RETURN_IF_ERROR(written);
  // What the sparse file occupies, as Scan() counts it, not the sum of the writes: a block two
  // readers fetched at once is written twice but takes its space once.
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, "stat " + path);
  const auto allocated = static_cast<std::uint64_t>(st.st_blocks) * 512;
  std::lock_guard lock(mu_);
  if (by_digest_.contains(digest)) return Status::Ok();  // The whole chunk arrived meanwhile.
  auto it = partial_.find(digest);
  if (it == partial_.end()) {
    EvictLocked(allocated);
    AddLocked(digest, allocated, options_.clock->Now(), /*front=*/true, /*partial=*/true);
    return Status::Ok();
  }
  // Most recently used first, so that making room never evicts the file just written.
  lru_.splice(lru_.begin(), lru_, it->second);
  const std::uint64_t before = it->second->size;
  if (allocated > before) EvictLocked(allocated - before);
  used_ = used_ - before + allocated;
  it->second->size = allocated;
  return Status::Ok();
}

Result<UniqueFd> DiskCache::OpenPartial(const Digest& digest) {
  // Opened even when not listed, as OpenChunk does: another mount on the directory may have
  // fetched blocks of this chunk. A miss costs one failed open, against a Range GET.
  const std::string path = PathOf(digest, /*partial=*/true);
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return NotFoundError("cannot open " + path);
  struct stat st;
  std::lock_guard lock(mu_);
  auto it = partial_.find(digest);
  if (it != partial_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);
  } else if (!by_digest_.contains(digest) && ::fstat(fd.get(), &st) == 0) {
    // A partial file is sparse: what it occupies, not its length.
    const auto allocated = static_cast<std::uint64_t>(st.st_blocks) * 512;
    EvictLocked(allocated);
    AddLocked(digest, allocated, options_.clock->Now(), /*front=*/true, /*partial=*/true);
  }
  return fd;
}

void DiskCache::EvictLocked(std::uint64_t incoming) {
  while (!lru_.empty() && used_ + incoming > capacity_) {
    auto victim = std::prev(lru_.end());
    // Readers holding the file open keep their descriptor; unlink only drops the name.
    UnlinkEntryFile(PathOf(victim->digest, victim->partial), "evict");
    EraseLocked(victim);
  }
}

bool DiskCache::Contains(const Digest& digest) const {
  std::lock_guard lock(mu_);
  return by_digest_.contains(digest);
}

bool DiskCache::Has(const Digest& digest, std::uint64_t size) {
  if (Contains(digest)) return true;
  struct stat st;
  if (::stat(PathOf(digest).c_str(), &st) != 0 || !S_ISREG(st.st_mode) ||
      static_cast<std::uint64_t>(st.st_size) != size) {
    return false;
  }
  const TimePoint now = options_.clock->Now();
  std::lock_guard lock(mu_);
  if (!by_digest_.contains(digest)) AdoptLocked(digest, size, now);
  return true;
}

void DiskCache::AdoptLocked(const Digest& digest, std::uint64_t size, TimePoint now) {
  RemovePartialLocked(digest);  // The whole chunk replaces it, as in Insert.
  EvictLocked(size);
  AddLocked(digest, size, now, /*front=*/true);
}

bool DiskCache::Drop(const Digest& digest) {
  std::lock_guard lock(mu_);
  // Unlinked even when not listed: another mount on the directory may have added it.
  UnlinkEntryFile(PathOf(digest), "remove unreadable cache entry");
  auto it = by_digest_.find(digest);
  if (it == by_digest_.end()) return false;
  EraseLocked(it->second);
  return true;
}

Result<UniqueFd> DiskCache::OpenChunk(const Digest& digest, std::uint64_t size) {
  // Opened even when not listed: another mount on the directory may have written it. A miss
  // costs one failed open, against a fetch.
  std::string path = PathOf(digest);
  // Direct reads, like the writes: the bytes go to the mount's page cache, not to two.
  UniqueFd fd = OpenForDirectRead(path);
  struct stat st;
  bool good =
      fd.valid() && ::fstat(fd.get(), &st) == 0 && static_cast<std::uint64_t>(st.st_size) == size;
  TimePoint now = options_.clock->Now();
  std::lock_guard lock(mu_);
  auto it = by_digest_.find(digest);
  if (!good) {
    if (fd.valid()) {
      LogWarning("dropping cache entry " + path + ": size " + std::to_string(st.st_size) +
                 ", expected " + std::to_string(size));
      ::unlink(path.c_str());
    }
    if (it != by_digest_.end()) EraseLocked(it->second);
    return NotFoundError("not cached");
  }
  if (it == by_digest_.end()) {
    AdoptLocked(digest, size, now);
  } else {
    lru_.splice(lru_.begin(), lru_, it->second);
    // Not `now - last_touch`: entries found by Scan() have last_touch == TimePoint::min(), and
    // that subtraction overflows (and came out negative, so they were never touched).
    if (now - kTouchInterval > it->second->last_touch) {
      it->second->last_touch = now;
      ::futimens(fd.get(), nullptr);  // Keeps the use order for the next Open() scan.
    }
  }
  return fd;
}

Status DiskCache::Insert(const Digest& digest, std::span<const std::uint8_t> bytes) {
  {
    std::lock_guard lock(mu_);
    if (bytes.size() > capacity_ || by_digest_.contains(digest)) return Status::Ok();
  }
  std::string tmp = options_.dir + "/tmp/" + digest.Hex() + "." + std::to_string(::getpid()) + "." +
                    std::to_string(tmp_counter_.fetch_add(1));
  Status written = WriteNewFile(tmp, bytes);
  if (written.code() == StatusCode::kNotFound && RemakeDirs(digest)) {
    written = WriteNewFile(tmp, bytes);
  }
  if (NoSpace(written) && ShrinkAfterNoSpace(bytes.size())) written = WriteNewFile(tmp, bytes);
  if (!written.ok()) return written;
  std::lock_guard lock(mu_);
  if (!by_digest_.contains(digest)) {
    GrowIfRoomLocked(bytes.size());
    EvictLocked(bytes.size());
    const std::string path = PathOf(digest);
    // Its errno, taken at once: RemakeDirs' mkdir calls set their own.
    const auto rename_error = [&] { return ::rename(tmp.c_str(), path.c_str()) == 0 ? 0 : errno; };
    int err = rename_error();
    if (err == ENOENT && RemakeDirs(digest)) err = rename_error();
    if (err == 0) {
      RemovePartialLocked(digest);
      AddLocked(digest, bytes.size(), options_.clock->Now(), /*front=*/true);
      return Status::Ok();
    }
    written = ErrnoStatus(err, "cannot rename " + tmp);
  }
  ::unlink(tmp.c_str());
  return written;
}

bool DiskCache::ShrinkAfterNoSpace(std::uint64_t incoming) {
  std::lock_guard lock(mu_);
  if (lru_.empty()) return false;  // Other files fill it: the cache has nothing to give.
  if (used_ < capacity_) {
    full_log_.Log("disk cache: the file system of " + options_.dir + " is full with " +
                  FormatSize(used_) + " cached; the cache keeps at most that much (not " +
                  "cache_size's " + FormatSize(options_.capacity_bytes) +
                  ") until the file system has room again");
    capacity_ = used_;
  }
  const std::size_t before = lru_.size();
  EvictLocked(incoming);
  return lru_.size() < before;
}

bool DiskCache::RemakeDirs(const Digest& digest) {
  bool made = false;
  for (const std::string& dir :
       {options_.dir, options_.dir + "/tmp", options_.dir + "/" + digest.Hex().substr(0, 2)}) {
    if (!MakeDir(dir, &made).ok()) return false;
  }
  if (made) {
    gone_log_.Log("disk cache: " + options_.dir +
                  " was removed under the mount (or part of it); made it again");
  }
  return made;
}

void DiskCache::GrowIfRoomLocked(std::uint64_t written) {
  if (capacity_ >= options_.capacity_bytes) return;
  struct statvfs fs;
  if (::statvfs(options_.dir.c_str(), &fs) != 0) return;
  const std::uint64_t avail = static_cast<std::uint64_t>(fs.f_bavail) * fs.f_frsize;
  // Left free at the bound: room for the writes of other fetches under way, whose temporaries
  // the bound does not count. The file just written has its room already.
  constexpr std::uint64_t kWritesUnderWay = 8;
  const std::uint64_t headroom = kWritesUnderWay * written;
  if (avail <= headroom) return;
  const std::uint64_t room = used_ + written + (avail - headroom);
  capacity_ = std::max(capacity_, std::min(room, options_.capacity_bytes));
}

std::uint64_t DiskCache::capacity_bytes() const {
  std::lock_guard lock(mu_);
  return capacity_;
}

std::uint64_t DiskCache::used_bytes() const {
  std::lock_guard lock(mu_);
  return used_;
}

std::size_t DiskCache::entry_count() const {
  std::lock_guard lock(mu_);
  return lru_.size();
}

}  // namespace ckptfs::fs
