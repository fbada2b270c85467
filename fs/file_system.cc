#define FUSE_USE_VERSION 312
#include "fs/file_system.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "common/file_io.h"
#include "common/log.h"

namespace ckptfs::fs {

FileSystem::FileSystem(index::IndexReader* index, ChunkStore* store, Clock* clock,
                       FileSystemOptions options)
    : index_(index), store_(store), clock_(clock), options_(std::move(options)), handoff_(clock) {}

Status FileSystem::ValidateOnce(std::uint64_t file) {
  {
    std::lock_guard lock(validated_mu_);
    if (validated_.contains(file)) return Status::Ok();
  }
  CKPTFS_RETURN_IF_ERROR(index_->ValidateFile(file));
  std::lock_guard lock(validated_mu_);
  validated_.insert(file);
  return Status::Ok();
}

Result<std::vector<FileSystem::Part>> FileSystem::GatherRange(std::uint64_t file,
                                                              std::uint64_t offset,
                                                              std::size_t length, Access access,
                                                              TimePoint deadline,
                                                              const Reply* early) {
  std::vector<Part> parts;
  if (length == 0) return parts;
  CKPTFS_ASSIGN_OR_RETURN(std::vector<index::Extent> extents,
                          index_->ExtentsInRange(file, offset, length));
  // The extents must tile the range exactly; validation at open makes this hold for a sane index.
  std::uint64_t end = offset + length;
  bool tiled = !extents.empty() && extents.front().offset <= offset;
  std::uint64_t covered = tiled ? extents.front().offset : 0;
  for (const index::Extent& e : extents) {
    tiled = tiled && e.offset == covered;
    covered = e.offset + e.size;
  }
  if (!tiled || covered < end) {
    return DataLossError("extents of file " + std::to_string(file) + " do not cover bytes " +
                         std::to_string(offset) + ".." + std::to_string(end));
  }
  // Later chunks go to the background fetchers first, so a read spanning several chunks waits
  // for about one fetch, not the sum of them.
  if (access == Access::kStream) {
    for (std::size_t i = 1; i < extents.size(); ++i) {
      store_->Prefetch(ChunkKey{extents[i].digest, extents[i].size, extents[i].chunk_id});
    }
  }
  if (early != nullptr && extents.size() == 1) {
    return GatherEarly(extents.front(), offset, length, access, deadline, *early);
  }
  // Every chunk first, then the disk reads, so that the scratch space for those is held only
  // while they are read and replied, never while a later chunk is waited for.
  struct Piece {
    ChunkKey key;
    std::uint64_t offset = 0;  // In the chunk.
    std::size_t length = 0;
    ChunkData data;
  };
  std::vector<Piece> pieces;
  std::vector<std::size_t> from_disk;
  for (const index::Extent& e : extents) {
    std::uint64_t from = std::max(offset, e.offset);
    std::uint64_t to = std::min(end, e.offset + e.size);
    Piece piece{ChunkKey{e.digest, e.size, e.chunk_id}, from - e.offset,
                static_cast<std::size_t>(to - from), ChunkData{}};
    CKPTFS_ASSIGN_OR_RETURN(piece.data,
                            store_->Get(piece.key, piece.offset, piece.length, access, deadline));
    if (piece.data.bytes == nullptr) {
      from_disk.push_back(AlignedReadSize(piece.offset, piece.length));
    }
    pieces.push_back(std::move(piece));
  }
  std::vector<std::shared_ptr<Buffer>> scratch = TakeScratch(from_disk);
  std::size_t next_scratch = 0;
  for (Piece& piece : pieces) {
    std::shared_ptr<Buffer> space;
    if (piece.data.bytes == nullptr) space = std::move(scratch[next_scratch++]);
    CKPTFS_ASSIGN_OR_RETURN(
        Part part, ResolveOrRefetch(piece.key, std::move(piece.data), piece.offset, piece.length,
                                    access, deadline, space));
    parts.push_back(std::move(part));
  }
  return parts;
}

Result<std::vector<FileSystem::Part>> FileSystem::GatherEarly(const index::Extent& extent,
                                                              std::uint64_t offset,
                                                              std::size_t length, Access access,
                                                              TimePoint deadline,
                                                              const Reply& early) {
  const ChunkKey key{extent.digest, extent.size, extent.chunk_id};
  const std::uint64_t in_chunk = offset - extent.offset;
  bool served = false;
  const EarlyServe serve = [&](ChunkData data) {
    served = true;
    // In memory (a chunk buffer being filled), so Resolve cannot fail here.
    Result<Part> part = Resolve(key, std::move(data), in_chunk, length, nullptr);
    early({std::move(part).value()});
  };
  Result<ChunkData> data = store_->Get(key, in_chunk, length, access, deadline, &serve);
  if (served) return std::vector<Part>{};
  if (!data.ok()) return data.status();
  std::shared_ptr<Buffer> scratch;
  if (data->bytes == nullptr) {
    const std::size_t size = AlignedReadSize(in_chunk, length);
    scratch = TakeScratch(std::span(&size, 1)).front();
  }
  CKPTFS_ASSIGN_OR_RETURN(Part part, ResolveOrRefetch(key, std::move(data).value(), in_chunk,
                                                      length, access, deadline, scratch));
  std::vector<Part> parts;
  parts.push_back(std::move(part));
  return parts;
}

Result<FileSystem::Part> FileSystem::Resolve(const ChunkKey& key, ChunkData data,
                                             std::uint64_t offset, std::size_t length,
                                             std::shared_ptr<Buffer> scratch) {
  if (data.bytes != nullptr) {
    store_->Served(key.digest, length);
    std::span<const std::uint8_t> bytes(data.bytes->data() + (offset - data.base), length);
    return Part{std::move(data.bytes), bytes};
  }
  if (scratch == nullptr) return InternalError("no scratch space to read a cached chunk into");
  Result<std::span<const std::uint8_t>> bytes =
      PreadAligned(data.fd.get(), offset, length, scratch->span());
  if (!bytes.ok()) {
    return bytes.status().WithContext("cannot read cached chunk " + key.digest.Hex());
  }
  return Part{std::move(scratch), *bytes};
}

Result<FileSystem::Part> FileSystem::ResolveOrRefetch(const ChunkKey& key, ChunkData data,
                                                      std::uint64_t offset, std::size_t length,
                                                      Access access, TimePoint deadline,
                                                      const std::shared_ptr<Buffer>& scratch) {
  const bool from_disk = data.bytes == nullptr;
  Result<Part> part = Resolve(key, std::move(data), offset, length, scratch);
  if (part.ok() || !from_disk) return part;
  store_->DropUnreadable(key, part.status());
  CKPTFS_ASSIGN_OR_RETURN(ChunkData again, store_->Get(key, offset, length, access, deadline));
  return Resolve(key, std::move(again), offset, length, scratch);
}

std::vector<std::shared_ptr<Buffer>> FileSystem::TakeScratch(std::span<const std::size_t> lengths) {
  // One size for every pooled buffer: a whole maximal FUSE read plus the blocks around it.
  constexpr std::size_t kPooledSize = (1u << 20) + 2 * kDirectIoBlock;
  constexpr std::size_t kMaxPooled = 16;
  constexpr std::size_t kMaxScratchInUse = 16;
  std::vector<std::unique_ptr<Buffer>> pooled;
  {
    std::unique_lock lock(scratch_mu_);
    const std::size_t limit = std::max(kMaxScratchInUse, lengths.size());
    scratch_cv_.wait(lock, [&] { return scratch_in_use_ + lengths.size() <= limit; });
    scratch_in_use_ += lengths.size();
    for (std::size_t length : lengths) {
      if (scratch_.empty()) break;
      if (length > kPooledSize) continue;
      pooled.push_back(std::move(scratch_.back()));
      scratch_.pop_back();
    }
  }
  const auto give_back = [this](Buffer* b) {
    std::unique_ptr<Buffer> owned(b);
    {
      std::lock_guard lock(scratch_mu_);
      --scratch_in_use_;
      if (owned->size() == kPooledSize && scratch_.size() < kMaxPooled) {
        scratch_.push_back(std::move(owned));
      }
    }
    scratch_cv_.notify_one();
  };
  std::vector<std::shared_ptr<Buffer>> out;
  out.reserve(lengths.size());
  for (std::size_t length : lengths) {
    std::unique_ptr<Buffer> buffer;
    if (length > kPooledSize) {
      buffer = std::make_unique<Buffer>(length);
    } else if (!pooled.empty()) {
      buffer = std::move(pooled.back());
      pooled.pop_back();
    } else {
      buffer = std::make_unique<Buffer>(kPooledSize);
    }
    out.emplace_back(buffer.release(), give_back);
  }
  return out;
}

Status FileSystem::ReadRange(std::uint64_t file, std::uint64_t offset, std::span<std::uint8_t> dst,
                             TimePoint deadline) {
  CKPTFS_ASSIGN_OR_RETURN(std::vector<Part> parts,
                          GatherRange(file, offset, dst.size(), Access::kStream, deadline));
  for (const Part& part : parts) {
    std::memcpy(dst.data(), part.bytes.data(), part.bytes.size());
    dst = dst.subspan(part.bytes.size());
  }
  return Status::Ok();
}

void FileSystem::PrefetchRange(std::uint64_t file, ByteRange range) {
  Result<std::vector<index::Extent>> extents =
      index_->ExtentsInRange(file, range.begin, range.end - range.begin);
  if (!extents.ok()) return;  // Readahead is best effort; the foreground read reports errors.
  for (const index::Extent& e : *extents) {
    store_->Prefetch(ChunkKey{e.digest, e.size, e.chunk_id});
  }
}

WindowHandoff::Entries::iterator WindowHandoff::Find(std::uint64_t file) {
  // A linear search: there are at most a few dozen entries.
  return std::find_if(windows_.begin(), windows_.end(),
                      [&](const Handoff& h) { return h.file == file; });
}

void WindowHandoff::Put(std::uint64_t file, std::uint64_t window) {
  const TimePoint now = clock_->Now();
  std::lock_guard lock(mu_);
  auto it = Find(file);
  if (it != windows_.end()) {
    if (now - it->at <= max_age_) window = std::max(window, it->window);
    windows_.erase(it);
  }
  windows_.push_back({file, window, now});
  if (windows_.size() > capacity_) windows_.pop_front();
}

std::uint64_t WindowHandoff::Take(std::uint64_t file) {
  const TimePoint now = clock_->Now();
  std::lock_guard lock(mu_);
  auto it = Find(file);
  if (it == windows_.end()) return 0;
  const std::uint64_t window = now - it->at <= max_age_ ? it->window : 0;
  windows_.erase(it);
  return window;
}

FileSystem::OpenFile* FileSystem::OpenHandle(index::Entry entry) {
  auto file = std::make_unique<OpenFile>();
  std::uint64_t window = handoff_.Take(entry.id);
  file->readahead = window != 0 ? Readahead::Inherited(options_.readahead, window)
                                : Readahead(options_.readahead);
  file->spill.file = entry.id;
  file->entry = std::move(entry);
  OpenFile* handle = file.get();
  std::lock_guard lock(open_mu_);
  open_files_.emplace(handle, std::move(file));
  return handle;
}

void FileSystem::CloseHandle(OpenFile* file) {
  std::unique_ptr<OpenFile> closed;  // Freed outside the lock.
  std::lock_guard lock(open_mu_);
  auto it = open_files_.find(file);
  if (it == open_files_.end()) return;
  closed = std::move(it->second);
  open_files_.erase(it);
}

std::size_t FileSystem::open_handles() const {
  std::lock_guard lock(open_mu_);
  return open_files_.size();
}

Status FileSystem::ReadFile(OpenFile& file, std::uint64_t offset, std::size_t length,
                            TimePoint deadline, const Reply& reply) {
  ByteRange ahead;
  Access access = Access::kStream;
  std::uint64_t excess = 0;
  std::uint64_t window = 0;
  {
    std::lock_guard lock(file.mu);
    ahead = file.readahead.OnRead(offset, length, file.entry.size);
    if (!file.readahead.streaming()) access = Access::kIsolated;
    excess = file.readahead.TakeExcess();
    window = file.readahead.window();
  }
  if (!ahead.empty()) PrefetchRange(file.entry.id, ahead);
  if (excess != 0) SpillIntoNextFiles(file, excess, window);
  bool replied = false;
  const Reply early = [&](const std::vector<Part>& parts) {
    replied = true;
    reply(parts);
  };
  Result<std::vector<Part>> parts =
      GatherRange(file.entry.id, offset, length, access, deadline, &early);
  if (replied) return Status::Ok();  // A failure after that is the fetch's, not this read's.
  if (!parts.ok()) return parts.status();
  reply(*parts);
  return Status::Ok();
}

void FileSystem::SpillIntoNextFiles(OpenFile& file, std::uint64_t excess, std::uint64_t window) {
  std::lock_guard lock(file.spill_mu);
  SpillCursor& cursor = file.spill;
  std::uint64_t left = std::min(excess, options_.readahead.max_window - cursor.total);
  while (left != 0 && !cursor.done) {
    if (cursor.covered == cursor.size) {
      cursor.done = !NextSibling(file.entry.parent, cursor);
      continue;
    }
    std::uint64_t take = std::min(left, cursor.size - cursor.covered);
    PrefetchRange(cursor.file, {cursor.covered, cursor.covered + take});
    handoff_.Put(cursor.file, window);
    if (cursor.first == 0) cursor.first = cursor.file;
    cursor.covered += take;
    cursor.total += take;
    left -= take;
  }
  if (cursor.first != 0) handoff_.Put(cursor.first, window);
}

bool FileSystem::NextSibling(std::uint64_t parent, SpillCursor& cursor) {
  // Publish numbers entries breadth first with each directory's children sorted by name
  // (cli/publish.cc Walk, then IndexWriter::AddEntry in that order), so children in id order are
  // the directory in name order: the order in which loaders and copy tools read shard files.
  constexpr std::size_t kPage = 16;
  for (;;) {
    Result<std::vector<index::Entry>> children = index_->ListChildren(parent, cursor.file, kPage);
    if (!children.ok() || children->empty()) return false;  // Best effort, like all readahead.
    for (const index::Entry& child : *children) {
      cursor.file = child.id;
      if (child.type != index::EntryType::kFile || child.size == 0) continue;
      // A file that fails validation is skipped; its open reports why.
      if (!ValidateOnce(child.id).ok()) continue;
      cursor.size = child.size;
      cursor.covered = 0;
      return true;
    }
  }
}

std::string FileSystem::ListXattr(std::uint64_t ino) const {
  if (ino != index::kRootId || !options_.stats_text) return {};
  std::string names(kStatsXattr);
  names.push_back('\0');
  return names;
}

bool FileSystem::HasXattrNamespace(std::string_view name) { return name.starts_with("user."); }

std::optional<std::string> FileSystem::GetXattr(std::uint64_t ino, std::string_view name) const {
  if (ino != index::kRootId || name != kStatsXattr || !options_.stats_text) return std::nullopt;
  return options_.stats_text();
}

namespace {

FileSystem& Fs(fuse_req_t req) { return *static_cast<FileSystem*>(fuse_req_userdata(req)); }

// The one place a Status becomes an errno. Counts and logs every EIO with its reason.
void ReplyError(fuse_req_t req, const Status& status, std::string_view what) {
  int err = EIO;
  switch (status.code()) {
    case StatusCode::kNotFound:
      err = ENOENT;
      break;
    case StatusCode::kReadOnly:
      err = EROFS;
      break;
    case StatusCode::kPermissionDenied:
      err = EACCES;
      break;
    case StatusCode::kResourceExhausted:
      err = ENOMEM;
      break;
    case StatusCode::kInvalidArgument:
      err = EINVAL;
      break;
    default:
      break;
  }
  if (err == EIO) LogWarning(std::string(what) + ": EIO: " + status.ToString());
  fuse_reply_err(req, err);
}

// Runs a handler body so that no exception reaches libfuse. A body that may have replied before
// it throws says so in `*replied`: a request is answered once, and not after its reply freed it.
template <typename Body>
void Guarded(fuse_req_t req, Body body, const bool* replied = nullptr) {
  try {
    body();
  } catch (const std::bad_alloc&) {
    if (replied == nullptr || !*replied) fuse_reply_err(req, ENOMEM);
  } catch (const std::exception& e) {
    LogError(std::string("internal error: ") + e.what());
    if (replied != nullptr && *replied) return;
    Fs(req).mutable_counters().eio_internal++;
    fuse_reply_err(req, EIO);
  }
}

struct stat ToStat(const FileSystem& fs, const index::Entry& e) {
  struct stat st {};
  st.st_ino = e.id;
  switch (e.type) {
    case index::EntryType::kDirectory:
      st.st_mode = S_IFDIR;
      st.st_nlink = 2;
      break;
    case index::EntryType::kSymlink:
      st.st_mode = S_IFLNK;
      st.st_nlink = 1;
      break;
    case index::EntryType::kFile:
      st.st_mode = S_IFREG;
      st.st_nlink = 1;
      break;
  }
  st.st_mode |= e.mode & 07777;
  st.st_uid = fs.options().uid;
  st.st_gid = fs.options().gid;
  st.st_size = static_cast<off_t>(e.size);
  st.st_blocks = static_cast<blkcnt_t>((e.size + 511) / 512);
  st.st_blksize = 1 << 20;  // Invites large reads from stdio and Python's io.
  st.st_mtim.tv_sec = e.mtime_ns / 1'000'000'000;
  st.st_mtim.tv_nsec = e.mtime_ns % 1'000'000'000;
  if (st.st_mtim.tv_nsec < 0) {
    st.st_mtim.tv_nsec += 1'000'000'000;
    st.st_mtim.tv_sec -= 1;
  }
  st.st_atim = st.st_mtim;
  st.st_ctim = st.st_mtim;
  return st;
}

// Replies from memory: every piece is verified bytes the daemon holds (a chunk buffer, or what was
// read from the disk cache). Splicing cache files was tried; libfuse cannot grow its pipe past
// pipe-max-size (1 MiB) for a 1 MiB reply and falls back to a copy through a fresh allocation.
void ReplyParts(fuse_req_t req, const std::vector<FileSystem::Part>& parts) {
  std::vector<iovec> iov(parts.size());
  for (std::size_t i = 0; i < parts.size(); ++i) {
    // fuse_reply_iov only reads from the pieces.
    iov[i].iov_base = const_cast<std::uint8_t*>(parts[i].bytes.data());
    iov[i].iov_len = parts[i].bytes.size();
  }
  fuse_reply_iov(req, iov.data(), static_cast<int>(iov.size()));
}

void OpInit(void* userdata, fuse_conn_info* conn) {
  auto* fs = static_cast<FileSystem*>(userdata);
  // Content never changes under a mount: keep pages, read ahead asynchronously, in big requests.
  conn->want |= FUSE_CAP_ASYNC_READ;
  if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
  conn->max_background = kMaxBackgroundRequests;
  conn->congestion_threshold = kMaxBackgroundRequests * 3 / 4;
  fs->store().Start();
  if (fs->options().on_init) fs->options().on_init();
}

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Guarded(req, [&] {
    FileSystem& fs = Fs(req);
    fs.mutable_counters().lookups++;
    fuse_entry_param param{};
    param.entry_timeout = fs.options().cache_timeout_s;
    param.attr_timeout = fs.options().cache_timeout_s;
    Result<index::Entry> entry = fs.index().Lookup(parent, name);
    if (!entry.ok()) {
      if (entry.status().code() != StatusCode::kNotFound) {
        fs.mutable_counters().eio_index++;
        return ReplyError(req, entry.status(), "lookup");
      }
      param.ino = 0;  // A negative entry: the kernel caches the ENOENT.
      fuse_reply_entry(req, &param);
      return;
    }
    param.ino = entry->id;
    param.generation = 1;
    param.attr = ToStat(fs, *entry);
    fuse_reply_entry(req, &param);
  });
}

void OpGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  Guarded(req, [&] {
    FileSystem& fs = Fs(req);
    Result<index::Entry> entry = fs.index().GetEntry(ino);
    if (!entry.ok()) return ReplyError(req, entry.status(), "getattr");
    struct stat st = ToStat(fs, *entry);
    fuse_reply_attr(req, &st, fs.options().cache_timeout_s);
  });
}

