#define FUSE_USE_VERSION 312
#include "cli/mount.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <malloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "cli/mount_setup.h"
#include "cli/mount_table.h"
#include "cli/stats.h"
#include "common/clock.h"
#include "common/digest.h"
#include "common/file_io.h"
#include "common/log.h"
#include "common/thread_name.h"
#include "common/unique_fd.h"
#include "common/units.h"
#include "fs/chunk_store.h"
#include "fs/disk_cache.h"
#include "fs/file_system.h"
#include "index/reader.h"
#include "netfetch/curl_transport.h"
#include "netfetch/fetcher.h"

namespace ckptfs::cli {

namespace {

// Our mounts' subtype; the kernel names their file system type "fuse." and this.
constexpr std::string_view kSubtype = "ckptfs";

struct FuseArgs {
  std::vector<std::string> storage;
  std::vector<char*> argv;
  fuse_args args{};

  explicit FuseArgs(const MountOptions& options, const std::string& fsname) {
    std::string opts = "ro,default_permissions,auto_unmount,subtype=" + std::string(kSubtype) +
                       ",fsname=" + fsname;
    if (options.allow_other) opts += ",allow_other";
    for (const std::string& flag : options.mount_flags) opts += "," + flag;
    storage = {"ckptfs", "-o", opts};
    if (options.debug) storage.push_back("-d");
    for (std::string& s : storage) argv.push_back(s.data());
    args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  }
  // fuse_session_new parses `args` and may leave a copy that libfuse allocated in it.
  ~FuseArgs() { fuse_opt_free_args(&args); }
  FuseArgs(const FuseArgs&) = delete;
  FuseArgs& operator=(const FuseArgs&) = delete;
};

// Owns the objects of one mount; destroyed in reverse order of construction.
struct MountedFs {
  RealClock clock;
  std::unique_ptr<index::IndexReader> index;
  std::unique_ptr<fs::DiskCache> cache;
  netfetch::StoreAccess access;  // http_headers= and ca_file=.
  std::unique_ptr<netfetch::CurlTransport> transport;
  std::unique_ptr<netfetch::RetryingFetcher> fetcher;
  std::unique_ptr<fs::IndexReplicas> replicas;
  std::unique_ptr<fs::ChunkStore> store;
  std::unique_ptr<fs::FileSystem> file_system;
  std::mutex init_mu;
  std::condition_variable init_cv;
  bool initialized = false;  // GUARDED_BY(init_mu)
};

std::string FsName(const std::string& index) {
  std::string name = "ckptfs:" + index;
  for (char& c : name) {
    if (c == ',' || c == ' ' || c == '\\') c = '_';
  }
  return name;
}

// The highest file descriptor open in this process, or -1.
int HighestOpenFd() {
  int highest = -1;
  std::error_code error;
  for (std::filesystem::directory_iterator it("/proc/self/fd", error), end; !error && it != end;
       it.increment(error)) {
    const std::string name = it->path().filename().string();
    int fd = -1;
    if (std::sscanf(name.c_str(), "%d", &fd) == 1) highest = std::max(highest, fd);
  }
  return highest;
}

// A second descriptor of the FUSE device, above every one open now, held while the mount
// serves, so that a daemon that is killed ends its FUSE connection before fusermount3's
// auto_unmount watchdog hears of it. The kernel releases a dying process's files in descending
// descriptor order (each last reference is put on a last-in, first-out work list), and libfuse
// holds the device just below its socket to the watchdog. So the socket went first: under CPU
// load the watchdog could look at the mountpoint while the connection was still being torn
// down, get ECONNABORTED instead of ENOTCONN, and fusermount3 3.14, which unmounts only on
// ENOTCONN, left the dead mount in place (5 of 25 runs of up to 8 kills, with two busy loops
// beside them). Best effort: without a spare descriptor nothing changes.
UniqueFd HoldDeviceAboveOtherFds(int device_fd) {
  return UniqueFd(::fcntl(device_fd, F_DUPFD_CLOEXEC, HighestOpenFd() + 1));
}

// Goes to the background like fuse_daemonize(), except that the parent exits only when the
// child calls Ready() (or dies first), so that `ckptfs mount` returns a mount that already serves
// with its final settings. The child keeps stderr until Ready(), so start-up errors still reach
// the terminal.
class Daemon {
 public:
  // In the parent this never returns. In the child it returns OK.
  Status Detach() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe");
    pid_t pid = ::fork();
    if (pid < 0) return ErrnoStatus(errno, "fork");
    if (pid > 0) {
      ::close(fds[1]);
      char ready = 0;
      ssize_t n;
      do {
        n = ::read(fds[0], &ready, 1);
      } while (n < 0 && errno == EINTR);
      if (n != 1) std::fputs("ckptfs: the mount daemon exited during start-up\n", stderr);
      ::_exit(n == 1 ? 0 : 1);
    }
    ::close(fds[0]);
    ready_fd_ = fds[1];
    ::setsid();
    if (::chdir("/") != 0) return ErrnoStatus(errno, "chdir /");
    int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null_fd >= 0) {
      ::dup2(null_fd, STDIN_FILENO);
      ::dup2(null_fd, STDOUT_FILENO);
      ::close(null_fd);
    }
    return Status::Ok();
  }

