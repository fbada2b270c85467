// HeaderFile: parsing a header file, and reading it again when it changes, on a fake clock.
#include "netfetch/header_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "tests/support/fake_clock.h"
#include "tests/support/status_testing.h"
#include "tests/support/temp_dir.h"

namespace ckptfs {
namespace {

using namespace std::chrono_literals;
using netfetch::HeaderFile;
using netfetch::HeaderLines;

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc | std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

// Replaces `path` with a new file, as a secret volume or an editor that saves by rename does.
void ReplaceText(const std::string& path, const std::string& text) {
  WriteText(path + ".new", text);
  std::filesystem::rename(path + ".new", path);
}

TEST(HeaderFileParse, TakesNameValueLinesAndSkipsCommentsAndBlankLines) {
  Result<HeaderLines> lines = HeaderFile::Parse(
      "# the store's token\n\nAuthorization:   Bearer abc.def \r\n  \t\n"
      "  # indented comment\nX-Api-Key:k1\n",
      "h");
  ASSERT_TRUE(lines.ok()) << lines.status().ToString();
  EXPECT_EQ(*lines, (HeaderLines{"Authorization: Bearer abc.def", "X-Api-Key: k1"}));
  // No newline at the end, and a value with spaces, tabs and colons inside.
  lines = HeaderFile::Parse("Cookie: a=b; c=d:e\tf", "h");
  ASSERT_TRUE(lines.ok()) << lines.status().ToString();
  EXPECT_EQ(*lines, (HeaderLines{"Cookie: a=b; c=d:e\tf"}));
}

TEST(HeaderFileParse, RefusesBadLinesNamingTheLineButNeverTheValue) {
  struct Case {
    std::string text;
    std::string says;
  };
  const Case cases[] = {
      {"Authorization: Bearer s3cret\nBearer s3cret\n", "h line 2: not a header"},
      {": s3cret\n", "h line 1: not a header name"},
      {"Bad Name: s3cret\n", "h line 1: not a header name"},
      {"X-Key:\n", "h line 1: X-Key has no value"},
      {"X-Key: s3cret\x01\n", "h line 1: the value of X-Key holds a control character"},
      {"range: bytes=0-1\n", "h line 1: range is set by ckptfs itself"},
      {"If-None-Match: s3cret\n", "set by ckptfs itself"},
      {"# only a comment\n\n", "h holds no header"},
      {"", "h holds no header"},
  };
  for (const Case& c : cases) {
    Result<HeaderLines> lines = HeaderFile::Parse(c.text, "h");
    ASSERT_EQ(lines.status().code(), StatusCode::kInvalidArgument) << c.text;
    EXPECT_NE(lines.status().message().find(c.says), std::string::npos)
        << c.text << " -> " << lines.status().ToString();
    EXPECT_EQ(lines.status().message().find("s3cret"), std::string::npos)
        << "a secret reached the error: " << lines.status().ToString();
  }
}

class HeaderFileTest : public ::testing::Test {
 protected:
  void SetUp() override { path_ = temp_.Path("headers"); }

  Result<std::unique_ptr<HeaderFile>> Open() { return HeaderFile::Open(path_, &clock_, 1s); }

  testing::TempDir temp_;
  testing::FakeClock clock_;
  std::string path_;
};

TEST_F(HeaderFileTest, OpenReadsTheFileAndFailsClearlyWhenItCannot) {
  Result<std::unique_ptr<HeaderFile>> file = Open();
  EXPECT_EQ(file.status().code(), StatusCode::kNotFound) << file.status().ToString();
  EXPECT_NE(file.status().message().find(path_), std::string::npos);

  WriteText(path_, "Authorization: Basic dTpw\n");
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::unique_ptr<HeaderFile> opened, Open());
  EXPECT_EQ(*opened->Current(), (HeaderLines{"Authorization: Basic dTpw"}));

