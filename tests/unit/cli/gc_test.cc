// cli::CollectGarbage on store directories that two publishes filled: what only the older
// index needed goes, what an index in use lists, what is recent and what is not an object stay.
#include "cli/gc.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cli/publish.h"
#include "cli/store_lock.h"
#include "common/digest.h"
#include "common/file_io.h"
#include "common/units.h"
#include "index/reader.h"
#include "index/types.h"
#include "tests/support/fake_clock.h"
#include "tests/support/pattern_bytes.h"
#include "tests/support/scripted_transport.h"
#include "tests/support/status_testing.h"
#include "tests/support/temp_dir.h"

namespace ckptfs {
namespace {

namespace stdfs = std::filesystem;
using cli::GcOptions;
using cli::GcReport;
using testing::PatternBytes;

constexpr std::uint64_t kChunk = 64 << 10;

class Gc : public ::testing::Test {
 protected:
  // v1: old.bin (3 chunks) and shared.bin (2); v2: shared.bin and new.bin (2). Both published
  // to the same two stores, one replica each, and every object made 2 hours old.
  void SetUp() override {
    WriteFile("v1/old.bin", PatternBytes(3 * kChunk, 1));
    WriteFile("v1/shared.bin", PatternBytes(2 * kChunk, 2));
    WriteFile("v2/shared.bin", PatternBytes(2 * kChunk, 2));
    WriteFile("v2/new.bin", PatternBytes(2 * kChunk, 3));
    CKPTFS_ASSERT_OK(Publish("v1"));
    CKPTFS_ASSERT_OK(Publish("v2"));
    AgeEverything(std::chrono::hours(2));
  }

  void WriteFile(const std::string& rel, const std::vector<std::uint8_t>& bytes) {
    const stdfs::path path = temp_.Path(rel);
    stdfs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
  }

  Status Publish(const std::string& version) {
    cli::PublishOptions options;
    options.source_dir = temp_.Path(version);
    options.index_path = Index(version);
    options.chunk_size = kChunk;
    options.replicas = 1;
    for (int i = 0; i < 2; ++i) {
      const std::string name = std::string("n").append(std::to_string(i + 1));
      options.nodes.push_back({name, "http://127.0.0.1:" + std::to_string(i + 1)});
      options.stores[name] = Store(i);
    }
    std::ostringstream ignored;
    return cli::Publish(options, transport_, clock_, ignored);
  }

  std::string Index(const std::string& version) const { return temp_.Path(version + ".db"); }
  std::string Store(int i) const { return temp_.Path("store" + std::to_string(i + 1)); }

  // Every regular file under the stores' chunks/.
  std::set<std::string> Files() const {
    std::set<std::string> files;
    for (int i = 0; i < 2; ++i) {
      for (const auto& e : stdfs::recursive_directory_iterator(Store(i) + "/chunks")) {
        if (e.is_regular_file()) files.insert(e.path().string());
      }
    }
    return files;
  }

  void AgeEverything(std::chrono::seconds by) {
    for (const std::string& file : Files()) Age(file, by);
  }
  static void Age(const std::string& file, std::chrono::seconds by) {
    const auto then = std::chrono::system_clock::now() - by;
    const timespec t{std::chrono::system_clock::to_time_t(then), 0};
    const timespec times[2] = {t, t};
    ASSERT_EQ(::utimensat(AT_FDCWD, file.c_str(), times, 0), 0) << file;
  }

  // The store paths of the objects of `version`'s chunks.
  std::set<std::string> ObjectsOf(const std::string& version) const {
    auto reader = index::IndexReader::Open(Index(version));
    EXPECT_TRUE(reader.ok()) << reader.status().ToString();
    std::set<std::string> objects;
    auto chunks = (*reader)->ChunksAfter(0, 1000);
    EXPECT_TRUE(chunks.ok());
    for (const index::ChunkRecord& chunk : *chunks) {
      for (int i = 0; i < 2; ++i) {
        const std::string path = Store(i) + "/" + index::ChunkObjectPath(chunk.digest);
        if (stdfs::exists(path)) objects.insert(path);
      }
    }
    return objects;
  }

  Result<GcReport> Run(std::vector<std::string> versions, bool remove) {
    output_.str("");
    GcOptions options;
    for (const std::string& v : versions) options.index_paths.push_back(Index(v));
    options.stores = {Store(0), Store(1)};
    options.remove = remove;
    return cli::CollectGarbage(options, transport_, output_);
  }