  // Lets the parent exit with success; from now on stderr goes to /dev/null too.
  void Ready() {
    if (ready_fd_ < 0) return;
    char ready = 1;
    ssize_t ignored = ::write(ready_fd_, &ready, 1);
    (void)ignored;
    ::close(ready_fd_);
    ready_fd_ = -1;
    int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null_fd >= 0) {
      ::dup2(null_fd, STDERR_FILENO);
      ::close(null_fd);
    }
  }

 private:
  int ready_fd_ = -1;
};

// Keeps the daemon's code (its own and its libraries' executable mappings) in memory. Reads are
// served by code paths that may sit idle for minutes; paged out under memory pressure (or by a
// cache drop), the next read would first wait for tens of page-ins from disk. About 15 MiB,
// already mostly resident. Best effort: without CAP_IPC_LOCK the memlock limit may refuse it.
void LockCode() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  std::size_t locked = 0;
  while (std::getline(maps, line)) {
    unsigned long begin = 0, end = 0;
    char perms[5] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %4s", &begin, &end, perms) != 3) continue;
    if (perms[2] != 'x' || line.find('/') == std::string::npos) continue;
    if (::mlock(reinterpret_cast<void*>(begin), end - begin) == 0) locked += end - begin;
  }
  LogDebug("locked " + FormatSize(locked) + " of code in memory");
}

// Sets the kernel readahead of the mount. The kernel takes the smaller of this and what the INIT
// reply offered when it processes that reply, so it is set after INIT and checked once more.
// Best effort: only root may write the knob.
void SetKernelReadahead(const char* resolved, std::uint64_t bytes) {
  // mountinfo, not stat(): a stat() of the mountpoint would wait on this very process.
  const std::vector<MountEntry> mounts = CurrentMountsAt(resolved);
  if (mounts.empty() || bytes == 0) return;
  const std::string& device = mounts.back().device;
  std::string knob = "/sys/class/bdi/" + device + "/read_ahead_kb";
  std::string want = std::to_string(bytes / 1024);
  for (int attempt = 0; attempt < 5; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::string now;
    if (std::ifstream in(knob); !(in >> now)) return;
    if (now == want) return;
    std::ofstream(knob) << want << std::endl;
  }
}

// Runs after Detach(): a forked child inherits the mapping but not its faulted-in pages.
// Best effort: without it the mount works, only metadata gets slower after the page cache is
// dropped, so a failure is a warning.
void KeepIndexResident(index::IndexReader& index, std::uint64_t budget, std::stop_token stop) {
  if (budget == 0) return;
  Result<std::uint64_t> kept = index.KeepResident(budget, stop);
  if (stop.stop_requested()) return;  // Unmounted first.
  if (!kept.ok()) {
    LogWarning("index pages are not kept in memory: " + kept.status().ToString());
    return;
  }
  LogDebug("index: " + std::to_string(*kept >> 10) + " KiB kept in memory");
}

