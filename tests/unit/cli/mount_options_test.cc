// ApplyMountOptionList: the -o lists of `ckptfs mount` and of fstab lines.
#include "cli/mount_options.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "tests/support/status_testing.h"

namespace ckptfs {
namespace {

using namespace std::chrono_literals;
using cli::ApplyMountOptionList;
using cli::MountOptions;
using cli::OptionSource;

TEST(MountOptions, AcceptsEveryOptionAndSetsItsField) {
  MountOptions options;
  CKPTFS_ASSERT_OK(ApplyMountOptionList(
      "cache_dir=/var/tmp/c,cache_size=2G,node.n1=http://127.0.0.1:8080,timeout=2.5,"
      "allow_other,debug,index_fallback,fetchers=4,readahead=8M,memory_cache=32M,index_cache=0,"
      "dir_readahead=0,fetch_parts=2,stall_timeout=0.25,http_headers=/etc/ckptfs/headers,"
      "ca_file=/etc/ckptfs/ca.pem",
      options));
  EXPECT_EQ(options.cache_dir, "/var/tmp/c");
  EXPECT_EQ(options.cache_size, 2ull << 30);
  EXPECT_EQ(options.node_urls.at("n1"), "http://127.0.0.1:8080");
  EXPECT_EQ(options.node_urls.size(), 1u);
  EXPECT_EQ(options.timeout, 2500ms);
  EXPECT_TRUE(options.allow_other);
  EXPECT_TRUE(options.debug);
  EXPECT_TRUE(options.index_fallback);
  EXPECT_EQ(options.fetch_threads, 4);
  EXPECT_EQ(options.readahead, 8ull << 20);
  EXPECT_EQ(options.memory_cache, 32ull << 20);
  EXPECT_EQ(options.index_cache, 0u);
  EXPECT_FALSE(options.dir_readahead);
  EXPECT_EQ(options.fetch_parts, 2);
  EXPECT_EQ(options.stall_timeout, 250ms);
  EXPECT_EQ(options.http_headers, "/etc/ckptfs/headers");
  EXPECT_EQ(options.ca_file, "/etc/ckptfs/ca.pem");
}

TEST(MountOptions, DefaultsAreKeptForOptionsNotGiven) {
  MountOptions options;
  CKPTFS_ASSERT_OK(ApplyMountOptionList("debug", options));
  MountOptions defaults;
  EXPECT_EQ(options.cache_dir, defaults.cache_dir);
  EXPECT_EQ(options.cache_size, defaults.cache_size);
  EXPECT_EQ(options.timeout, defaults.timeout);
  EXPECT_EQ(options.stall_timeout, 1s);
  EXPECT_FALSE(options.allow_other);
  EXPECT_FALSE(options.index_fallback);
  EXPECT_EQ(options.http_headers, "");
  EXPECT_EQ(options.ca_file, "");
  EXPECT_EQ(options.fetch_threads, defaults.fetch_threads);
  EXPECT_EQ(options.readahead, defaults.readahead);
}

TEST(MountOptions, SeveralListsAccumulateAndLaterValuesWin) {
  MountOptions options;
  CKPTFS_ASSERT_OK(ApplyMountOptionList("node.a=http://127.0.0.1:1,cache_size=1G", options));
  CKPTFS_ASSERT_OK(ApplyMountOptionList("node.b=http://127.0.0.1:2,cache_size=3G", options));
  EXPECT_EQ(options.node_urls.size(), 2u);
  EXPECT_EQ(options.node_urls.at("a"), "http://127.0.0.1:1");
  EXPECT_EQ(options.node_urls.at("b"), "http://127.0.0.1:2");
  EXPECT_EQ(options.cache_size, 3ull << 30);
}

TEST(MountOptions, NodeUrlMayContainEqualsAndCommaFreeQuery) {
  MountOptions options;
  CKPTFS_ASSERT_OK(ApplyMountOptionList("node.n1=http://127.0.0.1:1/x?a=b", options));
  EXPECT_EQ(options.node_urls.at("n1"), "http://127.0.0.1:1/x?a=b");
}

TEST(MountOptions, FstabNoOpsAreAcceptedAndChangeNothing) {
  MountOptions options;
  CKPTFS_ASSERT_OK(ApplyMountOptionList(
      "ro,defaults,_netdev,noauto,auto,user,users,nouser,owner,group,nofail,silent,loud,sync,async,"
      "dirsync,atime,noatime,diratime,nodiratime,relatime,norelatime,strictatime,nostrictatime,"
      "lazytime,nolazytime",
      options));
  MountOptions defaults;
  EXPECT_EQ(options.cache_size, defaults.cache_size);
  EXPECT_FALSE(options.allow_other);
  EXPECT_FALSE(options.debug);
  EXPECT_TRUE(options.node_urls.empty());
  EXPECT_TRUE(options.mount_flags.empty());
}

TEST(MountOptions, ExecAndSecurityFlagsAreKeptForTheKernelInTheOrderGiven) {
  MountOptions options;
  CKPTFS_ASSERT_OK(ApplyMountOptionList("noexec,ro,nodev", options));
  CKPTFS_ASSERT_OK(ApplyMountOptionList("nosuid,exec", options));
  EXPECT_EQ(options.mount_flags, (std::vector<std::string>{"noexec", "nodev", "nosuid", "exec"}));
}

TEST(MountOptions, EmptyItemsAreIgnored) {
  MountOptions options;
  CKPTFS_ASSERT_OK(ApplyMountOptionList("", options));
  CKPTFS_ASSERT_OK(ApplyMountOptionList(",,debug,", options));
  EXPECT_TRUE(options.debug);
}

// Applies `list` to fresh options and expects InvalidArgument whose message names `mention`.
void ExpectRejected(const std::string& list, const std::string& mention) {
  MountOptions options;
  Status status = ApplyMountOptionList(list, options);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << list << ": " << status.ToString();
  EXPECT_NE(status.message().find(mention), std::string::npos)
      << list << ": message should name '" << mention << "': " << status.ToString();
}

TEST(MountOptions, RejectsUnknownOptions) {
  ExpectRejected("bogus", "bogus");
  ExpectRejected("debug,colour=blue", "colour");
  ExpectRejected("node.", "node.");
  ExpectRejected("allow_other=yes", "allow_other");
  ExpectRejected("index_fallback=1", "index_fallback");
  ExpectRejected("http_headers", "http_headers");
  ExpectRejected("http_headers=", "http_headers");
  ExpectRejected("ca_file", "ca_file");
  ExpectRejected("ro=1", "ro");
}

TEST(MountOptions, DirReadaheadIsOnByDefaultAndTakesZeroOrOne) {
  MountOptions options;
  EXPECT_TRUE(options.dir_readahead);
  CKPTFS_ASSERT_OK(ApplyMountOptionList("dir_readahead=0", options));
  EXPECT_FALSE(options.dir_readahead);
  CKPTFS_ASSERT_OK(ApplyMountOptionList("dir_readahead=1", options));
  EXPECT_TRUE(options.dir_readahead);
  ExpectRejected("dir_readahead=yes", "dir_readahead");
  ExpectRejected("dir_readahead=2", "dir_readahead");
}

TEST(MountOptions, RejectsReadWriteOnTheCommandLine) { ExpectRejected("ro,rw", "rw"); }

// mount(8) adds "rw" to every fstab entry without "ro", "defaults" included.
TEST(MountOptions, TakesReadWriteFromMount8AsTheDefaultItIs) {
  MountOptions options;
  CKPTFS_ASSERT_OK(
      ApplyMountOptionList("rw,_netdev,cache_size=1G", options, OptionSource::kMount8));
  EXPECT_EQ(options.cache_size, 1ull << 30);
  EXPECT_TRUE(options.mount_flags.empty());
  EXPECT_EQ(ApplyMountOptionList("rw=1", options, OptionSource::kMount8).code(),
            StatusCode::kInvalidArgument);
}

TEST(MountOptions, RejectsSuidAndDevFromAnySource) {
  ExpectRejected("suid", "suid");
  ExpectRejected("ro,dev", "dev");
  MountOptions options;
  Status status = ApplyMountOptionList("rw,suid", options, OptionSource::kMount8);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_NE(status.message().find("nosuid and nodev"), std::string::npos) << status.ToString();
}

TEST(MountOptions, RejectsBadSizes) {
  MountOptions options;
  EXPECT_FALSE(ApplyMountOptionList("cache_size=lots", options).ok());
  EXPECT_FALSE(ApplyMountOptionList("cache_size=12Q", options).ok());
  EXPECT_FALSE(ApplyMountOptionList("cache_size=-1", options).ok());
  EXPECT_FALSE(ApplyMountOptionList("readahead=big", options).ok());
  EXPECT_FALSE(ApplyMountOptionList("memory_cache=4K", options).ok());
  EXPECT_EQ(options.cache_size, MountOptions{}.cache_size) << "a rejected value is not applied";
}

TEST(MountOptions, RejectsBadTimeoutsAndFetcherCounts) {
  MountOptions options;
  ExpectRejected("timeout=0", "timeout");
  ExpectRejected("timeout=-3", "timeout");
  ExpectRejected("timeout=soon", "timeout");
  ExpectRejected("fetchers=0", "fetchers");
  ExpectRejected("fetchers=65", "fetchers");
  ExpectRejected("fetchers=many", "fetchers");
  ExpectRejected("fetchers=4k", "fetchers");
}

TEST(MountOptions, StallTimeoutIsPositiveSecondsOrZeroForNone) {
  MountOptions options;
  CKPTFS_ASSERT_OK(ApplyMountOptionList("stall_timeout=3", options));
  EXPECT_EQ(options.stall_timeout, 3s);
  CKPTFS_ASSERT_OK(ApplyMountOptionList("stall_timeout=0", options));
  EXPECT_EQ(options.stall_timeout, 0s);
  ExpectRejected("stall_timeout=-1", "stall_timeout");
  ExpectRejected("stall_timeout=soon", "stall_timeout");
  ExpectRejected("stall_timeout=0s", "stall_timeout");
}

TEST(MountOptions, FetchPartsIsBetweenOneAndSixteen) {
  MountOptions options;
  EXPECT_EQ(options.fetch_parts, 4);
  CKPTFS_ASSERT_OK(ApplyMountOptionList("fetch_parts=1", options));
  EXPECT_EQ(options.fetch_parts, 1);
  CKPTFS_ASSERT_OK(ApplyMountOptionList("fetch_parts=16", options));
  EXPECT_EQ(options.fetch_parts, 16);
  ExpectRejected("fetch_parts=0", "fetch_parts");
  ExpectRejected("fetch_parts=17", "fetch_parts");
  ExpectRejected("fetch_parts=all", "fetch_parts");
}

TEST(MountOptions, IndexSha256IsSixtyFourHexDigitsOfEitherCase) {
  MountOptions options;
  EXPECT_FALSE(options.index_sha256.has_value());
  const std::string hex(64, 'a');
  CKPTFS_ASSERT_OK(ApplyMountOptionList("index_sha256=" + std::string(64, 'A'), options));
  ASSERT_TRUE(options.index_sha256.has_value());
  EXPECT_EQ(options.index_sha256->Hex(), hex);
  ExpectRejected("index_sha256=" + hex.substr(1), "index_sha256");
  ExpectRejected("index_sha256=" + hex + "0", "index_sha256");
  ExpectRejected("index_sha256=" + hex.substr(1) + "g", "index_sha256");
}

TEST(MountOptions, RejectsMissingValues) {
  for (const char* key : {"cache_dir", "cache_size", "timeout", "stall_timeout", "fetchers",
                          "readahead", "dir_readahead", "fetch_parts", "node.n1", "index_sha256"}) {
    ExpectRejected(key, key);
    ExpectRejected(std::string(key) + "=", key);
  }
}

TEST(MountOptions, DefaultCacheDirForRootIsUnderVarCache) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::string dir,
                              cli::CacheDirFor({0, "/xdg", "/home/u", "/home/passwd"}));
  EXPECT_EQ(dir, "/var/cache/ckptfs");
}

