#include "cli/gc.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <system_error>
#include <utility>

#include "cli/local_index.h"
#include "cli/store_leases.h"
#include "cli/store_lock.h"
#include "common/digest.h"
#include "common/file_io.h"
#include "common/units.h"
#include "index/reader.h"

namespace ckptfs::cli {

namespace {

namespace fs = std::filesystem;
using SystemTime = std::chrono::system_clock::time_point;

constexpr std::string_view kTempMark = ".tmp.";

// Every index still in use: an object is needed when any of them lists it.
class Indexes {
 public:
  static Result<Indexes> Open(const std::vector<std::string>& paths,
                              std::span<const Digest> sha256s, LocalIndexes& local) {
    if (paths.empty()) return InvalidArgumentError("name at least one index that is in use");
    if (!sha256s.empty() && sha256s.size() != paths.size()) {
      return InvalidArgumentError("--index-sha256 given " + std::to_string(sha256s.size()) +
                                  " times for " + std::to_string(paths.size()) +
                                  " indexes: give one per index, in their order");
    }
    Indexes indexes;
    for (std::size_t i = 0; i < paths.size(); ++i) {
      const std::string& path = paths[i];
      CKPTFS_ASSIGN_OR_RETURN(const std::string file, local.Get(path));  // Names a URL.
      Result<std::unique_ptr<index::IndexReader>> reader = index::IndexReader::Open(
          file, sha256s.empty() ? std::nullopt : std::optional<Digest>(sha256s[i]));
      if (!reader.ok()) {
        const Status& error = reader.status();
        return error.message().find(path) == std::string::npos ? error.WithContext("index " + path)
                                                               : error;
      }
      indexes.readers_.push_back(std::move(*reader));
    }
    return indexes;
  }

  Result<std::vector<bool>> Needed(std::span<const Digest> digests) const {
    std::vector<bool> needed(digests.size(), false);
    for (const auto& reader : readers_) {
      CKPTFS_ASSIGN_OR_RETURN(std::vector<bool> has, reader->HasChunks(digests));
      for (std::size_t i = 0; i < has.size(); ++i) needed[i] = needed[i] || has[i];
    }
    return needed;
  }

 private:
  std::vector<std::unique_ptr<index::IndexReader>> readers_;
};

// A file in a prefix directory (chunks/XX) of a store.
struct StoreFile {
  std::string path;
  std::uint64_t size = 0;
  SystemTime modified;
  enum class Kind { kObject, kTemp, kOther } kind = Kind::kOther;
  Digest digest;  // For kObject.
};

// The digest an object's file name stands for in prefix directory `prefix`, if it is one.
std::optional<Digest> ObjectDigest(std::string_view prefix, std::string_view name) {
  std::optional<Digest> digest = Digest::FromHex(name);
  if (!digest || digest->Hex() != name || name.substr(0, 2) != prefix) return std::nullopt;
  return digest;
}

StoreFile::Kind Classify(std::string_view prefix, std::string_view name, Digest* digest) {
  if (std::optional<Digest> object = ObjectDigest(prefix, name)) {
    *digest = *object;
    return StoreFile::Kind::kObject;
  }
  const std::size_t mark = name.find(kTempMark);
  if (mark != std::string_view::npos && ObjectDigest(prefix, name.substr(0, mark))) {
    return StoreFile::Kind::kTemp;
  }
  return StoreFile::Kind::kOther;
}

Result<std::vector<StoreFile>> ListPrefix(const fs::path& dir, const std::string& prefix) {
  std::vector<StoreFile> files;
  std::error_code error;
  for (fs::directory_iterator it(dir, error), end; !error && it != end; it.increment(error)) {
    StoreFile file;
    file.path = it->path().string();
    struct stat st;
    if (::lstat(file.path.c_str(), &st) != 0) {
      if (errno == ENOENT) continue;  // Removed meanwhile.
      return ErrnoStatus(errno, "cannot stat " + file.path);
    }
    file.size = static_cast<std::uint64_t>(st.st_size);
    file.modified = ModifiedTime(st);
    if (S_ISREG(st.st_mode)) {
      file.kind = Classify(prefix, it->path().filename().string(), &file.digest);
    }
    files.push_back(std::move(file));
  }
  if (error) return ErrnoStatus(error.value(), "cannot list " + dir.string());
  return files;
}

class Collector {
 public:
  Collector(const GcOptions& options, const Indexes& indexes, GcLeases& leases)
      : options_(options), indexes_(indexes), leases_(leases) {}

  Result<GcReport> Store(const std::string& store) {
    GcReport report;
    const fs::path chunks = fs::path(store) / "chunks";
    std::error_code error;
    std::vector<fs::path> prefixes;
    for (fs::directory_iterator it(chunks, error), end; !error && it != end; it.increment(error)) {
      const std::string name = it->path().filename().string();
      if (name.size() == 2 && it->is_directory(error) && !error) {
        prefixes.push_back(it->path());
      } else {
        ++report.other_files;
      }
    }
    if (error) return ErrnoStatus(error.value(), "cannot list " + chunks.string());
    std::sort(prefixes.begin(), prefixes.end());
    for (const fs::path& prefix : prefixes) {
      CKPTFS_RETURN_IF_ERROR(Prefix(prefix, report));
    }
    return report;
  }

