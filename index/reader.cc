#include "index/reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <mutex>
#include <optional>

#include "common/file_io.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "index/resident_pages.h"
#include "index/schema.h"
#include "index/sqlite_util.h"

namespace ckptfs::index {

namespace {

// ---------------------------------------------------------------------------------------------
// Opening a connection.

// SQLite URIs give '?', '#' and '%' a meaning, so everything outside the unreserved set (and '/')
// is escaped; any path then round-trips.
std::string PercentEncode(const std::string& path) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : path) {
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (alnum || c == '/' || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// "file:<path>?immutable=1". An absolute path gets an empty authority ("file:///abs"), so that a
// path starting with "//" is never read as a host name.
std::string ImmutableUri(const std::string& path) {
  const std::string prefix = !path.empty() && path[0] == '/' ? "file://" : "file:";
  return prefix + PercentEncode(path) + "?immutable=1";
}

// Opens the index file and keeps it open: every pooled connection then opens this very file
// through /proc/self/fd, so the mount keeps reading the index it started with even when publish
// renames a new one into place, and a relative path still works after daemonizing (chdir "/").
// O_NONBLOCK: never hang on a FIFO put where the index should be.
Result<UniqueFd> OpenIndexFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd.valid()) return ErrnoStatus(errno, "cannot open index " + path);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, "cannot open index " + path);
  if (!S_ISREG(st.st_mode)) {
    return InvalidArgumentError("cannot open index " + path + ": not a regular file");
  }
  return fd;
}

// ---------------------------------------------------------------------------------------------
// One connection and its statements.

constexpr char kEntryColumns[] = "id, parent, name, type, mode, size, mtime_ns, target";
constexpr char kExtentColumns[] = "e.offset, e.chunk, c.size, c.digest";

// A read-only connection with every statement the reader runs, prepared once. Used by one thread
// at a time (it is borrowed from the pool).
struct Connection {
  sql::Db db;
  sql::Stmt get_entry;
  sql::Stmt lookup;
  sql::Stmt list_children;
  sql::Stmt extent_at;
  sql::Stmt extents_after;
  sql::Stmt replicas;
  sql::Stmt validate;
  sql::Stmt blocks;  // v2 only: the blocks table.

  ~Connection() {
    // Statements first: closing a database with live statements would be deferred.
    for (sql::Stmt* s : {&get_entry, &lookup, &list_children, &extent_at, &extents_after, &replicas,
                         &validate, &blocks}) {
      s->reset();
    }
    db.reset();
  }

  // `with_blocks`: the index is v2, with the blocks table.
  Status PrepareStatements(bool with_blocks) {
    sqlite3* d = db.get();
    const std::string entry_select = std::string("SELECT ") + kEntryColumns + " FROM entries ";
    const std::string extent_select = std::string("SELECT ") + kExtentColumns +
                                      " FROM extents e LEFT JOIN chunks c ON c.id = e.chunk ";
    CKPTFS_ASSIGN_OR_RETURN(get_entry, sql::Prepare(d, entry_select + "WHERE id = ?1"));
    CKPTFS_ASSIGN_OR_RETURN(lookup,
                            sql::Prepare(d, entry_select + "WHERE parent = ?1 AND name = ?2"));
    // "id <> parent" leaves out the root, which is its own parent.
    CKPTFS_ASSIGN_OR_RETURN(
        list_children,
        sql::Prepare(d,
                     entry_select + "WHERE parent = ?1 AND id > ?2 AND id <> parent ORDER BY id"));
    // The extent containing ?2: the last one that starts at or before it (primary key order).
    CKPTFS_ASSIGN_OR_RETURN(
        extent_at,
        sql::Prepare(d, extent_select +
                            "WHERE e.file = ?1 AND e.offset <= ?2 ORDER BY e.offset DESC LIMIT 1"));
    CKPTFS_ASSIGN_OR_RETURN(
        extents_after,
        sql::Prepare(d, extent_select + "WHERE e.file = ?1 AND e.offset > ?2 AND e.offset < ?3 "
                                        "ORDER BY e.offset"));
    CKPTFS_ASSIGN_OR_RETURN(
        replicas, sql::Prepare(d,
                               "SELECT r.node FROM replicas r JOIN nodes n ON n.id = r.node "
                               "WHERE r.chunk = ?1 ORDER BY r.node"));
    // Never touches the blocks table: a file's validation reads its extents and their small
    // chunks rows only. The block digests are checked when a chunk is fetched (Blocks).
    CKPTFS_ASSIGN_OR_RETURN(
        validate,
        sql::Prepare(d, std::string("SELECT ") + kExtentColumns +
                            ", c.id IS NOT NULL, EXISTS(SELECT 1 FROM replicas r JOIN nodes n "
                            "ON n.id = r.node WHERE r.chunk = e.chunk)"
                            " FROM extents e LEFT JOIN chunks c ON c.id = e.chunk "
                            "WHERE e.file = ?1 ORDER BY e.offset"));
    if (with_blocks) {
      // The chunk's size (to check the blob's length) and its blocks row, both by primary key.
      // Column 1: whether the blocks row exists; column 2: its digests.
      CKPTFS_ASSIGN_OR_RETURN(
          blocks, sql::Prepare(d,
                               "SELECT c.size, b.chunk IS NOT NULL, b.digests FROM chunks c "
                               "LEFT JOIN blocks b ON b.chunk = c.id WHERE c.id = ?1"));
    }
    return Status::Ok();
  }
};

