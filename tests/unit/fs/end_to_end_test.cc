// The whole read path without FUSE: an index written with IndexWriter, RetryingFetcher over
// CurlTransport against real nginx nodes on 127.0.0.1, ChunkStore with a DiskCache, and
// FileSystem::ReadRange. The fetcher's backoff runs on a FakeClock, so a read that can never
// succeed reaches its deadline after a handful of real requests instead of after 20 seconds.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "fs/chunk_store.h"
#include "fs/disk_cache.h"
#include "fs/file_system.h"
#include "index/reader.h"
#include "netfetch/curl_transport.h"
#include "netfetch/fetcher.h"
#include "netfetch/global_init.h"
#include "tests/support/fake_clock.h"
#include "tests/support/nginx_server.h"
#include "tests/support/poll.h"
#include "tests/support/single_file_index.h"
#include "tests/support/status_testing.h"
#include "tests/support/temp_dir.h"

namespace ckptfs {
namespace {

using testing::PollUntil;
using namespace std::chrono_literals;
using testing::FakeClock;
using testing::NginxServer;
using testing::PatternBytes;
using testing::TempDir;
using testing::WrittenFile;

// CurlTransport requires libcurl's global set-up before any thread starts, as main does it.
class CurlEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    Status init = netfetch::GlobalInit();
    ASSERT_TRUE(init.ok()) << init.ToString();
  }
  void TearDown() override { netfetch::GlobalCleanup(); }
};
[[maybe_unused]] ::testing::Environment* const kCurlEnvironment =
    ::testing::AddGlobalTestEnvironment(new CurlEnvironment);

constexpr std::uint64_t kChunk = 64 << 10;
constexpr std::uint64_t kFileSize = 5 * kChunk + 777;

// Flips one byte of the object of `digest` under a node's root, keeping its size.
void CorruptObject(const std::string& root, const Digest& digest) {
  std::string path = root + "/" + index::ChunkObjectPath(digest);
  std::fstream object(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(object) << "cannot open " << path;
  object.seekg(100);
  char byte = 0;
  object.get(byte);
  object.seekp(100);
  object.put(static_cast<char>(byte ^ 0x20));
}

class EndToEnd : public ::testing::Test {
 protected:
  // Starts `count` nginx nodes, writes an index whose chunks are on all of them, and puts every
  // chunk object under every node's root.
  void StartNodes(int count) {
    std::vector<std::pair<std::string, std::string>> nodes;
    for (int i = 0; i < count; ++i) {
      nginx_.push_back(std::make_unique<NginxServer>());
      ASSERT_TRUE(nginx_.back()->Start());
      nodes.emplace_back(std::string("n").append(std::to_string(i)), nginx_.back()->url());
    }
    auto written = testing::WriteSingleFileIndex(temp_.Path("index.db"), PatternBytes(kFileSize, 5),
                                                 kChunk, nodes);
    ASSERT_TRUE(written.ok()) << written.status().ToString();
    file_ = std::move(written).value();
    for (const auto& node : nginx_) {
      for (const auto& chunk : file_.chunks) {
        CKPTFS_ASSERT_OK(testing::WriteChunkObject(node->root(), chunk.digest, chunk.bytes));
      }
    }
  }

  // Builds the read path the way `ckptfs mount` wires it.
  void OpenStack() {
    CKPTFS_ASSERT_OK_AND_ASSIGN(index_, index::IndexReader::Open(temp_.Path("index.db")));
    std::vector<netfetch::NodeEndpoint> endpoints;
    for (const index::Node& node : index_->nodes()) {
      endpoints.push_back({node.id, node.name, node.url});
    }
    fetcher_ = std::make_unique<netfetch::RetryingFetcher>(endpoints, &transport_, &clock_);
    replicas_ = std::make_unique<fs::IndexReplicas>(index_.get());
    CKPTFS_ASSERT_OK_AND_ASSIGN(
        cache_, fs::DiskCache::Open(
                    {.dir = temp_.Path("cache"), .capacity_bytes = 1 << 30, .clock = &clock_}));
    store_ =
        std::make_unique<fs::ChunkStore>(cache_.get(), fetcher_.get(), replicas_.get(), &clock_);
    store_->Start();
    fs_ = std::make_unique<fs::FileSystem>(index_.get(), store_.get(), &clock_,
                                           fs::FileSystemOptions{});
  }

  Result<std::vector<std::uint8_t>> Read(std::uint64_t offset, std::size_t length) {
    std::vector<std::uint8_t> out(length);
    CKPTFS_RETURN_IF_ERROR(
        fs_->ReadRange(file_.id, offset, out, clock_.Now() + fs_->options().read_timeout));
    return out;
  }
  std::vector<std::uint8_t> Expected(std::uint64_t offset, std::size_t length) const {
    return {file_.content.begin() + offset, file_.content.begin() + offset + length};
  }

  TempDir temp_;
  FakeClock clock_;
  std::vector<std::unique_ptr<NginxServer>> nginx_;
  WrittenFile file_;
  netfetch::CurlTransport transport_;
  std::unique_ptr<index::IndexReader> index_;
  std::unique_ptr<netfetch::RetryingFetcher> fetcher_;
  std::unique_ptr<fs::IndexReplicas> replicas_;
  std::unique_ptr<fs::DiskCache> cache_;
  std::unique_ptr<fs::ChunkStore> store_;
  std::unique_ptr<fs::FileSystem> fs_;
};

TEST_F(EndToEnd, ReadRangeReturnsTheFilesBytesFromNginx) {
  ASSERT_NO_FATAL_FAILURE(StartNodes(1));
  ASSERT_NO_FATAL_FAILURE(OpenStack());
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto middle, Read(kChunk - 10, 2 * kChunk + 20));
  EXPECT_EQ(middle, Expected(kChunk - 10, 2 * kChunk + 20));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto last, Read(kFileSize - 1, 1));
  EXPECT_EQ(last, Expected(kFileSize - 1, 1));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto whole, Read(0, kFileSize));
  EXPECT_EQ(whole, file_.content);
  // Readers get a chunk before its cache write ends; the write follows at once.
  for (const auto& chunk : file_.chunks) {
    EXPECT_TRUE(PollUntil([&] { return cache_->Contains(chunk.digest); }));
  }
  EXPECT_EQ(fetcher_->counters().digest_mismatches.load(), 0u);
}

