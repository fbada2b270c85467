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

TEST_F(Readahead, OneReadElsewhereDoesNotEndTheStream) {
  // A memcpy of a memory-mapped tensor faults on its last page first: one read far ahead, then
  // the stream goes on where it was.
  const std::uint64_t file_size = kGiB;
  std::uint64_t offset = 0;
  ByteRange last;
  for (; offset < 8 * kMiB; offset += kRead) {
    if (ByteRange r = readahead_.OnRead(offset, kRead, file_size); !r.empty()) last = r;
  }
  const std::uint64_t window = readahead_.window();
  ASSERT_GT(window, 0u);
  EXPECT_TRUE(readahead_.OnRead(200 * kMiB, kRead, file_size).empty());
  EXPECT_FALSE(readahead_.streaming()) << "the far read itself is a lone read";
  ByteRange next = readahead_.OnRead(offset, kRead, file_size);
  EXPECT_TRUE(readahead_.streaming());
  EXPECT_EQ(readahead_.window(), window) << "the stream came back with its window";
  EXPECT_EQ(next.begin, last.end) << "nothing handed out twice, nothing skipped";
  EXPECT_EQ(next.end, offset + kRead + window);
}

TEST_F(Readahead, LoneReadsCannotPushOutTheStreamTheyInterrupted) {
  const std::uint64_t file_size = kGiB;
  std::uint64_t offset = 0;
  for (; offset < 8 * kMiB; offset += kRead) readahead_.OnRead(offset, kRead, file_size);
  const std::uint64_t window = readahead_.window();
  for (std::uint64_t far : {300 * kMiB, 100 * kMiB, 700 * kMiB}) {
    EXPECT_TRUE(readahead_.OnRead(far, kRead, file_size).empty()) << far;
  }
  EXPECT_FALSE(readahead_.OnRead(offset, kRead, file_size).empty());
  EXPECT_EQ(readahead_.window(), window);
}

