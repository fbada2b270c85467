// Schema v2 block digests: the writer records them in the blocks table, the reader hands them out
// and checks their length (the index is untrusted), ValidateFile never reads them, and v1 indexes
// still open without any.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "index/reader.h"
#include "index/testing_sql.h"
#include "index/writer.h"
#include "tests/unit/index/index_test_util.h"

namespace ckptfs::index {
namespace {

using testing::Must;
using testing::RandomBytes;
using testing::TempDir;
using testing::TestIndexBuilder;

constexpr std::uint64_t kChunk = 16 << 10;
constexpr std::uint64_t kBlock = 4 << 10;

// SHA-256 of each kBlock slice of `bytes`, computed here without HashChunk.
std::vector<Digest> SliceDigests(const std::string& bytes, std::uint64_t block) {
  std::vector<Digest> out;
  for (std::size_t at = 0; at < bytes.size(); at += block) {
    const std::string slice = bytes.substr(at, block);
    out.push_back(Sha256(slice.data(), slice.size()));
  }
  return out;
}

class IndexBlocks : public ::testing::Test {
 protected:
  // One file of two whole chunks and a 5000-byte tail (two blocks, the last one 904 bytes).
  void WriteV2() {
    TestIndexBuilder b(path_, kChunk, 2, 1, kBlock);
    content_ = RandomBytes(2 * kChunk + 5000, 7);
    file_ = b.File(kRootId, "model.bin", content_);
    extents_ = b.extents(file_);
    b.Finish();
  }