// Asks every node for an object it holds before the first read (RetryingFetcher::Greet), so
// that a node down since before the mount is passed over instead of costing a read the stall
// timeout. Runs after Detach(): a forked child has none of its parent's threads. Best effort: a
// node the index's first chunks do not name is simply not greeted.
void GreetNodes(const index::IndexReader& index, netfetch::RetryingFetcher& fetcher) {
  // Publish spreads replicas round the nodes, so a few chunks name every node that holds any.
  constexpr std::size_t kFirstChunks = 256;
  Result<std::vector<index::NodeChunk>> held = index.ChunkPerNode(kFirstChunks);
  if (!held.ok()) {
    LogWarning("nodes are not greeted: " + held.status().ToString());
    return;
  }
  std::vector<netfetch::NodeObject> objects;
  objects.reserve(held->size());
  for (const index::NodeChunk& found : *held) objects.push_back({found.node, found.chunk.digest});
  fetcher.Greet(objects);
}

// `path` made absolute with its symlinks resolved; it may not exist yet, but its parent must.
Result<std::string> Resolve(const std::string& path) {
  char resolved[PATH_MAX];
  if (::realpath(path.c_str(), resolved) != nullptr) return std::string(resolved);
  if (errno != ENOENT) return ErrnoStatus(errno, path);
  const std::size_t slash = path.find_last_of('/');
  const std::string parent = slash == std::string::npos ? "." : path.substr(0, slash);
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (::realpath(parent.empty() ? "/" : parent.c_str(), resolved) == nullptr) {
    return ErrnoStatus(errno, path);
  }
  return std::string(resolved) + (resolved[1] == '\0' ? "" : "/") + name;
}

// A cache directory in the mountpoint would be hidden by the mount from the daemon itself: every
// write to it would fail, silently leaving the mount without a cache.
Status CheckCacheOutsideMountpoint(const std::string& cache_dir, const std::string& mountpoint) {
  const Result<std::string> cache = Resolve(cache_dir);
  if (!cache.ok()) return cache.status().WithContext("cache directory");
  const Result<std::string> mount = Resolve(mountpoint);
  if (!mount.ok()) return mount.status().WithContext("mountpoint");
  const std::string inside = *mount == "/" ? "/" : *mount + "/";
  if (*cache == *mount || cache->rfind(inside, 0) == 0) {
    return InvalidArgumentError("cache directory " + cache_dir + " is inside the mountpoint " +
                                mountpoint + ", which the mount would hide; choose one outside it");
  }
  return Status::Ok();
}

