// cli::LocalIndexCopy against a ScriptedTransport: copies of an index URL by URL and, for a
// pinned version (index_sha256=), by content.
#include "cli/index_download.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/digest.h"
#include "common/file_io.h"
#include "tests/support/scripted_transport.h"
#include "tests/support/status_testing.h"
#include "tests/support/temp_dir.h"

namespace ckptfs {
namespace {

using cli::IndexDownload;
using cli::LocalIndexCopy;
using testing::ScriptedResponse;

constexpr char kUrl[] = "http://127.0.0.1:1/indexes/ckpt.index";

std::vector<std::uint8_t> Bytes(const std::string& text) { return {text.begin(), text.end()}; }

Digest Sha256Of(const std::string& text) { return Sha256(text.data(), text.size()); }

std::string Contents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<std::string> Listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

struct stat StatOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st;
}

// Access and modification time.
void SetTimes(const std::string& path, std::time_t atime, std::time_t mtime) {
  const timespec times[2] = {{atime, 0}, {mtime, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0) << path;
}

class IndexDownloadTest : public ::testing::Test {
 protected:
  IndexDownload Pinned(const std::string& text) {
    IndexDownload d = Unpinned();
    d.sha256 = Sha256Of(text);
    return d;
  }
  IndexDownload Unpinned() {
    return {.url = kUrl,
            .cache_dir = dir_.path(),
            .timeout = std::chrono::seconds(5),
            .sha256 = std::nullopt,
            .fallback = false,
            .now = now_};
  }
  std::string Indexes() const { return dir_.Path("indexes"); }
  std::string PinnedPath(const std::string& text) const {
    return Indexes() + "/sha256-" + Sha256Of(text).Hex() + ".ckptfs";
  }

  testing::TempDir dir_;
  testing::ScriptedTransport transport_;
  std::time_t now_ = std::time(nullptr);
};

TEST_F(IndexDownloadTest, APinnedVersionIsDownloadedOnceAndThenMountedWithoutARequest) {
  transport_.SetResponse(kUrl, ScriptedResponse::Body(Bytes("version one")));
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::string path, LocalIndexCopy(Pinned("version one"), transport_));
  EXPECT_EQ(path, PinnedPath("version one"));
  EXPECT_EQ(Contents(path), "version one");
  EXPECT_EQ(StatOf(path).st_atime, now_);
  EXPECT_EQ(transport_.Calls(kUrl), 1);

  // The server moves on to another version; the pinned one is still what mounts, unasked.
  transport_.SetResponse(kUrl, ScriptedResponse::Body(Bytes("version two")));
  now_ += 3600;
  CKPTFS_ASSERT_OK_AND_ASSIGN(path, LocalIndexCopy(Pinned("version one"), transport_));
  EXPECT_EQ(Contents(path), "version one");
  EXPECT_EQ(StatOf(path).st_atime, now_) << "a copy's access time is its last mount";
  EXPECT_EQ(transport_.Calls(kUrl), 1);

  CKPTFS_ASSERT_OK_AND_ASSIGN(path, LocalIndexCopy(Pinned("version two"), transport_));
  EXPECT_EQ(Contents(path), "version two");
  EXPECT_EQ(transport_.Calls(kUrl), 2);
  EXPECT_EQ(Listing(Indexes()).size(), 2u);
}

TEST_F(IndexDownloadTest, AnotherVersionIsRefusedNamingBothDigestsAndNothingIsKept) {
  transport_.SetResponse(kUrl, ScriptedResponse::Body(Bytes("version two")));
  const auto got = LocalIndexCopy(Pinned("version one"), transport_);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(got.status().message(), std::string("index ") + kUrl + " has SHA-256 " +
                                        Sha256Of("version two").Hex() + ", not the " +
                                        Sha256Of("version one").Hex() + " of index_sha256=");
  EXPECT_TRUE(Listing(Indexes()).empty());
}

TEST_F(IndexDownloadTest, APinnedCopyThatChangedOnDiskIsDownloadedAgain) {
  transport_.SetResponse(kUrl, ScriptedResponse::Body(Bytes("version one")));
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::string path, LocalIndexCopy(Pinned("version one"), transport_));
  std::ofstream(path, std::ios::binary | std::ios::trunc) << "versioN one";
  CKPTFS_ASSERT_OK_AND_ASSIGN(path, LocalIndexCopy(Pinned("version one"), transport_));
  EXPECT_EQ(Contents(path), "version one");
  EXPECT_EQ(transport_.Calls(kUrl), 2);
}

