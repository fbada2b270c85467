// cli::Publish into store directories and through HTTP PUT (a ScriptedTransport), checked by
// reading the index back with IndexReader and the objects back from disk or from the transport.
#include "cli/publish.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cli/store_leases.h"
#include "common/clock.h"
#include "common/digest.h"
#include "common/units.h"
#include "index/reader.h"
#include "index/types.h"
#include "tests/support/fake_clock.h"
#include "tests/support/scripted_transport.h"
#include "tests/support/single_file_index.h"
#include "tests/support/status_testing.h"
#include "tests/support/temp_dir.h"

namespace ckptfs {
namespace {

namespace stdfs = std::filesystem;
using cli::NodeSpec;
using cli::PublishOptions;
using testing::PatternBytes;
using testing::ScriptedTransport;
using testing::TempDir;

constexpr std::uint64_t kChunk = 64 << 10;

void WriteBytes(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  stdfs::create_directories(stdfs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::uint8_t> ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// SHA-256 of a file, read in 1 MiB blocks (objects may be 256 MiB).
Digest FileSha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> block(1 << 20);
  Sha256Hasher hasher;
  while (in.read(block.data(), static_cast<std::streamsize>(block.size())) || in.gcount() > 0) {
    hasher.Update(block.data(), static_cast<std::size_t>(in.gcount()));
  }
  return hasher.Finish();
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

// Resolves "a/b/c" below the root of `index`.
Result<index::Entry> LookupPath(const index::IndexReader& index, const std::string& relative) {
  std::uint64_t id = index::kRootId;
  Result<index::Entry> entry = index.GetEntry(id);
  std::stringstream parts(relative);
  for (std::string name; std::getline(parts, name, '/');) {
    entry = index.Lookup(id, name);
    if (!entry.ok()) return entry.status().WithContext(relative);
    id = entry->id;
  }
  return entry;
}

TEST(SplitAssignment, SplitsAtTheFirstEquals) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto pair, cli::SplitAssignment("n1=store", "--store"));
  EXPECT_EQ(pair.first, "n1");
  EXPECT_EQ(pair.second, "store");
  CKPTFS_ASSERT_OK_AND_ASSIGN(pair, cli::SplitAssignment("n1=http://127.0.0.1:1/?a=b", "--node"));
  EXPECT_EQ(pair.first, "n1");
  EXPECT_EQ(pair.second, "http://127.0.0.1:1/?a=b");
}

TEST(SplitAssignment, RejectsAMissingNameValueOrEquals) {
  for (const char* text : {"", "n1", "=http://127.0.0.1:1", "n1=", "="}) {
    auto pair = cli::SplitAssignment(text, "--node");
    EXPECT_EQ(pair.status().code(), StatusCode::kInvalidArgument) << "'" << text << "'";
    EXPECT_NE(pair.status().message().find("--node"), std::string::npos)
        << pair.status().ToString();
    EXPECT_NE(pair.status().message().find(std::string("'").append(text).append("'")),
              std::string::npos)
        << pair.status().ToString();
  }
}

class Publish : public ::testing::Test {
 protected:
  void SetUp() override {
    transport_.SetOnCall([](const std::string& url) {
      ADD_FAILURE() << "publish into --store directories made a request: " << url;
    });
    source_ = temp_.Path("src");
    index_path_ = temp_.Path("out/index.db");
    stdfs::create_directories(temp_.Path("out"));
  }

  // A small tree: files of several chunks, a short tail, a chunk shared by two files, an empty
  // file in a nested directory, and a symlink.
  void MakeSourceTree() {
    a_ = PatternBytes(3 * kChunk + 5000, 1);
    std::vector<std::uint8_t> b(a_.begin(), a_.begin() + kChunk);  // Same first chunk as a.bin.
    auto rest = PatternBytes(kChunk + 10, 2);
    b.insert(b.end(), rest.begin(), rest.end());
    WriteBytes(source_ + "/a.bin", a_);
    WriteBytes(source_ + "/sub/b.bin", b);
    WriteBytes(source_ + "/sub/deeper/empty", {});
    ASSERT_EQ(::symlink("a.bin", (source_ + "/link").c_str()), 0);
  }

  // Three nodes, each with a store directory; two replicas.
  PublishOptions StoreOptions() {
    PublishOptions options;
    options.source_dir = source_;
    options.index_path = index_path_;
    options.chunk_size = kChunk;
    options.replicas = 2;
    for (int i = 1; i <= 3; ++i) {
      std::string name = "n" + std::to_string(i);
      options.nodes.push_back({name, "http://127.0.0.1:" + std::to_string(i)});
      options.stores[name] = temp_.Path("store" + std::to_string(i));
    }
    return options;
  }

  Status Run(const PublishOptions& options) {
    output_.str("");
    return cli::Publish(options, transport_, clock_, output_);
  }

  // Expects `options` to fail, leaving neither the index nor a temporary index behind.
  Status ExpectFailsCleanly(const PublishOptions& options) {
    Status status = Run(options);
    EXPECT_FALSE(status.ok()) << "publish should have failed";
    EXPECT_FALSE(Exists(options.index_path)) << "an index was written by a failed publish";
    ExpectNoTemporaryIndex(options.index_path);
    return status;
  }

  static void ExpectNoTemporaryIndex(const std::string& index_path) {
    const stdfs::path index(index_path);
    const std::string prefix = index.filename().string() + ".tmp.";
    for (const auto& e : stdfs::directory_iterator(index.parent_path())) {
      EXPECT_NE(e.path().filename().string().rfind(prefix, 0), 0u)
          << "left behind: " << e.path().string();
    }
  }