// Mounts, daemonizes unless in the foreground, and runs the FUSE loop until unmounted.
Status Serve(MountedFs& m, const MountOptions& options) {
  FuseArgs fuse_args(options, FsName(options.index));
  const fuse_lowlevel_ops& ops = fs::FileSystem::Operations();
  fuse_session* se = fuse_session_new(&fuse_args.args, &ops, sizeof(ops), m.file_system.get());
  if (se == nullptr) return InternalError("cannot create the FUSE session");
  std::unique_ptr<fuse_session, void (*)(fuse_session*)> session(se, fuse_session_destroy);
  if (!options.foreground) {
    // The signals that stop a mount (ckptfs(1)) stop a background one even when it was started
    // from a shell or service that ignores them in its background jobs, as a non-interactive
    // shell does with SIGINT: libfuse installs its handler only over the default disposition.
    // A foreground mount keeps what it was given, as any command does.
    for (int sig : {SIGHUP, SIGINT, SIGTERM}) ::signal(sig, SIG_DFL);
  }
  if (fuse_set_signal_handlers(se) != 0) return InternalError("cannot install signal handlers");
  // Resolved before mounting: afterwards the path leads into this not-yet-serving file system.
  char resolved[PATH_MAX];
  if (::realpath(options.mountpoint.c_str(), resolved) == nullptr) {
    fuse_remove_signal_handlers(se);
    return ErrnoStatus(errno, "mountpoint " + options.mountpoint);
  }
  // libfuse keeps this path for the unmount, which runs after the chdir("/") below.
  if (fuse_session_mount(se, resolved) != 0) {
    fuse_remove_signal_handlers(se);
    return FailedPreconditionError("cannot mount on " + options.mountpoint);
  }
  const UniqueFd device_held = HoldDeviceAboveOtherFds(fuse_session_fd(se));
  Daemon daemon;
  if (!options.foreground) {
    if (Status detached = daemon.Detach(); !detached.ok()) {
      fuse_session_unmount(se);
      fuse_remove_signal_handlers(se);
      return detached;
    }
    SetLogToSyslog("ckptfs");
  } else if (::chdir("/") != 0) {
    LogWarning("cannot chdir to /");
  }
  LogInfo("mounted " + options.index + " on " + options.mountpoint);
  LockCode();
  GreetNodes(*m.index, *m.fetcher);
  // In the background: with a cold page cache, reading the pages of a large index (16 MiB of a
  // 100 GiB model's index) took 0.7 s, and the mount waited for it. Started after Detach(), since
  // a forked child keeps mappings but not their faulted pages; stopped and joined before `m` dies.
  std::jthread keep_resident([&m, budget = options.index_cache](std::stop_token stop) {
    SetThreadName("ckptfs-resident");
    KeepIndexResident(*m.index, budget, stop);
  });
  // Settles the mount once INIT is through, then releases the waiting parent. A mount that never
  // gets INIT (unmounted at once) releases it after a bound.
  std::thread settle([&] {
    SetThreadName("ckptfs-settle");
    {
      std::unique_lock lock(m.init_mu);
      m.init_cv.wait_for(lock, std::chrono::seconds(10), [&] { return m.initialized; });
    }
    SetKernelReadahead(resolved, options.kernel_readahead);
    daemon.Ready();
  });

  fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_max_threads(config, fs::kMaxWorkerThreads);
  fuse_loop_cfg_set_idle_threads(config, 8);
  int rc = fuse_session_loop_mt(se, config);
  fuse_loop_cfg_destroy(config);
  {
    std::lock_guard lock(m.init_mu);
    m.initialized = true;  // Unblocks `settle` if the loop ended before INIT.
  }
  m.init_cv.notify_all();
  settle.join();
  fuse_session_unmount(se);
  fuse_remove_signal_handlers(se);
  LogInfo("unmounted " + options.mountpoint);
  if (rc < 0) return InternalError("FUSE loop failed: " + std::string(std::strerror(-rc)));
  return Status::Ok();
}

// A sequential read keeps up to max_inflight chunk fetches going, and memory_cache bounds their
// buffers; a budget for fewer chunks throttles it (bench/chunk_sizes.py: with the default 64M,
// 16 MiB chunks read at 0.31 of parallel curl, 4 MiB ones at 0.52). Said once, at mount.
void WarnIfMemoryLimitsFetches(std::uint64_t memory_cache, std::uint64_t chunk_size,
                               int max_inflight) {
  const std::uint64_t fit = memory_cache / chunk_size;
  if (fit >= static_cast<std::uint64_t>(max_inflight)) return;
  const std::uint64_t enough_mib = (chunk_size * max_inflight + (1u << 20) - 1) >> 20;
  // A reader's own fetch takes its chunk's buffer even when that is more than the budget.
  const std::string beyond =
      fit > 0 ? ""
              : "; a chunk is larger than memory_cache, so each read that fetches one holds " +
                    FormatSize(chunk_size) + " beyond it";
  LogWarning("memory_cache=" + FormatSize(memory_cache) + " holds " + std::to_string(fit) +
             " chunks of " + FormatSize(chunk_size) + ", fewer than the " +
             std::to_string(max_inflight) +
             " fetches a read keeps in flight; sequential reads will be slower (memory_cache=" +
             std::to_string(enough_mib) + "M or more avoids it)" + beyond);
}

// A directory that has no ckptfs mount on it already (a second one would go on top and hide
// it, most likely from a repeated command) and is not a dead FUSE mount.
Status CheckMountpoint(const std::string& mountpoint) {
  // Read from the mount table first: a ckptfs mount there may be dead or not answering.
  CKPTFS_ASSIGN_OR_RETURN(const std::string path, ResolveMountpoint(mountpoint));
  const std::vector<MountEntry> mounts = CurrentMountsAt(path);
  if (!mounts.empty() && mounts.back().fs_type == "fuse." + std::string(kSubtype)) {
    return FailedPreconditionError("mountpoint " + mountpoint +
                                   " already has a ckptfs mount on it; unmount that first "
                                   "(fusermount3 -u " +
                                   mountpoint + ")");
  }
  struct stat st;
  struct statfs fs_info;
  // stat() of a dead mount's root may still be answered from cached attributes; statfs() always
  // asks the daemon.
  if (::stat(mountpoint.c_str(), &st) != 0 || ::statfs(mountpoint.c_str(), &fs_info) != 0) {
    // ECONNABORTED while the kernel is still tearing the connection down.
    if (errno == ENOTCONN || errno == ECONNABORTED) {
      return FailedPreconditionError("mountpoint " + mountpoint +
                                     " is a dead FUSE mount; unmount it first (fusermount3 -u " +
                                     mountpoint + ")");
    }
    return ErrnoStatus(errno, "mountpoint " + mountpoint);
  }
  if (!S_ISDIR(st.st_mode)) {
    return InvalidArgumentError("mountpoint " + mountpoint + " is not a directory");
  }
  return Status::Ok();
}

}  // namespace

