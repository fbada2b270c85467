// IndexReader::ValidateFile(): the per-file checks a mount runs when a file is first opened.
#include <gtest/gtest.h>

#include <string>

#include "index/reader.h"
#include "index/testing_sql.h"
#include "tests/unit/index/index_test_util.h"

namespace ckptfs::index {
namespace {

using testing::Must;
using testing::TempDir;
using testing::TestIndexBuilder;

// Index with chunk size 8 and two nodes, one replica per chunk:
//   entry 2: file "f", 20 bytes, extents at 0, 8, 16 on chunks 1, 2, 3 (sizes 8, 8, 4)
//   entry 3: directory "d";  entry 4: symlink "l"
class IndexValidateFile : public ::testing::Test {
 protected:
  static constexpr std::uint64_t kFile = 2;

  void SetUp() override {
    TestIndexBuilder b(path_, 8, 2, 1);
    ASSERT_EQ(b.File(kRootId, "f", "abcdefghABCDEFGHxyz!"), kFile);
    ASSERT_EQ(b.Dir(kRootId, "d"), 3u);
    ASSERT_EQ(b.Symlink(kRootId, "l", "f"), 4u);
    b.Finish();
  }

  // Runs `sql` on the index, reopens it and returns ValidateFile(id).
  Status ValidateAfter(const std::string& sql, std::uint64_t id = kFile) {
    Must(ExecSqlForTesting(path_, sql));
    return Must(IndexReader::Open(path_))->ValidateFile(id);
  }

  void ExpectDataLoss(const Status& status, const std::string& message) {
    EXPECT_EQ(status.code(), StatusCode::kDataLoss) << status.ToString();
    EXPECT_EQ(status.message(), message);
  }