TEST_F(IndexDownloadTest, APinnedVersionNeverDownloadedFailsWhenTheServerDoes) {
  transport_.SetResponse(kUrl, ScriptedResponse::Body(Bytes("version one")));
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::string by_url, LocalIndexCopy(Unpinned(), transport_));
  transport_.SetResponse(kUrl, ScriptedResponse::Error(UnavailableError("HTTP 503")));
  IndexDownload pinned = Pinned("version one");
  pinned.fallback = true;  // Concerns the copy by URL only.
  const auto got = LocalIndexCopy(pinned, transport_);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().message(), "cannot download the index: HTTP 503");
  EXPECT_EQ(Listing(Indexes()), std::vector<std::string>{by_url.substr(Indexes().size() + 1)});
}

TEST_F(IndexDownloadTest, CopiesOfEitherKindNotMountedForThirtyDaysAreRemoved) {
  ASSERT_EQ(::mkdir(Indexes().c_str(), 0700), 0);
  const std::time_t day = 24 * 3600;
  const std::string old_pin = PinnedPath("old"), recent_pin = PinnedPath("recent");
  const std::string old_url = Indexes() + "/" + Sha256Of("old url").Hex() + ".ckptfs";
  const std::string recent_url = Indexes() + "/" + Sha256Of("recent url").Hex() + ".ckptfs";
  const std::string not_a_copy = Indexes() + "/sha256-notes.ckptfs";
  const std::string crashed = recent_pin + ".tmp.4242", fresh_download = old_url + ".tmp.4243";
  for (const std::string& path : {old_pin, recent_pin, old_url, old_url + ".etag", recent_url,
                                  recent_url + ".etag", not_a_copy, crashed, fresh_download}) {
    std::ofstream(path) << "x";
  }
  // Access time: the last mount; modification time: the server's version, whatever its age.
  SetTimes(old_pin, now_ - 31 * day, now_ - 31 * day);
  SetTimes(recent_pin, now_ - 29 * day, now_ - 300 * day);
  SetTimes(old_url, now_ - 31 * day, now_ - 400 * day);
  SetTimes(recent_url, now_ - day, now_ - 400 * day);
  SetTimes(not_a_copy, now_ - 300 * day, now_ - 300 * day);
  SetTimes(crashed, now_ - 31 * day, now_ - 31 * day);
  SetTimes(fresh_download, now_, now_);
  transport_.SetResponse(kUrl, ScriptedResponse::Body(Bytes("version one")));

  CKPTFS_ASSERT_OK_AND_ASSIGN(std::string path, LocalIndexCopy(Pinned("version one"), transport_));

  EXPECT_EQ(path, PinnedPath("version one"));
  EXPECT_FALSE(std::filesystem::exists(old_pin));
  EXPECT_FALSE(std::filesystem::exists(old_url));
  EXPECT_FALSE(std::filesystem::exists(old_url + ".etag"));
  EXPECT_FALSE(std::filesystem::exists(crashed));
  for (const std::string& kept :
       {recent_pin, recent_url, recent_url + ".etag", not_a_copy, fresh_download}) {
    EXPECT_TRUE(std::filesystem::exists(kept)) << kept;
  }
}

TEST_F(IndexDownloadTest, ACopyByUrlKeepsTheServersTimeAsItsMtimeAndItsLastMountAsItsAtime) {
  transport_.SetResponse(kUrl, ScriptedResponse::Body(Bytes("version one")));
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::string path, LocalIndexCopy(Unpinned(), transport_));
  SetTimes(path, now_ - 10 * 24 * 3600, 1234567890);
  // The server is down: the copy is still used, and counts as mounted now.
  transport_.SetResponse(kUrl, ScriptedResponse::Error(UnavailableError("HTTP 503")));
  IndexDownload fallback = Unpinned();
  fallback.fallback = true;
  CKPTFS_ASSERT_OK_AND_ASSIGN(path, LocalIndexCopy(fallback, transport_));
  EXPECT_EQ(Contents(path), "version one");
  EXPECT_EQ(StatOf(path).st_atime, now_);
  EXPECT_EQ(StatOf(path).st_mtime, 1234567890);
  fallback.fallback = false;
  const auto refused = LocalIndexCopy(fallback, transport_);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().message(),
            "cannot download the index: HTTP 503; an earlier mount kept a copy (the server's "
            "version of 2009-02-13 23:31 UTC): -o index_fallback mounts it");
}

TEST_F(IndexDownloadTest, AnUnpinnedDownloadIsKeptUnderTheUrlsName) {
  transport_.SetResponse(kUrl, ScriptedResponse::Body(Bytes("version one")));
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::string path, LocalIndexCopy(Unpinned(), transport_));
  EXPECT_EQ(path, Indexes() + "/" + Sha256Of(kUrl).Hex() + ".ckptfs");
  EXPECT_EQ(Contents(path), "version one");
  // A scripted server has no versions, so each mount downloads it again.
  CKPTFS_ASSERT_OK_AND_ASSIGN(path, LocalIndexCopy(Unpinned(), transport_));
  EXPECT_EQ(transport_.Calls(kUrl), 2);
}

}  // namespace
}  // namespace ckptfs