  testing::TempDir temp_;
  testing::FakeClock clock_;
  testing::ScriptedTransport transport_{&clock_};
  std::ostringstream output_;
};

TEST_F(Gc, WhatOnlyAnOldIndexNeededIsRemovedAndWhatTheIndexInUseListsStays) {
  const std::set<std::string> before = Files(), v2 = ObjectsOf("v2");
  CKPTFS_ASSERT_OK_AND_ASSIGN(GcReport report, Run({"v2"}, /*remove=*/true));
  EXPECT_EQ(report.unneeded_objects, 3u) << "old.bin's 3 chunks, one replica each\n"
                                         << output_.str();
  EXPECT_EQ(report.unneeded_bytes, 3 * kChunk);
  EXPECT_EQ(report.kept_objects, v2.size());
  EXPECT_EQ(before.size(), v2.size() + 3);
  EXPECT_EQ(report.recent_files, 0u);
  EXPECT_EQ(Files(), v2) << "exactly the objects of v2's chunks are left";
  EXPECT_NE(output_.str().find("all stores: " + std::to_string(v2.size()) + " objects (" +
                               FormatSize(v2.size() * kChunk) +
                               ") in use; removed 3 objects (192.0 KiB) that no index needs\n"),
            std::string::npos)
      << output_.str();
}

TEST_F(Gc, AnIndexGivenByUrlIsDownloadedAndKeepsWhatItLists) {
  const std::set<std::string> v2 = ObjectsOf("v2");
  const std::string url = "http://127.0.0.1:9/indexes/v2.ckptfs";
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::vector<std::uint8_t> index, ReadWholeFile(Index("v2")));
  transport_.SetResponse(url, testing::ScriptedResponse::Body(index));
  GcOptions options;
  options.index_paths = {url};
  options.stores = {Store(0), Store(1)};
  options.remove = true;
  options.temp_dir = temp_.Path("");
  CKPTFS_ASSERT_OK_AND_ASSIGN(GcReport report, cli::CollectGarbage(options, transport_, output_));
  EXPECT_EQ(report.unneeded_objects, 3u) << output_.str();
  EXPECT_EQ(Files(), v2);
  for (const auto& e : stdfs::directory_iterator(temp_.Path(""))) {
    EXPECT_EQ(e.path().filename().string().rfind("ckptfs-gc", 0), std::string::npos)
        << "the download was left behind: " << e.path();
  }
}

TEST_F(Gc, AnIndexPinnedToAnotherSha256IsRefusedWithNothingRemoved) {
  const std::set<std::string> before = Files(), v2 = ObjectsOf("v2");
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::vector<std::uint8_t> bytes, ReadWholeFile(Index("v2")));
  const Digest right = Sha256(bytes.data(), bytes.size());
  GcOptions options;
  options.index_paths = {Index("v2")};
  options.stores = {Store(0), Store(1)};
  options.remove = true;
  options.index_sha256s = {Sha256("another version", 15)};
  Result<GcReport> refused = cli::CollectGarbage(options, transport_, output_);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition)
      << refused.status().ToString();
  EXPECT_NE(refused.status().message().find(right.Hex()), std::string::npos)
      << refused.status().ToString();
  EXPECT_EQ(Files(), before);

  options.index_sha256s = {right, right};
  refused = cli::CollectGarbage(options, transport_, output_);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("--index-sha256 given 2 times for 1 indexes"),
            std::string::npos)
      << refused.status().ToString();
  EXPECT_EQ(Files(), before);

  options.index_sha256s = {right};
  CKPTFS_ASSERT_OK_AND_ASSIGN(GcReport report, cli::CollectGarbage(options, transport_, output_));
  EXPECT_EQ(report.unneeded_objects, 3u) << output_.str();
  EXPECT_EQ(Files(), v2);
}

TEST_F(Gc, WithoutDeleteItOnlyTellsWhatItWouldRemove) {
  const std::set<std::string> before = Files();
  CKPTFS_ASSERT_OK_AND_ASSIGN(GcReport report, Run({"v2"}, /*remove=*/false));
  EXPECT_EQ(report.unneeded_objects, 3u);
  EXPECT_EQ(Files(), before);
  EXPECT_NE(output_.str().find(
                "would remove 3 objects (192.0 KiB) that no index needs (run with --delete)"),
            std::string::npos)
      << output_.str();
}

TEST_F(Gc, EveryIndexInUseKeepsWhatItLists) {
  const std::set<std::string> before = Files();
  CKPTFS_ASSERT_OK_AND_ASSIGN(GcReport report, Run({"v1", "v2"}, /*remove=*/true));
  EXPECT_EQ(report.unneeded_objects, 0u);
  EXPECT_EQ(report.kept_objects, before.size());
  EXPECT_EQ(Files(), before);
}

