#include "index/writer.h"

#include <unistd.h>

#include <cerrno>
#include <string_view>

#include "index/schema.h"
#include "index/sqlite_util.h"

#ifndef CKPTFS_VERSION
#define CKPTFS_VERSION "unknown"
#endif

namespace ckptfs::index {

namespace {

// Removes `path` and any SQLite journal or WAL files next to it (stale ones would be applied to
// the new database); a missing file is fine.
Status RemoveDatabaseFiles(const std::string& path) {
  for (const std::string& p : {path, path + "-journal", path + "-wal", path + "-shm"}) {
    if (::unlink(p.c_str()) != 0 && errno != ENOENT) {
      return ErrnoStatus(errno, "cannot remove " + p);
    }
  }
  return Status::Ok();
}

std::string WithoutTrailingSlashes(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  return url;
}

}  // namespace

struct IndexWriter::Impl {
  std::string path;
  std::uint64_t chunk_size = 0;
  std::uint64_t block_size = 0;  // 0: a v1 index, without block digests.
  sql::Db db;
  std::string blocks_blob;  // Reused by AddChunk.
  bool finished = false;

  // Prepared once, reused for every row: a publish adds millions of rows.
  sql::Stmt put_meta;
  sql::Stmt add_node;
  sql::Stmt set_root;
  sql::Stmt find_parent;
  sql::Stmt add_entry;
  sql::Stmt find_chunk;
  sql::Stmt add_chunk;
  sql::Stmt add_blocks;  // v2 only.
  sql::Stmt add_extent;
  sql::Stmt add_replica;

  ~Impl() {
    if (finished) return;
    // An abandoned build: finalize the statements, let close roll the transaction back, and
    // remove the file so that nothing can mistake it for an index.
    CloseDatabase();
    RemoveDatabaseFiles(path).IgnoreError();
  }

  void CloseDatabase() {
    for (sql::Stmt* s : {&put_meta, &add_node, &set_root, &find_parent, &add_entry, &find_chunk,
                         &add_chunk, &add_blocks, &add_extent, &add_replica}) {
      s->reset();
    }
    db.reset();
  }

  Status CheckOpen() const {
    if (finished) return FailedPreconditionError("index writer already finished");
    return Status::Ok();
  }