  TempDir dir_;
  std::string path_ = dir_.Path("index.db");
  std::string content_;
  std::uint64_t file_ = 0;
  std::vector<Extent> extents_;
};

TEST_F(IndexBlocks, RoundTripGivesTheDigestsOfEveryBlock) {
  WriteV2();
  auto reader = Must(IndexReader::Open(path_));
  EXPECT_EQ(reader->schema_version(), 2);
  EXPECT_EQ(reader->block_size(), kBlock);
  ASSERT_EQ(extents_.size(), 3u);
  for (const Extent& x : extents_) {
    SCOPED_TRACE(x.offset);
    const BlockList blocks = Must(reader->Blocks(x.chunk_id));
    EXPECT_EQ(blocks.block_size, kBlock);
    EXPECT_EQ(blocks.digests, SliceDigests(content_.substr(x.offset, x.size), kBlock));
  }
  EXPECT_EQ(Must(reader->Blocks(extents_[2].chunk_id)).digests.size(), 2u);
  EXPECT_TRUE(reader->ValidateFile(file_).ok());
}

TEST_F(IndexBlocks, DigestsLiveInTheirOwnTableNotInChunks) {
  WriteV2();
  // chunks is back to (id, digest, size), so that its rows stay small.
  EXPECT_FALSE(ExecSqlForTesting(path_, "SELECT blocks FROM chunks").ok());
  Must(ExecSqlForTesting(path_, "SELECT chunk, digests FROM blocks"));
}

// The page size as SQLite's file header records it (offset 16, big-endian; 1 means 65536).
std::uint32_t PageSizeOf(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char header[18] = {};
  in.read(reinterpret_cast<char*>(header), sizeof(header));
  const std::uint32_t size = (std::uint32_t{header[16]} << 8) | header[17];
  return size == 1 ? 65536 : size;
}

TEST(IndexWriterPages, BlockDigestsOfManyChunksShareAPage) {
  // 2 KiB of digests per chunk, as a 4 MiB chunk with 64 KiB blocks has.
  constexpr std::uint64_t kBigChunk = 4 << 20;
  constexpr std::uint64_t kBigBlock = 64 << 10;
  constexpr int kChunks = 700;
  TempDir dir;
  const std::string path = dir.Path("index.db");
  {
    auto writer = Must(IndexWriter::Create(path, kBigChunk, kBigBlock));
    std::vector<Digest> blocks(kBigChunk / kBigBlock);
    for (int i = 0; i < kChunks; ++i) {
      for (std::size_t k = 0; k < blocks.size(); ++k) {
        const std::uint64_t seed = static_cast<std::uint64_t>(i) * blocks.size() + k;
        blocks[k] = Sha256(&seed, sizeof(seed));
      }
      Must(writer->AddChunk(Sha256(&i, sizeof(i)), kBigChunk, blocks));
    }
    Must(writer->Finish(IndexStats{}));
  }
  EXPECT_EQ(PageSizeOf(path), 16384u);
  // One row per 4 KiB page, as before, took at least 4 KiB per chunk for the digests alone.
  EXPECT_LT(std::filesystem::file_size(path), kChunks * 3000u);
}

TEST_F(IndexBlocks, VersionOneIndexOpensAndHasNoBlocks) {
  TestIndexBuilder b(path_, kChunk, 1, 1);  // No block size: a v1 writer.
  const std::string content = RandomBytes(kChunk + 10, 3);
  const std::uint64_t file = b.File(kRootId, "old.bin", content);
  const std::vector<Extent> extents = b.extents(file);
  b.Finish();
  auto reader = Must(IndexReader::Open(path_));
  EXPECT_EQ(reader->schema_version(), 1);
  EXPECT_EQ(reader->block_size(), 0u);
  const BlockList blocks = Must(reader->Blocks(extents[0].chunk_id));
  EXPECT_EQ(blocks.block_size, 0u);
  EXPECT_TRUE(blocks.digests.empty());
  EXPECT_TRUE(reader->ValidateFile(file).ok());
  EXPECT_FALSE(ExecSqlForTesting(path_, "SELECT 1 FROM blocks").ok()) << "v1 has no blocks table";
  EXPECT_EQ(Must(reader->ExtentsInRange(file, 0, content.size())).size(), 2u);
}

TEST_F(IndexBlocks, BlobOfTheWrongLengthIsDataLossWhenFetchedNotAtValidation) {
  WriteV2();
  const std::int64_t chunk = extents_[0].chunk_id;
  Must(ExecSqlForTesting(
      path_,
      "UPDATE blocks SET digests = substr(digests, 1, 96) WHERE chunk = " + std::to_string(chunk)));
  auto reader = Must(IndexReader::Open(path_));
  const auto blocks = reader->Blocks(chunk);
  EXPECT_EQ(blocks.status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(blocks.status().message(),
            "chunk " + std::to_string(chunk) +
                " block digests are 96 bytes, expected 128 (4 blocks of 4096 bytes, 32 bytes "
                "each)");
  // ValidateFile and reads look at extents and chunks only: the blob is not loaded there.
  const Status validated = reader->ValidateFile(file_);
  EXPECT_TRUE(validated.ok()) << validated.ToString();
  EXPECT_EQ(Must(reader->ExtentsInRange(file_, 0, 10)).size(), 1u);
  // The other chunks are fine.
  EXPECT_TRUE(reader->Blocks(extents_[1].chunk_id).ok());
}

// ValidateFile does not need the blocks table: with the row of every chunk of the file gone, the
// index still opens and the file still validates and maps; only Blocks() reports the loss.
TEST_F(IndexBlocks, MissingBlocksRowsDoNotFailValidationButBlocksIsDataLoss) {
  WriteV2();
  Must(ExecSqlForTesting(path_, "DELETE FROM blocks"));
  auto reader = Must(IndexReader::Open(path_));
  const Status validated = reader->ValidateFile(file_);
  EXPECT_TRUE(validated.ok()) << validated.ToString();
  EXPECT_EQ(Must(reader->ExtentsInRange(file_, 0, content_.size())).size(), 3u);
  for (const Extent& x : extents_) {
    SCOPED_TRACE(x.offset);
    const auto blocks = reader->Blocks(x.chunk_id);
    EXPECT_EQ(blocks.status().code(), StatusCode::kDataLoss);
    EXPECT_EQ(blocks.status().message(), "chunk " + std::to_string(x.chunk_id) +
                                             " has no block digests (no row in the blocks table)");
  }
}

// A blocks row for a chunk that does not exist (or whose id was never used) is ignored; Blocks()
// of an unknown chunk is NotFound, not DataLoss.
TEST_F(IndexBlocks, StrayBlocksRowIsIgnored) {
  WriteV2();
  Must(ExecSqlForTesting(path_, "INSERT INTO blocks(chunk, digests) VALUES(999, x'00')"));
  auto reader = Must(IndexReader::Open(path_));
  EXPECT_TRUE(reader->ValidateFile(file_).ok());
  EXPECT_EQ(reader->Blocks(999).status().code(), StatusCode::kNotFound);
}

TEST_F(IndexBlocks, EmptyOrTextBlocksAreDataLoss) {
  WriteV2();
  Must(ExecSqlForTesting(path_, "UPDATE blocks SET digests = x'' WHERE chunk = " +
                                    std::to_string(extents_[0].chunk_id) +
                                    "; UPDATE blocks SET digests = 'abc' " +
                                    "WHERE chunk = " + std::to_string(extents_[2].chunk_id)));
  auto reader = Must(IndexReader::Open(path_));
  const auto empty = reader->Blocks(extents_[0].chunk_id);
  EXPECT_EQ(empty.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(empty.status().message().find("are 0 bytes, expected 128"), std::string::npos)
      << empty.status().ToString();
  const auto text = reader->Blocks(extents_[2].chunk_id);
  EXPECT_EQ(text.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(text.status().message().find("block digests are not a blob"), std::string::npos)
      << text.status().ToString();
  EXPECT_TRUE(reader->ValidateFile(file_).ok());
}

TEST_F(IndexBlocks, UnknownChunkIsNotFound) {
  WriteV2();
  auto reader = Must(IndexReader::Open(path_));
  EXPECT_EQ(reader->Blocks(999).status().code(), StatusCode::kNotFound);
}

TEST_F(IndexBlocks, OpenRefusesAMissingBlocksTableOrBadBlockSize) {
  const std::pair<std::string, std::string> cases[] = {
      {"DELETE FROM meta WHERE key = 'block_size'", "index has no block_size"},
      {"UPDATE meta SET value = '3000' WHERE key = 'block_size'",
       "index block_size '3000' is not a power of two from 4096 to the chunk_size 16384"},
      {"UPDATE meta SET value = '2048' WHERE key = 'block_size'",
       "index block_size '2048' is not a power of two from 4096 to the chunk_size 16384"},
      {"UPDATE meta SET value = '32768' WHERE key = 'block_size'",
       "index block_size '32768' is not a power of two from 4096 to the chunk_size 16384"},
      {"UPDATE meta SET value = 'big' WHERE key = 'block_size'",
       "index block_size 'big' is not a power of two from 4096 to the chunk_size 16384"},
      {"DROP TABLE blocks", "index is missing table 'blocks'"},
      {"ALTER TABLE blocks RENAME COLUMN digests TO d",
       "index table 'blocks' is missing column 'digests'"},
  };
  for (const auto& [sql, message] : cases) {
    SCOPED_TRACE(sql);
    WriteV2();
    Must(ExecSqlForTesting(path_, sql));
    const auto reader = IndexReader::Open(path_);
    ASSERT_FALSE(reader.ok());
    EXPECT_EQ(reader.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(reader.status().message(), message);
  }
}

TEST(IndexWriterBlocks, RefusesABadBlockSize) {
  TempDir dir;
  for (std::uint64_t bad :
       {std::uint64_t{0}, std::uint64_t{2048}, std::uint64_t{5000}, std::uint64_t{32 << 10}}) {
    const auto writer = IndexWriter::Create(dir.Path("index.db"), kChunk, bad);
    EXPECT_EQ(writer.status().code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(IndexWriter::Create(dir.Path("index.db"), kChunk, kChunk).ok());
  EXPECT_TRUE(IndexWriter::Create(dir.Path("index.db"), kChunk, 4096).ok());
}

TEST(IndexWriterBlocks, ChunkNeedsOneDigestPerBlockOfItsVersion) {
  TempDir dir;
  auto v2 = Must(IndexWriter::Create(dir.Path("v2.db"), kChunk, kBlock));
  const Digest d = Sha256("x", 1);
  const std::vector<Digest> three(3, d);
  EXPECT_EQ(v2->AddChunk(d, 3 * kBlock + 1, three).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(v2->AddChunk(d, 100).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(v2->AddChunk(d, 3 * kBlock, three).ok());

  auto v1 = Must(IndexWriter::Create(dir.Path("v1.db"), kChunk));
  EXPECT_EQ(v1->AddChunk(d, 100, std::vector<Digest>(1, d)).status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_TRUE(v1->AddChunk(d, 100).ok());
}

TEST(HashChunk, MatchesSeparateHashesOfTheChunkAndItsBlocks) {
  const std::string bytes = RandomBytes(3 * kBlock + 123, 11);
  const auto* data = reinterpret_cast<const std::uint8_t*>(bytes.data());
  const ChunkDigests digests = HashChunk({data, bytes.size()}, kBlock);
  EXPECT_EQ(digests.chunk, Sha256(bytes.data(), bytes.size()));
  EXPECT_EQ(digests.blocks, SliceDigests(bytes, kBlock));
  EXPECT_EQ(BlockCount(bytes.size(), kBlock), 4u);
  EXPECT_EQ(BlockCount(4 * kBlock, kBlock), 4u);
}

}  // namespace
}  // namespace ckptfs::index
