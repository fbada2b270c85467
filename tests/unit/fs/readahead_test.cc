// Readahead: the pure decision of what to prefetch for a sequence of reads.
#include "fs/readahead.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>

namespace ckptfs {
namespace {

using fs::ByteRange;
using fs::ReadaheadOptions;

constexpr std::uint64_t kKiB = 1024;
constexpr std::uint64_t kMiB = 1024 * kKiB;
constexpr std::uint64_t kGiB = 1024 * kMiB;
constexpr std::uint64_t kRead = 128 * kKiB;  // The kernel's usual FUSE read size.

class Readahead : public ::testing::Test {
 protected:
  ReadaheadOptions options_{.start_after = 2 * kMiB,
                            .start_after_seek = 4 * kMiB,
                            .max_window = 16 * kMiB,
                            .slack = 1 * kMiB};
  fs::Readahead readahead_{options_};
};

TEST_F(Readahead, IsolatedReadReturnsAnEmptyRange) {
  EXPECT_TRUE(readahead_.OnRead(5 * kGiB, kRead, 10 * kGiB).empty());
  EXPECT_EQ(readahead_.window(), 0u);
}

TEST_F(Readahead, RandomReadsNeverTriggerReadahead) {
  for (std::uint64_t offset : {7 * kGiB, 1 * kGiB, 9 * kGiB, 3 * kGiB, 100 * kMiB, 5 * kGiB}) {
    EXPECT_TRUE(readahead_.OnRead(offset, kRead, 10 * kGiB).empty()) << offset;
  }
}

TEST_F(Readahead, SequentialRunReturnsNothingUntilStartAfterThenGrowingWindows) {
  const std::uint64_t file_size = 10 * kGiB;
  const std::uint64_t reads_before = options_.start_after / kRead;  // 16 reads of 128 KiB.
  std::uint64_t handed_out_to = 0;
  std::uint64_t last_window = 0;
  bool capped = false;
  for (std::uint64_t i = 0; i < 400; ++i) {
    const std::uint64_t offset = i * kRead;
    ByteRange range = readahead_.OnRead(offset, kRead, file_size);
    const std::uint64_t run = offset + kRead;
    if (run < options_.start_after) {
      ASSERT_TRUE(range.empty()) << "read " << i;
      continue;
    }
    ASSERT_FALSE(range.empty()) << "read " << i;
    const std::uint64_t window = std::min(options_.max_window, 2 * run);
    EXPECT_EQ(readahead_.window(), window) << "read " << i;
    EXPECT_GE(readahead_.window(), last_window) << "the window never shrinks on a run";
    EXPECT_EQ(range.end, run + window) << "read " << i;
    if (i + 1 == reads_before) {
      EXPECT_EQ(range.begin, run) << "the first window starts where the reader is";
    } else {
      EXPECT_EQ(range.begin, handed_out_to) << "read " << i << " re-hands out or skips bytes";
    }
    handed_out_to = range.end;
    last_window = readahead_.window();
    capped = capped || window == options_.max_window;
  }
  EXPECT_TRUE(capped) << "the run never grew the window to max_window";
  EXPECT_EQ(readahead_.window(), options_.max_window);
}

TEST_F(Readahead, WindowDoublesWithTheRunLength) {
  // Reads that double the run each time: 2 MiB, 4 MiB, 8 MiB read so far.
  EXPECT_FALSE(readahead_.OnRead(0, 2 * kMiB, kGiB).empty());
  EXPECT_EQ(readahead_.window(), 4 * kMiB);
  EXPECT_FALSE(readahead_.OnRead(2 * kMiB, 2 * kMiB, kGiB).empty());
  EXPECT_EQ(readahead_.window(), 8 * kMiB);
  EXPECT_FALSE(readahead_.OnRead(4 * kMiB, 4 * kMiB, kGiB).empty());
  EXPECT_EQ(readahead_.window(), 16 * kMiB);
  ByteRange range = readahead_.OnRead(8 * kMiB, 8 * kMiB, kGiB);
  EXPECT_EQ(readahead_.window(), 16 * kMiB) << "capped at max_window";
  EXPECT_EQ(range.end, 16 * kMiB + 16 * kMiB);
}

TEST_F(Readahead, ReadInsideWhatWasHandedOutReturnsNothingNew) {
  std::uint64_t offset = 0;
  ByteRange first;
  while (first.empty()) {
    first = readahead_.OnRead(offset, kRead, kGiB);
    offset += kRead;
  }
  // A read that does not advance the run (a re-read of the last block) hands out nothing.
  EXPECT_TRUE(readahead_.OnRead(offset - kRead, kRead, kGiB).empty());
}

TEST_F(Readahead, SeekResetsTheRun) {
  std::uint64_t offset = 0;
  for (; offset < 4 * kMiB; offset += kRead) readahead_.OnRead(offset, kRead, 10 * kGiB);
  ASSERT_GT(readahead_.window(), 0u);

  const std::uint64_t far = 5 * kGiB;
  EXPECT_TRUE(readahead_.OnRead(far, kRead, 10 * kGiB).empty());
  EXPECT_EQ(readahead_.window(), 0u);
  // The new run starts from scratch: nothing until it has read start_after_seek bytes itself,
  // and until then its reads are isolated.
  std::uint64_t o = far + kRead;
  for (; o + kRead < far + options_.start_after_seek; o += kRead) {
    EXPECT_TRUE(readahead_.OnRead(o, kRead, 10 * kGiB).empty()) << o - far;
    EXPECT_FALSE(readahead_.streaming()) << o - far;
  }
  ByteRange range = readahead_.OnRead(o, kRead, 10 * kGiB);
  EXPECT_TRUE(readahead_.streaming());
  EXPECT_EQ(range.begin, far + options_.start_after_seek);
  EXPECT_EQ(range.end, far + 3 * options_.start_after_seek);
}

TEST_F(Readahead, BackwardSeekBeyondSlackResetsTheRun) {
  for (std::uint64_t offset = 0; offset < 8 * kMiB; offset += kRead) {
    readahead_.OnRead(offset, kRead, kGiB);
  }
  ASSERT_GT(readahead_.window(), 0u);
  EXPECT_TRUE(readahead_.OnRead(0, kRead, kGiB).empty());
  EXPECT_EQ(readahead_.window(), 0u);
}

TEST_F(Readahead, SlightlyOutOfOrderReadsStillCountAsSequential) {
  // The kernel's parallel readahead requests: pairs arrive swapped, within slack of the run.
  ByteRange range;
  std::uint64_t pairs = 0;
  for (std::uint64_t i = 0; range.empty() && i < 64; i += 2, ++pairs) {
    ByteRange later = readahead_.OnRead((i + 1) * kRead, kRead, kGiB);
    ByteRange earlier = readahead_.OnRead(i * kRead, kRead, kGiB);
    range = !later.empty() ? later : earlier;
  }
  ASSERT_FALSE(range.empty()) << "out-of-order reads were treated as seeks";
  // The run opens at its first read (the second block), so one pair more than start_after.
  EXPECT_LE(pairs * 2 * kRead, options_.start_after + 2 * kRead);
  EXPECT_EQ(range.begin, pairs * 2 * kRead) << "the window starts where the run got to";
}

TEST_F(Readahead, ForwardJumpWithinSlackContinuesTheRun) {
  std::uint64_t offset = 0;
  for (; offset < options_.start_after; offset += kRead) readahead_.OnRead(offset, kRead, kGiB);
  const std::uint64_t window = readahead_.window();
  ASSERT_GT(window, 0u);
  // A gap smaller than slack (one request lost to the page cache) keeps the run going.
  readahead_.OnRead(offset + options_.slack / 2, kRead, kGiB);
  EXPECT_GT(readahead_.window(), window);
}

TEST_F(Readahead, ForwardJumpBeyondSlackResetsTheRun) {
  std::uint64_t offset = 0;
  for (; offset < options_.start_after; offset += kRead) readahead_.OnRead(offset, kRead, kGiB);
  ASSERT_GT(readahead_.window(), 0u);
  EXPECT_TRUE(readahead_.OnRead(offset + options_.slack + kRead, kRead, kGiB).empty());
  EXPECT_EQ(readahead_.window(), 0u);
}

TEST_F(Readahead, RangeIsClippedAtTheFileSize) {
  const std::uint64_t file_size = 3 * kMiB + 1000;
  std::uint64_t handed_out_to = 0;
  for (std::uint64_t offset = 0; offset < file_size; offset += kRead) {
    const std::uint64_t length = std::min(kRead, file_size - offset);
    ByteRange range = readahead_.OnRead(offset, length, file_size);
    if (range.empty()) continue;
    EXPECT_LE(range.end, file_size);
    EXPECT_GE(range.begin, handed_out_to);
    handed_out_to = range.end;
  }
  EXPECT_EQ(handed_out_to, file_size) << "the readahead must reach the end of the file";
}

TEST_F(Readahead, NothingIsHandedOutOnceTheEndOfFileIsCovered) {
  const std::uint64_t file_size = 4 * kMiB;
  std::uint64_t offset = 0;
  ByteRange range;
  for (; range.empty(); offset += kRead) range = readahead_.OnRead(offset, kRead, file_size);
  ASSERT_EQ(range.end, file_size);
  for (; offset < file_size; offset += kRead) {
    EXPECT_TRUE(readahead_.OnRead(offset, kRead, file_size).empty()) << offset;
  }
}

TEST_F(Readahead, DefaultOptionsMatchTheDesign) {
  ReadaheadOptions defaults;
  EXPECT_EQ(defaults.start_after, 2 * kMiB);
  EXPECT_EQ(defaults.max_window, 64 * kMiB);
  EXPECT_EQ(defaults.slack, 4 * kMiB);
}

TEST_F(Readahead, ARunFromTheStartOfTheFileStreamsFromItsFirstRead) {
  readahead_.OnRead(0, kRead, kGiB);
  EXPECT_TRUE(readahead_.streaming());
  readahead_.OnRead(kGiB / 2, kRead, kGiB);
  EXPECT_FALSE(readahead_.streaming());
}

}  // namespace
}  // namespace ckptfs