TEST_F(Gc, RecentFilesAndFilesThatAreNotObjectsStay) {
  // A publish under way writes its objects before its index: they are recent.
  AgeEverything(std::chrono::minutes(10));
  const std::string object = *ObjectsOf("v1").begin();
  const std::string old_leftover = object + ".tmp.123", new_leftover = object + ".tmp.456";
  const std::string other = Store(0) + "/chunks/README";
  for (const std::string& file : {old_leftover, new_leftover, other}) std::ofstream(file) << "x";
  Age(old_leftover, std::chrono::hours(2));
  Age(other, std::chrono::hours(2));
  const std::set<std::string> v1 = ObjectsOf("v1");

  CKPTFS_ASSERT_OK_AND_ASSIGN(GcReport report, Run({"v2"}, /*remove=*/true));
  EXPECT_EQ(report.unneeded_objects, 0u);
  EXPECT_EQ(report.recent_files, 4u) << "old.bin's 3 objects and the new leftover";
  EXPECT_EQ(report.temp_files, 1u);
  EXPECT_EQ(report.other_files, 1u);
  EXPECT_FALSE(stdfs::exists(old_leftover));
  EXPECT_TRUE(stdfs::exists(new_leftover));
  EXPECT_TRUE(stdfs::exists(other));
  EXPECT_EQ(ObjectsOf("v1"), v1);
}

TEST_F(Gc, APublishMarksTheObjectsItFindsAlreadyThereAsRecent) {
  // Publishing v1 again finds all its objects in the stores and sends nothing; a gc that runs
  // before its index is written must not take them.
  const std::set<std::string> v1 = ObjectsOf("v1");
  CKPTFS_ASSERT_OK(Publish("v1"));
  CKPTFS_ASSERT_OK_AND_ASSIGN(GcReport report, Run({"v2"}, /*remove=*/true));
  EXPECT_EQ(report.unneeded_objects, 0u) << output_.str();
  EXPECT_EQ(report.recent_files, 3u);
  EXPECT_EQ(ObjectsOf("v1"), v1);
}

TEST_F(Gc, WhileAPublishWritesIntoAStoreItRefusesAndRemovesNothing) {
  const std::set<std::string> before = Files();
  CKPTFS_ASSERT_OK_AND_ASSIGN(cli::StoreLock publishing,
                              cli::StoreLock::Take(Store(1), cli::StoreLock::Holder::kPublish));
  Result<GcReport> report = Run({"v2"}, /*remove=*/true);
  EXPECT_EQ(report.status().code(), StatusCode::kFailedPrecondition) << report.status().ToString();
  EXPECT_NE(report.status().message().find("a publish is writing into store " + Store(1)),
            std::string::npos)
      << report.status().ToString();
  EXPECT_EQ(Files(), before) << "not even the first store was collected";
}

TEST_F(Gc, APublishRefusesWhileAGcRuns) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(cli::StoreLock collecting,
                              cli::StoreLock::Take(Store(0), cli::StoreLock::Holder::kGc));
  Status published = Publish("v1");
  EXPECT_EQ(published.code(), StatusCode::kFailedPrecondition) << published.ToString();
  EXPECT_NE(published.message().find("ckptfs gc is removing objects from store " + Store(0)),
            std::string::npos)
      << published.ToString();
}

// A lease that a publish by PUT left in store `i` (as nginx writes it), `age` old.
std::string PutLease(const std::string& store, const std::string& name, const std::string& body,
                     std::chrono::seconds age) {
  stdfs::create_directories(store + "/leases");
  const std::string path = store + "/leases/" + name;
  std::ofstream(path) << body;
  const auto then = std::chrono::system_clock::now() - age;
  const timespec t{std::chrono::system_clock::to_time_t(then), 0};
  const timespec times[2] = {t, t};
  EXPECT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0) << path;
  return path;
}

constexpr char kPublishing[] = "ckptfs publish\nhost: trainer-7\npid: 4242\nindex: x\n";

TEST_F(Gc, ALivePublishByPutStopsADeleteBeforeItRemovesAnything) {
  const std::set<std::string> before = Files();
  const std::string lease =
      PutLease(Store(1), "publish-a.publishing", kPublishing, std::chrono::seconds(30));
  Result<GcReport> report = Run({"v2"}, /*remove=*/true);
  EXPECT_EQ(report.status().code(), StatusCode::kFailedPrecondition) << report.status().ToString();
  EXPECT_NE(report.status().message().find("a publish by PUT is under way: " + lease +
                                           " (host trainer-7, pid 4242), renewed 30 s ago"),
            std::string::npos)
      << report.status().ToString();
  EXPECT_EQ(Files(), before);
  EXPECT_TRUE(stdfs::exists(lease));
  EXPECT_FALSE(stdfs::exists(Store(0) + "/leases/gc")) << "the gc note stayed";
  EXPECT_FALSE(stdfs::exists(Store(1) + "/leases/gc")) << "the gc note stayed";

  // Without --delete it says so and goes on.
  CKPTFS_ASSERT_OK_AND_ASSIGN(GcReport dry, Run({"v2"}, /*remove=*/false));
  EXPECT_EQ(dry.unneeded_objects, 3u);
  EXPECT_NE(output_.str().find("a publish by PUT is under way (gc --delete refuses to start "
                               "while it is): " +
                               lease),
            std::string::npos)
      << output_.str();
}