Status Mount(const MountOptions& options) {
  // Chunk buffers are megabytes, allocated and freed by many threads. With glibc's adaptive
  // threshold they would soon come from per-thread arenas that keep freed memory; a fixed
  // threshold keeps them mmap()ed, so the memory goes back to the system when a fetch ends.
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  // OpenSSL sets up its digests on first use, which takes tens of milliseconds: pay that now
  // rather than in the first read.
  const std::uint8_t nothing[1] = {0};
  (void)Sha256(nothing, 0);
  CKPTFS_RETURN_IF_ERROR(CheckMountpoint(options.mountpoint));
  if (options.debug) SetLogLevel(LogLevel::kDebug);
  MountedFs m;
  CKPTFS_ASSIGN_OR_RETURN(const std::string cache_dir, ChooseCacheDir(options));
  CKPTFS_RETURN_IF_ERROR(CheckCacheOutsideMountpoint(cache_dir, options.mountpoint));
  CKPTFS_ASSIGN_OR_RETURN(m.cache, fs::DiskCache::Open({cache_dir, options.cache_size, &m.clock}));
  CKPTFS_ASSIGN_OR_RETURN(
      m.access, netfetch::OpenStoreAccess(options.http_headers, "http_headers", options.ca_file,
                                          "ca_file", &m.clock));
  m.transport = std::make_unique<netfetch::CurlTransport>(m.access.options);
  CKPTFS_ASSIGN_OR_RETURN(m.index, OpenIndex(options, cache_dir, *m.transport));
  CKPTFS_ASSIGN_OR_RETURN(std::vector<netfetch::NodeEndpoint> endpoints,
                          Endpoints(*m.index, options));

  m.fetcher = std::make_unique<netfetch::RetryingFetcher>(std::move(endpoints), m.transport.get(),
                                                          &m.clock, RetryOptionsFor(options));
  fs::FileSystemOptions fs_options;
  fs_options.read_timeout = options.timeout;
  fs_options.uid = ::getuid();
  fs_options.gid = ::getgid();
  fs_options.readahead.max_window = options.readahead;
  fs_options.readahead.across_files = options.dir_readahead;
  fs_options.on_init = [&m] {
    {
      std::lock_guard lock(m.init_mu);
      m.initialized = true;
    }
    m.init_cv.notify_all();
  };
  // Asked only once the mount serves, when every object below exists.
  fs_options.stats_text = [&m] {
    return MountStatsText(*m.file_system, *m.store, *m.fetcher, *m.cache);
  };
  fs::ChunkStoreOptions store_options;
  store_options.prefetch_threads = options.fetch_threads;
  store_options.max_inflight = options.fetch_threads + 2;
  store_options.prefetch_timeout = options.timeout;
  store_options.memory_bytes = options.memory_cache;
  store_options.chunk_size = m.index->chunk_size();
  WarnIfMemoryLimitsFetches(options.memory_cache, store_options.chunk_size,
                            store_options.max_inflight);
  m.replicas = std::make_unique<fs::IndexReplicas>(m.index.get());
  m.store = std::make_unique<fs::ChunkStore>(m.cache.get(), m.fetcher.get(), m.replicas.get(),
                                             &m.clock, store_options);
  m.file_system =
      std::make_unique<fs::FileSystem>(m.index.get(), m.store.get(), &m.clock, fs_options);
  return Serve(m, options);
}

}  // namespace ckptfs::cli