TEST_F(Readahead, ASeekThatTheReaderFollowsIsANewRun) {
  const std::uint64_t file_size = kGiB;
  std::uint64_t offset = 0;
  for (; offset < 8 * kMiB; offset += kRead) readahead_.OnRead(offset, kRead, file_size);
  const std::uint64_t far = 500 * kMiB;
  readahead_.OnRead(far, kRead, file_size);
  readahead_.OnRead(far + kRead, kRead, file_size);
  EXPECT_EQ(readahead_.window(), 0u) << "the new run has not read start_after_seek yet";
  EXPECT_FALSE(readahead_.streaming());
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

// Reads [from, to) in kRead pieces; returns the sum of what TakeExcess() reported on the way.
std::uint64_t ReadThrough(fs::Readahead& readahead, std::uint64_t from, std::uint64_t to,
                          std::uint64_t file_size) {
  std::uint64_t excess = 0;
  for (std::uint64_t offset = from; offset < to; offset += kRead) {
    readahead.OnRead(offset, std::min(kRead, to - offset), file_size);
    excess += readahead.TakeExcess();
  }
  return excess;
}

TEST_F(Readahead, RunFromTheStartReportsTheWindowPastTheEndOfTheFile) {
  const std::uint64_t file_size = 4 * kMiB;
  std::uint64_t excess = 0;
  for (std::uint64_t offset = 0; offset < file_size; offset += kRead) {
    readahead_.OnRead(offset, kRead, file_size);
    std::uint64_t more = readahead_.TakeExcess();
    const std::uint64_t run = offset + kRead;
    if (run < options_.start_after) {
      EXPECT_EQ(more, 0u) << "no window yet at " << run;
    } else {
      excess += more;
      // Everything the window reaches past the end of the file has been reported, no more.
      const std::uint64_t reach = run + readahead_.window();
      EXPECT_EQ(excess, reach > file_size ? reach - file_size : 0) << run;
    }
  }
  EXPECT_EQ(readahead_.window(), 8 * kMiB);
  EXPECT_EQ(excess, 8 * kMiB) << "at the end of the file the whole window lies beyond it";
}

TEST_F(Readahead, ExcessIsHandedOutOnce) {
  const std::uint64_t file_size = 4 * kMiB;
  ASSERT_EQ(ReadThrough(readahead_, 0, file_size, file_size), 8 * kMiB);
  EXPECT_EQ(readahead_.TakeExcess(), 0u);
  // Re-reading the last piece, or the whole file from its start, reports nothing new.
  readahead_.OnRead(file_size - kRead, kRead, file_size);
  EXPECT_EQ(readahead_.TakeExcess(), 0u);
  EXPECT_EQ(ReadThrough(readahead_, 0, file_size, file_size), 0u);
}

TEST_F(Readahead, ExcessNeverExceedsMaxWindowInTotal) {
  const std::uint64_t file_size = 64 * kMiB;
  EXPECT_EQ(ReadThrough(readahead_, 0, file_size, file_size), options_.max_window);
  EXPECT_EQ(ReadThrough(readahead_, 0, file_size, file_size), 0u);
}

TEST_F(Readahead, RunThatStartedAfterASeekNeverSpills) {
  const std::uint64_t file_size = 16 * kMiB;
  readahead_.OnRead(0, kRead, file_size);
  const std::uint64_t excess = ReadThrough(readahead_, 6 * kMiB, file_size, file_size);
  EXPECT_GT(readahead_.window(), file_size - (6 * kMiB))
      << "the window must reach past the end for this test to mean anything";
  EXPECT_EQ(excess, 0u);
}

TEST_F(Readahead, FileShorterThanStartAfterNeverSpills) {
  EXPECT_EQ(ReadThrough(readahead_, 0, 1 * kMiB, 1 * kMiB), 0u);
  EXPECT_EQ(readahead_.window(), 0u);
}

TEST_F(Readahead, AcrossFilesOffReportsNoExcess) {
  options_.across_files = false;
  fs::Readahead readahead(options_);
  EXPECT_EQ(ReadThrough(readahead, 0, 4 * kMiB, 4 * kMiB), 0u);
  EXPECT_EQ(readahead.window(), 8 * kMiB) << "the window within the file is unchanged";
  fs::Readahead inherited = fs::Readahead::Inherited(options_, 8 * kMiB);
  EXPECT_EQ(ReadThrough(inherited, 0, 4 * kMiB, 4 * kMiB), 0u);
}

TEST_F(Readahead, InheritedWindowIsOpenAtTheFirstRead) {
  const std::uint64_t file_size = 4 * kMiB;
  fs::Readahead readahead = fs::Readahead::Inherited(options_, 8 * kMiB);
  EXPECT_EQ(readahead.window(), 8 * kMiB);
  ByteRange range = readahead.OnRead(0, kRead, file_size);
  EXPECT_TRUE(readahead.streaming());
  EXPECT_EQ(range.begin, kRead);
  EXPECT_EQ(range.end, file_size) << "the rest of the file at once";
  // The run goes on from the stream's window: twice what this file has read comes on top.
  EXPECT_EQ(readahead.window(), 8 * kMiB + 2 * kRead);
  EXPECT_EQ(readahead.TakeExcess(), kRead + readahead.window() - file_size);
}

TEST_F(Readahead, InheritedWindowKeepsGrowingUpToMaxWindow) {
  const std::uint64_t file_size = 4 * kMiB;
  fs::Readahead second = fs::Readahead::Inherited(options_, 8 * kMiB);
  ReadThrough(second, 0, file_size, file_size);
  EXPECT_EQ(second.window(), 16 * kMiB) << "8 MiB brought in, plus twice the 4 MiB read";
  fs::Readahead third = fs::Readahead::Inherited(options_, second.window());
  ReadThrough(third, 0, file_size, file_size);
  EXPECT_EQ(third.window(), options_.max_window);
  EXPECT_EQ(fs::Readahead::Inherited(options_, kGiB).window(), options_.max_window);
}

TEST_F(Readahead, SeekClosesAnInheritedWindow) {
  const std::uint64_t file_size = 64 * kMiB;
  fs::Readahead readahead = fs::Readahead::Inherited(options_, 8 * kMiB);
  EXPECT_TRUE(readahead.OnRead(32 * kMiB, kRead, file_size).empty());
  EXPECT_EQ(readahead.window(), 0u);
  EXPECT_FALSE(readahead.streaming());
  EXPECT_EQ(ReadThrough(readahead, 32 * kMiB + kRead, file_size, file_size), 0u)
      << "a run after the seek is not the stream that came in";
}

TEST_F(Readahead, SeekAfterTheFirstReadsClosesAnInheritedWindow) {
  const std::uint64_t file_size = 64 * kMiB;
  fs::Readahead readahead = fs::Readahead::Inherited(options_, 8 * kMiB);
  EXPECT_FALSE(readahead.OnRead(0, kRead, file_size).empty());
  EXPECT_TRUE(readahead.OnRead(40 * kMiB, kRead, file_size).empty());
  EXPECT_EQ(readahead.window(), 0u);
}

}  // namespace
}  // namespace ckptfs
