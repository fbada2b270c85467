// cli::LocalIndexCopy against a ScriptedTransport: copies of an index URL by URL and, for a
// pinned version (index_sha256=), by content.
#include "cli/index_download.h"

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

std::time_t MtimeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mtime;
}

void SetMtime(const std::string& path, std::time_t t) {
  std::filesystem::last_write_time(path, std::filesystem::file_time_type::clock::from_sys(
                                             std::chrono::system_clock::from_time_t(t)));
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
  EXPECT_EQ(MtimeOf(path), now_);
  EXPECT_EQ(transport_.Calls(kUrl), 1);

  // The server moves on to another version; the pinned one is still what mounts, unasked.
  transport_.SetResponse(kUrl, ScriptedResponse::Body(Bytes("version two")));
  now_ += 3600;
  CKPTFS_ASSERT_OK_AND_ASSIGN(path, LocalIndexCopy(Pinned("version one"), transport_));
  EXPECT_EQ(Contents(path), "version one");
  EXPECT_EQ(MtimeOf(path), now_) << "a pinned copy's time is its last mount";
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

TEST_F(IndexDownloadTest, APinnedMountRemovesPinnedCopiesUnusedForThirtyDays) {
  ASSERT_EQ(::mkdir(Indexes().c_str(), 0700), 0);
  const std::time_t day = 24 * 3600;
  const std::string old_pin = PinnedPath("old"), recent_pin = PinnedPath("recent");
  const std::string by_url = Indexes() + "/" + Sha256Of("some url").Hex() + ".ckptfs";
  const std::string not_a_copy = Indexes() + "/sha256-notes.ckptfs";
  for (const std::string& path : {old_pin, recent_pin, by_url, not_a_copy}) {
    std::ofstream(path) << "x";
  }
  SetMtime(old_pin, now_ - 31 * day);
  SetMtime(recent_pin, now_ - 29 * day);
  SetMtime(by_url, now_ - 300 * day);  // Its time is the server's Last-Modified, not a use.
  SetMtime(not_a_copy, now_ - 300 * day);
  transport_.SetResponse(kUrl, ScriptedResponse::Body(Bytes("version one")));

  CKPTFS_ASSERT_OK_AND_ASSIGN(std::string path, LocalIndexCopy(Pinned("version one"), transport_));

  EXPECT_EQ(path, PinnedPath("version one"));
  EXPECT_FALSE(std::filesystem::exists(old_pin));
  EXPECT_TRUE(std::filesystem::exists(recent_pin));
  EXPECT_TRUE(std::filesystem::exists(by_url));
  EXPECT_TRUE(std::filesystem::exists(not_a_copy));
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
