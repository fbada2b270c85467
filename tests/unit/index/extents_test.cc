// IndexReader::ExtentsInRange(): which chunks a read of [offset, offset + length) touches.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "index/reader.h"
#include "tests/unit/index/index_test_util.h"

namespace ckptfs::index {
namespace {

using testing::Must;
using testing::RandomBytes;
using testing::TempDir;
using testing::TestIndexBuilder;
using testing::ToString;

constexpr std::uint64_t kChunk = 10;
constexpr std::uint64_t kSize = 35;  // Extents at 0, 10, 20 (10 bytes each) and 30 (5 bytes).

// The extents of `all` that overlap [offset, offset + length), computed the obvious way.
std::vector<Extent> Overlapping(const std::vector<Extent>& all, std::uint64_t offset,
                                std::uint64_t length) {
  std::vector<Extent> out;
  if (length == 0 || offset >= kSize) return out;
  const std::uint64_t end = length > kSize - offset ? kSize : offset + length;
  for (const Extent& x : all) {
    if (x.offset < end && x.offset + x.size > offset) out.push_back(x);
  }
  return out;
}

class IndexExtentsInRange : public ::testing::Test {
 protected:
  void SetUp() override {
    TestIndexBuilder b(path_, kChunk, 1, 1);
    file_ = b.File(kRootId, "f", RandomBytes(kSize, 1));
    all_ = b.extents(file_);
    b.Finish();
    reader_ = Must(IndexReader::Open(path_));
    ASSERT_EQ(all_.size(), 4u);
    ASSERT_EQ(all_[3].size, 5u);
  }

  // Offsets of the extents returned for the range.
  std::vector<std::uint64_t> Offsets(std::uint64_t offset, std::uint64_t length) {
    std::vector<std::uint64_t> offsets;
    for (const Extent& x : Must(reader_->ExtentsInRange(file_, offset, length))) {
      offsets.push_back(x.offset);
    }
    return offsets;
  }

  using V = std::vector<std::uint64_t>;
  TempDir dir_;
  std::string path_ = dir_.Path("index.db");
  std::uint64_t file_ = 0;
  std::vector<Extent> all_;
  std::unique_ptr<IndexReader> reader_;
};

TEST_F(IndexExtentsInRange, ReadStartingAndEndingInsideOneChunk) {
  EXPECT_EQ(Offsets(12, 5), V({10}));
  EXPECT_EQ(Offsets(19, 1), V({10}));
}

TEST_F(IndexExtentsInRange, ReadExactlyOnChunkBoundaries) {
  EXPECT_EQ(Offsets(0, 10), V({0}));
  EXPECT_EQ(Offsets(10, 10), V({10}));
  EXPECT_EQ(Offsets(10, 20), V({10, 20}));
  EXPECT_EQ(Offsets(0, 11), V({0, 10}));
  EXPECT_EQ(Offsets(9, 1), V({0}));
  EXPECT_EQ(Offsets(9, 2), V({0, 10}));
}

TEST_F(IndexExtentsInRange, ReadAcrossSeveralChunks) {
  EXPECT_EQ(Offsets(5, 20), V({0, 10, 20}));
  EXPECT_EQ(Offsets(0, kSize), V({0, 10, 20, 30}));
}

TEST_F(IndexExtentsInRange, ReadOfTheLastShortChunk) {
  EXPECT_EQ(Offsets(30, 5), V({30}));
  EXPECT_EQ(Offsets(34, 1), V({30}));
  EXPECT_EQ(Offsets(29, 2), V({20, 30}));
}

TEST_F(IndexExtentsInRange, ReadPastEndOfFileIsClamped) {
  EXPECT_EQ(Offsets(34, 100), V({30}));
  EXPECT_EQ(Offsets(25, std::numeric_limits<std::uint64_t>::max()), V({20, 30}));
  EXPECT_EQ(Offsets(35, 1), V());
  EXPECT_EQ(Offsets(1000, 10), V());
  EXPECT_EQ(Offsets(std::numeric_limits<std::uint64_t>::max(), 10), V());
}

TEST_F(IndexExtentsInRange, ZeroLengthIsEmpty) {
  EXPECT_EQ(Offsets(0, 0), V());
  EXPECT_EQ(Offsets(15, 0), V());
}

TEST_F(IndexExtentsInRange, ReturnsChunkIdsSizesAndDigests) {
  const std::string content = RandomBytes(kSize, 1);
  const std::vector<Extent> got = Must(reader_->ExtentsInRange(file_, 0, kSize));
  ASSERT_EQ(got.size(), 4u);
  for (const Extent& x : got) {
    EXPECT_EQ(x.digest, Sha256(content.data() + x.offset, x.size)) << x.offset;
  }
  EXPECT_EQ(ToString(got), ToString(all_));
}

TEST_F(IndexExtentsInRange, MatchesBruteForceForEveryRange) {
  for (std::uint64_t offset = 0; offset <= kSize + 2; ++offset) {
    for (std::uint64_t length = 0; length <= kSize + 2; ++length) {
      ASSERT_EQ(ToString(Must(reader_->ExtentsInRange(file_, offset, length))),
                ToString(Overlapping(all_, offset, length)))
          << "offset " << offset << " length " << length;
    }
  }
}

}  // namespace
}  // namespace ckptfs::index