Result<std::unique_ptr<Connection>> OpenConnection(const std::string& uri) {
  auto conn = std::make_unique<Connection>();
  sqlite3* raw = nullptr;
  const int rc = sqlite3_open_v2(
      uri.c_str(), &raw, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX, nullptr);
  conn->db.reset(raw);
  if (rc != SQLITE_OK) return sql::Error(raw, "cannot open index");
  // The index file sits in the kernel's page cache anyway; a small private cache per connection
  // keeps the daemon's memory from growing with its thread count (SQLite's default is 2 MB).
  // Best effort: on a file that is no database this fails, and Open() says so in its own words.
  sqlite3_exec(raw, "PRAGMA cache_size=-256", nullptr, nullptr, nullptr);
  return conn;
}

// ---------------------------------------------------------------------------------------------
// Rows.

// DataLoss unless column `i` holds a 32-byte blob. `what` names the chunk in the message.
Status CheckDigestColumn(sqlite3_stmt* s, int i, const std::string& what) {
  if (sqlite3_column_type(s, i) != SQLITE_BLOB) {
    return DataLossError(what + " digest is not a blob");
  }
  const int bytes = sqlite3_column_bytes(s, i);
  if (bytes != static_cast<int>(kDigestSize)) {
    return DataLossError(what + " digest is " + std::to_string(bytes) + " bytes, not 32");
  }
  return Status::Ok();
}

// The current row of an entry statement. DataLoss for a type outside 1..3 or a negative size,
// which no writer produces.
Result<Entry> ReadEntry(sqlite3_stmt* s) {
  Entry e;
  const std::int64_t id = sqlite3_column_int64(s, 0);
  const int type = sqlite3_column_int(s, 3);
  const std::int64_t size = sqlite3_column_int64(s, 5);
  if (type < 1 || type > 3) {
    return DataLossError("entry " + std::to_string(id) + " has unknown type " +
                         std::to_string(type));
  }
  if (size < 0) return DataLossError("entry " + std::to_string(id) + " has a negative size");
  e.id = static_cast<std::uint64_t>(id);
  e.parent = static_cast<std::uint64_t>(sqlite3_column_int64(s, 1));
  e.name = sql::ColumnString(s, 2);
  e.type = static_cast<EntryType>(type);
  e.mode = static_cast<std::uint32_t>(sqlite3_column_int64(s, 4)) & 07777;
  e.size = static_cast<std::uint64_t>(size);
  e.mtime_ns = sqlite3_column_int64(s, 6);
  e.target = sql::ColumnString(s, 7);
  return e;
}

// The current row of an extent statement (kExtentColumns). DataLoss when the chunk is missing or
// malformed, so a caller never builds a read from a bad row.
Result<Extent> ReadExtent(sqlite3_stmt* s) {
  Extent x;
  const std::int64_t offset = sqlite3_column_int64(s, 0);
  x.chunk_id = sqlite3_column_int64(s, 1);
  if (sqlite3_column_type(s, 2) == SQLITE_NULL) {
    return DataLossError("chunk " + std::to_string(x.chunk_id) + " is missing");
  }
  const std::int64_t size = sqlite3_column_int64(s, 2);
  if (offset < 0 || size <= 0) {
    return DataLossError("extent at offset " + std::to_string(offset) + " of chunk " +
                         std::to_string(x.chunk_id) + " has size " + std::to_string(size));
  }
  CKPTFS_RETURN_IF_ERROR(CheckDigestColumn(s, 3, "chunk " + std::to_string(x.chunk_id)));
  const auto* blob = static_cast<const std::uint8_t*>(sqlite3_column_blob(s, 3));
  x.digest = *Digest::FromBytes({blob, kDigestSize});
  x.offset = static_cast<std::uint64_t>(offset);
  x.size = static_cast<std::uint64_t>(size);
  return x;
}

// Steps `s` expecting at most one entry row: NotFound (with `missing`) when there is none.
Result<Entry> StepOneEntry(sqlite3* db, sqlite3_stmt* s, const std::string& missing) {
  const int rc = sqlite3_step(s);
  if (rc == SQLITE_DONE) return NotFoundError(missing);
  if (rc != SQLITE_ROW) return sql::Error(db, "index query failed");
  return ReadEntry(s);
}

// ---------------------------------------------------------------------------------------------
// Open() checks. Each failure is InvalidArgument with one line that says what is wrong.

// Turns an SQLite failure during the checks into the line the user sees.
Status NotAnIndex(sqlite3* db) {
  const int rc = sqlite3_errcode(db);
  if (rc == SQLITE_NOTADB) {
    return InvalidArgumentError("not a ckptfs index: file is not a database");
  }
  return InvalidArgumentError(std::string("not a ckptfs index: ") + sqlite3_errmsg(db));
}

// Column names of `table`; empty when there is no such table.
Result<std::vector<std::string>> TableColumns(sqlite3* db, std::string_view table) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT name FROM pragma_table_info(?1)", -1, &raw, nullptr) !=
      SQLITE_OK) {
    return NotAnIndex(db);
  }
  sql::Stmt s(raw);
  sql::BindText(raw, 1, table);
  std::vector<std::string> columns;
  int rc;
  while ((rc = sqlite3_step(raw)) == SQLITE_ROW) columns.push_back(sql::ColumnString(raw, 0));
  if (rc != SQLITE_DONE) return NotAnIndex(db);
  return columns;
}

