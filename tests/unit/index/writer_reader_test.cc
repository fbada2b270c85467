// Write an index with IndexWriter, read it back with IndexReader.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "common/digest.h"
#include "index/reader.h"
#include "index/testing_sql.h"
#include "index/writer.h"
#include "tests/unit/index/index_test_util.h"

namespace ckptfs::index {
namespace {

using testing::Must;
using testing::TempDir;
using testing::TestIndexBuilder;
using testing::ToString;

std::vector<std::string> Names(const std::vector<Entry>& entries) {
  std::vector<std::string> names;
  for (const Entry& e : entries) names.push_back(e.name);
  return names;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// The tree used by the round trip:
//   /README        "abcdefgh"                 (one chunk, shared with models/w.bin)
//   /models/       0700
//   /models/w.bin  "abcdefghABCDEFGHxyz!"     (chunks of 8, 8 and 4 bytes)
//   /models/copy   same bytes as w.bin        (every chunk deduplicated)
//   /models/empty  ""                         (no extents)
//   /models/sub/   empty directory
//   /latest        -> models/w.bin
class IndexRoundTrip : public ::testing::Test {
 protected:
  void SetUp() override {
    TestIndexBuilder b(path_, 8, 2, 2);
    Must(b.writer().SetRoot(0750, 123456789));
    readme_ = b.File(kRootId, "README", "abcdefgh");
    models_ = b.Dir(kRootId, "models", 0700);
    weights_ = b.File(models_, "w.bin", "abcdefghABCDEFGHxyz!");
    copy_ = b.File(models_, "copy", "abcdefghABCDEFGHxyz!");
    empty_ = b.File(models_, "empty", "");
    sub_ = b.Dir(models_, "sub");
    latest_ = b.Symlink(kRootId, "latest", "models/w.bin");
    weights_extents_ = b.extents(weights_);
    stats_ = b.stats();
    reused_chunks_ = b.reused_chunks();
    b.Finish();
    reader_ = Must(IndexReader::Open(path_));
  }

  TempDir dir_;
  std::string path_ = dir_.Path("index.db");
  std::uint64_t readme_ = 0, models_ = 0, weights_ = 0, copy_ = 0, empty_ = 0, sub_ = 0,
                latest_ = 0;
  std::vector<Extent> weights_extents_;
  IndexStats stats_;
  int reused_chunks_ = 0;
  std::unique_ptr<IndexReader> reader_;
};

TEST_F(IndexRoundTrip, KeepsChunkSizeStatsAndNodes) {
  EXPECT_EQ(reader_->chunk_size(), 8u);
  const IndexStats& s = reader_->stats();
  EXPECT_EQ(s.files, 4u);
  EXPECT_EQ(s.directories, 2u);
  EXPECT_EQ(s.bytes, 48u);
  EXPECT_EQ(s.chunks, 3u);
  EXPECT_EQ(s.chunk_bytes, 20u);
  ASSERT_EQ(reader_->nodes().size(), 2u);
  EXPECT_EQ(reader_->nodes()[0].name, "n0");
  EXPECT_EQ(reader_->nodes()[0].url, "http://127.0.0.1:8000");  // Trailing slash dropped.
  EXPECT_EQ(reader_->nodes()[1].name, "n1");
  EXPECT_EQ(reader_->nodes()[1].url, "http://127.0.0.1:8001");
  EXPECT_NE(reader_->nodes()[0].id, reader_->nodes()[1].id);
}

TEST_F(IndexRoundTrip, DeduplicatesIdenticalChunks) {
  // README's chunk and all three of copy's were already present.
  EXPECT_EQ(reused_chunks_, 4);
  const auto weights = Must(reader_->ExtentsInRange(weights_, 0, 100));
  const auto copy = Must(reader_->ExtentsInRange(copy_, 0, 100));
  const auto readme = Must(reader_->ExtentsInRange(readme_, 0, 100));
  EXPECT_EQ(ToString(weights), ToString(weights_extents_));
  EXPECT_EQ(ToString(copy), ToString(weights));
  ASSERT_EQ(readme.size(), 1u);
  EXPECT_EQ(readme[0].chunk_id, weights[0].chunk_id);
  EXPECT_EQ(weights[0].digest, Sha256("abcdefgh", 8));
  EXPECT_EQ(weights[2].digest, Sha256("xyz!", 4));
}

TEST_F(IndexRoundTrip, KeepsEntryAttributes) {
  const Entry root = Must(reader_->GetEntry(kRootId));
  EXPECT_EQ(root.type, EntryType::kDirectory);
  EXPECT_EQ(root.name, "");
  EXPECT_EQ(root.parent, kRootId);
  EXPECT_EQ(root.mode, 0750u);
  EXPECT_EQ(root.mtime_ns, 123456789);

  const Entry models = Must(reader_->Lookup(kRootId, "models"));
  EXPECT_EQ(models.id, models_);
  EXPECT_EQ(models.type, EntryType::kDirectory);
  EXPECT_EQ(models.mode, 0700u);
  EXPECT_EQ(models.size, 0u);

  const Entry weights = Must(reader_->Lookup(models_, "w.bin"));
  EXPECT_EQ(weights.id, weights_);
  EXPECT_EQ(weights.parent, models_);
  EXPECT_EQ(weights.type, EntryType::kFile);
  EXPECT_EQ(weights.mode, 0644u);
  EXPECT_EQ(weights.size, 20u);
  EXPECT_EQ(weights.mtime_ns, 1'700'000'000'000'000'123);
  EXPECT_EQ(weights.target, "");

  const Entry latest = Must(reader_->GetEntry(latest_));
  EXPECT_EQ(latest.type, EntryType::kSymlink);
  EXPECT_EQ(latest.target, "models/w.bin");
  EXPECT_EQ(latest.size, 12u);  // The target's length.

  const Entry empty = Must(reader_->GetEntry(empty_));
  EXPECT_EQ(empty.size, 0u);
  EXPECT_TRUE(Must(reader_->ExtentsInRange(empty_, 0, 10)).empty());
}

TEST_F(IndexRoundTrip, ListsChildrenInIdOrderWithoutTheRootItself) {
  EXPECT_EQ(Names(Must(reader_->ListChildren(kRootId, 0, 100))),
            (std::vector<std::string>{"README", "models", "latest"}));
  EXPECT_EQ(Names(Must(reader_->ListChildren(models_, 0, 100))),
            (std::vector<std::string>{"w.bin", "copy", "empty", "sub"}));
  EXPECT_TRUE(Must(reader_->ListChildren(sub_, 0, 100)).empty());
}

TEST_F(IndexRoundTrip, EveryFileValidates) {
  for (std::uint64_t id : {readme_, weights_, copy_, empty_}) {
    EXPECT_TRUE(reader_->ValidateFile(id).ok()) << reader_->ValidateFile(id).ToString();
  }
}

TEST_F(IndexRoundTrip, ReplicasListBothNodes) {
  const auto extents = Must(reader_->ExtentsInRange(weights_, 0, 20));
  for (const Extent& x : extents) {
    const std::vector<std::int64_t> nodes = Must(reader_->Replicas(x.chunk_id));
    EXPECT_EQ(nodes, (std::vector<std::int64_t>{reader_->nodes()[0].id, reader_->nodes()[1].id}));
  }
  EXPECT_TRUE(Must(reader_->Replicas(9999)).empty());
}

TEST_F(IndexRoundTrip, ChunksAfterPagesThroughEveryChunkInIdOrder) {
  std::vector<ChunkRecord> all;
  std::int64_t after = 0;
  for (int pages = 0; pages < 10; ++pages) {
    const std::vector<ChunkRecord> page = Must(reader_->ChunksAfter(after, 2));
    if (page.empty()) break;
    EXPECT_LE(page.size(), 2u);
    all.insert(all.end(), page.begin(), page.end());
    after = page.back().id;
  }
  ASSERT_EQ(all.size(), 3u);
  const std::vector<std::pair<std::string, std::uint64_t>> want = {
      {"abcdefgh", 8}, {"ABCDEFGH", 8}, {"xyz!", 4}};
  for (std::size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(all[i].digest, Sha256(want[i].first.data(), want[i].first.size())) << i;
    EXPECT_EQ(all[i].size, want[i].second) << i;
    if (i > 0) {
      EXPECT_GT(all[i].id, all[i - 1].id);
    }
  }
}

TEST_F(IndexRoundTrip, HasChunksTellsWhichDigestsAreChunksOfTheIndex) {
  const std::vector<Digest> asked = {Sha256("xyz!", 4), Sha256("other", 5), Sha256("abcdefgh", 8)};
  EXPECT_EQ(Must(reader_->HasChunks(asked)), (std::vector<bool>{true, false, true}));
  EXPECT_TRUE(Must(reader_->HasChunks({})).empty());
}

TEST_F(IndexRoundTrip, ChunksAfterRefusesARowWithABadSize) {
  reader_.reset();
  Must(ExecSqlForTesting(path_, "UPDATE chunks SET size = 9 WHERE size = 4"));
  reader_ = Must(IndexReader::Open(path_));
  EXPECT_EQ(reader_->ChunksAfter(0, 10).status().code(), StatusCode::kDataLoss);
}

TEST_F(IndexRoundTrip, ChunkPerNodeNamesOneChunkOfEachNodeFromTheFirstChunks) {
  const std::int64_t n0 = reader_->nodes()[0].id;
  const std::int64_t n1 = reader_->nodes()[1].id;
  const Digest first = Sha256("abcdefgh", 8);
  std::vector<NodeChunk> held = Must(reader_->ChunkPerNode(256));
  ASSERT_EQ(held.size(), 2u) << "each node once, though each holds every chunk";
  EXPECT_EQ(held[0].node, n0);
  EXPECT_EQ(held[1].node, n1);
  EXPECT_EQ(held[0].chunk.digest, first);
  EXPECT_EQ(held[0].chunk.size, 8u);

  // n0's replica of the first chunk moves to a node the index does not list.
  const std::int64_t first_id = held[0].chunk.id;
  reader_.reset();
  Must(ExecSqlForTesting(path_,
                         "UPDATE replicas SET node = 99 WHERE chunk = " + std::to_string(first_id) +
                             " AND node = " + std::to_string(n0)));
  reader_ = Must(IndexReader::Open(path_));
  held = Must(reader_->ChunkPerNode(1));
  ASSERT_EQ(held.size(), 1u) << "only n1 holds the first chunk, and node 99 is unknown";
  EXPECT_EQ(held[0].node, n1);
  held = Must(reader_->ChunkPerNode(256));
  ASSERT_EQ(held.size(), 2u);
  EXPECT_EQ(held[1].node, n0);
  EXPECT_EQ(held[1].chunk.digest, Sha256("ABCDEFGH", 8)) << "n0's first chunk is the second";
  EXPECT_TRUE(Must(reader_->ChunkPerNode(0)).empty());
}

TEST_F(IndexRoundTrip, ChunkPerNodeRefusesARowWithABadSize) {
  reader_.reset();
  Must(ExecSqlForTesting(path_, "UPDATE chunks SET size = 0"));
  reader_ = Must(IndexReader::Open(path_));
  EXPECT_EQ(reader_->ChunkPerNode(256).status().code(), StatusCode::kDataLoss);
}

TEST_F(IndexRoundTrip, ReplicasLeaveOutUnknownNodes) {
  const auto extents = Must(reader_->ExtentsInRange(weights_, 0, 8));
  ASSERT_EQ(extents.size(), 1u);
  const std::int64_t chunk = extents[0].chunk_id;
  const std::int64_t n0 = reader_->nodes()[0].id;
  const std::int64_t n1 = reader_->nodes()[1].id;
  reader_.reset();
  Must(ExecSqlForTesting(path_, "UPDATE replicas SET node = 99 WHERE chunk = " +
                                    std::to_string(chunk) + " AND node = " + std::to_string(n0)));
  reader_ = Must(IndexReader::Open(path_));
  EXPECT_EQ(Must(reader_->Replicas(chunk)), (std::vector<std::int64_t>{n1}));
}

TEST_F(IndexRoundTrip, LookupOfAMissingNameIsNotFound) {
  EXPECT_EQ(reader_->Lookup(kRootId, "nope").status().code(), StatusCode::kNotFound);
  // Right name, wrong directory.
  EXPECT_EQ(reader_->Lookup(kRootId, "w.bin").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(reader_->Lookup(9999, "w.bin").status().code(), StatusCode::kNotFound);
  // The root's own (empty) name and the dot names are never children.
  EXPECT_EQ(reader_->Lookup(kRootId, "").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(reader_->Lookup(kRootId, "..").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(reader_->Lookup(kRootId, "models/w.bin").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(reader_->GetEntry(9999).status().code(), StatusCode::kNotFound);
}

TEST_F(IndexRoundTrip, ExtentsOfANonFileAreRefused) {
  EXPECT_EQ(reader_->ExtentsInRange(models_, 0, 10).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(reader_->ExtentsInRange(9999, 0, 10).status().code(), StatusCode::kNotFound);
}

// ---------------------------------------------------------------------------------------------

TEST(IndexListChildren, PaginatesByIdAndSkipsBadEntriesWithoutShorteningAPage) {
  TempDir dir;
  const std::string path = dir.Path("index.db");
  std::vector<std::string> expected;
  {
    TestIndexBuilder b(path, 8, 1, 1);
    const std::uint64_t d = b.Dir(kRootId, "d");
    ASSERT_EQ(d, 2u);
    for (int i = 0; i < 25; ++i) {
      const std::string name = std::string("f").append(std::to_string(i));
      b.File(d, name, "x");
      expected.push_back(name);
    }
    b.Finish();
  }
  // Entries the writer would never write: a bad name and an unknown type, in the first page.
  Must(ExecSqlForTesting(path,
                         "UPDATE entries SET id = 1000 WHERE id = 4 AND name = 'f1';"
                         "INSERT INTO entries(id, parent, name, type, mode, size, mtime_ns) VALUES"
                         "(4, 2, 'a/b', 1, 420, 0, 0), (100, 2, '..', 2, 493, 0, 0),"
                         "(101, 2, 'weird', 7, 420, 0, 0), (102, 2, 'last', 1, 420, 0, 0);"));
  // f1 moved to id 1000 to make room for the bad entry at id 4; it now comes after 'last'.
  expected.erase(expected.begin() + 1);
  expected.push_back("last");
  expected.push_back("f1");
  auto reader = Must(IndexReader::Open(path));

  std::vector<std::string> seen;
  std::uint64_t after = 0;
  std::vector<std::size_t> page_sizes;
  while (true) {
    const std::vector<Entry> page = Must(reader->ListChildren(2, after, 10));
    if (page.empty()) break;
    page_sizes.push_back(page.size());
    for (const Entry& e : page) {
      EXPECT_GT(e.id, after);
      seen.push_back(e.name);
    }
    after = page.back().id;
  }
  EXPECT_EQ(seen, expected);
  EXPECT_EQ(page_sizes, (std::vector<std::size_t>{10, 10, 6}));
  EXPECT_TRUE(Must(reader->ListChildren(2, 0, 0)).empty());
  EXPECT_TRUE(Must(reader->ListChildren(2, 1000, 10)).empty());
  EXPECT_TRUE(Must(reader->ListChildren(9999, 0, 10)).empty());
}

// ---------------------------------------------------------------------------------------------

TEST(IndexWriter, RejectsInvalidAndDuplicateNames) {
  TempDir dir;
  auto writer = Must(IndexWriter::Create(dir.Path("index.db"), 8));
  Entry e;
  e.parent = kRootId;
  e.type = EntryType::kFile;
  for (const std::string& bad : {std::string(""), std::string("."), std::string(".."),
                                 std::string("a/b"), std::string("a\0b", 3)}) {
    e.name = bad;
    EXPECT_EQ(writer->AddEntry(e).status().code(), StatusCode::kInvalidArgument) << bad;
  }
  e.name = "ok";
  const std::uint64_t file = Must(writer->AddEntry(e));
  EXPECT_EQ(writer->AddEntry(e).status().code(), StatusCode::kInvalidArgument);  // Duplicate.
  e.parent = file;                                                               // Not a directory.
  EXPECT_EQ(writer->AddEntry(e).status().code(), StatusCode::kInvalidArgument);
  e.parent = 9999;  // Missing.
  EXPECT_EQ(writer->AddEntry(e).status().code(), StatusCode::kInvalidArgument);

  EXPECT_TRUE(writer->AddNode("a", "http://127.0.0.1:1").ok());
  EXPECT_EQ(writer->AddNode("a", "http://127.0.0.1:2").status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(writer->AddNode("x/y", "http://127.0.0.1:2").status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(writer->AddNode("b", "/").status().code(), StatusCode::kInvalidArgument);
}

TEST(IndexWriter, RejectsChunksOutsideTheChunkSize) {
  TempDir dir;
  EXPECT_EQ(IndexWriter::Create(dir.Path("zero.db"), 0).status().code(),
            StatusCode::kInvalidArgument);
  auto writer = Must(IndexWriter::Create(dir.Path("index.db"), 8));
  const Digest d = Sha256("x", 1);
  EXPECT_EQ(writer->AddChunk(d, 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(writer->AddChunk(d, 9).status().code(), StatusCode::kInvalidArgument);
  const auto first = Must(writer->AddChunk(d, 1));
  EXPECT_TRUE(first.is_new);
  const auto again = Must(writer->AddChunk(d, 1));
  EXPECT_FALSE(again.is_new);
  EXPECT_EQ(again.id, first.id);
  // The same digest with another size cannot be the same bytes.
  EXPECT_EQ(writer->AddChunk(d, 2).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(writer->AddExtent(5, 0, first.id).ok());
  EXPECT_EQ(writer->AddExtent(5, 0, first.id).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(writer->AddReplica(first.id, 1).ok());
  EXPECT_EQ(writer->AddReplica(first.id, 1).code(), StatusCode::kInvalidArgument);
}

TEST(IndexWriter, ReplacesAnExistingFile) {
  TempDir dir;
  const std::string path = dir.Path("index.db");
  std::ofstream(path) << "not a database at all";
  TestIndexBuilder b(path, 8, 1, 1);
  b.File(kRootId, "f", "hello");
  b.Finish();
  auto reader = Must(IndexReader::Open(path));
  EXPECT_EQ(Must(reader->Lookup(kRootId, "f")).size, 5u);
}

TEST(IndexWriter, FinishLeavesOneFileAndRefusesLaterCalls) {
  TempDir dir;
  const std::string path = dir.Path("index.db");
  auto writer = Must(IndexWriter::Create(path, 8));
  Must(writer->AddNode("a", "http://127.0.0.1:1"));
  Must(writer->Finish(IndexStats{}));
  // journal_mode=DELETE: no journal or WAL file is left next to the index.
  EXPECT_TRUE(Exists(path));
  EXPECT_FALSE(Exists(path + "-journal"));
  EXPECT_FALSE(Exists(path + "-wal"));
  EXPECT_EQ(writer->AddNode("b", "http://127.0.0.1:2").status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(writer->Finish(IndexStats{}).code(), StatusCode::kFailedPrecondition);
  writer.reset();
  EXPECT_TRUE(Exists(path));
  EXPECT_TRUE(IndexReader::Open(path).ok());
}

TEST(IndexWriter, AbandonedBuildLeavesNoFile) {
  TempDir dir;
  const std::string path = dir.Path("index.db");
  {
    TestIndexBuilder b(path, 8, 1, 1);
    b.File(kRootId, "f", "hello");
    EXPECT_TRUE(Exists(path));
  }
  EXPECT_FALSE(Exists(path));
  EXPECT_FALSE(Exists(path + "-journal"));
}

TEST(IndexWriter, StoresNodeUrlsWithoutTrailingSlashes) {
  TempDir dir;
  const std::string path = dir.Path("index.db");
  auto writer = Must(IndexWriter::Create(path, 8));
  Must(writer->AddNode("a", "http://127.0.0.1:1/base//"));
  Must(writer->Finish(IndexStats{}));
  // The reader drops trailing slashes too; copying the stored URL into the name shows what the
  // writer itself stored.
  Must(ExecSqlForTesting(path, "UPDATE nodes SET name = url;"));
  auto reader = Must(IndexReader::Open(path));
  ASSERT_EQ(reader->nodes().size(), 1u);
  EXPECT_EQ(reader->nodes()[0].name, "http://127.0.0.1:1/base");
}

TEST(IndexReader, OpensPathsThatNeedEscapingInAUri) {
  TempDir dir;
  const std::string path = dir.Path("we?rd #name%20&x=1.db");
  {
    TestIndexBuilder b(path, 8, 1, 1);
    b.File(kRootId, "f", "hello");
    b.Finish();
  }
  auto reader = Must(IndexReader::Open(path));
  EXPECT_EQ(Must(reader->Lookup(kRootId, "f")).size, 5u);
}

TEST(IndexReader, OpensThroughASymlink) {
  TempDir dir;
  const std::string path = dir.Path("v1.db");
  {
    TestIndexBuilder b(path, 8, 1, 1);
    b.File(kRootId, "f", "hello");
    b.Finish();
  }
  const std::string link = dir.Path("current.db");
  ASSERT_EQ(::symlink("v1.db", link.c_str()), 0);
  auto reader = Must(IndexReader::Open(link));
  EXPECT_EQ(Must(reader->Lookup(kRootId, "f")).size, 5u);
}

TEST(IndexReader, KeepsReadingTheFileItOpenedWhenTheIndexIsReplaced) {
  TempDir dir;
  const std::string path = dir.Path("index.db");
  const std::string next = dir.Path("index.db.tmp");
  {
    TestIndexBuilder b(path, 8, 1, 1);
    b.File(kRootId, "old", "hello");
    b.Finish();
  }
  auto reader = Must(IndexReader::Open(path));
  {
    TestIndexBuilder b(next, 8, 1, 1);
    b.File(kRootId, "new", "hello, world");
    b.Finish();
  }
  ASSERT_EQ(::rename(next.c_str(), path.c_str()), 0);  // What publish does.
  EXPECT_EQ(Must(reader->Lookup(kRootId, "old")).size, 5u);
  EXPECT_EQ(reader->Lookup(kRootId, "new").status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(reader->ValidateFile(2).ok());
}

}  // namespace
}  // namespace ckptfs::index
