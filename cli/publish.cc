#include "cli/publish.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <deque>
#include <future>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cli/node_urls.h"
#include "cli/object_uploads.h"
#include "cli/store_leases.h"
#include "cli/store_lock.h"
#include "common/digest.h"
#include "common/file_io.h"
#include "common/unique_fd.h"
#include "common/units.h"
#include "index/placement.h"
#include "index/types.h"
#include "index/writer.h"
#include "netfetch/fetcher.h"

namespace ckptfs::cli {

namespace {

constexpr std::uint64_t kMinChunkSize = 64 << 10;
constexpr std::uint64_t kMaxChunkSize = 256 << 20;
// Chunk bytes publish keeps in memory for uploads under way, unless two chunks are more.
constexpr std::uint64_t kUploadMemory = 64 << 20;

// One thing found under the source directory, in the order it will be published.
struct SourceEntry {
  std::string path;    // Absolute (or as given) path on disk.
  std::size_t parent;  // Index into the walk of the parent directory; the root is its own.
  std::string name;
  struct stat st;
};

std::string Describe(const struct stat& st) {
  if (S_ISFIFO(st.st_mode)) return "a fifo";
  if (S_ISSOCK(st.st_mode)) return "a socket";
  if (S_ISCHR(st.st_mode)) return "a character device";
  if (S_ISBLK(st.st_mode)) return "a block device";
  return "not a regular file, directory or symlink";
}

// A file or directory by identity, so that paths spelled differently still match.
using FileId = std::pair<dev_t, ino_t>;

// Publish's own output where it already exists: the index it replaces and the --store
// directories. Written inside the source tree, they are not part of the checkpoint (before, a
// second publish to ckpt/ckpt.ckptfs published the first one's index as a file of the tree).
std::set<FileId> OwnOutputs(const PublishOptions& options) {
  std::set<FileId> own;
  auto add = [&](const std::string& path) {
    if (struct stat st; ::stat(path.c_str(), &st) == 0) own.insert({st.st_dev, st.st_ino});
  };
  add(options.index_path);
  for (const auto& [name, dir] : options.stores) add(dir);
  return own;
}

// Walks `root` breadth first with children in name order, leaving out the entries in `skip`;
// fails on the first special or unreadable entry so that nothing is written for a tree that
// cannot be published whole.
Status Walk(const std::string& root, const std::set<FileId>& skip, std::vector<SourceEntry>& out) {
  struct stat st;
  if (::stat(root.c_str(), &st) != 0) return ErrnoStatus(errno, "source " + root);
  if (!S_ISDIR(st.st_mode)) return InvalidArgumentError("source " + root + " is not a directory");
  out.push_back({root, 0, "", st});
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (!S_ISDIR(out[i].st.st_mode)) continue;
    DIR* dir = ::opendir(out[i].path.c_str());
    if (dir == nullptr) return ErrnoStatus(errno, "cannot read directory " + out[i].path);
    std::vector<std::string> names;
    while (dirent* e = ::readdir(dir)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(std::move(name));
    }
    ::closedir(dir);
    std::sort(names.begin(), names.end());
    // Appending gives breadth-first order, in which every parent precedes its children.
    for (std::string& name : names) {
      std::string path = out[i].path + "/" + name;
      struct stat child;
      if (::lstat(path.c_str(), &child) != 0) return ErrnoStatus(errno, "cannot stat " + path);
      if (skip.contains({child.st_dev, child.st_ino})) continue;
      if (!S_ISREG(child.st_mode) && !S_ISDIR(child.st_mode) && !S_ISLNK(child.st_mode)) {
        return InvalidArgumentError("cannot publish " + path + ": " + Describe(child));
      }
      if (S_ISREG(child.st_mode)) {
        UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd.valid()) return ErrnoStatus(errno, "cannot read " + path);
      }
      out.push_back({path, i, std::move(name), child});
    }
  }
  return Status::Ok();
}

