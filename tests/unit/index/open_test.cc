// IndexReader::Open() on broken indexes: each failure is one clear line.
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "common/digest.h"
#include "common/file_io.h"
#include "index/reader.h"
#include "index/testing_sql.h"
#include "tests/unit/index/index_test_util.h"

namespace ckptfs::index {
namespace {

using testing::Must;
using testing::TempDir;
using testing::TestIndexBuilder;

void WriteValidIndex(const std::string& path) {
  TestIndexBuilder b(path, 8, 2, 1);
  b.File(kRootId, "f", "hello world");
  b.Finish();
}

class IndexOpen : public ::testing::Test {
 protected:
  // Open() must fail with InvalidArgument and exactly `message`.
  void ExpectInvalid(const std::string& path, const std::string& message) {
    const auto reader = IndexReader::Open(path);
    ASSERT_FALSE(reader.ok()) << "opened a broken index; expected: " << message;
    EXPECT_EQ(reader.status().code(), StatusCode::kInvalidArgument) << reader.status().ToString();
    EXPECT_EQ(reader.status().message(), message);
    EXPECT_EQ(reader.status().message().find('\n'), std::string::npos);
  }

  // Writes a valid index, runs `sql` on it, and expects Open() to fail with `message`.
  void ExpectInvalidAfter(const std::string& sql, const std::string& message) {
    SCOPED_TRACE(sql);
    WriteValidIndex(path_);
    Must(ExecSqlForTesting(path_, sql));
    ExpectInvalid(path_, message);
  }