  Status Open() {
    sqlite3* raw = nullptr;
    const int rc =
        sqlite3_open_v2(path.c_str(), &raw,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    db.reset(raw);
    if (rc != SQLITE_OK) return sql::Error(raw, "cannot create index " + path);
    // Never WAL: readers open the file immutable and read-only, so everything must be in the one
    // file. The rollback journal is kept in memory rather than on disk (DELETE): the index is a
    // fresh file that a crashed build leaves useless either way, and with synchronous=FULL an
    // on-disk journal costs an fsync each time the page cache spills (a million-chunk build took
    // 21 s instead of 13 s). The file itself is an ordinary rollback-mode database; the journal
    // mode is not stored in it. synchronous=FULL makes COMMIT fsync the file before the caller
    // renames it. The page cache is raised so that a large build spills less often.
    // 16 KiB pages, set before the first table: a `blocks` row of a 4 MiB chunk (2 KiB of digests)
    // left room for only one row in a 4 KiB page, half of it empty; 16 KiB pages hold seven, and
    // a 100 GiB model's index shrinks from 108 to 63 MB. Readers take the page size from the file.
    return sql::Exec(db.get(),
                     "PRAGMA page_size=16384; PRAGMA journal_mode=MEMORY; PRAGMA synchronous=FULL;"
                     "PRAGMA cache_size=-65536; BEGIN;");
  }

  Status PrepareStatements() {
    sqlite3* d = db.get();
    CKPTFS_ASSIGN_OR_RETURN(
        put_meta, sql::Prepare(d, "INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)"));
    CKPTFS_ASSIGN_OR_RETURN(add_node, sql::Prepare(d, "INSERT INTO nodes(name, url) VALUES(?, ?)"));
    CKPTFS_ASSIGN_OR_RETURN(
        set_root, sql::Prepare(d, "UPDATE entries SET mode = ?, mtime_ns = ? WHERE id = 1"));
    CKPTFS_ASSIGN_OR_RETURN(find_parent, sql::Prepare(d, "SELECT type FROM entries WHERE id = ?"));
    CKPTFS_ASSIGN_OR_RETURN(
        add_entry, sql::Prepare(d,
                                "INSERT INTO entries(parent, name, type, mode, size, mtime_ns, "
                                "target) VALUES(?, ?, ?, ?, ?, ?, ?)"));
    CKPTFS_ASSIGN_OR_RETURN(find_chunk,
                            sql::Prepare(d, "SELECT id, size FROM chunks WHERE digest = ?"));
    CKPTFS_ASSIGN_OR_RETURN(add_chunk,
                            sql::Prepare(d, "INSERT INTO chunks(digest, size) VALUES(?, ?)"));
    if (block_size != 0) {
      CKPTFS_ASSIGN_OR_RETURN(add_blocks,
                              sql::Prepare(d, "INSERT INTO blocks(chunk, digests) VALUES(?, ?)"));
    }
    CKPTFS_ASSIGN_OR_RETURN(
        add_extent, sql::Prepare(d, "INSERT INTO extents(file, offset, chunk) VALUES(?, ?, ?)"));
    CKPTFS_ASSIGN_OR_RETURN(add_replica,
                            sql::Prepare(d, "INSERT INTO replicas(chunk, node) VALUES(?, ?)"));
    return Status::Ok();
  }

  Status PutMeta(std::string_view key, const std::string& value) {
    sqlite3_stmt* s = put_meta.get();
    sql::StmtScope scope(s);
    sql::BindText(s, 1, key);
    sql::BindText(s, 2, value);
    if (sqlite3_step(s) != SQLITE_DONE) return sql::Error(db.get(), "cannot write meta");
    return Status::Ok();
  }

  Status WriteInitialRows() {
    CKPTFS_RETURN_IF_ERROR(PutMeta(schema::kFormatKey, std::string(schema::kFormat)));
    const int version = block_size != 0 ? kSchemaVersion : 1;
    CKPTFS_RETURN_IF_ERROR(PutMeta(schema::kSchemaVersionKey, std::to_string(version)));
    CKPTFS_RETURN_IF_ERROR(PutMeta(schema::kHashKey, std::string(schema::kHash)));
    CKPTFS_RETURN_IF_ERROR(PutMeta(schema::kChunkSizeKey, std::to_string(chunk_size)));
    if (block_size != 0) {
      CKPTFS_RETURN_IF_ERROR(PutMeta(schema::kBlockSizeKey, std::to_string(block_size)));
    }
    CKPTFS_RETURN_IF_ERROR(PutMeta(schema::kCreatedByKey, "ckptfs " CKPTFS_VERSION));
    // The root is its own parent, so that ".." of the root is the root, as in any filesystem.
    return sql::Exec(db.get(),
                     "INSERT INTO entries(id, parent, name, type, mode, size, mtime_ns, target) "
                     "VALUES(1, 1, '', 2, 493, 0, 0, NULL)");  // 493 == 0755.
  }

  // InvalidArgument when `parent` is missing or is not a directory.
  Status CheckParent(std::uint64_t parent) {
    sqlite3_stmt* s = find_parent.get();
    sql::StmtScope scope(s);
    sqlite3_bind_int64(s, 1, static_cast<sqlite3_int64>(parent));
    const int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
      return InvalidArgumentError("parent entry " + std::to_string(parent) + " does not exist");
    }
    if (rc != SQLITE_ROW) return sql::Error(db.get(), "cannot look up parent entry");
    if (sqlite3_column_int(s, 0) != static_cast<int>(EntryType::kDirectory)) {
      return InvalidArgumentError("parent entry " + std::to_string(parent) + " is not a directory");
    }
    return Status::Ok();
  }