 private:
  Status Prefix(const fs::path& dir, GcReport& report) {
    CKPTFS_RETURN_IF_ERROR(leases_.Renew());
    CKPTFS_ASSIGN_OR_RETURN(std::vector<StoreFile> files, ListPrefix(dir, dir.filename().string()));
    std::vector<Digest> digests;
    for (const StoreFile& file : files) {
      if (file.kind == StoreFile::Kind::kObject) digests.push_back(file.digest);
    }
    CKPTFS_ASSIGN_OR_RETURN(std::vector<bool> needed, indexes_.Needed(digests));
    std::size_t next_object = 0;
    for (const StoreFile& file : files) {
      const bool young = options_.now - file.modified < options_.min_age;
      switch (file.kind) {
        case StoreFile::Kind::kOther:
          ++report.other_files;
          break;
        case StoreFile::Kind::kTemp:
          if (young) {
            ++report.recent_files;
            break;
          }
          ++report.temp_files;
          CKPTFS_RETURN_IF_ERROR(Remove(file.path));
          break;
        case StoreFile::Kind::kObject:
          if (needed[next_object++]) {
            ++report.kept_objects;
            report.kept_bytes += file.size;
          } else if (young || leases_.RecentlyFound(file.digest)) {
            ++report.recent_files;
          } else {
            ++report.unneeded_objects;
            report.unneeded_bytes += file.size;
            CKPTFS_RETURN_IF_ERROR(Remove(file.path));
          }
          break;
      }
    }
    return Status::Ok();
  }

  Status Remove(const std::string& path) const {
    if (!options_.remove || ::unlink(path.c_str()) == 0 || errno == ENOENT) return Status::Ok();
    return ErrnoStatus(errno, "cannot remove " + path);
  }

  const GcOptions& options_;
  const Indexes& indexes_;
  GcLeases& leases_;
};

void Add(GcReport& total, const GcReport& one) {
  total.kept_objects += one.kept_objects;
  total.kept_bytes += one.kept_bytes;
  total.unneeded_objects += one.unneeded_objects;
  total.unneeded_bytes += one.unneeded_bytes;
  total.recent_files += one.recent_files;
  total.temp_files += one.temp_files;
  total.other_files += one.other_files;
}

void Print(std::ostream& out, const std::string& what, const GcReport& r, bool removed) {
  out << what << ": " << r.kept_objects << " objects (" << FormatSize(r.kept_bytes) << ") in use; "
      << (removed ? "removed " : "would remove ") << r.unneeded_objects << " objects ("
      << FormatSize(r.unneeded_bytes) << ") that no index needs";
  if (r.temp_files > 0) {
    out << " and " << r.temp_files << " leftovers of interrupted publishes";
  }
  if (!removed) out << " (run with --delete)";
  if (r.recent_files > 0) out << "; kept " << r.recent_files << " files too recent to remove";
  if (r.other_files > 0) out << "; left alone " << r.other_files << " files that are no objects";
  out << "\n";
}

}  // namespace

Result<GcReport> CollectGarbage(const GcOptions& options, netfetch::Transport& transport,
                                std::ostream& out) {
  if (options.stores.empty()) return InvalidArgumentError("name at least one --store directory");
  for (const std::string& store : options.stores) {
    std::error_code error;
    if (!fs::is_directory(fs::path(store) / "chunks", error)) {
      return InvalidArgumentError("store " + store +
                                  " is not a directory with the chunks/ of a publish --store");
    }
  }
  std::vector<StoreLock> locks;
  for (const std::string& store : options.stores) {
    CKPTFS_ASSIGN_OR_RETURN(StoreLock lock, StoreLock::Take(store, StoreLock::Holder::kGc));
    locks.push_back(std::move(lock));
  }
  // With --delete a note in each store keeps publishes by PUT away, and this refuses while one
  // is under way; objects that recent ones found on their nodes stay either way.
  CKPTFS_ASSIGN_OR_RETURN(GcLeases leases, GcLeases::Open(options.stores, options.now,
                                                          options.min_age, options.remove));
  for (const std::string& running : leases.running()) {
    out << "a publish by PUT is under way (gc --delete refuses to start while it is): " << running
        << "\n";
  }
  LocalIndexes local(transport, options.temp_dir, "ckptfs-gc");
  CKPTFS_ASSIGN_OR_RETURN(Indexes indexes,
                          Indexes::Open(options.index_paths, options.index_sha256s, local));
  Collector collector(options, indexes, leases);
  GcReport total;
  for (const std::string& store : options.stores) {
    Result<GcReport> one = collector.Store(store);
    if (!one.ok()) return one.status().WithContext("store " + store);
    Print(out, "store " + store, *one, options.remove);
    Add(total, *one);
  }
  if (options.stores.size() > 1) Print(out, "all stores", total, options.remove);
  return total;
}

}  // namespace ckptfs::cli
