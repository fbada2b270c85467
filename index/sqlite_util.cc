#include "index/sqlite_util.h"

namespace ckptfs::index::sql {

Status Error(sqlite3* db, std::string_view context) {
  std::string message(context);
  message += ": ";
  message += db != nullptr ? sqlite3_errmsg(db) : "out of memory";
  return InternalError(std::move(message));
}

Status Exec(sqlite3* db, const std::string& sql) {
  char* error = nullptr;
  if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error) == SQLITE_OK) return Status::Ok();
  std::string message = error != nullptr ? error : sqlite3_errmsg(db);
  sqlite3_free(error);
  return InternalError("sqlite: " + message);
}

Result<Stmt> Prepare(sqlite3* db, std::string_view sql) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT,
                         &raw, nullptr) != SQLITE_OK) {
    return Error(db, "cannot prepare '" + std::string(sql) + "'");
  }
  return Stmt(raw);
}

std::string ColumnString(sqlite3_stmt* stmt, int i) {
  // sqlite3_column_blob works for text too and keeps embedded NULs, which the name checks need
  // to see rather than have silently cut off.
  const void* data = sqlite3_column_blob(stmt, i);
  const int bytes = sqlite3_column_bytes(stmt, i);
  if (data == nullptr || bytes <= 0) return {};
  return std::string(static_cast<const char*>(data), static_cast<std::size_t>(bytes));
}

int BindText(sqlite3_stmt* stmt, int i, std::string_view text) {
  // A null data pointer would bind NULL rather than an empty string.
  const char* data = text.data() != nullptr ? text.data() : "";
  return sqlite3_bind_text(stmt, i, data, static_cast<int>(text.size()), SQLITE_STATIC);
}

}  // namespace ckptfs::index::sql
