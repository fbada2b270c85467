#include "common/file_io.h"

#include <gtest/gtest.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tests/support/temp_dir.h"

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

// A sparse file as the disk cache writes partial chunks: blocks at their offsets, holes between.
// (The test directory is on ext4 here, like the cache; tmpfs reports holes as well.)
TEST(FileIo, RangeHasHoleSeesTheBlocksNeverWritten) {
  FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  const int fd = fileno(file);
  constexpr std::uint64_t kBlock = 64 << 10;
  std::vector<std::uint8_t> block(kBlock, 0xab);
  ASSERT_EQ(::lseek(fd, 2 * kBlock, SEEK_SET), static_cast<off_t>(2 * kBlock));
  ASSERT_TRUE(WriteAll(fd, block).ok());  // Blocks 0 and 1 are holes, block 2 is data.
  ASSERT_EQ(::fsync(fd), 0);
  EXPECT_TRUE(RangeHasHole(fd, 0, kBlock));
  EXPECT_TRUE(RangeHasHole(fd, kBlock, 2 * kBlock)) << "the range starts in a hole";
  EXPECT_FALSE(RangeHasHole(fd, 2 * kBlock, kBlock));
  EXPECT_FALSE(RangeHasHole(fd, 2 * kBlock + 100, 1000));
  EXPECT_TRUE(RangeHasHole(fd, 2 * kBlock, 2 * kBlock)) << "the range runs past the end";
  EXPECT_TRUE(RangeHasHole(fd, 3 * kBlock, 1)) << "the range starts at the end";
  std::fclose(file);
}

TEST(FileIo, ErrorsCarryTheErrno) {
  std::vector<std::uint8_t> back(1);
  Status status = PreadExactly(-1, 0, back);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("Bad file descriptor"), std::string::npos) << status.ToString();
}

TEST(FileIo, MakeDirsMakesEveryMissingParentWithTheModeAndKeepsWhatIsThere) {
  testing::TempDir dir;
  const std::string deep = dir.path() + "/home/.cache/ckptfs";
  ASSERT_TRUE(MakeDirs(deep, 0700).ok());
  for (const std::string& path : {dir.path() + "/home", dir.path() + "/home/.cache", deep}) {
    struct stat st;
    ASSERT_EQ(::stat(path.c_str(), &st), 0) << path;
    EXPECT_TRUE(S_ISDIR(st.st_mode)) << path;
    EXPECT_EQ(st.st_mode & 0777, 0700u) << path;
  }
  EXPECT_TRUE(MakeDirs(deep, 0700).ok()) << "directories already there are fine";
  EXPECT_TRUE(MakeDirs(deep + "/", 0700).ok());
}

TEST(FileIo, MakeDirsUnderAFileFailsNamingThePath) {
  testing::TempDir dir;
  const std::string file = dir.path() + "/file";
  FILE* f = std::fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fclose(f);
  Status status = MakeDirs(file + "/sub", 0700);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find(file + "/sub"), std::string::npos) << status.ToString();
}

TEST(FileIo, TemporaryDirIsPrivateAndGoesWithItsFiles) {
  testing::TempDir parent;
  std::string path;
  {
    Result<TemporaryDir> made = TemporaryDir::Make(parent.path(), "stage");
    ASSERT_TRUE(made.ok()) << made.status().ToString();
    TemporaryDir moved = std::move(made).value();
    path = moved.path();
    EXPECT_EQ(path.rfind(parent.path() + "/stage.", 0), 0u) << path;
    struct stat st;
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0700u);
    for (const char* name : {"/index.ckptfs", "/index.ckptfs-journal"}) {
      FILE* f = std::fopen((path + name).c_str(), "w");
      ASSERT_NE(f, nullptr);
      std::fclose(f);
    }
  }
  struct stat st;
  EXPECT_NE(::stat(path.c_str(), &st), 0) << "left behind: " << path;
  EXPECT_FALSE(TemporaryDir::Make(parent.path() + "/missing", "stage").ok());
}

TEST(FileIo, ReadWholeFileGivesEveryByteOrNamesTheFile) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/bytes";
  std::vector<std::uint8_t> bytes(70000);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::uint8_t>(i * 7);
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), f), bytes.size());
  std::fclose(f);
  Result<std::vector<std::uint8_t>> read = ReadWholeFile(path);
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(*read, bytes);
  Result<std::vector<std::uint8_t>> missing = ReadWholeFile(dir.path() + "/none");
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find(dir.path() + "/none"), std::string::npos);
}

}  // namespace
}  // namespace ckptfs