Status CheckTable(sqlite3* db, const schema::Table& table) {
  CKPTFS_ASSIGN_OR_RETURN(std::vector<std::string> columns, TableColumns(db, table.name));
  if (columns.empty()) {
    if (table.name == "meta") return InvalidArgumentError("not a ckptfs index: no meta table");
    return InvalidArgumentError("index is missing table '" + std::string(table.name) + "'");
  }
  for (std::string_view column : table.columns) {
    if (column.empty()) continue;
    if (std::find(columns.begin(), columns.end(), column) == columns.end()) {
      return InvalidArgumentError("index table '" + std::string(table.name) +
                                  "' is missing column '" + std::string(column) + "'");
    }
  }
  return Status::Ok();
}

// The value of a meta key; nullopt when the key is absent or its value is NULL.
Result<std::optional<std::string>> MetaValue(sqlite3* db, std::string_view key) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = ?1", -1, &raw, nullptr) !=
      SQLITE_OK) {
    return NotAnIndex(db);
  }
  sql::Stmt s(raw);
  sql::BindText(raw, 1, key);
  const int rc = sqlite3_step(raw);
  if (rc == SQLITE_DONE || (rc == SQLITE_ROW && sqlite3_column_type(raw, 0) == SQLITE_NULL)) {
    return std::optional<std::string>();
  }
  if (rc != SQLITE_ROW) return NotAnIndex(db);
  return std::optional<std::string>(sql::ColumnString(raw, 0));
}

std::optional<std::int64_t> ParseInt(const std::string& text) {
  std::int64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end || text.empty()) return std::nullopt;
  return value;
}

// Checks format, schema version and hash; returns the schema version.
Result<int> CheckFormat(sqlite3* db) {
  CKPTFS_ASSIGN_OR_RETURN(auto format, MetaValue(db, schema::kFormatKey));
  if (!format) return InvalidArgumentError("not a ckptfs index: meta has no format");
  if (*format != schema::kFormat) {
    return InvalidArgumentError("index format is '" + *format + "', expected 'ckptfs'");
  }
  CKPTFS_ASSIGN_OR_RETURN(auto version_text, MetaValue(db, schema::kSchemaVersionKey));
  if (!version_text) return InvalidArgumentError("index has no schema_version");
  const std::optional<std::int64_t> version = ParseInt(*version_text);
  if (!version || *version < 1) {
    return InvalidArgumentError("index schema_version '" + *version_text + "' is not valid");
  }
  if (*version > kSchemaVersion) {
    return InvalidArgumentError("index schema version " + std::to_string(*version) +
                                " is newer than this ckptfs supports (" +
                                std::to_string(kSchemaVersion) + ")");
  }
  CKPTFS_ASSIGN_OR_RETURN(auto hash, MetaValue(db, schema::kHashKey));
  if (!hash) return InvalidArgumentError("index has no hash");
  if (*hash != schema::kHash) {
    return InvalidArgumentError("index hash is '" + *hash + "', expected 'sha256'");
  }
  return static_cast<int>(*version);
}

Result<std::uint64_t> ReadChunkSize(sqlite3* db) {
  CKPTFS_ASSIGN_OR_RETURN(auto text, MetaValue(db, schema::kChunkSizeKey));
  if (!text) return InvalidArgumentError("index has no chunk_size");
  const std::optional<std::int64_t> value = ParseInt(*text);
  if (!value || *value < 1 || static_cast<std::uint64_t>(*value) > schema::kMaxChunkSize) {
    return InvalidArgumentError("index chunk_size '" + *text +
                                "' is not a whole number from 1 to " +
                                std::to_string(schema::kMaxChunkSize));
  }
  return static_cast<std::uint64_t>(*value);
}

// block_size of a v2 index: a power of two from 4 KiB to chunk_size.
Result<std::uint64_t> ReadBlockSize(sqlite3* db, std::uint64_t chunk_size) {
  CKPTFS_ASSIGN_OR_RETURN(auto text, MetaValue(db, schema::kBlockSizeKey));
  if (!text) return InvalidArgumentError("index has no block_size");
  const std::optional<std::int64_t> value = ParseInt(*text);
  if (!value || *value < 1 || !IsValidBlockSize(static_cast<std::uint64_t>(*value), chunk_size)) {
    return InvalidArgumentError("index block_size '" + *text + "' is not a power of two from " +
                                std::to_string(schema::kMinBlockSize) + " to the chunk_size " +
                                std::to_string(chunk_size));
  }
  return static_cast<std::uint64_t>(*value);
}

// A missing key reads as 0 (the figures are informational); a malformed one is an error.
Result<IndexStats> ReadStats(sqlite3* db) {
  IndexStats stats;
  const std::pair<std::string_view, std::uint64_t*> fields[] = {
      {schema::kFilesKey, &stats.files},
      {schema::kDirectoriesKey, &stats.directories},
      {schema::kBytesKey, &stats.bytes},
      {schema::kChunksKey, &stats.chunks},
      {schema::kChunkBytesKey, &stats.chunk_bytes},
  };
  for (const auto& [key, field] : fields) {
    CKPTFS_ASSIGN_OR_RETURN(auto text, MetaValue(db, key));
    if (!text) continue;
    const std::optional<std::int64_t> value = ParseInt(*text);
    if (!value || *value < 0) {
      return InvalidArgumentError("index meta '" + std::string(key) + "' is not a count: '" +
                                  *text + "'");
    }
    *field = static_cast<std::uint64_t>(*value);
  }
  return stats;
}

