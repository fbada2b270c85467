#include "index/schema.h"

namespace ckptfs::index::schema {

const char* const kCreateSqlV1 = R"sql(
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE nodes(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, url TEXT NOT NULL);
CREATE TABLE entries(
  id INTEGER PRIMARY KEY,
  parent INTEGER NOT NULL,
  name TEXT NOT NULL,
  type INTEGER NOT NULL,
  mode INTEGER NOT NULL,
  size INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL,
  target TEXT,
  UNIQUE(parent, name));
CREATE INDEX entries_by_parent ON entries(parent, id);
CREATE TABLE chunks(id INTEGER PRIMARY KEY, digest BLOB NOT NULL UNIQUE, size INTEGER NOT NULL);
CREATE TABLE extents(
  file INTEGER NOT NULL,
  offset INTEGER NOT NULL,
  chunk INTEGER NOT NULL,
  PRIMARY KEY(file, offset)) WITHOUT ROWID;
CREATE TABLE replicas(
  chunk INTEGER NOT NULL,
  node INTEGER NOT NULL,
  PRIMARY KEY(chunk, node)) WITHOUT ROWID;
)sql";

const char* const kCreateBlocksSql = R"sql(
CREATE TABLE blocks(chunk INTEGER PRIMARY KEY, digests BLOB NOT NULL);
)sql";

}  // namespace ckptfs::index::schema