// PUTs the finished index at `path` to `url`: the last step, so that the index a mount can
// download never names a chunk not yet stored. A server that writes PUTs to a temporary file and
// renames it (nginx's WebDAV module does) replaces the old index whole.
Status UploadIndex(const std::string& path, const std::string& url, netfetch::Transport& transport,
                   Clock& clock) {
  CKPTFS_ASSIGN_OR_RETURN(std::vector<std::uint8_t> bytes, ReadWholeFile(path));
  return PutWithRetries(transport, clock, url, bytes, kIndexTransferTimeout, nullptr,
                        "cannot upload the index");
}

Status CheckOptions(const PublishOptions& options) {
  if (options.nodes.empty()) return InvalidArgumentError("at least one --node NAME=URL is needed");
  std::set<std::string> names;
  for (const NodeSpec& node : options.nodes) {
    if (!index::IsValidName(node.name)) {
      return InvalidArgumentError("invalid node name '" + node.name + "'");
    }
    if (!names.insert(node.name).second) {
      return InvalidArgumentError("node '" + node.name + "' given twice");
    }
    if (!IsHttpUrl(node.url)) {
      return InvalidArgumentError("node " + node.name +
                                  ": URL must start with http:// or https://");
    }
  }
  for (const auto& [name, dir] : options.stores) {
    if (!names.contains(name))
      return InvalidArgumentError("unknown node '" + name + "' in --store");
  }
  int n = static_cast<int>(options.nodes.size());
  if (options.replicas < 0) return InvalidArgumentError("--replicas must be at least 1");
  if (options.replicas > n) {
    return InvalidArgumentError("--replicas " + std::to_string(options.replicas) +
                                " is more than the " + std::to_string(n) + " node(s) given");
  }
  if (options.uploads < 1) return InvalidArgumentError("--uploads must be at least 1");
  if (options.chunk_size < kMinChunkSize || options.chunk_size > kMaxChunkSize) {
    return InvalidArgumentError("--chunk-size must be between 64K and 256M");
  }
  if (!index::IsValidBlockSize(options.block_size, options.chunk_size)) {
    return InvalidArgumentError("--block-size must be a power of two from 4K to the chunk size (" +
                                std::to_string(options.chunk_size) + " bytes), got " +
                                std::to_string(options.block_size));
  }
  return Status::Ok();
}

Status CheckStores(const PublishOptions& options) {
  for (const auto& [name, dir] : options.stores) {
    CKPTFS_RETURN_IF_ERROR(MakeDirs(dir + "/chunks", 0755).WithContext("store of node " + name));
    std::string probe = dir + "/chunks/.ckptfs-write-test";
    UniqueFd fd(::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd.valid())
      return ErrnoStatus(errno, "store of node " + name + " (" + dir + ") is not writable");
    ::unlink(probe.c_str());
  }
  return Status::Ok();
}

// Flushes every store's file system, so that objects are on disk before the index names them.
Status SyncStores(const PublishOptions& options) {
  for (const auto& [name, dir] : options.stores) {
    UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid() || ::syncfs(fd.get()) != 0)
      return ErrnoStatus(errno, "cannot sync store " + dir);
  }
  return Status::Ok();
}

// The line PublishOptions::progress shows: bytes read and hashed (the stores follow within the
// upload buffers), files, and the rate so far.
class Progress {
 public:
  Progress(std::ostream* out, Clock& clock, const std::vector<SourceEntry>& walk)
      : out_(out), clock_(clock), start_(clock.Now()), last_(start_) {
    for (const SourceEntry& e : walk) {
      if (!S_ISREG(e.st.st_mode)) continue;
      total_bytes_ += static_cast<std::uint64_t>(e.st.st_size);
      total_files_++;
    }
  }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  ~Progress() { End(); }

  // Shows the last state and ends the line, so that what is printed next starts on its own.
  void End() {
    if (out_ == nullptr || !shown_ || ended_) return;
    Show();
    *out_ << "\n" << std::flush;
    ended_ = true;
  }

  void Add(std::uint64_t bytes) {
    bytes_ += bytes;
    if (out_ != nullptr && clock_.Now() - last_ >= std::chrono::seconds(1)) Show();
  }
  void FileDone() { files_++; }