  // Steps an insert; a constraint violation becomes InvalidArgument with `conflict`.
  Status StepInsert(sqlite3_stmt* s, const std::string& conflict, std::string_view what) {
    const int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) return Status::Ok();
    if (rc == SQLITE_CONSTRAINT) return InvalidArgumentError(conflict);
    return sql::Error(db.get(), "cannot add " + std::string(what));
  }
};

IndexWriter::IndexWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
IndexWriter::~IndexWriter() = default;

Result<std::unique_ptr<IndexWriter>> IndexWriter::Create(const std::string& path,
                                                         std::uint64_t chunk_size) {
  return CreateVersion(path, chunk_size, 0);
}

Result<std::unique_ptr<IndexWriter>> IndexWriter::Create(const std::string& path,
                                                         std::uint64_t chunk_size,
                                                         std::uint64_t block_size) {
  if (!IsValidBlockSize(block_size, chunk_size)) {
    return InvalidArgumentError("block size " + std::to_string(block_size) +
                                " is not a power of two from 4096 to the chunk size " +
                                std::to_string(chunk_size));
  }
  return CreateVersion(path, chunk_size, block_size);
}

Result<std::unique_ptr<IndexWriter>> IndexWriter::CreateVersion(const std::string& path,
                                                                std::uint64_t chunk_size,
                                                                std::uint64_t block_size) {
  if (chunk_size == 0 || chunk_size > schema::kMaxChunkSize) {
    return InvalidArgumentError("chunk size " + std::to_string(chunk_size) +
                                " is out of range (1 byte to 1 GiB)");
  }
  CKPTFS_RETURN_IF_ERROR(RemoveDatabaseFiles(path));
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->chunk_size = chunk_size;
  impl->block_size = block_size;
  CKPTFS_RETURN_IF_ERROR(impl->Open());
  CKPTFS_RETURN_IF_ERROR(sql::Exec(impl->db.get(), schema::kCreateSqlV1));
  if (block_size != 0) CKPTFS_RETURN_IF_ERROR(sql::Exec(impl->db.get(), schema::kCreateBlocksSql));
  CKPTFS_RETURN_IF_ERROR(impl->PrepareStatements());
  CKPTFS_RETURN_IF_ERROR(impl->WriteInitialRows());
  return std::unique_ptr<IndexWriter>(new IndexWriter(std::move(impl)));
}

Result<std::int64_t> IndexWriter::AddNode(const std::string& name, const std::string& url) {
  CKPTFS_RETURN_IF_ERROR(impl_->CheckOpen());
  if (!IsValidName(name)) return InvalidArgumentError("invalid node name '" + name + "'");
  const std::string base = WithoutTrailingSlashes(url);
  if (base.empty()) return InvalidArgumentError("node '" + name + "' has an empty URL");
  sqlite3_stmt* s = impl_->add_node.get();
  sql::StmtScope scope(s);
  sql::BindText(s, 1, name);
  sql::BindText(s, 2, base);
  CKPTFS_RETURN_IF_ERROR(impl_->StepInsert(s, "duplicate node name '" + name + "'", "node"));
  return static_cast<std::int64_t>(sqlite3_last_insert_rowid(impl_->db.get()));
}

Status IndexWriter::SetRoot(std::uint32_t mode, std::int64_t mtime_ns) {
  CKPTFS_RETURN_IF_ERROR(impl_->CheckOpen());
  sqlite3_stmt* s = impl_->set_root.get();
  sql::StmtScope scope(s);
  sqlite3_bind_int64(s, 1, mode & 07777);
  sqlite3_bind_int64(s, 2, mtime_ns);
  if (sqlite3_step(s) != SQLITE_DONE) return sql::Error(impl_->db.get(), "cannot set root");
  return Status::Ok();
}