TEST_F(Gc, APublishLeaseNotRenewedForTenMinutesIsACrashedOnesAndGoes) {
  const std::string lease =
      PutLease(Store(1), "publish-a.publishing", kPublishing, std::chrono::seconds(601));
  CKPTFS_ASSERT_OK_AND_ASSIGN(GcReport report, Run({"v2"}, /*remove=*/true));
  EXPECT_EQ(report.unneeded_objects, 3u) << output_.str();
  EXPECT_FALSE(stdfs::exists(lease));
}

TEST_F(Gc, WhatARecentPublishByPutFoundStaysUntilItsListIsOld) {
  // A publish by PUT found old.bin's objects on the nodes (HEAD), so its index, which this gc
  // is not told of, lists them. Its lease stayed because the server refused the DELETE.
  std::string list;
  for (const std::string& path : ObjectsOf("v1")) {
    const std::string name = stdfs::path(path).filename().string();
    list += name + "\n";
  }
  const std::string publishing =
      PutLease(Store(0), "publish-b.publishing", kPublishing, std::chrono::seconds(30));
  const std::string found = PutLease(Store(0), "publish-b.found", list, std::chrono::minutes(59));
  const std::set<std::string> before = Files();
  CKPTFS_ASSERT_OK_AND_ASSIGN(GcReport report, Run({"v2"}, /*remove=*/true));
  EXPECT_EQ(report.unneeded_objects, 0u) << output_.str();
  EXPECT_EQ(report.recent_files, 3u);
  EXPECT_EQ(Files(), before);
  EXPECT_FALSE(stdfs::exists(publishing)) << "a finished publish's lease stayed";
  EXPECT_TRUE(stdfs::exists(found));

  Age(found, std::chrono::minutes(61));  // Older than the minimum age: its index is named by now.
  CKPTFS_ASSERT_OK_AND_ASSIGN(GcReport later, Run({"v2"}, /*remove=*/true));
  EXPECT_EQ(later.unneeded_objects, 3u) << output_.str();
  EXPECT_FALSE(stdfs::exists(found));
}

TEST_F(Gc, AFoundListThatIsNoListRemovesNothing) {
  const std::set<std::string> before = Files();
  const std::string found =
      PutLease(Store(1), "publish-c.found", "not a digest\n", std::chrono::seconds(5));
  Result<GcReport> report = Run({"v2"}, /*remove=*/true);
  EXPECT_EQ(report.status().code(), StatusCode::kDataLoss) << report.status().ToString();
  EXPECT_NE(report.status().message().find(found + " is not a list of object digests (line 1)"),
            std::string::npos)
      << report.status().ToString();
  EXPECT_EQ(Files(), before);
}

TEST_F(Gc, ACrashedGcsNoteIsReplacedAndRemoved) {
  const std::string note = PutLease(Store(0), "gc", "ckptfs gc\n", std::chrono::hours(3));
  CKPTFS_ASSERT_OK_AND_ASSIGN(GcReport report, Run({"v2"}, /*remove=*/true));
  EXPECT_EQ(report.unneeded_objects, 3u);
  EXPECT_FALSE(stdfs::exists(note));
}

TEST_F(Gc, AnIndexThatCannotBeReadRemovesNothing) {
  const std::set<std::string> before = Files();
  std::ofstream(temp_.Path("bad.db")) << "not an index";
  GcOptions options;
  options.index_paths = {Index("v2"), temp_.Path("bad.db")};
  options.stores = {Store(0), Store(1)};
  options.remove = true;
  Result<GcReport> report = cli::CollectGarbage(options, transport_, output_);
  EXPECT_FALSE(report.ok());
  EXPECT_NE(report.status().message().find("bad.db"), std::string::npos)
      << report.status().ToString();
  EXPECT_EQ(Files(), before);
}

TEST_F(Gc, AStoreThatIsNotADirectoryIsRefusedBeforeAnythingIsRemoved) {
  const std::set<std::string> before = Files();
  GcOptions options;
  options.index_paths = {Index("v2")};
  options.stores = {Store(0), temp_.Path("missing")};
  options.remove = true;
  Result<GcReport> report = cli::CollectGarbage(options, transport_, output_);
  EXPECT_EQ(report.status().code(), StatusCode::kInvalidArgument) << report.status().ToString();
  EXPECT_EQ(Files(), before);
}

}  // namespace
}  // namespace ckptfs