 private:
  void Show() {
    last_ = clock_.Now();
    shown_ = true;
    const double seconds = std::chrono::duration<double>(last_ - start_).count();
    const auto rate = static_cast<std::uint64_t>(seconds > 0 ? bytes_ / seconds : 0);
    const std::uint64_t percent = total_bytes_ == 0 ? 100 : bytes_ * 100 / total_bytes_;
    *out_ << "\rpublish: " << FormatSize(bytes_) << " of " << FormatSize(total_bytes_) << " ("
          << percent << "%), " << files_ << " of " << total_files_ << " files, " << FormatSize(rate)
          << "/s   " << std::flush;
  }

  std::ostream* const out_;
  Clock& clock_;
  const TimePoint start_;
  TimePoint last_;
  bool shown_ = false;
  bool ended_ = false;
  std::uint64_t bytes_ = 0, files_ = 0;
  std::uint64_t total_bytes_ = 0, total_files_ = 0;
};

struct Totals {
  index::IndexStats stats;
  std::uint64_t symlinks = 0;
  std::uint64_t chunk_refs = 0;
  std::vector<std::uint64_t> chunks_per_node;
};

// Chunks in memory at once: one more than the uploads, so that each has one to send while the
// next is read, within kUploadMemory unless that is less than two.
int UploadBuffers(const PublishOptions& options) {
  const std::uint64_t fit = kUploadMemory / options.chunk_size;
  return static_cast<int>(std::max<std::uint64_t>(
      2, std::min<std::uint64_t>(fit, static_cast<std::uint64_t>(options.uploads) + 1)));
}

// A chunk whose bytes are read and whose digests are being computed on a thread of their own.
struct HashingChunk {
  ObjectUploads::Slot* slot;
  std::uint64_t file;
  std::uint64_t offset;
  std::future<index::ChunkDigests> digests;
};

// Chunks hashed at once: one per core, so that SHA-256 (twice over every byte: the chunk's and its
// blocks' digests) is not bound to one; fewer than the upload buffers, so that one is always left
// to read the next chunk into while the others are hashed or sent.
std::size_t HashingAhead(const PublishOptions& options) {
  const std::size_t cores = std::max(1u, std::thread::hardware_concurrency());
  return std::max<std::size_t>(
      1, std::min<std::size_t>(cores, static_cast<std::size_t>(UploadBuffers(options)) - 1));
}

class Publisher {
 public:
  Publisher(const PublishOptions& options, netfetch::Transport& transport, Clock& clock,
            PublishLeases& leases, int replicas, Progress& progress)
      : options_(options),
        progress_(progress),
        sink_(options, transport, clock, &leases),
        uploads_(sink_, options.nodes.size(), options.chunk_size, options.uploads,
                 UploadBuffers(options)),
        placement_(static_cast<int>(options.nodes.size()), replicas),
        max_hashing_(HashingAhead(options)) {
    totals_.chunks_per_node.resize(options.nodes.size());
  }

  Status Run(const std::vector<SourceEntry>& walk, index::IndexWriter& writer) {
    for (const NodeSpec& node : options_.nodes) {
      CKPTFS_ASSIGN_OR_RETURN(std::int64_t id, writer.AddNode(node.name, node.url));
      node_ids_.push_back(id);
    }
    std::vector<std::uint64_t> ids(walk.size());
    const struct stat& root = walk[0].st;
    CKPTFS_RETURN_IF_ERROR(writer.SetRoot(root.st_mode & 07777, MtimeNs(root)));
    ids[0] = index::kRootId;
    totals_.stats.directories = 1;
    for (std::size_t i = 1; i < walk.size(); ++i) {
      CKPTFS_ASSIGN_OR_RETURN(ids[i], AddEntry(walk[i], ids[walk[i].parent], writer));
    }
    while (!hashing_.empty()) CKPTFS_RETURN_IF_ERROR(IndexOldest(writer));
    return uploads_.Finish();
  }

  const Totals& totals() const { return totals_; }
  const UploadCounts& upload_counts() const { return uploads_.counts(); }
  const std::vector<std::uint64_t>& bytes_per_node() const { return placement_.bytes_per_node(); }

