#include "index/testing_sql.h"

#include "index/sqlite_util.h"

namespace ckptfs::index {

Status ExecSqlForTesting(const std::string& db_path, const std::string& sql) {
  sqlite3* raw = nullptr;
  const int rc =
      sqlite3_open_v2(db_path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
  sql::Db db(raw);
  if (rc != SQLITE_OK) return sql::Error(raw, "cannot open " + db_path);
  return sql::Exec(db.get(), sql);
}

}  // namespace ckptfs::index