Status CheckRoot(sqlite3* db) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT type FROM entries WHERE id = 1", -1, &raw, nullptr) !=
      SQLITE_OK) {
    return NotAnIndex(db);
  }
  sql::Stmt s(raw);
  const int rc = sqlite3_step(raw);
  if (rc == SQLITE_DONE) return InvalidArgumentError("index has no root directory");
  if (rc != SQLITE_ROW) return NotAnIndex(db);
  if (sqlite3_column_int(raw, 0) != static_cast<int>(EntryType::kDirectory)) {
    return InvalidArgumentError("index has no root directory (entry 1 is not a directory)");
  }
  return Status::Ok();
}

Result<std::vector<Node>> ReadNodes(sqlite3* db) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT id, name, url FROM nodes ORDER BY id", -1, &raw, nullptr) !=
      SQLITE_OK) {
    return NotAnIndex(db);
  }
  sql::Stmt s(raw);
  std::vector<Node> nodes;
  int rc;
  while ((rc = sqlite3_step(raw)) == SQLITE_ROW) {
    Node node;
    node.id = sqlite3_column_int64(raw, 0);
    node.name = sql::ColumnString(raw, 1);
    node.url = sql::ColumnString(raw, 2);
    while (!node.url.empty() && node.url.back() == '/') node.url.pop_back();
    nodes.push_back(std::move(node));
  }
  if (rc != SQLITE_DONE) return NotAnIndex(db);
  if (nodes.empty()) return InvalidArgumentError("index has no nodes");
  return nodes;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The reader.

struct IndexReader::Impl {
  std::string path;
  std::string uri;
  UniqueFd index_file;  // Held open for the reader's lifetime; connections open it via /proc.
  int schema_version = 0;
  std::uint64_t chunk_size = 0;
  std::uint64_t block_size = 0;  // 0 for a v1 index.
  IndexStats stats;
  std::vector<Node> nodes;

  std::mutex resident_mu;
  ResidentPages resident;  // Set once by KeepResident(); guarded by resident_mu.

  std::mutex mu;
  std::vector<std::unique_ptr<Connection>> idle;  // Guarded by mu.

  // A connection borrowed from the pool; goes back to it when the lease ends.
  class Lease {
   public:
    Lease(Impl* impl, std::unique_ptr<Connection> conn) : impl_(impl), conn_(std::move(conn)) {}
    Lease(Lease&&) = default;
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (conn_ != nullptr) impl_->Return(std::move(conn_));
    }
    Connection* operator->() const { return conn_.get(); }
    Connection& operator*() const { return *conn_; }