void OpReadlink(fuse_req_t req, fuse_ino_t ino) {
  Guarded(req, [&] {
    Result<index::Entry> entry = Fs(req).index().GetEntry(ino);
    if (!entry.ok()) return ReplyError(req, entry.status(), "readlink");
    if (entry->type != index::EntryType::kSymlink) return (void)fuse_reply_err(req, EINVAL);
    fuse_reply_readlink(req, entry->target.c_str());
  });
}

void OpOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Guarded(req, [&] {
    Result<index::Entry> entry = Fs(req).index().GetEntry(ino);
    if (!entry.ok()) return ReplyError(req, entry.status(), "opendir");
    if (entry->type != index::EntryType::kDirectory) return (void)fuse_reply_err(req, ENOTDIR);
    if ((fi->flags & O_ACCMODE) != O_RDONLY) return (void)fuse_reply_err(req, EROFS);
    fi->cache_readdir = 1;
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
  });
}

// Directory offsets: 1 after ".", 2 after "..", and id + 2 after a child, so that a listing
// resumes with the children whose id is larger than the last one returned. With `plus` each
// child carries its attributes (READDIRPLUS), so that `ls -l`, `du` or a loader that stats every
// file it listed needs no LOOKUP per entry; "." and ".." carry none (node id 0).
void ReplyDirectory(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus) {
  FileSystem& fs = Fs(req);
  std::vector<char> buf(size);
  std::size_t used = 0;
  // `entry` is the node id the kernel may take as looked up: 0 for "." and "..".
  auto add = [&](const char* name, fuse_ino_t entry, const struct stat& st, off_t next) {
    std::size_t need = 0;
    if (plus) {
      fuse_entry_param param{};
      param.ino = entry;
      param.generation = 1;
      param.attr = st;
      param.entry_timeout = entry == 0 ? 0 : fs.options().cache_timeout_s;
      param.attr_timeout = param.entry_timeout;
      need = fuse_add_direntry_plus(req, buf.data() + used, size - used, name, &param, next);
    } else {
      need = fuse_add_direntry(req, buf.data() + used, size - used, name, &st, next);
    }
    if (need > size - used) return false;
    used += need;
    return true;
  };
  struct stat dot {};
  dot.st_ino = ino;
  dot.st_mode = S_IFDIR;
  if (off < 1 && !add(".", 0, dot, 1)) return (void)fuse_reply_buf(req, buf.data(), used);
  if (off < 2 && !add("..", 0, dot, 2)) return (void)fuse_reply_buf(req, buf.data(), used);
  std::uint64_t after = static_cast<std::uint64_t>(std::max<off_t>(off, 2) - 2);
  for (;;) {
    Result<std::vector<index::Entry>> children = fs.index().ListChildren(ino, after, 128);
    if (!children.ok()) {
      fs.mutable_counters().eio_index++;
      return ReplyError(req, children.status(), "readdir");
    }
    if (children->empty()) break;
    for (const index::Entry& child : *children) {
      if (!add(child.name.c_str(), child.id, ToStat(fs, child), static_cast<off_t>(child.id + 2))) {
        return (void)fuse_reply_buf(req, buf.data(), used);
      }
      after = child.id;
    }
  }
  fuse_reply_buf(req, buf.data(), used);
}

void OpReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  Guarded(req, [&] { ReplyDirectory(req, ino, size, off, /*plus=*/false); });
}

void OpReaddirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  Guarded(req, [&] { ReplyDirectory(req, ino, size, off, /*plus=*/true); });
}

void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Guarded(req, [&] {
    FileSystem& fs = Fs(req);
    if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
      return (void)fuse_reply_err(req, EROFS);
    }
    Result<index::Entry> entry = fs.index().GetEntry(ino);
    if (!entry.ok()) return ReplyError(req, entry.status(), "open");
    if (entry->type == index::EntryType::kDirectory) return (void)fuse_reply_err(req, EISDIR);
    if (entry->type != index::EntryType::kFile) return (void)fuse_reply_err(req, EINVAL);
    Status valid = fs.ValidateOnce(ino);
    if (!valid.ok()) {
      fs.mutable_counters().eio_invalid++;
      return ReplyError(req, valid, "open of '" + entry->name + "' rejected");
    }
    FileSystem::OpenFile* file = fs.OpenHandle(std::move(entry).value());
    fi->fh = reinterpret_cast<std::uint64_t>(file);
    fi->keep_cache = 1;  // Immutable content: pages cached by earlier opens stay valid.
    // ENOENT: the open was interrupted and the kernel dropped it, so no RELEASE will free the
    // handle. Otherwise the handle is the kernel's until RELEASE.
    if (fuse_reply_open(req, fi) == -ENOENT) fs.CloseHandle(file);
  });
}