  // Checks every file under the source against the index, and every chunk of it against the
  // stores: on exactly `replicas` distinct nodes, with the right bytes, and on no other node.
  // `exclusive`: no copy on other nodes either (false when an earlier publish used the stores).
  void VerifyPublished(const PublishOptions& options, int replicas, bool exclusive = true) {
    CKPTFS_ASSERT_OK_AND_ASSIGN(auto index, index::IndexReader::Open(options.index_path));
    std::map<std::int64_t, std::string> store_of;  // Node id → store directory.
    for (const index::Node& node : index->nodes()) store_of[node.id] = options.stores.at(node.name);
    ASSERT_EQ(store_of.size(), options.nodes.size());
    for (const auto& e : stdfs::recursive_directory_iterator(options.source_dir)) {
      // Lexically: stdfs::relative would resolve the symlink to its target.
      std::string relative = e.path().lexically_relative(options.source_dir).string();
      CKPTFS_ASSERT_OK_AND_ASSIGN(index::Entry entry, LookupPath(*index, relative));
      if (e.is_symlink()) {
        EXPECT_EQ(entry.type, index::EntryType::kSymlink) << relative;
        EXPECT_EQ(entry.target, stdfs::read_symlink(e.path()).string()) << relative;
      } else if (e.is_directory()) {
        EXPECT_EQ(entry.type, index::EntryType::kDirectory) << relative;
      } else {
        ASSERT_EQ(entry.type, index::EntryType::kFile) << relative;
        CKPTFS_EXPECT_OK(index->ValidateFile(entry.id));
        VerifyFileChunks(*index, entry, ReadBytes(e.path()), store_of, replicas, exclusive);
      }
    }
  }

  void VerifyFileChunks(const index::IndexReader& index, const index::Entry& entry,
                        const std::vector<std::uint8_t>& content,
                        const std::map<std::int64_t, std::string>& store_of, int replicas,
                        bool exclusive) {
    ASSERT_EQ(entry.size, content.size()) << entry.name;
    if (content.empty()) return;
    CKPTFS_ASSERT_OK_AND_ASSIGN(auto extents, index.ExtentsInRange(entry.id, 0, content.size()));
    std::uint64_t offset = 0;
    for (const index::Extent& x : extents) {
      ASSERT_EQ(x.offset, offset) << entry.name;
      ASSERT_EQ(x.size, std::min<std::uint64_t>(kChunk, content.size() - offset)) << entry.name;
      EXPECT_EQ(x.digest, Sha256(content.data() + offset, x.size)) << entry.name << "@" << offset;
      offset += x.size;
      CKPTFS_ASSERT_OK_AND_ASSIGN(auto nodes, index.Replicas(x.chunk_id));
      std::set<std::int64_t> distinct(nodes.begin(), nodes.end());
      EXPECT_EQ(distinct.size(), static_cast<std::size_t>(replicas)) << entry.name << "@" << offset;
      for (const auto& [node, store] : store_of) {
        std::string object = store + "/" + index::ChunkObjectPath(x.digest);
        if (distinct.contains(node)) {
          ASSERT_TRUE(Exists(object)) << object;
          EXPECT_EQ(FileSha256(object), x.digest) << object;
        } else if (exclusive) {
          EXPECT_FALSE(Exists(object)) << "a copy beyond the replica count: " << object;
        }
      }
    }
    EXPECT_EQ(offset, content.size()) << entry.name;
  }

  TempDir temp_;
  std::string source_;
  std::string index_path_;
  std::vector<std::uint8_t> a_;
  // Scripted delays and the waits between attempts move this clock only.
  testing::FakeClock clock_;
  ScriptedTransport transport_{&clock_};
  std::ostringstream output_;
};

TEST_F(Publish, WritesTheIndexAndEveryChunkOnReplicasDistinctStores) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  PublishOptions options = StoreOptions();
  CKPTFS_ASSERT_OK(Run(options));
  EXPECT_TRUE(Exists(options.index_path));
  ExpectNoTemporaryIndex(options.index_path);
  VerifyPublished(options, 2);
  EXPECT_EQ(transport_.TotalCalls(), 0);
  EXPECT_NE(output_.str().find("published"), std::string::npos) << output_.str();

  CKPTFS_ASSERT_OK_AND_ASSIGN(auto index, index::IndexReader::Open(options.index_path));
  EXPECT_EQ(index->chunk_size(), kChunk);
  EXPECT_EQ(index->stats().files, 3u);
  // a.bin has 4 chunks, b.bin 3 of which the first is a.bin's: 6 unique.
  EXPECT_EQ(index->stats().chunks, 6u);
}

TEST_F(Publish, EveryChunkGoesToAllNodesWhenReplicasEqualsNodes) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  PublishOptions options = StoreOptions();
  options.replicas = 3;
  CKPTFS_ASSERT_OK(Run(options));
  VerifyPublished(options, 3);
}

TEST_F(Publish, RepublishingIntoTheSameStoresSucceedsAndReplacesTheIndex) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  PublishOptions options = StoreOptions();
  CKPTFS_ASSERT_OK(Run(options));
  WriteBytes(source_ + "/new.bin", PatternBytes(100, 9));
  CKPTFS_ASSERT_OK(Run(options));
  VerifyPublished(options, 2, /*exclusive=*/false);
  ExpectNoTemporaryIndex(options.index_path);
}

// The index and the stores are publish's output, not part of the checkpoint, even when written
// inside the directory being published.
TEST_F(Publish, AnIndexAndStoresInsideTheSourceAreNotPublishedAsItsFiles) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  PublishOptions options = StoreOptions();
  options.index_path = source_ + "/ckpt.ckptfs";
  options.stores["n1"] = source_ + "/store-n1";
  CKPTFS_ASSERT_OK(Run(options));
  CKPTFS_ASSERT_OK(Run(options));  // Now the index and store n1 exist inside the source.
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto index, index::IndexReader::Open(options.index_path));
  for (const char* own : {"ckpt.ckptfs", "store-n1"}) {
    Result<index::Entry> entry = LookupPath(*index, own);
    EXPECT_FALSE(entry.ok()) << own << " was published as part of the tree";
  }
  Result<index::Entry> file = LookupPath(*index, "a.bin");
  EXPECT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_NE(output_.str().find("files: 3,"), std::string::npos) << output_.str();
}

TEST_F(Publish, MissingSourceFailsCleanly) {
  PublishOptions options = StoreOptions();
  options.source_dir = temp_.Path("no-such-dir");
  ExpectFailsCleanly(options).IgnoreError();
}

TEST_F(Publish, SourceThatIsAFileFailsCleanly) {
  WriteBytes(temp_.Path("plain"), {1, 2, 3});
  PublishOptions options = StoreOptions();
  options.source_dir = temp_.Path("plain");
  ExpectFailsCleanly(options).IgnoreError();
}