   private:
    Impl* impl_;
    std::unique_ptr<Connection> conn_;
  };

  void Return(std::unique_ptr<Connection> conn) {
    std::lock_guard lock(mu);
    idle.push_back(std::move(conn));
  }

  Result<Lease> Borrow() {
    {
      std::lock_guard lock(mu);
      if (!idle.empty()) {
        std::unique_ptr<Connection> conn = std::move(idle.back());
        idle.pop_back();
        return Lease(this, std::move(conn));
      }
    }
    // Opened outside the lock: opening takes file system calls, and other threads can go on
    // borrowing the idle ones meanwhile.
    CKPTFS_ASSIGN_OR_RETURN(std::unique_ptr<Connection> conn, NewConnection());
    return Lease(this, std::move(conn));
  }

  // Opens a connection to the file the reader was opened on (see OpenIndexFile).
  Result<std::unique_ptr<Connection>> OpenSameFile() { return OpenConnection(uri); }

  // A pooled connection: OpenSameFile() with its statements prepared.
  Result<std::unique_ptr<Connection>> NewConnection() {
    CKPTFS_ASSIGN_OR_RETURN(std::unique_ptr<Connection> conn, OpenSameFile());
    CKPTFS_RETURN_IF_ERROR(conn->PrepareStatements(has_blocks()));
    return conn;
  }

  // Runs every Open() check on `db` and loads what the reader keeps in memory.
  Status CheckAndLoad(sqlite3* db) {
    CKPTFS_RETURN_IF_ERROR(CheckTable(db, schema::kRequiredTables[0]));  // meta
    CKPTFS_ASSIGN_OR_RETURN(schema_version, CheckFormat(db));
    for (const schema::Table& table : schema::kRequiredTables) {
      CKPTFS_RETURN_IF_ERROR(CheckTable(db, table));
    }
    if (has_blocks()) {
      for (const schema::Table& table : schema::kTablesSinceV2) {
        CKPTFS_RETURN_IF_ERROR(CheckTable(db, table));
      }
    }
    CKPTFS_ASSIGN_OR_RETURN(chunk_size, ReadChunkSize(db));
    if (has_blocks()) {
      CKPTFS_ASSIGN_OR_RETURN(block_size, ReadBlockSize(db, chunk_size));
    }
    CKPTFS_ASSIGN_OR_RETURN(stats, ReadStats(db));
    CKPTFS_RETURN_IF_ERROR(CheckRoot(db));
    CKPTFS_ASSIGN_OR_RETURN(nodes, ReadNodes(db));
    return Status::Ok();
  }

  bool has_blocks() const { return schema_version >= schema::kFirstVersionWithBlocks; }

  // DataLoss unless a digests blob of `length` bytes (-1: not a blob) fits a chunk of `size`.
  Status CheckBlocksLength(std::int64_t chunk, std::int64_t size, std::int64_t length) const {
    const std::string of_chunk = "chunk " + std::to_string(chunk);
    if (length < 0) return DataLossError(of_chunk + " block digests are not a blob");
    const std::uint64_t count = BlockCount(static_cast<std::uint64_t>(size), block_size);
    if (static_cast<std::uint64_t>(length) != count * kDigestSize) {
      return DataLossError(of_chunk + " block digests are " + std::to_string(length) +
                           " bytes, expected " + std::to_string(count * kDigestSize) + " (" +
                           std::to_string(count) + " blocks of " + std::to_string(block_size) +
                           " bytes, 32 bytes each)");
    }
    return Status::Ok();
  }

  Result<BlockList> Blocks(Connection& c, std::int64_t chunk) const {
    BlockList list;
    if (!has_blocks()) return list;
    sqlite3_stmt* s = c.blocks.get();
    sql::StmtScope scope(s);
    sqlite3_bind_int64(s, 1, chunk);
    const int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) return NotFoundError("no chunk " + std::to_string(chunk));
    if (rc != SQLITE_ROW) return sql::Error(c.db.get(), "index query failed");
    const std::int64_t size = sqlite3_column_int64(s, 0);
    if (size <= 0 || static_cast<std::uint64_t>(size) > chunk_size) {
      return DataLossError("chunk " + std::to_string(chunk) + " has size " + std::to_string(size) +
                           ", outside 1.." + std::to_string(chunk_size));
    }
    if (sqlite3_column_int(s, 1) == 0) {
      return DataLossError("chunk " + std::to_string(chunk) +
                           " has no block digests (no row in the blocks table)");
    }
    const bool is_blob = sqlite3_column_type(s, 2) == SQLITE_BLOB;
    const auto* blob = static_cast<const std::uint8_t*>(sqlite3_column_blob(s, 2));
    const std::int64_t length = is_blob ? sqlite3_column_bytes(s, 2) : -1;
    CKPTFS_RETURN_IF_ERROR(CheckBlocksLength(chunk, size, length));
    list.block_size = block_size;
    list.digests.resize(static_cast<std::size_t>(length) / kDigestSize);
    for (std::size_t i = 0; i < list.digests.size(); ++i) {
      std::copy_n(blob + i * kDigestSize, kDigestSize, list.digests[i].bytes.begin());
    }
    return list;
  }

  Result<Entry> GetEntry(Connection& c, std::uint64_t id) {
    sqlite3_stmt* s = c.get_entry.get();
    sql::StmtScope scope(s);
    sqlite3_bind_int64(s, 1, static_cast<sqlite3_int64>(id));
    return StepOneEntry(c.db.get(), s, "no entry " + std::to_string(id));
  }

  Result<Entry> GetFile(Connection& c, std::uint64_t id) {
    CKPTFS_ASSIGN_OR_RETURN(Entry entry, GetEntry(c, id));
    if (entry.type != EntryType::kFile) {
      return InvalidArgumentError("entry " + std::to_string(id) + " is not a regular file");
    }
    return entry;
  }

  // Appends the extent at the current row of `s` to `out` if it reaches past `offset`.
  static Status AppendExtent(sqlite3_stmt* s, std::uint64_t offset, std::vector<Extent>& out) {
    CKPTFS_ASSIGN_OR_RETURN(Extent x, ReadExtent(s));
    if (x.offset + x.size > offset) out.push_back(x);
    return Status::Ok();
  }

  Result<std::vector<Extent>> ExtentsInRange(Connection& c, std::uint64_t file,
                                             std::uint64_t offset, std::uint64_t length) {
    CKPTFS_ASSIGN_OR_RETURN(Entry entry, GetFile(c, file));
    std::vector<Extent> out;
    if (length == 0 || offset >= entry.size) return out;
    // Clamped to the file, so the end fits in int64 (sizes come from SQLite) and never wraps.
    const std::uint64_t end = offset + std::min(length, entry.size - offset);
    {
      sqlite3_stmt* s = c.extent_at.get();
      sql::StmtScope scope(s);
      sqlite3_bind_int64(s, 1, static_cast<sqlite3_int64>(file));
      sqlite3_bind_int64(s, 2, static_cast<sqlite3_int64>(offset));
      const int rc = sqlite3_step(s);
      if (rc == SQLITE_ROW) {
        CKPTFS_RETURN_IF_ERROR(AppendExtent(s, offset, out));
      } else if (rc != SQLITE_DONE) {
        return sql::Error(c.db.get(), "index query failed");
      }
    }
    sqlite3_stmt* s = c.extents_after.get();
    sql::StmtScope scope(s);
    sqlite3_bind_int64(s, 1, static_cast<sqlite3_int64>(file));
    sqlite3_bind_int64(s, 2, static_cast<sqlite3_int64>(offset));
    sqlite3_bind_int64(s, 3, static_cast<sqlite3_int64>(end));
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      CKPTFS_RETURN_IF_ERROR(AppendExtent(s, offset, out));
    }
    if (rc != SQLITE_DONE) return sql::Error(c.db.get(), "index query failed");
    return out;
  }

  // Checks one row of the validate statement; `expected` is where this extent must start.
  Status CheckExtentRow(sqlite3_stmt* s, std::int64_t& expected) {
    const std::int64_t offset = sqlite3_column_int64(s, 0);
    const std::int64_t chunk = sqlite3_column_int64(s, 1);
    const std::string at = "extent at offset " + std::to_string(offset);
    if (offset != expected) {
      if (expected == 0) return DataLossError("first " + at + ", not 0");
      if (offset > expected) {
        return DataLossError("gap: " + at + ", previous one ends at " + std::to_string(expected));
      }
      return DataLossError("overlap: " + at + ", previous one ends at " + std::to_string(expected));
    }
    const std::string of_chunk = "chunk " + std::to_string(chunk);
    if (sqlite3_column_int(s, 4) == 0) return DataLossError(of_chunk + " of " + at + " is missing");
    const std::int64_t size = sqlite3_column_int64(s, 2);
    if (size <= 0) {
      return DataLossError(of_chunk + " has size " + std::to_string(size) + ", not positive");
    }
    if (static_cast<std::uint64_t>(size) > chunk_size) {
      return DataLossError(of_chunk + " has size " + std::to_string(size) +
                           ", more than the index chunk_size " + std::to_string(chunk_size));
    }
    CKPTFS_RETURN_IF_ERROR(CheckDigestColumn(s, 3, of_chunk));
    if (sqlite3_column_int(s, 5) == 0) {
      return DataLossError(of_chunk + " has no replica on a known node");
    }
    expected = offset + size;
    return Status::Ok();
  }

  Status ValidateFile(Connection& c, std::uint64_t file) {
    CKPTFS_ASSIGN_OR_RETURN(Entry entry, GetEntry(c, file));
    const std::string what = "file " + std::to_string(file);
    if (entry.type != EntryType::kFile) return DataLossError(what + ": not a regular file");
    if (!IsValidName(entry.name)) return DataLossError(what + ": invalid name");
    if (entry.size > static_cast<std::uint64_t>(INT64_MAX)) {
      return DataLossError(what + ": size out of range");
    }
    sqlite3_stmt* s = c.validate.get();
    sql::StmtScope scope(s);
    sqlite3_bind_int64(s, 1, static_cast<sqlite3_int64>(file));
    std::int64_t expected = 0;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      Status row = CheckExtentRow(s, expected);
      if (!row.ok()) return row.WithContext(what);
    }
    if (rc != SQLITE_DONE) return sql::Error(c.db.get(), "index query failed");
    if (static_cast<std::uint64_t>(expected) != entry.size) {
      return DataLossError(what + ": extents add up to " + std::to_string(expected) +
                           " bytes, but the file has " + std::to_string(entry.size));
    }
    return Status::Ok();
  }
};