void OpRead(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  bool replied = false;
  Guarded(
      req,
      [&] {
        FileSystem& fs = Fs(req);
        auto* file = reinterpret_cast<FileSystem::OpenFile*>(fi->fh);
        std::uint64_t file_size = file->entry.size;
        std::uint64_t offset = static_cast<std::uint64_t>(off);
        if (offset >= file_size || size == 0) return (void)fuse_reply_buf(req, nullptr, 0);
        std::size_t length =
            static_cast<std::size_t>(std::min<std::uint64_t>(size, file_size - offset));
        TimePoint deadline = fs.clock().Now() + fs.options().read_timeout;
        // The reply may come from within a fetch that goes on afterwards; after it the kernel
        // may release the handle, so nothing here touches req, fi or file once it is sent.
        Status status = fs.ReadFile(*file, offset, length, deadline,
                                    [&](const std::vector<FileSystem::Part>& parts) {
                                      fs.mutable_counters().reads++;
                                      fs.mutable_counters().bytes_read += length;
                                      replied = true;
                                      ReplyParts(req, parts);
                                    });
        if (!status.ok()) {
          fs.mutable_counters().eio_fetch++;
          ReplyError(req, status, "read of '" + file->entry.name + "'");
        }
      },
      &replied);
}

void OpRelease(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  Fs(req).CloseHandle(reinterpret_cast<FileSystem::OpenFile*>(fi->fh));
  fuse_reply_err(req, 0);
}