Result<std::uint64_t> IndexWriter::AddEntry(const Entry& entry) {
  CKPTFS_RETURN_IF_ERROR(impl_->CheckOpen());
  if (!IsValidName(entry.name)) {
    return InvalidArgumentError("invalid name '" + entry.name + "'");
  }
  const int type = static_cast<int>(entry.type);
  if (type < 1 || type > 3) return InvalidArgumentError("invalid entry type");
  CKPTFS_RETURN_IF_ERROR(impl_->CheckParent(entry.parent));
  // The size follows from the type for directories and symlinks; only a file's size is data.
  std::uint64_t size = entry.size;
  if (entry.type == EntryType::kDirectory) size = 0;
  if (entry.type == EntryType::kSymlink) size = entry.target.size();

  sqlite3_stmt* s = impl_->add_entry.get();
  sql::StmtScope scope(s);
  sqlite3_bind_int64(s, 1, static_cast<sqlite3_int64>(entry.parent));
  sql::BindText(s, 2, entry.name);
  sqlite3_bind_int(s, 3, type);
  sqlite3_bind_int64(s, 4, entry.mode & 07777);
  sqlite3_bind_int64(s, 5, static_cast<sqlite3_int64>(size));
  sqlite3_bind_int64(s, 6, entry.mtime_ns);
  if (entry.type == EntryType::kSymlink) sql::BindText(s, 7, entry.target);
  CKPTFS_RETURN_IF_ERROR(impl_->StepInsert(
      s, "'" + entry.name + "' already exists in directory " + std::to_string(entry.parent),
      "entry"));
  return static_cast<std::uint64_t>(sqlite3_last_insert_rowid(impl_->db.get()));
}

Result<IndexWriter::AddedChunk> IndexWriter::AddChunk(const Digest& digest, std::uint64_t size) {
  if (impl_->block_size != 0) {
    return FailedPreconditionError("chunk " + digest.Hex() +
                                   " added without block digests to an index that has them");
  }
  return AddChunkRow(digest, size, {});
}

Result<IndexWriter::AddedChunk> IndexWriter::AddChunk(const Digest& digest, std::uint64_t size,
                                                      std::span<const Digest> blocks) {
  if (impl_->block_size == 0) {
    return FailedPreconditionError("chunk " + digest.Hex() +
                                   " added with block digests to a v1 index, which has none");
  }
  // Checked for every call, so that a caller's bug shows before the index is finished.
  if (size != 0 && blocks.size() != BlockCount(size, impl_->block_size)) {
    return InvalidArgumentError("chunk " + digest.Hex() + " of " + std::to_string(size) +
                                " bytes added with " + std::to_string(blocks.size()) +
                                " block digests, expected " +
                                std::to_string(BlockCount(size, impl_->block_size)));
  }
  return AddChunkRow(digest, size, blocks);
}

