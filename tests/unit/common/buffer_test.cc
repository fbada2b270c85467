#include "common/buffer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

namespace ckptfs {
namespace {

std::uintptr_t Address(const Buffer& buffer) {
  return reinterpret_cast<std::uintptr_t>(buffer.data());
}

// The VmFlags line of the mapping in /proc/self/smaps that holds `address`; empty if none does.
std::string VmFlagsAt(std::uintptr_t address) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    std::uintptr_t begin = 0;
    std::uintptr_t end = 0;
    char dash = 0;
    std::istringstream range(line);
    // A mapping's header line is "begin-end perms ..."; the lines under it are "Name: value".
    if (range >> std::hex >> begin >> dash >> end && dash == '-') {
      inside = begin <= address && address < end;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

TEST(DiscardPages, ZeroesTheWholePagesWithinAndKeepsThePartsOfPagesAtEitherEnd) {
  Buffer buffer(4 * kBufferAlignment);
  std::memset(buffer.data(), 0xAB, buffer.size());
  // From the middle of the first page to the middle of the last.
  const std::size_t from = kBufferAlignment / 2;
  const std::size_t to = 3 * kBufferAlignment + kBufferAlignment / 2;
  DiscardPages(buffer.span().subspan(from, to - from));
  for (std::size_t i = 0; i < buffer.size(); ++i) {
    const bool whole_page_inside = i >= kBufferAlignment && i < 3 * kBufferAlignment;
    ASSERT_EQ(buffer.data()[i], whole_page_inside ? 0 : 0xAB) << "byte " << i;
  }
}

TEST(DiscardPages, LessThanAWholePageChangesNothing) {
  Buffer buffer(2 * kBufferAlignment);
  std::memset(buffer.data(), 0xCD, buffer.size());
  DiscardPages(buffer.span().subspan(100, kBufferAlignment));
  DiscardPages(buffer.span().subspan(0, 0));
  for (std::size_t i = 0; i < buffer.size(); ++i) ASSERT_EQ(buffer.data()[i], 0xCD) << i;
}

TEST(Buffer, SmallBufferStartsOnAPageBoundary) {
  Buffer buffer(1u << 20);
  EXPECT_EQ(Address(buffer) % kBufferAlignment, 0u);
  EXPECT_EQ(buffer.size(), 1u << 20);
}

TEST(Buffer, ChunkSizedBufferStartsOnAHugePageBoundary) {
  Buffer buffer(4u << 20);
  EXPECT_EQ(Address(buffer) % kHugePageSize, 0u);
  EXPECT_EQ(buffer.span().size(), 4u << 20);
}

TEST(Buffer, ChunkSizedBufferAsksForHugePages) {
  Buffer buffer(4u << 20);
  EXPECT_NE(VmFlagsAt(Address(buffer)).find(" hg"), std::string::npos);
  EXPECT_NE(VmFlagsAt(Address(buffer) + (4u << 20) - 1).find(" hg"), std::string::npos);
}

TEST(Buffer, QuickFirstBytesLeavesTheFirstHugePageOnSmallPages) {
  Buffer buffer(4u << 20, BufferStart::kQuickFirstBytes);
  EXPECT_EQ(Address(buffer) % kHugePageSize, 0u);
  const std::string first = VmFlagsAt(Address(buffer));
  ASSERT_FALSE(first.empty());
  EXPECT_EQ(first.find(" hg"), std::string::npos) << first;
  EXPECT_EQ(VmFlagsAt(Address(buffer) + kHugePageSize - 1).find(" hg"), std::string::npos);
  EXPECT_NE(VmFlagsAt(Address(buffer) + kHugePageSize).find(" hg"), std::string::npos);
  EXPECT_NE(VmFlagsAt(Address(buffer) + (4u << 20) - 1).find(" hg"), std::string::npos);
}

TEST(Buffer, QuickFirstBytesOfOneHugePageAsksForNone) {
  Buffer buffer(kHugePageSize + 4096, BufferStart::kQuickFirstBytes);
  for (std::size_t offset : {std::size_t{0}, kHugePageSize - 1, kHugePageSize}) {
    const std::string flags = VmFlagsAt(Address(buffer) + offset);
    ASSERT_FALSE(flags.empty());
    EXPECT_EQ(flags.find(" hg"), std::string::npos) << offset << ": " << flags;
  }
}

TEST(Buffer, TailShorterThanAHugePageKeepsSmallPages) {
  Buffer buffer(3u << 20);
  EXPECT_NE(VmFlagsAt(Address(buffer)).find(" hg"), std::string::npos);
  const std::string tail = VmFlagsAt(Address(buffer) + kHugePageSize);
  ASSERT_FALSE(tail.empty());
  EXPECT_EQ(tail.find(" hg"), std::string::npos);
}

TEST(Buffer, BytesAreWritableToTheEnd) {
  Buffer buffer(kHugePageSize + 4096);
  buffer.data()[0] = 1;
  buffer.data()[buffer.size() - 1] = 2;
  EXPECT_EQ(buffer.span().front(), 1);
  EXPECT_EQ(buffer.span().back(), 2);
}

}  // namespace
}  // namespace ckptfs