IndexReader::IndexReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
IndexReader::~IndexReader() = default;

Result<std::unique_ptr<IndexReader>> IndexReader::Open(const std::string& path,
                                                       const std::optional<Digest>& sha256) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  CKPTFS_ASSIGN_OR_RETURN(impl->index_file, OpenIndexFile(path));
  // The file hashed is the one SQLite opens below (through its descriptor), whatever is renamed
  // over `path` meanwhile.
  if (sha256.has_value()) {
    Result<Digest> got = FileSha256(impl->index_file.get(), "index " + path);
    if (!got.ok()) return got.status();
    if (*got != *sha256) {
      return FailedPreconditionError("index " + path + " has SHA-256 " + got->Hex() + ", not the " +
                                     sha256->Hex() + " asked for");
    }
  }
  impl->uri = ImmutableUri("/proc/self/fd/" + std::to_string(impl->index_file.get()));
  // Statements are prepared only after the checks: they need the tables to be there.
  CKPTFS_ASSIGN_OR_RETURN(std::unique_ptr<Connection> conn, impl->OpenSameFile());
  CKPTFS_RETURN_IF_ERROR(impl->CheckAndLoad(conn->db.get()));
  CKPTFS_RETURN_IF_ERROR(conn->PrepareStatements(impl->has_blocks()));
  impl->idle.push_back(std::move(conn));
  return std::unique_ptr<IndexReader>(new IndexReader(std::move(impl)));
}

std::uint64_t IndexReader::chunk_size() const { return impl_->chunk_size; }
std::uint64_t IndexReader::block_size() const { return impl_->block_size; }
int IndexReader::schema_version() const { return impl_->schema_version; }
const IndexStats& IndexReader::stats() const { return impl_->stats; }
const std::vector<Node>& IndexReader::nodes() const { return impl_->nodes; }

Result<Entry> IndexReader::GetEntry(std::uint64_t id) const {
  CKPTFS_ASSIGN_OR_RETURN(Impl::Lease c, impl_->Borrow());
  return impl_->GetEntry(*c, id);
}