TEST_F(Publish, FifoInTheTreeFailsCleanlyBeforeAnyObjectIsStored) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  ASSERT_EQ(::mkfifo((source_ + "/sub/pipe").c_str(), 0644), 0);
  PublishOptions options = StoreOptions();
  Status status = ExpectFailsCleanly(options);
  EXPECT_NE(status.message().find("fifo"), std::string::npos) << status.ToString();
  EXPECT_NE(status.message().find("sub/pipe"), std::string::npos) << status.ToString();
  for (const auto& [name, store] : options.stores) {
    EXPECT_FALSE(Exists(store + "/" + index::ChunkObjectPath(Sha256(a_.data(), kChunk))))
        << "an object was stored for a tree that cannot be published";
  }
}

TEST_F(Publish, UnknownNodeInStoresFailsCleanly) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  PublishOptions options = StoreOptions();
  options.stores["n9"] = temp_.Path("store9");
  Status status = ExpectFailsCleanly(options);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("n9"), std::string::npos) << status.ToString();
}

TEST_F(Publish, MoreReplicasThanNodesFailsCleanly) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  PublishOptions options = StoreOptions();
  options.replicas = 4;
  EXPECT_EQ(ExpectFailsCleanly(options).code(), StatusCode::kInvalidArgument);
}

TEST_F(Publish, UnwritableStoreFailsCleanly) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  // Tests run as root, which ignores permission bits: a path under a regular file fails for all.
  WriteBytes(temp_.Path("file"), {1});
  PublishOptions options = StoreOptions();
  options.stores["n2"] = temp_.Path("file/store");
  Status status = ExpectFailsCleanly(options);
  EXPECT_NE(status.message().find("n2"), std::string::npos) << status.ToString();
}

TEST_F(Publish, StoreWriteFailureMidwayFailsCleanly) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  PublishOptions options = StoreOptions();
  // The directory of a.bin's second chunk is a regular file on every store, so storing that
  // chunk fails after the temporary index was created and the first chunk stored.
  std::string hex = Sha256(a_.data() + kChunk, kChunk).Hex();
  for (const auto& [name, store] : options.stores) {
    WriteBytes(store + "/chunks/" + hex.substr(0, 2), {0});
  }
  if (Sha256(a_.data(), kChunk).Hex().substr(0, 2) == hex.substr(0, 2)) {
    GTEST_FAIL() << "test data: the first two chunks share a directory";
  }
  ExpectFailsCleanly(options).IgnoreError();
  int stored = 0;
  for (const auto& [name, store] : options.stores) {
    stored += Exists(store + "/" + index::ChunkObjectPath(Sha256(a_.data(), kChunk)));
  }
  EXPECT_EQ(stored, 2) << "the failure should come after the first chunk was stored";
}

TEST_F(Publish, ChunkSizeOutOfRangeFailsCleanly) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  for (std::uint64_t size : {std::uint64_t{0}, std::uint64_t{kChunk - 1},
                             std::uint64_t{(256 << 20) + 1}, std::uint64_t{1} << 40}) {
    PublishOptions options = StoreOptions();
    options.chunk_size = size;
    EXPECT_EQ(ExpectFailsCleanly(options).code(), StatusCode::kInvalidArgument) << size;
  }
}

TEST_F(Publish, SmallestAndLargestChunkSizesAreAccepted) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  PublishOptions options = StoreOptions();
  options.chunk_size = 64 << 10;
  CKPTFS_EXPECT_OK(Run(options));
  options.chunk_size = 256 << 20;
  CKPTFS_EXPECT_OK(Run(options));
}

TEST_F(Publish, IndexListsTheDigestOfEveryBlockOfEveryChunk) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  PublishOptions options = StoreOptions();
  options.block_size = 16 << 10;
  CKPTFS_ASSERT_OK(Run(options));
  EXPECT_NE(output_.str().find("block size: " + FormatSize(16 << 10) + ", replicas: 2"),
            std::string::npos)
      << output_.str();
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto index, index::IndexReader::Open(options.index_path));
  EXPECT_EQ(index->schema_version(), 2);
  EXPECT_EQ(index->block_size(), 16u << 10);
  CKPTFS_ASSERT_OK_AND_ASSIGN(index::Entry entry, LookupPath(*index, "a.bin"));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto extents, index->ExtentsInRange(entry.id, 0, a_.size()));
  ASSERT_EQ(extents.size(), 4u);
  for (const index::Extent& x : extents) {
    SCOPED_TRACE(x.offset);
    CKPTFS_ASSERT_OK_AND_ASSIGN(index::BlockList blocks, index->Blocks(x.chunk_id));
    EXPECT_EQ(blocks.block_size, 16u << 10);
    // Computed here slice by slice, independently of publish's one-pass hashing.
    std::vector<Digest> expected;
    for (std::uint64_t at = 0; at < x.size; at += 16 << 10) {
      const std::uint64_t n = std::min<std::uint64_t>(16 << 10, x.size - at);
      expected.push_back(Sha256(a_.data() + x.offset + at, n));
    }
    EXPECT_EQ(blocks.digests, expected);
  }
  // The tail chunk of 5000 bytes is one short block.
  CKPTFS_ASSERT_OK_AND_ASSIGN(index::BlockList tail, index->Blocks(extents.back().chunk_id));
  EXPECT_EQ(tail.digests.size(), 1u);
}

TEST_F(Publish, DefaultBlockSizeIs64KiB) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  PublishOptions options = StoreOptions();
  options.chunk_size = 1 << 20;
  CKPTFS_ASSERT_OK(Run(options));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto index, index::IndexReader::Open(options.index_path));
  EXPECT_EQ(index->block_size(), 64u << 10);
  CKPTFS_ASSERT_OK_AND_ASSIGN(index::Entry entry, LookupPath(*index, "a.bin"));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto extents, index->ExtentsInRange(entry.id, 0, a_.size()));
  ASSERT_EQ(extents.size(), 1u);  // 3 * 64 KiB + 5000 bytes in one 1 MiB chunk.
  CKPTFS_ASSERT_OK_AND_ASSIGN(index::BlockList blocks, index->Blocks(extents[0].chunk_id));
  ASSERT_EQ(blocks.digests.size(), 4u);
  EXPECT_EQ(blocks.digests[3], Sha256(a_.data() + 3 * kChunk, 5000));
}

