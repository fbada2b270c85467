// VerifyCache on cache directories laid out by hand: which files it hashes, what it calls bad,
// and what --delete removes.
#include "fs/cache_verify.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/digest.h"
#include "tests/support/temp_dir.h"

namespace ckptfs::fs {
namespace {

class CacheVerify : public ::testing::Test {
 protected:
  // Writes `bytes` under the entry name of `named_as` (a whole entry, or with `suffix` appended);
  // returns the path.
  std::string Put(const std::string& named_as, const std::string& bytes,
                  const std::string& suffix = "") {
    const std::string hex = Sha256(named_as.data(), named_as.size()).Hex();
    const std::string dir = dir_.Path(hex.substr(0, 2));
    std::filesystem::create_directories(dir);
    const std::string path = dir + "/" + hex + suffix;
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }

  CacheVerifyOptions Options(bool remove = false, int jobs = 1) {
    return {.dir = dir_.path(), .remove = remove, .jobs = jobs};
  }

  testing::TempDir dir_;
};

TEST_F(CacheVerify, GoodEntriesPassAndAreCountedWithTheirBytes) {
  Put("chunk one", "chunk one");
  Put(std::string(3 << 20, 'x'), std::string(3 << 20, 'x'));  // More than one read.
  Result<CacheVerifyReport> report = VerifyCache(Options());
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->entries, 2u);
  EXPECT_EQ(report->bytes, 9u + (3u << 20));
  EXPECT_TRUE(report->bad.empty());
}

TEST_F(CacheVerify, AnEntryWhoseBytesChangedIsBadAndKeptWithoutRemove) {
  Put("good", "good");
  const std::string changed = Put("original bytes", "original bytez");
  Result<CacheVerifyReport> report = VerifyCache(Options());
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->entries, 2u);
  ASSERT_EQ(report->bad.size(), 1u);
  EXPECT_EQ(report->bad[0].path, changed);
  const std::string actual = Sha256("original bytez", 14).Hex();
  EXPECT_EQ(report->bad[0].reason, "SHA-256 is " + actual);
  EXPECT_FALSE(report->bad[0].removed);
  EXPECT_TRUE(std::filesystem::exists(changed));
}

TEST_F(CacheVerify, RemoveDeletesOnlyTheBadEntries) {
  const std::string good = Put("good", "good");
  const std::string short_one = Put("a longer chunk", "a longer");
  const std::string other = Put("abc", "abd");
  Result<CacheVerifyReport> report = VerifyCache(Options(/*remove=*/true));
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_EQ(report->bad.size(), 2u);
  for (const BadCacheEntry& bad : report->bad) EXPECT_TRUE(bad.removed) << bad.path;
  EXPECT_TRUE(std::filesystem::exists(good));
  EXPECT_FALSE(std::filesystem::exists(short_one));
  EXPECT_FALSE(std::filesystem::exists(other));
  Result<CacheVerifyReport> again = VerifyCache(Options());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->entries, 1u);
  EXPECT_TRUE(again->bad.empty());
}

TEST_F(CacheVerify, PartialFilesTemporariesAndOtherFilesAreLeftAlone) {
  const std::string partial = Put("whole chunk", "holes and blocks", ".part");
  std::filesystem::create_directories(dir_.Path("tmp"));
  std::ofstream(dir_.Path("tmp/chunk.tmp.123")) << "being written";
  std::filesystem::create_directories(dir_.Path("ab"));
  std::ofstream(dir_.Path("ab/README")) << "not an entry";
  std::ofstream(dir_.Path("indexes")) << "not a prefix directory";
  // A directory named like an entry is not a chunk either.
  const std::string hex = Sha256("dir", 3).Hex();
  std::filesystem::create_directories(dir_.Path(hex.substr(0, 2) + "/" + hex));
  Result<CacheVerifyReport> report = VerifyCache(Options(/*remove=*/true));
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->entries, 0u);
  EXPECT_TRUE(report->bad.empty());
  EXPECT_TRUE(std::filesystem::exists(partial));
  EXPECT_TRUE(std::filesystem::exists(dir_.Path("ab/README")));
}

TEST_F(CacheVerify, AnEntryThatCannotBeOpenedIsBadAndRemovable) {
  // A symlink under an entry's name, which a mount would not have written: not followed.
  const std::string target = dir_.Path("elsewhere");
  std::ofstream(target) << "linked";
  const std::string link = Put("linked", "");
  std::filesystem::remove(link);
  std::filesystem::create_symlink(target, link);
  Result<CacheVerifyReport> report = VerifyCache(Options(/*remove=*/true));
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_EQ(report->bad.size(), 1u);
  EXPECT_EQ(report->bad[0].path, link);
  EXPECT_EQ(report->bad[0].reason.rfind("cannot be read: ", 0), 0u) << report->bad[0].reason;
  EXPECT_TRUE(report->bad[0].removed);
  EXPECT_FALSE(std::filesystem::is_symlink(link));
  EXPECT_TRUE(std::filesystem::exists(target));
}

TEST_F(CacheVerify, ManyJobsFindTheSameAsOne) {
  std::vector<std::string> bad;
  for (int i = 0; i < 40; ++i) {
    const std::string name = "chunk " + std::to_string(i);
    if (i % 7 == 0) {
      bad.push_back(Put(name, name + "!"));
    } else {
      Put(name, name);
    }
  }
  for (int jobs : {1, 4}) {
    Result<CacheVerifyReport> report = VerifyCache(Options(false, jobs));
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    EXPECT_EQ(report->entries, 40u) << jobs;
    std::vector<std::string> found;
    for (const BadCacheEntry& b : report->bad) found.push_back(b.path);
    std::sort(bad.begin(), bad.end());
    EXPECT_EQ(found, bad) << jobs;
  }
}

TEST_F(CacheVerify, AMissingDirectoryOrAFileIsAnError) {
  Result<CacheVerifyReport> missing = VerifyCache({.dir = dir_.Path("nothing")});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  std::ofstream(dir_.Path("file")) << "x";
  Result<CacheVerifyReport> file = VerifyCache({.dir = dir_.Path("file")});
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace ckptfs::fs