// Answers a getxattr or listxattr of `size` bytes with `value` the usual way: size 0 asks for
// the length, a smaller buffer than the value is ERANGE.
void ReplyXattr(fuse_req_t req, const std::string& value, size_t size) {
  if (size == 0) return (void)fuse_reply_xattr(req, value.size());
  if (size < value.size()) return (void)fuse_reply_err(req, ERANGE);
  fuse_reply_buf(req, value.data(), value.size());
}

// Answering getxattr at all (instead of ENOSYS, after which the kernel stops asking) means the
// kernel sends every getxattr here, such as security.selinux and the ACLs that `ls -l` asks
// for each entry. Their EOPNOTSUPP is what makes ls ask only once per file system:
// with ENODATA, which says "not on this file", `ls -l` of 5,000 files made 10,000 round trips.
void OpGetxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  Guarded(req, [&] {
    Fs(req).mutable_counters().xattr_requests++;
    if (!FileSystem::HasXattrNamespace(name)) return (void)fuse_reply_err(req, EOPNOTSUPP);
    std::optional<std::string> value = Fs(req).GetXattr(ino, name);
    if (!value) return (void)fuse_reply_err(req, ENODATA);
    ReplyXattr(req, *value, size);
  });
}

void OpListxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  Guarded(req, [&] {
    Fs(req).mutable_counters().xattr_requests++;
    ReplyXattr(req, Fs(req).ListXattr(ino), size);
  });
}