  TempDir dir_;
  std::string path_ = dir_.Path("index.db");
};

TEST_F(IndexValidateFile, AcceptsAWellFormedFile) {
  const Status status = ValidateAfter("SELECT 1");
  EXPECT_TRUE(status.ok()) << status.ToString();
}

TEST_F(IndexValidateFile, MissingEntryIsNotFound) {
  EXPECT_EQ(ValidateAfter("SELECT 1", 999).code(), StatusCode::kNotFound);
}

TEST_F(IndexValidateFile, DirectoryIsNotARegularFile) {
  ExpectDataLoss(ValidateAfter("SELECT 1", 3), "file 3: not a regular file");
}

TEST_F(IndexValidateFile, SymlinkIsNotARegularFile) {
  ExpectDataLoss(ValidateAfter("SELECT 1", 4), "file 4: not a regular file");
}

TEST_F(IndexValidateFile, NameWithSlashIsInvalid) {
  ExpectDataLoss(ValidateAfter("UPDATE entries SET name = 'a/b' WHERE id = 2"),
                 "file 2: invalid name");
}

TEST_F(IndexValidateFile, NameWithNulIsInvalid) {
  ExpectDataLoss(ValidateAfter("UPDATE entries SET name = CAST(x'610062' AS TEXT) WHERE id = 2"),
                 "file 2: invalid name");
}

TEST_F(IndexValidateFile, FirstExtentMustStartAtZero) {
  ExpectDataLoss(ValidateAfter("UPDATE extents SET offset = 1 WHERE file = 2 AND offset = 0"),
                 "file 2: first extent at offset 1, not 0");
}

TEST_F(IndexValidateFile, GapIsReported) {
  ExpectDataLoss(ValidateAfter("DELETE FROM extents WHERE file = 2 AND offset = 8"),
                 "file 2: gap: extent at offset 16, previous one ends at 8");
}

TEST_F(IndexValidateFile, OverlapIsReported) {
  ExpectDataLoss(ValidateAfter("UPDATE extents SET offset = 12 WHERE file = 2 AND offset = 16"),
                 "file 2: overlap: extent at offset 12, previous one ends at 16");
}

TEST_F(IndexValidateFile, SizesMustAddUpToTheFileSize) {
  ExpectDataLoss(ValidateAfter("UPDATE entries SET size = 21 WHERE id = 2"),
                 "file 2: extents add up to 20 bytes, but the file has 21");
  ExpectDataLoss(ValidateAfter("UPDATE entries SET size = 19 WHERE id = 2"),
                 "file 2: extents add up to 20 bytes, but the file has 19");
}

TEST_F(IndexValidateFile, FileWithoutExtentsMustBeEmpty) {
  ExpectDataLoss(ValidateAfter("DELETE FROM extents WHERE file = 2"),
                 "file 2: extents add up to 0 bytes, but the file has 20");
  EXPECT_TRUE(ValidateAfter("UPDATE entries SET size = 0 WHERE id = 2").ok());
}

TEST_F(IndexValidateFile, MissingChunkIsReported) {
  ExpectDataLoss(ValidateAfter("DELETE FROM chunks WHERE id = 3"),
                 "file 2: chunk 3 of extent at offset 16 is missing");
}

TEST_F(IndexValidateFile, ChunkSizeMustBePositive) {
  ExpectDataLoss(ValidateAfter("UPDATE chunks SET size = 0 WHERE id = 2"),
                 "file 2: chunk 2 has size 0, not positive");
  ExpectDataLoss(ValidateAfter("UPDATE chunks SET size = -8 WHERE id = 2"),
                 "file 2: chunk 2 has size -8, not positive");
}

TEST_F(IndexValidateFile, ChunkLargerThanTheChunkSizeIsReported) {
  ExpectDataLoss(ValidateAfter("UPDATE chunks SET size = 9 WHERE id = 3"),
                 "file 2: chunk 3 has size 9, more than the index chunk_size 8");
}

TEST_F(IndexValidateFile, DigestMustBe32Bytes) {
  ExpectDataLoss(ValidateAfter("UPDATE chunks SET digest = x'0102' WHERE id = 1"),
                 "file 2: chunk 1 digest is 2 bytes, not 32");
}

TEST_F(IndexValidateFile, DigestMustBeABlob) {
  ExpectDataLoss(
      ValidateAfter("UPDATE chunks SET digest = '0123456789abcdef0123456789abcdef' WHERE id = 1"),
      "file 2: chunk 1 digest is not a blob");
}

TEST_F(IndexValidateFile, ChunkWithoutReplicaIsReported) {
  ExpectDataLoss(ValidateAfter("DELETE FROM replicas WHERE chunk = 2"),
                 "file 2: chunk 2 has no replica on a known node");
}

TEST_F(IndexValidateFile, ReplicaOnUnknownNodeDoesNotCount) {
  ExpectDataLoss(ValidateAfter("UPDATE replicas SET node = 99 WHERE chunk = 2"),
                 "file 2: chunk 2 has no replica on a known node");
}

TEST_F(IndexValidateFile, ExtentsInRangeAlsoRefusesBadChunks) {
  Must(ExecSqlForTesting(path_, "DELETE FROM chunks WHERE id = 3"));
  auto reader = Must(IndexReader::Open(path_));
  EXPECT_EQ(Must(reader->ExtentsInRange(kFile, 0, 16)).size(), 2u);
  EXPECT_EQ(reader->ExtentsInRange(kFile, 0, 20).status().code(), StatusCode::kDataLoss);
  Must(ExecSqlForTesting(path_, "UPDATE chunks SET digest = x'00' WHERE id = 1"));
  reader = Must(IndexReader::Open(path_));
  EXPECT_EQ(reader->ExtentsInRange(kFile, 0, 1).status().code(), StatusCode::kDataLoss);
}

TEST_F(IndexValidateFile, BadEntriesFailLookupsWithDataLoss) {
  Must(ExecSqlForTesting(path_,
                         "UPDATE entries SET type = 9 WHERE id = 3;"
                         "UPDATE entries SET size = -1 WHERE id = 2;"));
  auto reader = Must(IndexReader::Open(path_));
  EXPECT_EQ(reader->GetEntry(3).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(reader->Lookup(kRootId, "f").status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(reader->ValidateFile(kFile).code(), StatusCode::kDataLoss);
}

}  // namespace
}  // namespace ckptfs::index
