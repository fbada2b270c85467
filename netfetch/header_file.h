// HeaderFile: extra HTTP request headers, credentials mostly, that every request to the nodes and
// to an index URL carries (`-o http_headers=FILE`, `--http-headers FILE`).
//
// They live in a file so that a token stays out of the command line, the process list and
// /etc/fstab. One "Name: value" per line; blank lines and lines starting with '#' are skipped.
// The file is read again when it changes (looked at no more than once per recheck interval), so
// that rotated credentials reach a running mount: a Kubernetes secret volume, for one, swaps its
// files for new ones in place. A re-read that fails (the file gone for a moment, a bad line)
// keeps the last good headers and logs once per change of the file.
//
// Thread safety: Current() may be called from any number of threads.
#pragma once

#include <sys/types.h>

#include <ctime>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/result.h"

namespace ckptfs::netfetch {

// The headers in force at one moment: lines "Name: value", as curl takes them.
using HeaderLines = std::vector<std::string>;

class HeaderFile {
 public:
  static constexpr Duration kDefaultRecheck = std::chrono::seconds(1);
  // Larger than any set of credentials; a bigger file is a mistake (the wrong path).
  static constexpr std::size_t kMaxFileBytes = 64 * 1024;

  // Reads `path` (made absolute against the working directory, which a mount that goes to the
  // background leaves). InvalidArgument naming the file and line for a bad line; the errno for a
  // file that cannot be read. Error messages never quote a header's value.
  static Result<std::unique_ptr<HeaderFile>> Open(const std::string& path, Clock* clock,
                                                  Duration recheck = kDefaultRecheck);

  // Parses the text of a header file; `name` is the file named in errors.
  static Result<HeaderLines> Parse(std::string_view text, const std::string& name);

  // The headers to send now. A request holds on to the returned lines for its whole length.
  std::shared_ptr<const HeaderLines> Current();

  const std::string& path() const { return path_; }

 private:
  // What tells one version of the file from another, through any symlinks.
  struct Version {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = 0;
    timespec mtime{};
    bool operator==(const Version& other) const;
  };
  struct Loaded {
    Version version;
    HeaderLines lines;
  };

  HeaderFile(std::string path, Clock* clock, Duration recheck)
      : path_(std::move(path)), clock_(clock), recheck_(recheck) {}
  static Result<Loaded> Load(const std::string& path);
  static Result<Version> Stat(const std::string& path);
  // Under mu_: reads the file again when it changed since it was last read.
  void RefreshLocked(TimePoint now);

  const std::string path_;
  Clock* const clock_;
  const Duration recheck_;
  std::mutex mu_;
  std::shared_ptr<const HeaderLines> current_;  // GUARDED_BY(mu_)
  Version version_;                             // GUARDED_BY(mu_): of current_'s file.
  std::optional<Version> failed_;               // GUARDED_BY(mu_): a version that did not load.
  TimePoint checked_;                           // GUARDED_BY(mu_)
};

}  // namespace ckptfs::netfetch