Result<Entry> IndexReader::Lookup(std::uint64_t parent, std::string_view name) const {
  const std::string missing =
      "no entry '" + std::string(name) + "' in directory " + std::to_string(parent);
  // No valid entry can have an invalid name, and "." / ".." are the kernel's business.
  if (!IsValidName(std::string(name))) return NotFoundError(missing);
  CKPTFS_ASSIGN_OR_RETURN(Impl::Lease c, impl_->Borrow());
  sqlite3_stmt* s = c->lookup.get();
  sql::StmtScope scope(s);
  sqlite3_bind_int64(s, 1, static_cast<sqlite3_int64>(parent));
  sql::BindText(s, 2, name);
  return StepOneEntry(c->db.get(), s, missing);
}

Result<std::vector<Entry>> IndexReader::ListChildren(std::uint64_t parent, std::uint64_t after_id,
                                                     std::size_t limit) const {
  std::vector<Entry> out;
  if (limit == 0) return out;
  CKPTFS_ASSIGN_OR_RETURN(Impl::Lease c, impl_->Borrow());
  sqlite3_stmt* s = c->list_children.get();
  sql::StmtScope scope(s);
  sqlite3_bind_int64(s, 1, static_cast<sqlite3_int64>(parent));
  sqlite3_bind_int64(s, 2,
                     static_cast<sqlite3_int64>(std::min<std::uint64_t>(after_id, INT64_MAX)));
  // No LIMIT in the SQL: skipped rows must not shorten a page, or the caller would take a short
  // page for the end of the directory.
  int rc = SQLITE_DONE;
  while (out.size() < limit && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    Result<Entry> entry = ReadEntry(s);
    if (!entry.ok()) {
      LogWarning("index: skipping a child of directory " + std::to_string(parent) + ": " +
                 entry.status().message());
      continue;
    }
    if (!IsValidName(entry->name)) {
      LogWarning("index: skipping entry " + std::to_string(entry->id) + " in directory " +
                 std::to_string(parent) + ": invalid name");
      continue;
    }
    out.push_back(std::move(entry).value());
  }
  if (out.size() < limit && rc != SQLITE_DONE) {
    return sql::Error(c->db.get(), "index query failed");
  }
  return out;
}

Result<std::vector<Extent>> IndexReader::ExtentsInRange(std::uint64_t file, std::uint64_t offset,
                                                        std::uint64_t length) const {
  CKPTFS_ASSIGN_OR_RETURN(Impl::Lease c, impl_->Borrow());
  return impl_->ExtentsInRange(*c, file, offset, length);
}

namespace {

// The chunk in columns id, digest, size of the row `s` is on, from column `first` on. DataLoss
// for a digest that is not 32 bytes or a size outside 1..chunk_size.
Result<ChunkRecord> ChunkColumns(sqlite3_stmt* s, int first, std::uint64_t chunk_size) {
  ChunkRecord chunk;
  chunk.id = sqlite3_column_int64(s, first);
  const auto* blob = static_cast<const std::uint8_t*>(sqlite3_column_blob(s, first + 1));
  const std::optional<Digest> digest = Digest::FromBytes(
      {blob, static_cast<std::size_t>(std::max(sqlite3_column_bytes(s, first + 1), 0))});
  const sqlite3_int64 size = sqlite3_column_int64(s, first + 2);
  if (!digest || size < 1 || static_cast<std::uint64_t>(size) > chunk_size) {
    return DataLossError("index: chunk " + std::to_string(chunk.id) + " has a bad digest or size");
  }
  chunk.digest = *digest;
  chunk.size = static_cast<std::uint64_t>(size);
  return chunk;
}

}  // namespace

Result<std::vector<ChunkRecord>> IndexReader::ChunksAfter(std::int64_t after_id,
                                                          std::size_t limit) const {
  CKPTFS_ASSIGN_OR_RETURN(Impl::Lease c, impl_->Borrow());
  // Prepared per call: a page is a thousand rows, and only tools ask.
  CKPTFS_ASSIGN_OR_RETURN(
      sql::Stmt stmt, sql::Prepare(c->db.get(),
                                   "SELECT id, digest, size FROM chunks WHERE id > ?1 ORDER BY id "
                                   "LIMIT ?2"));
  sqlite3_stmt* s = stmt.get();
  sqlite3_bind_int64(s, 1, after_id);
  sqlite3_bind_int64(s, 2, static_cast<sqlite3_int64>(std::min<std::size_t>(limit, INT64_MAX)));
  std::vector<ChunkRecord> out;
  int rc;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    CKPTFS_ASSIGN_OR_RETURN(ChunkRecord chunk, ChunkColumns(s, 0, impl_->chunk_size));
    out.push_back(chunk);
  }
  if (rc != SQLITE_DONE) return sql::Error(c->db.get(), "index query failed");
  return out;
}