  file = HeaderFile::Open(temp_.path(), &clock_);
  EXPECT_EQ(file.status().code(), StatusCode::kInvalidArgument) << "a directory";
  WriteText(path_, std::string(HeaderFile::kMaxFileBytes + 1, '#'));
  file = Open();
  EXPECT_EQ(file.status().code(), StatusCode::kInvalidArgument) << file.status().ToString();
  EXPECT_NE(file.status().message().find("larger than"), std::string::npos);
}

TEST_F(HeaderFileTest, ARelativePathIsKeptAgainstTheDirectoryItWasGivenIn) {
  WriteText(path_, "X-Key: one\n");
  const std::filesystem::path before = std::filesystem::current_path();
  std::filesystem::current_path(temp_.path());
  Result<std::unique_ptr<HeaderFile>> file = HeaderFile::Open("headers", &clock_, 1s);
  std::filesystem::current_path("/");  // As a mount that goes to the background does.
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ((*file)->path(), path_);
  ReplaceText(path_, "X-Key: two\n");
  clock_.Advance(1s);
  EXPECT_EQ(*(*file)->Current(), (HeaderLines{"X-Key: two"}));
  std::filesystem::current_path(before);
}

TEST_F(HeaderFileTest, AChangedFileIsReadAgainOnceTheRecheckIntervalHasPassed) {
  WriteText(path_, "X-Key: one\n");
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::unique_ptr<HeaderFile> file, Open());
  std::shared_ptr<const HeaderLines> held = file->Current();
  ReplaceText(path_, "X-Key: two\n");
  clock_.Advance(999ms);
  EXPECT_EQ(*file->Current(), (HeaderLines{"X-Key: one"})) << "looked before the interval";
  clock_.Advance(1ms);
  EXPECT_EQ(*file->Current(), (HeaderLines{"X-Key: two"}));
  EXPECT_EQ(*held, (HeaderLines{"X-Key: one"})) << "a request's lines changed under it";

  // Rewritten in place, same size: the modification time tells.
  const timespec old_times[2] = {{1000, 0}, {1000, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path_.c_str(), old_times, 0), 0);
  clock_.Advance(1s);
  EXPECT_EQ(*file->Current(), (HeaderLines{"X-Key: two"}));
  WriteText(path_, "X-Key: 333\n");
  clock_.Advance(1s);
  EXPECT_EQ(*file->Current(), (HeaderLines{"X-Key: 333"}));
}

TEST_F(HeaderFileTest, AFileThatBreaksOrGoesKeepsTheLastGoodHeadersUntilItIsGoodAgain) {
  WriteText(path_, "X-Key: one\n");
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::unique_ptr<HeaderFile> file, Open());
  ReplaceText(path_, "not a header\n");
  clock_.Advance(1s);
  EXPECT_EQ(*file->Current(), (HeaderLines{"X-Key: one"}));
  clock_.Advance(1s);
  EXPECT_EQ(*file->Current(), (HeaderLines{"X-Key: one"}));

  std::filesystem::remove(path_);
  clock_.Advance(1s);
  EXPECT_EQ(*file->Current(), (HeaderLines{"X-Key: one"}));

  // Back, good: its headers are used, and its later changes seen.
  WriteText(path_, "X-Key: one\n");
  clock_.Advance(1s);
  EXPECT_EQ(*file->Current(), (HeaderLines{"X-Key: one"}));
  ReplaceText(path_, "X-Key: two\n");
  clock_.Advance(1s);
  EXPECT_EQ(*file->Current(), (HeaderLines{"X-Key: two"}));
}

TEST_F(HeaderFileTest, ASymlinkThatIsSwappedToANewTargetIsFollowed) {
  // A Kubernetes secret volume: the file is a link through "..data", which is swapped at once.
  std::filesystem::create_directory(temp_.Path("v1"));
  std::filesystem::create_directory(temp_.Path("v2"));
  WriteText(temp_.Path("v1/headers"), "X-Key: one\n");
  WriteText(temp_.Path("v2/headers"), "X-Key: two\n");
  std::filesystem::create_directory_symlink("v1", temp_.Path("..data"));
  std::filesystem::create_symlink("..data/headers", path_);
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::unique_ptr<HeaderFile> file, Open());
  EXPECT_EQ(*file->Current(), (HeaderLines{"X-Key: one"}));
  std::filesystem::create_directory_symlink("v2", temp_.Path("..data.new"));
  std::filesystem::rename(temp_.Path("..data.new"), temp_.Path("..data"));
  clock_.Advance(1s);
  EXPECT_EQ(*file->Current(), (HeaderLines{"X-Key: two"}));
}

}  // namespace
}  // namespace ckptfs
