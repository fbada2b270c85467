#include "common/file_io.h"

#include <gtest/gtest.h>
#include <stdio.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace ckptfs {
namespace {

TEST(FileIo, WrittenBytesReadBackAtAnOffset) {
  FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  std::vector<std::uint8_t> bytes(100000);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::uint8_t>(i * 7);
  ASSERT_TRUE(WriteAll(fileno(file), bytes).ok());
  std::vector<std::uint8_t> back(500);
  ASSERT_TRUE(PreadExactly(fileno(file), 1234, back).ok());
  EXPECT_TRUE(std::equal(back.begin(), back.end(), bytes.begin() + 1234));
  std::fclose(file);
}

TEST(FileIo, ReadPastTheEndIsDataLoss) {
  FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  std::vector<std::uint8_t> bytes(10, 1);
  ASSERT_TRUE(WriteAll(fileno(file), bytes).ok());
  std::vector<std::uint8_t> back(11);
  EXPECT_EQ(PreadExactly(fileno(file), 0, back).code(), StatusCode::kDataLoss);
  std::fclose(file);
}

TEST(FileIo, ErrorsCarryTheErrno) {
  std::vector<std::uint8_t> back(1);
  Status status = PreadExactly(-1, 0, back);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("Bad file descriptor"), std::string::npos) << status.ToString();
}

}  // namespace
}  // namespace ckptfs