 private:
  static std::int64_t MtimeNs(const struct stat& st) {
    return st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec;
  }

  Result<std::uint64_t> AddEntry(const SourceEntry& src, std::uint64_t parent,
                                 index::IndexWriter& writer) {
    index::Entry entry;
    entry.parent = parent;
    entry.name = src.name;
    entry.mode = src.st.st_mode & 07777;
    entry.mtime_ns = MtimeNs(src.st);
    if (S_ISDIR(src.st.st_mode)) {
      entry.type = index::EntryType::kDirectory;
      totals_.stats.directories++;
      return writer.AddEntry(entry);
    }
    if (S_ISLNK(src.st.st_mode)) {
      std::string target(static_cast<std::size_t>(src.st.st_size) + 1, '\0');
      ssize_t n = ::readlink(src.path.c_str(), target.data(), target.size());
      if (n < 0) return ErrnoStatus(errno, "cannot read link " + src.path);
      target.resize(static_cast<std::size_t>(n));
      entry.type = index::EntryType::kSymlink;
      entry.size = target.size();
      entry.target = std::move(target);
      totals_.symlinks++;
      return writer.AddEntry(entry);
    }
    entry.type = index::EntryType::kFile;
    entry.size = static_cast<std::uint64_t>(src.st.st_size);
    CKPTFS_ASSIGN_OR_RETURN(std::uint64_t id, writer.AddEntry(entry));
    CKPTFS_RETURN_IF_ERROR(AddFileChunks(src, id, writer));
    progress_.FileDone();
    totals_.stats.files++;
    totals_.stats.bytes += entry.size;
    return id;
  }