  TempDir dir_;
  std::string path_ = dir_.Path("index.db");
};

TEST_F(IndexOpen, AcceptsAValidIndex) {
  WriteValidIndex(path_);
  EXPECT_TRUE(IndexReader::Open(path_).ok());
}

TEST_F(IndexOpen, OpensWithTheSha256OfItsFile) {
  WriteValidIndex(path_);
  const std::vector<std::uint8_t> bytes = Must(ReadWholeFile(path_));
  EXPECT_TRUE(IndexReader::Open(path_, Sha256(bytes.data(), bytes.size())).ok());
}

TEST_F(IndexOpen, RefusesAnotherSha256NamingBoth) {
  WriteValidIndex(path_);
  const std::vector<std::uint8_t> bytes = Must(ReadWholeFile(path_));
  const Digest want = Sha256("other", 5);
  const auto reader = IndexReader::Open(path_, want);
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(reader.status().message(), "index " + path_ + " has SHA-256 " +
                                           Sha256(bytes.data(), bytes.size()).Hex() + ", not the " +
                                           want.Hex() + " asked for");
}

TEST_F(IndexOpen, MissingFileIsNotFound) {
  const auto reader = IndexReader::Open(path_);
  EXPECT_EQ(reader.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(reader.status().message(),
            "cannot open index " + path_ + ": No such file or directory");
}

TEST_F(IndexOpen, DirectoryIsRefused) {
  const auto reader = IndexReader::Open(dir_.path());
  EXPECT_EQ(reader.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(reader.status().message(), "cannot open index " + dir_.path() + ": not a regular file");
}

TEST_F(IndexOpen, GarbageFileIsNotADatabase) {
  std::ofstream(path_) << std::string(8192, 'x');
  ExpectInvalid(path_, "not a ckptfs index: file is not a database");
}

TEST_F(IndexOpen, ZeroByteFileHasNoMetaTable) {
  std::ofstream{path_};
  ExpectInvalid(path_, "not a ckptfs index: no meta table");
}

TEST_F(IndexOpen, OtherSqliteFileHasNoMetaTable) {
  Must(ExecSqlForTesting(path_, "CREATE TABLE t(x); INSERT INTO t VALUES(1);"));
  ExpectInvalid(path_, "not a ckptfs index: no meta table");
}

TEST_F(IndexOpen, MetaWithoutValueColumnIsRefused) {
  Must(ExecSqlForTesting(path_, "CREATE TABLE meta(key TEXT PRIMARY KEY);"));
  ExpectInvalid(path_, "index table 'meta' is missing column 'value'");
}

TEST_F(IndexOpen, MissingFormatIsRefused) {
  ExpectInvalidAfter("DELETE FROM meta WHERE key = 'format'",
                     "not a ckptfs index: meta has no format");
}

TEST_F(IndexOpen, WrongFormatIsRefused) {
  ExpectInvalidAfter("UPDATE meta SET value = 'xyz' WHERE key = 'format'",
                     "index format is 'xyz', expected 'ckptfs'");
}

TEST_F(IndexOpen, MissingSchemaVersionIsRefused) {
  ExpectInvalidAfter("DELETE FROM meta WHERE key = 'schema_version'",
                     "index has no schema_version");
}

TEST_F(IndexOpen, NewerSchemaVersionIsRefused) {
  ExpectInvalidAfter("UPDATE meta SET value = '3' WHERE key = 'schema_version'",
                     "index schema version 3 is newer than this ckptfs supports (2)");
}

TEST_F(IndexOpen, MalformedSchemaVersionIsRefused) {
  ExpectInvalidAfter("UPDATE meta SET value = 'one' WHERE key = 'schema_version'",
                     "index schema_version 'one' is not valid");
}

TEST_F(IndexOpen, ZeroSchemaVersionIsRefused) {
  ExpectInvalidAfter("UPDATE meta SET value = '0' WHERE key = 'schema_version'",
                     "index schema_version '0' is not valid");
}

TEST_F(IndexOpen, OtherHashIsRefused) {
  ExpectInvalidAfter("UPDATE meta SET value = 'md5' WHERE key = 'hash'",
                     "index hash is 'md5', expected 'sha256'");
}

TEST_F(IndexOpen, MissingHashIsRefused) {
  ExpectInvalidAfter("DELETE FROM meta WHERE key = 'hash'", "index has no hash");
}

TEST_F(IndexOpen, EachMissingTableIsNamed) {
  for (const std::string table : {"nodes", "entries", "chunks", "extents", "replicas"}) {
    ExpectInvalidAfter("DROP TABLE " + table, "index is missing table '" + table + "'");
  }
}

TEST_F(IndexOpen, MissingColumnIsNamed) {
  ExpectInvalidAfter("DROP TABLE extents; CREATE TABLE extents(file INTEGER, offset INTEGER)",
                     "index table 'extents' is missing column 'chunk'");
  ExpectInvalidAfter("ALTER TABLE entries DROP COLUMN target",
                     "index table 'entries' is missing column 'target'");
}

TEST_F(IndexOpen, MissingChunkSizeIsRefused) {
  ExpectInvalidAfter("DELETE FROM meta WHERE key = 'chunk_size'", "index has no chunk_size");
}

TEST_F(IndexOpen, BadChunkSizeIsRefused) {
  for (const std::string bad : {"abc", "0", "-4096", "4096x", "", "1073741825"}) {
    ExpectInvalidAfter("UPDATE meta SET value = '" + bad + "' WHERE key = 'chunk_size'",
                       "index chunk_size '" + bad + "' is not a whole number from 1 to 1073741824");
  }
}

TEST_F(IndexOpen, MissingRootIsRefused) {
  ExpectInvalidAfter("DELETE FROM entries WHERE id = 1", "index has no root directory");
}

TEST_F(IndexOpen, RootThatIsNotADirectoryIsRefused) {
  ExpectInvalidAfter("UPDATE entries SET type = 1 WHERE id = 1",
                     "index has no root directory (entry 1 is not a directory)");
}

TEST_F(IndexOpen, NoNodesIsRefused) {
  ExpectInvalidAfter("DELETE FROM nodes", "index has no nodes");
}

TEST_F(IndexOpen, MalformedStatsAreRefused) {
  ExpectInvalidAfter("UPDATE meta SET value = 'many' WHERE key = 'files'",
                     "index meta 'files' is not a count: 'many'");
}

TEST_F(IndexOpen, MissingStatsReadAsZero) {
  WriteValidIndex(path_);
  Must(ExecSqlForTesting(path_, "DELETE FROM meta WHERE key IN ('files', 'bytes')"));
  const auto reader = Must(IndexReader::Open(path_));
  EXPECT_EQ(reader->stats().files, 0u);
  EXPECT_EQ(reader->stats().bytes, 0u);
  EXPECT_EQ(reader->stats().chunks, 2u);
}

}  // namespace
}  // namespace ckptfs::index