TEST(MountOptions, DefaultCacheDirOfAUserFollowsXdgThenHomeThenThePasswordDatabase) {
  EXPECT_EQ(*cli::CacheDirFor({1000, "/xdg", "/home/u", "/home/p"}), "/xdg/ckptfs");
  EXPECT_EQ(*cli::CacheDirFor({1000, "", "/home/u", "/home/p"}), "/home/u/.cache/ckptfs");
  EXPECT_EQ(*cli::CacheDirFor({1000, "relative", "/home/u", "/home/p"}), "/home/u/.cache/ckptfs")
      << "XDG says a relative XDG_CACHE_HOME is to be ignored";
  // mount(8) clears the environment of the helper of a user's fstab mount.
  EXPECT_EQ(*cli::CacheDirFor({1000, "", "", "/home/p"}), "/home/p/.cache/ckptfs");
}

TEST(MountOptions, AUserWithNoHomeAtAllGetsAnErrorNotASharedDirectory) {
  Result<std::string> dir = cli::CacheDirFor({1000, "", "", ""});
  ASSERT_FALSE(dir.ok()) << *dir;
  EXPECT_EQ(dir.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(dir.status().message().find("cache_dir="), std::string::npos)
      << dir.status().ToString();
}

TEST(MountOptions, DefaultCacheDirOfThisProcessEndsInCkptfs) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::string dir, cli::DefaultCacheDir());
  EXPECT_EQ(dir.substr(dir.size() - 7), "/ckptfs") << dir;
}

}  // namespace
}  // namespace ckptfs