TEST_F(Publish, BadBlockSizeFailsCleanlyWithOneLine) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  for (std::uint64_t size : {std::uint64_t{0}, std::uint64_t{2048}, std::uint64_t{5000},
                             std::uint64_t{48 << 10}, 2 * kChunk}) {
    PublishOptions options = StoreOptions();
    options.block_size = size;
    Status status = ExpectFailsCleanly(options);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << size;
    EXPECT_EQ(status.message(),
              "--block-size must be a power of two from 4K to the chunk size (65536 bytes), got " +
                  std::to_string(size));
  }
  PublishOptions options = StoreOptions();
  options.block_size = 4096;
  CKPTFS_EXPECT_OK(Run(options));
  options.block_size = kChunk;
  CKPTFS_EXPECT_OK(Run(options));
}

TEST_F(Publish, NodeErrorsFailCleanly) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  PublishOptions options = StoreOptions();
  options.nodes.push_back({"n1", "http://127.0.0.1:7"});
  EXPECT_EQ(ExpectFailsCleanly(options).code(), StatusCode::kInvalidArgument) << "duplicate";
  options = StoreOptions();
  options.nodes[0].url = "ftp://127.0.0.1/";
  EXPECT_EQ(ExpectFailsCleanly(options).code(), StatusCode::kInvalidArgument) << "scheme";
  options = StoreOptions();
  options.nodes.clear();
  options.stores.clear();
  EXPECT_EQ(ExpectFailsCleanly(options).code(), StatusCode::kInvalidArgument) << "no nodes";
}

TEST_F(Publish, SparseFileOfFourGibibytesAndOneBytePublishesWithRightExtents) {
  constexpr std::uint64_t kBigChunk = 256ull << 20;
  constexpr std::uint64_t kSize = (4ull << 30) + 1;
  stdfs::create_directories(source_);
  {
    // All zero pages but the last byte: cheap on disk, and dedup stores one zero chunk.
    int fd = ::open((source_ + "/big.bin").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(kSize)), 0);
    ASSERT_EQ(::pwrite(fd, "x", 1, static_cast<off_t>(kSize - 1)), 1);
    ::close(fd);
  }
  PublishOptions options;
  options.source_dir = source_;
  options.index_path = index_path_;
  options.chunk_size = kBigChunk;
  options.nodes = {{"n1", "http://127.0.0.1:1"}};
  options.stores["n1"] = temp_.Path("store1");
  CKPTFS_ASSERT_OK(Run(options));

  CKPTFS_ASSERT_OK_AND_ASSIGN(auto index, index::IndexReader::Open(index_path_));
  CKPTFS_ASSERT_OK_AND_ASSIGN(index::Entry entry, LookupPath(*index, "big.bin"));
  EXPECT_EQ(entry.size, kSize);
  CKPTFS_EXPECT_OK(index->ValidateFile(entry.id));
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto extents, index->ExtentsInRange(entry.id, 0, kSize));
  ASSERT_EQ(extents.size(), 17u);
  Sha256Hasher zeros;
  std::vector<std::uint8_t> block(1 << 20, 0);
  for (std::uint64_t done = 0; done < kBigChunk; done += block.size()) {
    zeros.Update(block.data(), block.size());
  }
  const Digest zero_chunk = zeros.Finish();
  for (std::size_t i = 0; i < 16; ++i) {
    EXPECT_EQ(extents[i].offset, i * kBigChunk);
    EXPECT_EQ(extents[i].size, kBigChunk);
    EXPECT_EQ(extents[i].digest, zero_chunk) << i;
  }
  EXPECT_EQ(extents[16].offset, 4ull << 30);
  EXPECT_EQ(extents[16].size, 1u);
  EXPECT_EQ(extents[16].digest, Sha256("x", 1));
  EXPECT_EQ(index->stats().bytes, kSize);
  EXPECT_EQ(index->stats().chunks, 2u);
  std::string zero_object = options.stores["n1"] + "/" + index::ChunkObjectPath(zero_chunk);
  EXPECT_EQ(stdfs::file_size(zero_object), kBigChunk);
  EXPECT_EQ(ReadBytes(options.stores["n1"] + "/" + index::ChunkObjectPath(Sha256("x", 1))),
            std::vector<std::uint8_t>{'x'});
}

class PublishByPut : public Publish {
 protected:
  void SetUp() override {
    Publish::SetUp();
    transport_.SetOnCall(nullptr);  // Requests are the point here.
  }
  // Where node n`node` keeps the first chunk of `content`.
  static std::string FirstObjectUrl(const std::vector<std::uint8_t>& content, int node) {
    return "http://127.0.0.1:" + std::to_string(node) + "/" +
           index::ChunkObjectPath(Sha256(content.data(), kChunk));
  }
  // PutOptions with the index PUT to kIndexUrl, staged in temp_/tmp.
  PublishOptions UrlIndexOptions() {
    stdfs::create_directories(temp_.Path("tmp"));
    PublishOptions options = PutOptions();
    options.index_path = kIndexUrl;
    options.temp_dir = temp_.Path("tmp");
    return options;
  }
  static constexpr const char* kIndexUrl = "http://127.0.0.1:3/indexes/ckpt.ckptfs";
  static constexpr const char* kLeaseId = "publish-test-1";
  static std::string LeaseUrl(int node, const char* suffix) {
    return "http://127.0.0.1:" + std::to_string(node) + "/leases/" + kLeaseId + suffix;
  }
  // The calls of the transport that went to chunk objects, in order.
  std::vector<std::string> ObjectCalls() const {
    std::vector<std::string> calls;
    for (const std::string& url : transport_.CallOrder()) {
      if (url.find("/chunks/") != std::string::npos) calls.push_back(url);
    }
    return calls;
  }

  PublishOptions PutOptions() {
    PublishOptions options;
    options.lease_id = kLeaseId;
    options.source_dir = source_;
    options.index_path = index_path_;
    options.chunk_size = kChunk;
    options.nodes = {{"n1", "http://127.0.0.1:1/"}, {"n2", "http://127.0.0.1:2"}};
    return options;  // replicas 0: the default, min(2, nodes).
  }
};