Result<IndexWriter::AddedChunk> IndexWriter::AddChunkRow(const Digest& digest, std::uint64_t size,
                                                         std::span<const Digest> blocks) {
  CKPTFS_RETURN_IF_ERROR(impl_->CheckOpen());
  if (size == 0 || size > impl_->chunk_size) {
    return InvalidArgumentError("chunk " + digest.Hex() + " has size " + std::to_string(size) +
                                ", outside 1.." + std::to_string(impl_->chunk_size));
  }
  {
    sqlite3_stmt* s = impl_->find_chunk.get();
    sql::StmtScope scope(s);
    sqlite3_bind_blob(s, 1, digest.bytes.data(), kDigestSize, SQLITE_STATIC);
    const int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
      const auto existing = static_cast<std::uint64_t>(sqlite3_column_int64(s, 1));
      if (existing != size) {
        return InvalidArgumentError("chunk " + digest.Hex() + " added with size " +
                                    std::to_string(size) + ", already recorded with size " +
                                    std::to_string(existing));
      }
      return AddedChunk{sqlite3_column_int64(s, 0), false};
    }
    if (rc != SQLITE_DONE) return sql::Error(impl_->db.get(), "cannot look up chunk");
  }
  std::int64_t id = 0;
  {
    sqlite3_stmt* s = impl_->add_chunk.get();
    sql::StmtScope scope(s);
    sqlite3_bind_blob(s, 1, digest.bytes.data(), kDigestSize, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, static_cast<sqlite3_int64>(size));
    if (sqlite3_step(s) != SQLITE_DONE) return sql::Error(impl_->db.get(), "cannot add chunk");
    id = sqlite3_last_insert_rowid(impl_->db.get());
  }
  if (impl_->block_size != 0) {
    // The digests go into their own table so that chunks rows stay small (docs/INDEX.md).
    std::string& blob = impl_->blocks_blob;
    blob.clear();
    for (const Digest& block : blocks) blob.append(block.bytes.begin(), block.bytes.end());
    sqlite3_stmt* s = impl_->add_blocks.get();
    sql::StmtScope scope(s);
    sqlite3_bind_int64(s, 1, id);
    sqlite3_bind_blob(s, 2, blob.data(), static_cast<int>(blob.size()), SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_DONE) {
      return sql::Error(impl_->db.get(), "cannot add the block digests of chunk " + digest.Hex());
    }
  }
  return AddedChunk{id, true};
}

Status IndexWriter::AddExtent(std::uint64_t file, std::uint64_t offset, std::int64_t chunk) {
  CKPTFS_RETURN_IF_ERROR(impl_->CheckOpen());
  sqlite3_stmt* s = impl_->add_extent.get();
  sql::StmtScope scope(s);
  sqlite3_bind_int64(s, 1, static_cast<sqlite3_int64>(file));
  sqlite3_bind_int64(s, 2, static_cast<sqlite3_int64>(offset));
  sqlite3_bind_int64(s, 3, chunk);
  return impl_->StepInsert(
      s,
      "file " + std::to_string(file) + " already has an extent at offset " + std::to_string(offset),
      "extent");
}

Status IndexWriter::AddReplica(std::int64_t chunk, std::int64_t node) {
  CKPTFS_RETURN_IF_ERROR(impl_->CheckOpen());
  sqlite3_stmt* s = impl_->add_replica.get();
  sql::StmtScope scope(s);
  sqlite3_bind_int64(s, 1, chunk);
  sqlite3_bind_int64(s, 2, node);
  return impl_->StepInsert(
      s,
      "chunk " + std::to_string(chunk) + " already has a replica on node " + std::to_string(node),
      "replica");
}

Status IndexWriter::Finish(const IndexStats& stats) {
  CKPTFS_RETURN_IF_ERROR(impl_->CheckOpen());
  CKPTFS_RETURN_IF_ERROR(impl_->PutMeta(schema::kFilesKey, std::to_string(stats.files)));
  CKPTFS_RETURN_IF_ERROR(
      impl_->PutMeta(schema::kDirectoriesKey, std::to_string(stats.directories)));
  CKPTFS_RETURN_IF_ERROR(impl_->PutMeta(schema::kBytesKey, std::to_string(stats.bytes)));
  CKPTFS_RETURN_IF_ERROR(impl_->PutMeta(schema::kChunksKey, std::to_string(stats.chunks)));
  CKPTFS_RETURN_IF_ERROR(impl_->PutMeta(schema::kChunkBytesKey, std::to_string(stats.chunk_bytes)));
  CKPTFS_RETURN_IF_ERROR(sql::Exec(impl_->db.get(), "COMMIT"));
  impl_->finished = true;
  // Statements must be finalized before the close, or sqlite3_close_v2 would defer it.
  impl_->CloseDatabase();
  return Status::Ok();
}

}  // namespace ckptfs::index