  Status AddFileChunks(const SourceEntry& src, std::uint64_t file, index::IndexWriter& writer) {
    UniqueFd fd(::open(src.path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return ErrnoStatus(errno, "cannot read " + src.path);
    CKPTFS_RETURN_IF_ERROR(CheckUnchanged(fd.get(), src));
    ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    std::uint64_t size = static_cast<std::uint64_t>(src.st.st_size);
    for (std::uint64_t offset = 0; offset < size; offset += options_.chunk_size) {
      std::size_t want = static_cast<std::size_t>(std::min(options_.chunk_size, size - offset));
      if (hashing_.size() >= max_hashing_) CKPTFS_RETURN_IF_ERROR(IndexOldest(writer));
      CKPTFS_ASSIGN_OR_RETURN(ObjectUploads::Slot * slot, uploads_.Acquire());
      if (Status read = ReadExactly(fd.get(), offset, {slot->bytes.data(), want}, src.path);
          !read.ok()) {
        uploads_.Release(slot);
        return read;
      }
      slot->size = want;
      hashing_.push_back({slot, file, offset,
                          std::async(std::launch::async, index::HashChunk,
                                     std::span<const std::uint8_t>(slot->bytes.data(), want),
                                     options_.block_size)});
    }
    return CheckUnchanged(fd.get(), src);
  }

  // Takes the digests of the oldest chunk being hashed (waiting for them), adds it to the index
  // and hands it to its nodes.
  Status IndexOldest(index::IndexWriter& writer) {
    HashingChunk oldest = std::move(hashing_.front());
    hashing_.pop_front();
    const index::ChunkDigests digests = oldest.digests.get();
    oldest.slot->digest = digests.chunk;
    std::vector<int> nodes;  // None when an earlier chunk had the same bytes.
    Status added = AddToIndex(oldest, digests, writer, nodes);
    if (added.ok()) {
      uploads_.Submit(oldest.slot, nodes);
    } else {
      uploads_.Release(oldest.slot);
    }
    return added;
  }

  // Adds `chunk` to the index as a piece of its file; `nodes` are where it is to be stored.
  Status AddToIndex(const HashingChunk& chunk, const index::ChunkDigests& digests,
                    index::IndexWriter& writer, std::vector<int>& nodes) {
    const std::size_t size = chunk.slot->size;
    CKPTFS_ASSIGN_OR_RETURN(index::IndexWriter::AddedChunk added,
                            writer.AddChunk(digests.chunk, size, digests.blocks));
    if (added.is_new) {
      CKPTFS_ASSIGN_OR_RETURN(nodes, PlaceChunk(added.id, size, writer));
    }
    CKPTFS_RETURN_IF_ERROR(writer.AddExtent(chunk.file, chunk.offset, added.id));
    totals_.chunk_refs++;
    progress_.Add(size);
    return Status::Ok();
  }

  // A checkpoint still being written (a training job saving into the directory, torch.save
  // writing in place) would be published as a mix of old and new bytes that no version of the
  // file ever held: the file opened must be the one the tree walk found (same inode, not one
  // renamed over it), with the same size, mtime and ctime then and after it was read.
  static Status CheckUnchanged(int fd, const SourceEntry& src) {
    struct stat now;
    if (::fstat(fd, &now) != 0) return ErrnoStatus(errno, "cannot stat " + src.path);
    const struct stat& then = src.st;
    const bool same =
        now.st_dev == then.st_dev && now.st_ino == then.st_ino && now.st_size == then.st_size &&
        now.st_mtim.tv_sec == then.st_mtim.tv_sec && now.st_mtim.tv_nsec == then.st_mtim.tv_nsec &&
        now.st_ctim.tv_sec == then.st_ctim.tv_sec && now.st_ctim.tv_nsec == then.st_ctim.tv_nsec;
    if (same) return Status::Ok();
    return FailedPreconditionError(src.path +
                                   " changed while it was being published; publish a directory "
                                   "that nothing writes to any more");
  }

  static Status ReadExactly(int fd, std::uint64_t offset, std::span<std::uint8_t> dst,
                            const std::string& path) {
    Status read = PreadExactly(fd, offset, dst);
    if (read.code() == StatusCode::kDataLoss) {
      return FailedPreconditionError(path + " shrank while it was being published");
    }
    return read.WithContext("cannot read " + path);
  }

  // Chooses the nodes of a new chunk and records them in the index. Its uploads come later: the
  // index becomes visible only once every one has succeeded.
  Result<std::vector<int>> PlaceChunk(std::int64_t chunk, std::size_t size,
                                      index::IndexWriter& writer) {
    totals_.stats.chunks++;
    totals_.stats.chunk_bytes += size;
    std::vector<int> nodes = placement_.Place(size);
    for (int node : nodes) {
      CKPTFS_RETURN_IF_ERROR(writer.AddReplica(chunk, node_ids_[static_cast<std::size_t>(node)]));
      totals_.chunks_per_node[static_cast<std::size_t>(node)]++;
    }
    return nodes;
  }

  const PublishOptions& options_;
  Progress& progress_;
  ObjectSink sink_;
  ObjectUploads uploads_;
  index::Placement placement_;
  std::vector<std::int64_t> node_ids_;
  Totals totals_;
  // Chunks read and being hashed, oldest first; each holds a slot of uploads_, so it is declared
  // after it: on an early return its futures wait for their hashing before the buffers go.
  std::deque<HashingChunk> hashing_;
  const std::size_t max_hashing_;
};

// The SHA-256 of the index written at `path`, which mounts can pin (index_sha256=).
Result<Digest> IndexFileSha256(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus(errno, "cannot read the index written to " + path);
  return FileSha256(fd.get(), "the index written to " + path);
}

void PrintSummary(const PublishOptions& options, const Publisher& publisher, int replicas,
                  const Digest& index_sha256, std::ostream& out) {
  const Totals& t = publisher.totals();
  out << "published " << options.source_dir << " to " << options.index_path << "\n"
      << "  files: " << t.stats.files << ", directories: " << t.stats.directories
      << ", symlinks: " << t.symlinks << ", bytes: " << t.stats.bytes << " ("
      << FormatSize(t.stats.bytes) << ")\n"
      << "  chunks: " << t.chunk_refs << ", unique chunks: " << t.stats.chunks << " ("
      << FormatSize(t.stats.chunk_bytes) << "), chunk size: " << FormatSize(options.chunk_size)
      << ", block size: " << FormatSize(options.block_size) << ", replicas: " << replicas << "\n";
  out << "  index SHA-256: " << index_sha256.Hex() << " (-o index_sha256= pins this version)\n";
  for (std::size_t i = 0; i < options.nodes.size(); ++i) {
    std::uint64_t bytes = publisher.bytes_per_node()[i];
    const UploadCounts& sent = publisher.upload_counts();
    out << "  node " << options.nodes[i].name << ": " << bytes << " bytes (" << FormatSize(bytes)
        << ") in " << t.chunks_per_node[i] << " chunks; sent " << sent.sent_objects[i] << " ("
        << FormatSize(sent.sent_bytes[i]) << "), already there " << sent.present_objects[i] << " ("
        << FormatSize(sent.present_bytes[i]) << ")\n";
  }
}

}  // namespace

Result<std::pair<std::string, std::string>> SplitAssignment(const std::string& text,
                                                            const std::string& what) {
  std::size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == text.size()) {
    return InvalidArgumentError(what + " must be NAME=VALUE, got '" + text + "'");
  }
  return std::make_pair(text.substr(0, eq), text.substr(eq + 1));
}