TEST_F(PublishByPut, WithoutStoresEveryObjectIsPutToItsNodesUrl) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  CKPTFS_ASSERT_OK(Run(PutOptions()));
  std::vector<std::string> put = ObjectCalls();

  CKPTFS_ASSERT_OK_AND_ASSIGN(auto index, index::IndexReader::Open(index_path_));
  ASSERT_EQ(index->nodes().size(), 2u);
  EXPECT_EQ(index->nodes()[0].url, "http://127.0.0.1:1") << "trailing slash kept";
  std::set<Digest> chunks;
  for (const char* path : {"a.bin", "sub/b.bin"}) {
    CKPTFS_ASSERT_OK_AND_ASSIGN(index::Entry entry, LookupPath(*index, path));
    CKPTFS_ASSERT_OK_AND_ASSIGN(auto extents, index->ExtentsInRange(entry.id, 0, entry.size));
    for (const index::Extent& x : extents) chunks.insert(x.digest);
  }
  ASSERT_EQ(chunks.size(), 6u);
  std::vector<std::string> expected;
  for (const Digest& d : chunks) {
    for (const char* base : {"http://127.0.0.1:1/", "http://127.0.0.1:2/"}) {
      expected.push_back(base + index::ChunkObjectPath(d));
    }
  }
  std::sort(put.begin(), put.end());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(put, expected) << "each chunk PUT once to each of its 2 nodes";
}

TEST_F(PublishByPut, PutBodiesHaveTheChunksDigest) {
  // One file of exactly two chunks, so each object's size is known.
  auto content = PatternBytes(2 * kChunk, 3);
  WriteBytes(source_ + "/m.bin", content);
  CKPTFS_ASSERT_OK(Run(PutOptions()));
  for (int i = 0; i < 2; ++i) {
    Digest d = Sha256(content.data() + i * kChunk, kChunk);
    for (const char* base : {"http://127.0.0.1:1/", "http://127.0.0.1:2/"}) {
      std::vector<std::uint8_t> body(kChunk);
      std::string url = base + index::ChunkObjectPath(d);
      CKPTFS_ASSERT_OK(transport_.Get(url, body, std::chrono::seconds(1)));
      EXPECT_EQ(Sha256(body.data(), body.size()), d) << url;
    }
  }
}

TEST_F(PublishByPut, ObjectsTheNodesHoldAreNotSentAgain) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  CKPTFS_ASSERT_OK(Run(PutOptions()));
  const std::size_t first_puts = ObjectCalls().size();
  ASSERT_EQ(first_puts, 12u) << "6 unique chunks on 2 nodes";
  EXPECT_EQ(transport_.Heads().size(), 12u) << "each object is asked for before it is sent";
  EXPECT_NE(output_.str().find("node n1: "), std::string::npos) << output_.str();
  EXPECT_NE(output_.str().find("sent 6 ("), std::string::npos) << output_.str();

  // Published again, as after a failed publish or for the next checkpoint: the scripted nodes
  // now hold every object.
  CKPTFS_ASSERT_OK(Run(PutOptions()));
  EXPECT_EQ(ObjectCalls().size(), first_puts) << "an object a node holds was sent again";
  EXPECT_EQ(transport_.Heads().size(), 24u);
  EXPECT_NE(output_.str().find("sent 0 (0 B), already there 6 ("), std::string::npos)
      << output_.str();
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto index, index::IndexReader::Open(index_path_));
  EXPECT_EQ(index->stats().chunks, 6u);
}

TEST_F(PublishByPut, AnObjectOfAnotherSizeIsSentAgain) {
  auto content = PatternBytes(2 * kChunk, 3);
  WriteBytes(source_ + "/m.bin", content);
  const std::string url = FirstObjectUrl(content, 2);
  // What a node left of an upload cut short, had it kept one: not the chunk.
  transport_.SetResponse(url, testing::ScriptedResponse::Body(PatternBytes(kChunk / 2, 3)));
  CKPTFS_ASSERT_OK(Run(PutOptions()));
  EXPECT_EQ(transport_.Calls(url), 1) << "the short object was not replaced";
  std::vector<std::uint8_t> body(kChunk);
  CKPTFS_ASSERT_OK(transport_.Get(url, body, std::chrono::seconds(1)));
  EXPECT_EQ(body, std::vector<std::uint8_t>(content.begin(), content.begin() + kChunk));
}

TEST_F(PublishByPut, UploadsRunSideBySide) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  // Each PUT waits until 4 are under way at once; one at a time would wait out the deadline.
  constexpr int kAtOnce = 4;
  std::mutex mu;
  std::condition_variable arrived;
  int started = 0;
  bool all_four = false;
  bool waited_out = false;  // Then later calls do not wait again.
  transport_.SetOnCall([&](const std::string& url) {
    if (url.find("/chunks/") == std::string::npos) return;  // The leases.
    std::unique_lock lock(mu);
    if (++started == kAtOnce) arrived.notify_all();
    if (waited_out) return;
    all_four = arrived.wait_for(lock, std::chrono::seconds(10), [&] { return started >= kAtOnce; });
    waited_out = !all_four;
  });
  PublishOptions options = PutOptions();
  options.uploads = kAtOnce;
  CKPTFS_ASSERT_OK(Run(options));
  EXPECT_TRUE(all_four) << "fewer than " << kAtOnce << " PUTs were ever under way at once";
  EXPECT_EQ(ObjectCalls().size(), 12u);
}

TEST_F(PublishByPut, AFailedUploadStopsThePublishEarly) {
  // 40 chunks; the first object PUT to n2 fails.
  auto content = PatternBytes(40 * kChunk, 4);
  WriteBytes(source_ + "/big.bin", content);
  const std::string url = FirstObjectUrl(content, 2);
  transport_.SetResponse(url, testing::ScriptedResponse::Error(UnavailableError("HTTP 507")));
  // One upload thread, so the order is fixed: the first chunk's two stores, then the second
  // chunk's (its buffer filled meanwhile), which the failure drops; nothing more is read.
  PublishOptions options = PutOptions();
  options.uploads = 1;
  Status status = ExpectFailsCleanly(options);
  EXPECT_NE(status.message().find("HTTP 507"), std::string::npos) << status.ToString();
  EXPECT_EQ(transport_.Calls(url), 3);
  EXPECT_LE(ObjectCalls().size(), 1u + 3) << "publish went on after an upload failed";
  EXPECT_EQ(transport_.Deletes(),
            (std::vector<std::string>{LeaseUrl(1, ".publishing"), LeaseUrl(2, ".publishing")}))
      << "the leases stayed after the publish failed";
  EXPECT_FALSE(transport_.Stored(LeaseUrl(1, ".found"))) << "a failed publish listed what it found";
}