Result<std::vector<NodeChunk>> IndexReader::ChunkPerNode(std::size_t first_chunks) const {
  CKPTFS_ASSIGN_OR_RETURN(Impl::Lease c, impl_->Borrow());
  // Prepared per call: a mount asks once.
  CKPTFS_ASSIGN_OR_RETURN(
      sql::Stmt stmt,
      sql::Prepare(c->db.get(),
                   "SELECT r.node, c.id, c.digest, c.size FROM (SELECT id, digest, size FROM "
                   "chunks ORDER BY id LIMIT ?1) c JOIN replicas r ON r.chunk = c.id "
                   "JOIN nodes n ON n.id = r.node ORDER BY c.id, r.node"));
  sqlite3_stmt* s = stmt.get();
  sqlite3_bind_int64(s, 1,
                     static_cast<sqlite3_int64>(std::min<std::size_t>(first_chunks, INT64_MAX)));
  std::vector<NodeChunk> out;
  int rc;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    const std::int64_t node = sqlite3_column_int64(s, 0);
    if (std::any_of(out.begin(), out.end(), [node](const NodeChunk& n) { return n.node == node; }))
      continue;
    CKPTFS_ASSIGN_OR_RETURN(ChunkRecord chunk, ChunkColumns(s, 1, impl_->chunk_size));
    out.push_back({node, chunk});
  }
  if (rc != SQLITE_DONE) return sql::Error(c->db.get(), "index query failed");
  return out;
}

Result<std::vector<bool>> IndexReader::HasChunks(std::span<const Digest> digests) const {
  CKPTFS_ASSIGN_OR_RETURN(Impl::Lease c, impl_->Borrow());
  CKPTFS_ASSIGN_OR_RETURN(sql::Stmt stmt,
                          sql::Prepare(c->db.get(), "SELECT 1 FROM chunks WHERE digest = ?1"));
  sqlite3_stmt* s = stmt.get();
  std::vector<bool> found;
  found.reserve(digests.size());
  for (const Digest& digest : digests) {
    sqlite3_reset(s);
    sqlite3_bind_blob(s, 1, digest.bytes.data(), static_cast<int>(digest.bytes.size()),
                      SQLITE_STATIC);
    const int rc = sqlite3_step(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return sql::Error(c->db.get(), "index query failed");
    found.push_back(rc == SQLITE_ROW);
  }
  return found;
}

Result<std::vector<std::int64_t>> IndexReader::Replicas(std::int64_t chunk) const {
  CKPTFS_ASSIGN_OR_RETURN(Impl::Lease c, impl_->Borrow());
  sqlite3_stmt* s = c->replicas.get();
  sql::StmtScope scope(s);
  sqlite3_bind_int64(s, 1, chunk);
  std::vector<std::int64_t> nodes;
  int rc;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) nodes.push_back(sqlite3_column_int64(s, 0));
  if (rc != SQLITE_DONE) return sql::Error(c->db.get(), "index query failed");
  return nodes;
}

Result<BlockList> IndexReader::Blocks(std::int64_t chunk) const {
  if (!impl_->has_blocks()) return BlockList{};
  CKPTFS_ASSIGN_OR_RETURN(Impl::Lease c, impl_->Borrow());
  return impl_->Blocks(*c, chunk);
}

Status IndexReader::ValidateFile(std::uint64_t file) const {
  CKPTFS_ASSIGN_OR_RETURN(Impl::Lease c, impl_->Borrow());
  return impl_->ValidateFile(*c, file);
}

namespace {

// The b-trees worth keeping, hottest first: the schema, then everything that lookups, opens and
// extent queries walk, then the block digests, which are most of a large index.
Result<std::vector<std::string>> BtreesByHeat(sqlite3* db) {
  std::vector<std::string> names = {"sqlite_schema"};
  CKPTFS_ASSIGN_OR_RETURN(
      sql::Stmt s, sql::Prepare(db,
                                "SELECT name FROM sqlite_schema WHERE type IN ('table', 'index') "
                                "ORDER BY tbl_name = 'blocks', name"));
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
    names.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(s.get(), 0)));
  }
  if (rc != SQLITE_DONE) return sql::Error(db, "cannot list the index's tables");
  return names;
}

}  // namespace

Result<std::uint64_t> IndexReader::KeepResident(std::uint64_t budget, std::stop_token stop) {
  ResidentPages resident(impl_->index_file.get(), budget);
  CKPTFS_ASSIGN_OR_RETURN(Impl::Lease c, impl_->Borrow());
  sqlite3* db = c->db.get();
  CKPTFS_ASSIGN_OR_RETURN(std::vector<std::string> names, BtreesByHeat(db));
  // dbstat walks only the b-tree named, so a budget that runs out stops the reads too.
  CKPTFS_ASSIGN_OR_RETURN(sql::Stmt pages,
                          sql::Prepare(db, "SELECT pgoffset, pgsize FROM dbstat WHERE name = ?1"));
  bool fits = true;
  for (std::size_t i = 0; i < names.size() && fits; ++i) {
    sql::StmtScope scope(pages.get());
    sql::BindText(pages.get(), 1, names[i]);
    int rc = SQLITE_DONE;
    while (fits && !stop.stop_requested() && (rc = sqlite3_step(pages.get())) == SQLITE_ROW) {
      fits = resident.Choose(static_cast<std::uint64_t>(sqlite3_column_int64(pages.get(), 0)),
                             static_cast<std::uint64_t>(sqlite3_column_int64(pages.get(), 1)));
    }
    if (stop.stop_requested()) return UnavailableError("stopped while choosing index pages");
    if (fits && rc != SQLITE_DONE) return sql::Error(db, "cannot list the pages of " + names[i]);
  }
  CKPTFS_RETURN_IF_ERROR(resident.Keep(stop));
  std::lock_guard lock(impl_->resident_mu);
  impl_->resident = std::move(resident);
  return impl_->resident.bytes();
}

}  // namespace ckptfs::index
