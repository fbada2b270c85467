// Small RAII helpers around the SQLite C API, shared by the index writer and reader.
//
// Internal to index/: sqlite3.h is linked PRIVATE to ckptfs_index, so no other folder can include
// this header. Thread safety: a Db or Stmt belongs to one thread at a time.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/result.h"
#include "common/status.h"

namespace ckptfs::index::sql {

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using Db = std::unique_ptr<sqlite3, DbCloser>;

struct StmtFinalizer {
  void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
};
using Stmt = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

// Internal error whose message is "context: <SQLite's message for db>".
Status Error(sqlite3* db, std::string_view context);

// Runs one or more statements that return no rows.
Status Exec(sqlite3* db, const std::string& sql);

// Prepares `sql` for repeated use (SQLITE_PREPARE_PERSISTENT).
Result<Stmt> Prepare(sqlite3* db, std::string_view sql);

// Resets a prepared statement and clears its bindings when the scope ends, so the next user of
// a reused statement starts clean and SQLite releases its read locks and cursors.
class StmtScope {
 public:
  explicit StmtScope(sqlite3_stmt* stmt) : stmt_(stmt) {}
  ~StmtScope() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  StmtScope(const StmtScope&) = delete;
  StmtScope& operator=(const StmtScope&) = delete;

 private:
  sqlite3_stmt* stmt_;
};

// Column `i` of the current row as bytes (text or blob); empty for NULL.
std::string ColumnString(sqlite3_stmt* stmt, int i);

// Binds text without copying; `text` must outlive the statement's use.
int BindText(sqlite3_stmt* stmt, int i, std::string_view text);

}  // namespace ckptfs::index::sql
