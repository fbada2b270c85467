// Many threads reading one IndexReader at once, each with its own pooled connection.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "index/reader.h"
#include "tests/unit/index/index_test_util.h"

namespace ckptfs::index {
namespace {

using testing::Must;
using testing::RandomBytes;
using testing::TempDir;
using testing::TestIndexBuilder;
using testing::ToString;

struct ExpectedFile {
  std::uint64_t id = 0;
  std::string name;
  std::uint64_t size = 0;
  std::vector<Extent> extents;
};

std::vector<Extent> Overlapping(const ExpectedFile& f, std::uint64_t offset, std::uint64_t length) {
  std::vector<Extent> out;
  if (length == 0 || offset >= f.size) return out;
  const std::uint64_t end = length > f.size - offset ? f.size : offset + length;
  for (const Extent& x : f.extents) {
    if (x.offset < end && x.offset + x.size > offset) out.push_back(x);
  }
  return out;
}

TEST(IndexReaderConcurrency, EightThreadsGetCorrectAnswers) {
  TempDir dir;
  const std::string path = dir.Path("index.db");
  constexpr std::uint64_t kChunk = 64;
  std::vector<ExpectedFile> files;
  {
    TestIndexBuilder b(path, kChunk, 3, 2);
    std::mt19937_64 rng(3);
    for (int i = 0; i < 40; ++i) {
      ExpectedFile f;
      f.name = "file" + std::to_string(i);
      f.size = rng() % 2000;
      // Every fourth file repeats the bytes of file 0's seed, so chunks are shared.
      f.id = b.File(kRootId, f.name, RandomBytes(f.size, i % 4 == 0 ? 0 : i));
      f.extents = b.extents(f.id);
      files.push_back(std::move(f));
    }
    b.Finish();
  }
  auto reader = Must(IndexReader::Open(path));

  constexpr int kThreads = 8;
  constexpr int kQueriesPerThread = 3000;
  std::atomic<int> mismatches{0};
  std::atomic<int> queries{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      for (int q = 0; q < kQueriesPerThread; ++q) {
        const ExpectedFile& f = files[rng() % files.size()];
        bool ok = false;
        switch (rng() % 4) {
          case 0: {
            const std::uint64_t offset = rng() % (f.size + 10);
            const std::uint64_t length = rng() % (3 * kChunk);
            auto got = reader->ExtentsInRange(f.id, offset, length);
            ok = got.ok() && ToString(*got) == ToString(Overlapping(f, offset, length));
            break;
          }
          case 1: {
            auto got = reader->Lookup(kRootId, f.name);
            ok = got.ok() && got->id == f.id && got->size == f.size;
            break;
          }
          case 2: {
            auto got = reader->ListChildren(kRootId, f.id - 1, 3);
            ok = got.ok() && !got->empty() && (*got)[0].id == f.id && (*got)[0].name == f.name;
            break;
          }
          case 3:
            ok = reader->ValidateFile(f.id).ok();
            break;
        }
        if (!ok) ++mismatches;
        ++queries;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(queries.load(), kThreads * kQueriesPerThread);
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace ckptfs::index