void OpStatfs(fuse_req_t req, fuse_ino_t) {
  Guarded(req, [&] {
    const index::IndexStats& stats = Fs(req).index().stats();
    struct statvfs st {};
    st.f_bsize = 4096;
    st.f_frsize = 4096;
    st.f_blocks = (stats.bytes + 4095) / 4096;
    st.f_files = stats.files + stats.directories;
    st.f_namemax = 255;
    st.f_flag = ST_RDONLY;
    fuse_reply_statfs(req, &st);
  });
}

void ReplyReadOnly(fuse_req_t req) { fuse_reply_err(req, EROFS); }

void OpSetattr(fuse_req_t req, fuse_ino_t, struct stat*, int, fuse_file_info*) {
  ReplyReadOnly(req);
}
void OpMknod(fuse_req_t req, fuse_ino_t, const char*, mode_t, dev_t) { ReplyReadOnly(req); }
void OpMkdir(fuse_req_t req, fuse_ino_t, const char*, mode_t) { ReplyReadOnly(req); }
void OpUnlink(fuse_req_t req, fuse_ino_t, const char*) { ReplyReadOnly(req); }
void OpSymlink(fuse_req_t req, const char*, fuse_ino_t, const char*) { ReplyReadOnly(req); }
void OpRename(fuse_req_t req, fuse_ino_t, const char*, fuse_ino_t, const char*, unsigned int) {
  ReplyReadOnly(req);
}
void OpLink(fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) { ReplyReadOnly(req); }
void OpWrite(fuse_req_t req, fuse_ino_t, const char*, size_t, off_t, fuse_file_info*) {
  ReplyReadOnly(req);
}
void OpCreate(fuse_req_t req, fuse_ino_t, const char*, mode_t, fuse_file_info*) {
  ReplyReadOnly(req);
}
void OpSetxattr(fuse_req_t req, fuse_ino_t, const char*, const char*, size_t, int) {
  ReplyReadOnly(req);
}
void OpRemovexattr(fuse_req_t req, fuse_ino_t, const char*) { ReplyReadOnly(req); }
void OpFallocate(fuse_req_t req, fuse_ino_t, int, off_t, off_t, fuse_file_info*) {
  ReplyReadOnly(req);
}