Status Publish(const PublishOptions& given, netfetch::Transport& transport, Clock& clock,
               std::ostream& out) {
  PublishOptions options = given;
  for (NodeSpec& node : options.nodes) node.url = WithoutTrailingSlashes(node.url);
  CKPTFS_RETURN_IF_ERROR(CheckOptions(options));
  int replicas =
      options.replicas > 0 ? options.replicas : std::min(2, static_cast<int>(options.nodes.size()));
  std::vector<SourceEntry> walk;
  CKPTFS_RETURN_IF_ERROR(Walk(options.source_dir, OwnOutputs(options), walk));
  CKPTFS_RETURN_IF_ERROR(CheckStores(options));
  // Held until the index that lists the stores' objects is written.
  std::vector<StoreLock> store_locks;
  for (const auto& [name, dir] : options.stores) {
    CKPTFS_ASSIGN_OR_RETURN(StoreLock lock, StoreLock::Take(dir, StoreLock::Holder::kPublish));
    store_locks.push_back(std::move(lock));
  }
  // The same for the nodes that get their objects by PUT; given up when this returns.
  CKPTFS_ASSIGN_OR_RETURN(std::unique_ptr<PublishLeases> leases,
                          PublishLeases::Take(options, transport, clock));

  // An index for a URL is written in a directory of our own and PUT there last.
  const bool to_url = IsHttpUrl(options.index_path);
  std::optional<TemporaryDir> staging;
  std::string tmp = options.index_path + ".tmp." + std::to_string(::getpid());
  if (to_url) {
    CKPTFS_ASSIGN_OR_RETURN(staging, TemporaryDir::Make(options.temp_dir, "ckptfs-publish"));
    tmp = staging->path() + "/index.ckptfs";
  }
  CKPTFS_ASSIGN_OR_RETURN(std::unique_ptr<index::IndexWriter> writer,
                          index::IndexWriter::Create(tmp, options.chunk_size, options.block_size));
  Progress progress(options.progress, clock, walk);
  Publisher publisher(options, transport, clock, *leases, replicas, progress);
  Status status = publisher.Run(walk, *writer);
  progress.End();
  if (status.ok()) status = SyncStores(options);
  if (status.ok()) status = leases->Settle();
  if (status.ok()) status = writer->Finish(publisher.totals().stats);
  writer.reset();
  Digest index_sha256;
  if (status.ok()) {
    Result<Digest> hashed = IndexFileSha256(tmp);
    status = hashed.status();
    if (hashed.ok()) index_sha256 = *hashed;
  }
  if (status.ok() && to_url) {
    status = UploadIndex(tmp, options.index_path, transport, clock);
  } else if (status.ok() && ::rename(tmp.c_str(), options.index_path.c_str()) != 0) {
    status = ErrnoStatus(errno, "cannot write index " + options.index_path);
  }
  if (!status.ok()) {
    ::unlink(tmp.c_str());
    ::unlink((tmp + "-journal").c_str());
    return status;
  }
  PrintSummary(options, publisher, replicas, index_sha256, out);
  return Status::Ok();
}

}  // namespace ckptfs::cli