TEST_F(PublishByPut, APutThatFailsOnceIsTriedAgain) {
  auto content = PatternBytes(2 * kChunk, 5);
  WriteBytes(source_ + "/m.bin", content);
  const std::string url = FirstObjectUrl(content, 1);
  transport_.Enqueue(url, testing::ScriptedResponse::Error(UnavailableError("connection reset")));
  CKPTFS_ASSERT_OK(Run(PutOptions()));
  EXPECT_EQ(transport_.Calls(url), 2);
  std::vector<std::uint8_t> body(kChunk);
  CKPTFS_ASSERT_OK(transport_.Get(url, body, std::chrono::seconds(1)));
  EXPECT_EQ(body, std::vector<std::uint8_t>(content.begin(), content.begin() + kChunk));
}

TEST_F(PublishByPut, APutThatFailsAfterSecondsIsNotTriedAgain) {
  // What a server that stopped answering gives: nothing, then curl's low-speed abort.
  auto content = PatternBytes(kChunk, 7);
  WriteBytes(source_ + "/m.bin", content);
  const std::string url = FirstObjectUrl(content, 2);
  transport_.Enqueue(url, testing::ScriptedResponse::Error(UnavailableError("Operation too slow"),
                                                           std::chrono::seconds(3)));
  Status status = ExpectFailsCleanly(PutOptions());
  EXPECT_NE(status.message().find("(1 attempt)"), std::string::npos) << status.ToString();
  EXPECT_EQ(transport_.Calls(url), 1);
}

TEST_F(PublishByPut, AHeadThatGetsNoAnswerFailsWithoutAPut) {
  auto content = PatternBytes(kChunk, 8);
  WriteBytes(source_ + "/m.bin", content);
  const std::string url = FirstObjectUrl(content, 2);
  transport_.SetResponse(url, testing::ScriptedResponse::Error(
                                  UnavailableError("Operation too slow"), std::chrono::seconds(3)));
  Status status = ExpectFailsCleanly(PutOptions());
  EXPECT_NE(status.message().find("cannot upload to node n2: "), std::string::npos)
      << status.ToString();
  EXPECT_EQ(transport_.Calls(url), 0) << "a PUT went to a node that did not answer its HEAD";
}

TEST_F(PublishByPut, APutPastItsDeadlineIsNotTriedAgain) {
  auto content = PatternBytes(kChunk, 6);
  WriteBytes(source_ + "/m.bin", content);
  const std::string url = FirstObjectUrl(content, 2);
  transport_.SetResponse(url, testing::ScriptedResponse::Error(DeadlineExceededError("slow")));
  Status status = ExpectFailsCleanly(PutOptions());
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded) << status.ToString();
  EXPECT_EQ(transport_.Calls(url), 1);
}

TEST_F(PublishByPut, ProgressIsShownOnOneLineAtMostOnceASecond) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  // Each PUT takes 600 ms of the fake clock: 12 of them, 7.2 s.
  transport_.SetOnCall([&](const std::string&) { clock_.Advance(std::chrono::milliseconds(600)); });
  std::ostringstream progress;
  PublishOptions options = PutOptions();
  options.uploads = 1;
  options.progress = &progress;
  CKPTFS_ASSERT_OK(Run(options));
  const std::string shown = progress.str();
  ASSERT_FALSE(shown.empty());
  EXPECT_EQ(shown.find('\n'), shown.size() - 1) << "one line, ended once: " << shown;
  const auto updates = std::count(shown.begin(), shown.end(), '\r');
  EXPECT_GE(updates, 3) << shown;
  EXPECT_LE(updates, 9) << "more than one update a second: " << shown;
  const std::string last = shown.substr(shown.rfind('\r') + 1);
  const std::uint64_t total = a_.size() + 2 * kChunk + 10;
  EXPECT_EQ(last.rfind("publish: " + FormatSize(total) + " of " + FormatSize(total) +
                           " (100%), 3 of 3 files, ",
                       0),
            0u)
      << last;
  EXPECT_EQ(output_.str().find('\r'), std::string::npos) << "progress went into the summary";
}

TEST_F(PublishByPut, APublishOfUnderASecondShowsNoProgress) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  std::ostringstream progress;
  PublishOptions options = PutOptions();
  options.progress = &progress;
  CKPTFS_ASSERT_OK(Run(options));
  EXPECT_EQ(progress.str(), "");
}

TEST_F(PublishByPut, AnIndexForAUrlIsPutThereLastOfAll) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  const std::string url = kIndexUrl;
  CKPTFS_ASSERT_OK(Run(UrlIndexOptions()));
  const std::vector<std::string> calls = transport_.CallOrder();
  ASSERT_EQ(ObjectCalls().size(), 12u);
  ASSERT_EQ(calls.size(), 2u + 12 + 2 + 1) << "leases, objects, found lists, then the index";
  EXPECT_EQ(calls.back(), url);
  EXPECT_TRUE(stdfs::is_empty(temp_.Path("tmp"))) << "the staged index was left behind";
  EXPECT_NE(output_.str().find("to " + url), std::string::npos) << output_.str();

  // What the server got is the index: it opens and lists the tree.
  Result<netfetch::FileFetch> got =
      transport_.GetToFile(url, temp_.Path("got.ckptfs"), std::chrono::seconds(1));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  CKPTFS_ASSERT_OK_AND_ASSIGN(auto index, index::IndexReader::Open(temp_.Path("got.ckptfs")));
  EXPECT_EQ(index->stats().files, 3u);
  EXPECT_TRUE(LookupPath(*index, "sub/b.bin").ok());
}

