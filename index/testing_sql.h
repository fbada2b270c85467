// Test-only access to an index file with plain SQL, so that tests can build broken indexes
// (missing tables, bad meta, dangling chunks) without linking SQLite themselves: sqlite3 is
// linked PRIVATE to ckptfs_index. Not for product code.
// Thread safety: none needed; each call opens and closes its own connection.
#pragma once

#include <string>

#include "common/status.h"

namespace ckptfs::index {

// Opens (creating if needed) the SQLite database at `db_path` read-write, runs `sql` (one or more
// statements) and closes it. Internal error with SQLite's message on failure.
Status ExecSqlForTesting(const std::string& db_path, const std::string& sql);

}  // namespace ckptfs::index
