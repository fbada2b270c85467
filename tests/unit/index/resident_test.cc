// IndexReader::KeepResident: the pages it keeps stay in memory when the page cache is dropped,
// it never keeps more than its budget, and the reader answers the same either way.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "common/unique_fd.h"
#include "index/reader.h"
#include "tests/unit/index/index_test_util.h"

namespace ckptfs::index {
namespace {

using testing::Must;
using testing::RandomBytes;
using testing::TempDir;
using testing::TestIndexBuilder;

constexpr std::uint64_t kChunk = 64 << 10;
constexpr std::uint64_t kBlock = 4 << 10;
constexpr int kChunks = 300;

// Writes its dirty pages out and asks the kernel to drop the file's page cache (as drop_caches
// does, mapped pages are skipped), then counts the bytes of the file still in memory.
std::uint64_t DropAndCountResident(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  EXPECT_TRUE(fd.valid());
  struct stat st;
  EXPECT_EQ(::fstat(fd.get(), &st), 0);
  const auto size = static_cast<std::size_t>(st.st_size);
  EXPECT_EQ(::fdatasync(fd.get()), 0);
  EXPECT_EQ(::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED), 0);
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
  EXPECT_NE(map, MAP_FAILED);
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> in_core((size + page - 1) / page);
  EXPECT_EQ(::mincore(map, size, in_core.data()), 0);
  ::munmap(map, size);
  std::uint64_t resident = 0;
  for (unsigned char c : in_core) resident += (c & 1) * page;
  return resident;
}

class IndexResident : public ::testing::Test {
 protected:
  void SetUp() override {
    // A v2 index whose block digests are most of the file, like a large model's.
    TestIndexBuilder b(path_, kChunk, 3, 2, kBlock);
    b.Dir(kRootId, "empty");
    file_ = b.File(kRootId, "model.bin", RandomBytes(kChunks * kChunk, 3));
    b.Finish();
    struct stat st;
    ASSERT_EQ(::stat(path_.c_str(), &st), 0);
    file_size_ = static_cast<std::uint64_t>(st.st_size);
    // Without this the test could not tell kept pages from a page cache that never drops any.
    ASSERT_EQ(DropAndCountResident(path_), 0u)
        << "the file system of " << dir_.Path("") << " keeps pages that were asked to go";
  }

  TempDir dir_;
  std::string path_ = dir_.Path("index.db");
  std::uint64_t file_ = 0;
  std::uint64_t file_size_ = 0;
};

TEST_F(IndexResident, KeptPagesStayWhenThePageCacheIsDropped) {
  auto reader = Must(IndexReader::Open(path_));
  const std::uint64_t kept = Must(reader->KeepResident(64 << 20));
  EXPECT_EQ(kept, file_size_);
  EXPECT_EQ(DropAndCountResident(path_), file_size_);
  EXPECT_TRUE(reader->ValidateFile(file_).ok());
}

TEST_F(IndexResident, KeepsNoMoreThanTheBudgetAndExactlyWhatItSays) {
  auto reader = Must(IndexReader::Open(path_));
  const std::uint64_t budget = file_size_ / 4;
  const std::uint64_t kept = Must(reader->KeepResident(budget));
  EXPECT_GT(kept, 0u);
  EXPECT_LE(kept, budget);
  EXPECT_EQ(DropAndCountResident(path_), kept);
  // What is not kept is read from disk as before.
  EXPECT_TRUE(reader->ValidateFile(file_).ok());
  const BlockList last =
      Must(reader->Blocks(reader->ExtentsInRange(file_, 0, 1)->front().chunk_id));
  EXPECT_EQ(last.digests.size(), kChunk / kBlock);
}

TEST_F(IndexResident, NothingIsKeptAfterTheReaderCloses) {
  {
    auto reader = Must(IndexReader::Open(path_));
    EXPECT_EQ(Must(reader->KeepResident(64 << 20)), file_size_);
  }
  EXPECT_EQ(DropAndCountResident(path_), 0u);
}

TEST_F(IndexResident, AZeroBudgetKeepsNothing) {
  auto reader = Must(IndexReader::Open(path_));
  EXPECT_EQ(Must(reader->KeepResident(0)), 0u);
  EXPECT_EQ(DropAndCountResident(path_), 0u);
  EXPECT_TRUE(reader->ValidateFile(file_).ok());
}

TEST_F(IndexResident, AStopRequestedBeforehandKeepsNothing) {
  auto reader = Must(IndexReader::Open(path_));
  std::stop_source stop;
  stop.request_stop();
  const Result<std::uint64_t> kept = reader->KeepResident(64 << 20, stop.get_token());
  EXPECT_EQ(kept.status().code(), StatusCode::kUnavailable) << kept.status().ToString();
  EXPECT_EQ(DropAndCountResident(path_), 0u);
  EXPECT_TRUE(reader->ValidateFile(file_).ok());
}

// A mount keeps the pages in the background while its FUSE threads already use the reader.
TEST_F(IndexResident, KeepsPagesWhileOtherThreadsRead) {
  auto reader = Must(IndexReader::Open(path_));
  std::atomic<bool> done = false;
  std::atomic<int> failures = 0;
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&, t] {
      std::uint64_t offset = static_cast<std::uint64_t>(t) * kChunk;
      while (!done.load()) {
        const auto extents = reader->ExtentsInRange(file_, offset, 1);
        if (!extents.ok() || extents->size() != 1 ||
            !reader->Blocks(extents->front().chunk_id).ok()) {
          failures++;
        }
        offset = (offset + 7 * kChunk) % (kChunks * kChunk);
      }
    });
  }
  const std::uint64_t kept = Must(reader->KeepResident(64 << 20));
  done = true;
  for (std::thread& t : readers) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(kept, file_size_);
  EXPECT_EQ(DropAndCountResident(path_), file_size_);
}

}  // namespace
}  // namespace ckptfs::index