TEST_F(PublishByPut, ALeaseComesFirstAndGoesAfterTheIndex) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  CKPTFS_ASSERT_OK(Run(UrlIndexOptions()));
  const std::vector<std::string> calls = transport_.CallOrder();
  ASSERT_GE(calls.size(), 2u);
  EXPECT_EQ(std::set<std::string>(calls.begin(), calls.begin() + 2),
            (std::set<std::string>{LeaseUrl(1, ".publishing"), LeaseUrl(2, ".publishing")}))
      << "an object went out before the leases";
  const auto found_at = std::find(calls.begin(), calls.end(), LeaseUrl(2, ".found"));
  const auto last_object = std::find_if(calls.rbegin(), calls.rend(), [](const std::string& url) {
    return url.find("/chunks/") != std::string::npos;
  });
  ASSERT_NE(found_at, calls.end());
  EXPECT_GT(found_at - calls.begin(), calls.rend() - last_object - 1)
      << "the list of found objects went out before the last object";
  EXPECT_EQ(transport_.Heads().front().find("/leases/"), std::string::npos)
      << "a lease was asked for with HEAD";
  EXPECT_EQ(transport_.Deletes(),
            (std::vector<std::string>{LeaseUrl(1, ".publishing"), LeaseUrl(2, ".publishing")}));
  const std::string body = [&] {
    std::optional<std::vector<std::uint8_t>> bytes = transport_.Stored(LeaseUrl(1, ".found"));
    return bytes ? std::string(bytes->begin(), bytes->end()) : std::string("(none)");
  }();
  EXPECT_EQ(body, "") << "nothing was on the nodes before";
}

TEST_F(PublishByPut, TheObjectsANodeHeldAreListedForGc) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  CKPTFS_ASSERT_OK(Run(PutOptions()));
  std::set<std::string> objects;
  for (const std::string& url : ObjectCalls()) {
    if (url.rfind("http://127.0.0.1:1/", 0) == 0) objects.insert(url.substr(url.rfind('/') + 1));
  }
  ASSERT_EQ(objects.size(), 6u);
  CKPTFS_ASSERT_OK(Run(PutOptions()));  // Every object is there now.
  std::optional<std::vector<std::uint8_t>> found = transport_.Stored(LeaseUrl(1, ".found"));
  ASSERT_TRUE(found);
  std::string expected;
  for (const std::string& hex : objects) expected += hex + "\n";  // The set is sorted.
  EXPECT_EQ(std::string(found->begin(), found->end()), expected);
}

TEST_F(PublishByPut, AGcAtWorkOnANodeStopsThePublishBeforeAnyObject) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  transport_.SetAge("http://127.0.0.1:2/leases/gc", std::chrono::seconds(30));
  Status status = ExpectFailsCleanly(PutOptions());
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition) << status.ToString();
  EXPECT_NE(status.message().find("node n2: `ckptfs gc` is removing unused objects from its "
                                  "store (http://127.0.0.1:2/leases/gc was renewed 30 s ago)"),
            std::string::npos)
      << status.ToString();
  EXPECT_TRUE(ObjectCalls().empty());
  EXPECT_TRUE(transport_.Heads().empty());
  EXPECT_EQ(transport_.Deletes(),
            (std::vector<std::string>{LeaseUrl(1, ".publishing"), LeaseUrl(2, ".publishing")}))
      << "the leases stayed";
}

TEST_F(PublishByPut, AGcNoteNotRenewedForTenMinutesIsPassedOver) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  transport_.SetAge("http://127.0.0.1:2/leases/gc", std::chrono::seconds(600));
  CKPTFS_ASSERT_OK(Run(PutOptions()));
  EXPECT_EQ(ObjectCalls().size(), 12u);
}

TEST_F(PublishByPut, ANodeThatRefusesTheLeaseIsStillPublishedTo) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  // A server that takes PUT under chunks/ only.
  transport_.SetResponse(LeaseUrl(2, ".publishing"),
                         testing::ScriptedResponse::Error(UnavailableError("HTTP 403")));
  CKPTFS_ASSERT_OK(Run(PutOptions()));
  EXPECT_EQ(ObjectCalls().size(), 12u);
  EXPECT_EQ(transport_.Calls(LeaseUrl(2, ".publishing")), 1 + 3)
      << "a first try, then tried as a chunk PUT is";
  EXPECT_EQ(transport_.Calls(LeaseUrl(2, ".found")), 0);
  EXPECT_EQ(transport_.Deletes(), std::vector<std::string>{LeaseUrl(1, ".publishing")});
}

TEST_F(PublishByPut, ANodeThatRefusesTheLeaseSlowlyIsStillPublishedTo) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  // Each refusal takes 0.4 s (a far server): the attempts add up to more than a second, but each
  // was an answer.
  transport_.SetResponse(LeaseUrl(2, ".publishing"),
                         testing::ScriptedResponse::Error(UnavailableError("HTTP 403"),
                                                          std::chrono::milliseconds(400)));
  CKPTFS_ASSERT_OK(Run(PutOptions()));
  EXPECT_EQ(ObjectCalls().size(), 12u);
  EXPECT_EQ(transport_.Calls(LeaseUrl(2, ".publishing")), 1 + 3);
}

TEST_F(PublishByPut, ALeasePutThatGetsNoAnswerFailsThePublishBeforeAnyObject) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  transport_.SetResponse(LeaseUrl(2, ".publishing"),
                         testing::ScriptedResponse::Error(UnavailableError("Operation too slow"),
                                                          std::chrono::seconds(3)));
  Status status = ExpectFailsCleanly(PutOptions());
  EXPECT_NE(status.message().find("cannot upload to node n2: "), std::string::npos)
      << status.ToString();
  EXPECT_EQ(transport_.Calls(LeaseUrl(2, ".publishing")), 1) << "a node that did not answer";
  EXPECT_TRUE(ObjectCalls().empty());
  EXPECT_EQ(transport_.Deletes(), std::vector<std::string>{LeaseUrl(1, ".publishing")});
}