fuse_lowlevel_ops MakeOperations() {
  fuse_lowlevel_ops ops{};
  ops.init = OpInit;
  ops.lookup = OpLookup;
  ops.getattr = OpGetattr;
  ops.readlink = OpReadlink;
  ops.opendir = OpOpendir;
  ops.readdir = OpReaddir;
  ops.readdirplus = OpReaddirplus;
  ops.open = OpOpen;
  ops.read = OpRead;
  ops.release = OpRelease;
  ops.statfs = OpStatfs;
  ops.setattr = OpSetattr;
  ops.mknod = OpMknod;
  ops.mkdir = OpMkdir;
  ops.unlink = OpUnlink;
  ops.rmdir = OpUnlink;
  ops.symlink = OpSymlink;
  ops.rename = OpRename;
  ops.link = OpLink;
  ops.write = OpWrite;
  ops.create = OpCreate;
  ops.setxattr = OpSetxattr;
  ops.getxattr = OpGetxattr;
  ops.listxattr = OpListxattr;
  ops.removexattr = OpRemovexattr;
  ops.fallocate = OpFallocate;
  return ops;
}

}  // namespace

const fuse_lowlevel_ops& FileSystem::Operations() {
  static const fuse_lowlevel_ops ops = MakeOperations();
  return ops;
}

}  // namespace ckptfs::fs