TEST_F(EndToEnd, CorruptObjectOnTheOnlyNodeFailsTheReadAndIsNeverCached) {
  ASSERT_NO_FATAL_FAILURE(StartNodes(1));
  ASSERT_NO_FATAL_FAILURE(CorruptObject(nginx_[0]->root(), file_.chunks[2].digest));
  ASSERT_NO_FATAL_FAILURE(OpenStack());
  auto read = Read(2 * kChunk + 5, 100);
  EXPECT_FALSE(read.ok()) << "a corrupt chunk was returned as file content";
  EXPECT_FALSE(cache_->Contains(file_.chunks[2].digest));
  EXPECT_GE(fetcher_->counters().digest_mismatches.load(), 1u);
  // The other chunks are unaffected.
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto good, Read(3 * kChunk, kChunk));
  EXPECT_EQ(good, Expected(3 * kChunk, kChunk));
}

TEST_F(EndToEnd, CorruptCopyOnOneOfTwoNodesIsSkipped) {
  ASSERT_NO_FATAL_FAILURE(StartNodes(2));
  for (const auto& chunk : file_.chunks) {
    ASSERT_NO_FATAL_FAILURE(CorruptObject(nginx_[0]->root(), chunk.digest));
  }
  ASSERT_NO_FATAL_FAILURE(OpenStack());
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto whole, Read(0, kFileSize));
  EXPECT_EQ(whole, file_.content);
  // Node n0 is asked at least once (an unmeasured node counts as the fastest), and its copy is
  // refused.
  EXPECT_GE(fetcher_->counters().digest_mismatches.load(), 1u);
}

TEST_F(EndToEnd, MissingObjectOnOneOfTwoNodesIsFetchedFromTheOther) {
  ASSERT_NO_FATAL_FAILURE(StartNodes(2));
  for (const auto& chunk : file_.chunks) {
    std::filesystem::remove(nginx_[1]->root() + "/" + index::ChunkObjectPath(chunk.digest));
  }
  ASSERT_NO_FATAL_FAILURE(OpenStack());
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto whole, Read(0, kFileSize));
  EXPECT_EQ(whole, file_.content);
}

}  // namespace
}  // namespace ckptfs