TEST_F(PublishByPut, ALeaseThatWentUnrenewedForItsLifetimeFailsThePublish) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  // The first object takes 11 minutes, in which no renewal is made: a gc would have passed the
  // lease over.
  std::atomic<bool> first{true};
  transport_.SetOnCall([&](const std::string& url) {
    if (url.find("/chunks/") != std::string::npos && first.exchange(false)) {
      clock_.Advance(std::chrono::minutes(11));
    }
  });
  Status status = ExpectFailsCleanly(PutOptions());
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition) << status.ToString();
  EXPECT_NE(status.message().find("lease went 660 s without renewal"), std::string::npos)
      << status.ToString();
  EXPECT_EQ(transport_.Calls(LeaseUrl(1, ".found")), 0);
}

TEST_F(PublishByPut, ALeaseIsRenewedWhileThePublishRuns) {
  PublishOptions options = PutOptions();
  options.nodes[0].url = "http://127.0.0.1:1";  // As Publish passes it on: no trailing slash.
  testing::ScriptedTransport transport;
  RealClock clock;
  {
    CKPTFS_ASSERT_OK_AND_ASSIGN(
        std::unique_ptr<cli::PublishLeases> leases,
        cli::PublishLeases::Take(options, transport, clock,
                                 {std::chrono::seconds(600), std::chrono::seconds(0)}));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (transport.Calls(LeaseUrl(1, ".publishing")) < 3 &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_GE(transport.Calls(LeaseUrl(1, ".publishing")), 3) << "not renewed";
    CKPTFS_EXPECT_OK(leases->Settle());
  }
  EXPECT_FALSE(transport.Stored(LeaseUrl(1, ".publishing")));
  EXPECT_FALSE(transport.Stored(LeaseUrl(2, ".publishing")));
  EXPECT_TRUE(transport.Stored(LeaseUrl(2, ".found")));
}

TEST_F(PublishByPut, AnIndexPutThatFailsFailsThePublish) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  const std::string url = kIndexUrl;
  transport_.SetResponse(url, testing::ScriptedResponse::Error(UnavailableError("HTTP 507")));
  Status status = Run(UrlIndexOptions());
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("cannot upload the index (3 attempts)"), std::string::npos)
      << status.ToString();
  EXPECT_EQ(transport_.Calls(url), 3);
  EXPECT_TRUE(stdfs::is_empty(temp_.Path("tmp")));
}

TEST_F(PublishByPut, ZeroUploadsIsRefused) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  PublishOptions options = PutOptions();
  options.uploads = 0;
  Status status = ExpectFailsCleanly(options);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("--uploads"), std::string::npos) << status.ToString();
  EXPECT_EQ(transport_.TotalCalls(), 0);
}

TEST_F(PublishByPut, FailedPutFailsCleanlyAndKeepsTheOldIndex) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  WriteBytes(index_path_, {'o', 'l', 'd'});
  std::string url =
      "http://127.0.0.1:2/" + index::ChunkObjectPath(Sha256(a_.data() + kChunk, kChunk));
  transport_.SetResponse(url, testing::ScriptedResponse::Error(UnavailableError("HTTP 507")));
  Status status = Run(PutOptions());
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("cannot upload to node n2 (3 attempts)"), std::string::npos)
      << status.ToString();
  EXPECT_EQ(transport_.Calls(url), 3);
  EXPECT_GE(transport_.TotalCalls(), 5) << "the failure should come after earlier PUTs";
  EXPECT_EQ(ReadBytes(index_path_), (std::vector<std::uint8_t>{'o', 'l', 'd'}))
      << "a failed publish replaced the existing index";
  ExpectNoTemporaryIndex(index_path_);
}

// A training job may still be writing into the directory: what it changes while publish reads
// it must fail the publish, not be published as bytes no version of the file held.
class PublishWhileWritten : public PublishByPut {
 protected:
  // Runs `change` once, at the first PUT: after the tree walk, with a.bin being read. One upload
  // at a time has two chunk buffers, so publish cannot read past a.bin's second chunk until the
  // first PUT, and `change` with it, is over.
  Status RunChangingAtTheFirstPut(std::function<void()> change) {
    // Shared: the transport runs a copy of the hook at each call.
    auto done = std::make_shared<std::atomic<bool>>(false);
    transport_.SetOnCall([change = std::move(change), done](const std::string&) {
      if (!done->exchange(true)) change();
    });
    PublishOptions options = PutOptions();
    options.uploads = 1;
    return ExpectFailsCleanly(options);
  }
  // A rewrite in place truncates the file first: a read that falls in that moment finds it
  // shorter than the walk did, and says so ("shrank") rather than "changed".
  static void ExpectNamesAChangedFile(const Status& status, const std::string& file) {
    EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition) << status.ToString();
    EXPECT_TRUE(status.message().find(file + " changed while it was being published") !=
                    std::string::npos ||
                status.message().find(file + " shrank while it was being published") !=
                    std::string::npos)
        << status.ToString();
  }
};

TEST_F(PublishWhileWritten, AFileRewrittenInPlaceFails) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  const std::string path = source_ + "/a.bin";
  Status status = RunChangingAtTheFirstPut([&] {
    auto bytes = PatternBytes(a_.size(), 9);  // Same size, other bytes.
    WriteBytes(path, bytes);
    // The clock the kernel stamps files with ticks in milliseconds: make the change show.
    const timespec long_ago[2] = {{1000, 0}, {1000, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), long_ago, 0), 0);
  });
  ExpectNamesAChangedFile(status, path);
}

TEST_F(PublishWhileWritten, AFileThatGrowsFails) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  const std::string path = source_ + "/a.bin";
  Status status = RunChangingAtTheFirstPut(
      [&] { std::ofstream(path, std::ios::binary | std::ios::app) << "more"; });
  ExpectNamesAChangedFile(status, path);
}

TEST_F(PublishWhileWritten, AFileReplacedByRenameBeforeItIsReadFails) {
  ASSERT_NO_FATAL_FAILURE(MakeSourceTree());
  const std::string path = source_ + "/sub/b.bin";
  Status status = RunChangingAtTheFirstPut([&] {
    // How a checkpoint writer that saves to a temporary name and renames replaces a file.
    WriteBytes(path + ".new", ReadBytes(path));
    ASSERT_EQ(::rename((path + ".new").c_str(), path.c_str()), 0);
  });
  ExpectNamesAChangedFile(status, path);
}

}  // namespace
}  // namespace ckptfs
