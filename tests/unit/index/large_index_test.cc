// An index of a million chunks opens at once and answers from the middle of a file: nothing is
// loaded whole.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "index/reader.h"
#include "index/writer.h"
#include "tests/unit/index/index_test_util.h"

namespace ckptfs::index {
namespace {

using testing::Must;
using testing::TempDir;

constexpr std::uint64_t kChunk = 4096;
constexpr std::int64_t kChunks = 1'000'000;

// Distinct digests without hashing a million buffers of real data.
Digest DigestOf(std::int64_t i) { return Sha256(&i, sizeof(i)); }

TEST(IndexLarge, MillionChunkIndexAnswersFromTheMiddle) {
  TempDir dir;
  const std::string path = dir.Path("index.db");
  std::uint64_t file = 0;
  {
    auto writer = Must(IndexWriter::Create(path, kChunk));
    const std::int64_t node = Must(writer->AddNode("n0", "http://127.0.0.1:8000"));
    Entry e;
    e.parent = kRootId;
    e.name = "huge.bin";
    e.type = EntryType::kFile;
    e.mode = 0644;
    e.size = kChunk * kChunks;
    file = Must(writer->AddEntry(e));
    for (std::int64_t i = 0; i < kChunks; ++i) {
      const auto chunk = Must(writer->AddChunk(DigestOf(i), kChunk));
      ASSERT_TRUE(chunk.is_new);
      testing::Must(writer->AddExtent(file, static_cast<std::uint64_t>(i) * kChunk, chunk.id));
      testing::Must(writer->AddReplica(chunk.id, node));
    }
    IndexStats stats;
    stats.files = 1;
    stats.bytes = e.size;
    stats.chunks = kChunks;
    stats.chunk_bytes = e.size;
    Must(writer->Finish(stats));
  }

  auto reader = Must(IndexReader::Open(path));
  EXPECT_EQ(reader->stats().chunks, static_cast<std::uint64_t>(kChunks));
  // From inside chunk 500000 to inside chunk 500002.
  const std::uint64_t offset = 500'000 * kChunk + 100;
  const auto extents = Must(reader->ExtentsInRange(file, offset, 2 * kChunk));
  ASSERT_EQ(extents.size(), 3u);
  for (int k = 0; k < 3; ++k) {
    EXPECT_EQ(extents[k].offset, (500'000 + k) * kChunk);
    EXPECT_EQ(extents[k].size, kChunk);
    EXPECT_EQ(extents[k].digest, DigestOf(500'000 + k));
  }
  const auto last = Must(reader->ExtentsInRange(file, kChunk * kChunks - 1, 10));
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(last[0].digest, DigestOf(kChunks - 1));
  EXPECT_EQ(Must(reader->Replicas(extents[0].chunk_id)).size(), 1u);
  // Validation streams the extents rather than collecting them.
  EXPECT_TRUE(reader->ValidateFile(file).ok());
}

}  // namespace
}  // namespace ckptfs::index
