// The options of `ckptfs mount` (and of mount.ckptfs from /etc/fstab), parsed from `-o` lists.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/digest.h"
#include "common/result.h"

namespace ckptfs::cli {

struct MountOptions {
  std::string index;  // Local path or http(s) URL.
  std::string mountpoint;
  bool foreground = false;
  std::string cache_dir;  // Empty: DefaultCacheDir().
  std::uint64_t cache_size = 10ull << 30;
  std::map<std::string, std::string> node_urls;  // node.NAME=URL overrides.
  Duration timeout = std::chrono::seconds(20);
  // A request that receives nothing for this long is left for another healthy replica
  // (stall_timeout=SECONDS; 0: only the low-speed limit), RetryOptions::stall_timeout.
  Duration stall_timeout = std::chrono::seconds(1);
  bool allow_other = false;
  bool debug = false;
  int fetch_threads = 8;
  std::uint64_t readahead = 64ull << 20;        // Largest readahead window per open file.
  std::uint64_t memory_cache = 64ull << 20;     // Chunk buffers: in flight and fetched, unread.
  std::uint64_t index_cache = 16ull << 20;      // Index pages kept mapped; 0: none.
  std::uint64_t kernel_readahead = 1ull << 20;  // The mount's read_ahead_kb; 0: kernel default.
  // A file read from its start to its end continues its readahead into the next files of its
  // directory (dir_readahead=0|1).
  bool dir_readahead = true;
  // A chunk fetched while no other fetch is under way is fetched as up to this many parallel
  // Range GETs (fetch_parts=N; 1: one GET always).
  int fetch_parts = 4;
  // An index URL that cannot be downloaded (server down, an error status) mounts the copy an
  // earlier mount of that URL kept in the cache directory, with a warning, instead of failing.
  bool index_fallback = false;
  // The SHA-256 the index must have (index_sha256=HEX, as publish prints it): a mount of another
  // version fails. An index URL's pinned copy is mounted without asking the server (see
  // cli/index_download.h).
  std::optional<Digest> index_sha256;
  // A file of HTTP headers (credentials) for every request to the nodes and the index URL
  // (http_headers=FILE), read again when it changes: netfetch::HeaderFile.
  std::string http_headers;
  // PEM file of the certificate authorities to trust for https instead of the system's
  // (ca_file=FILE).
  std::string ca_file;
  // The generic mount flags asked for (exec, noexec, nosuid, nodev), in the order given, for the
  // kernel's mount; libfuse adds nosuid and nodev in any case.
  std::vector<std::string> mount_flags;
};

// Where a -o list comes from. mount(8) hands its helper "rw" for every fstab entry that does not
// say "ro" ("defaults" included), so from there it is taken as the generic default it is; on the
// command line it is a request that cannot be met.
enum class OptionSource { kCommandLine, kMount8 };

// The SHA-256 an index must have, given as 64 hex digits (as publish prints it) to `option`
// (its name in the error: "option index_sha256", "--index-sha256").
Result<Digest> ParseIndexSha256(std::string_view hex, std::string_view option);

// Applies one comma-separated -o list (may be called once per -o). Unknown options and bad values
// are InvalidArgument naming the option. The mount is read-only, nosuid and nodev whatever is
// asked: "rw" is refused unless `source` is kMount8, "suid" and "dev" always are. exec, noexec,
// nosuid and nodev are kept in mount_flags. Changing nothing: the words mount(8) and fstab use
// for themselves (ro, defaults, _netdev, auto, noauto, user, users, nouser, owner, group, nofail,
// silent, loud) and the flags of access times (atime, noatime, relatime, strictatime, lazytime,
// diratime and their no- forms) and of synchronous writes (sync, async, dirsync), which a
// read-only mount has no use for.
Status ApplyMountOptionList(const std::string& list, MountOptions& options,
                            OptionSource source = OptionSource::kCommandLine);

// What the default cache directory is chosen from.
struct CacheDirSources {
  uid_t euid = 0;
  std::string xdg_cache_home;  // $XDG_CACHE_HOME; empty when unset.
  std::string home;            // $HOME; empty when unset.
  std::string passwd_home;     // The user's home in the password database; empty when none.
};

// /var/cache/ckptfs for root; for other users $XDG_CACHE_HOME/ckptfs, else
// <home>/.cache/ckptfs with $HOME or, when it is unset (mount(8) clears the environment of a
// user's fstab mount), the home of the password database. Never a directory every user may
// write to, such as /tmp: the cache's entries are served without being hashed again.
// FailedPrecondition when there is no home at all. Relative paths count as unset.
Result<std::string> CacheDirFor(const CacheDirSources& from);
// CacheDirFor this process: its effective user, environment and password entry.
Result<std::string> DefaultCacheDir();

}  // namespace ckptfs::cli
