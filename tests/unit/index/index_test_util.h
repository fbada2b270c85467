// Helpers shared by the index unit tests: a temporary directory per test and a small publisher
// that turns in-memory files into an index the way `ckptfs publish` does (fixed-size chunks,
// SHA-256, dedup, placement), remembering what it wrote so tests can compare against it.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/digest.h"
#include "index/placement.h"
#include "index/types.h"
#include "index/writer.h"
#include "tests/support/temp_dir.h"

namespace ckptfs::index::testing {

// Unwraps a Result; an error throws, which GoogleTest reports as a failure of the running test.
template <typename T>
T Must(Result<T> result) {
  if (!result.ok()) throw std::runtime_error(result.status().ToString());
  return std::move(result).value();
}

inline void Must(const Status& status) {
  if (!status.ok()) throw std::runtime_error(status.ToString());
}

// The shared test-support directory, under the name these tests use.
using TempDir = ::ckptfs::testing::TempDir;

// Deterministic pseudo-random bytes.
inline std::string RandomBytes(std::size_t size, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(size, '\0');
  for (char& c : out) c = static_cast<char>(rng() & 0xff);
  return out;
}

// "[0+8#1:ab12cd34 8+8#2:...]": extents as text, so that a mismatch shows where it is.
inline std::string ToString(const std::vector<Extent>& extents) {
  std::string out = "[";
  for (const Extent& x : extents) {
    if (out.size() > 1) out += ' ';
    out += std::to_string(x.offset) + "+" + std::to_string(x.size) + "#" +
           std::to_string(x.chunk_id) + ":" + x.digest.Hex().substr(0, 8);
  }
  return out + "]";
}

class TestIndexBuilder {
 public:
  // Nodes are named n0, n1, ... at http://127.0.0.1:<8000+i>/ (never contacted). A block_size
  // makes a schema v2 index with block digests; without one the index is v1.
  TestIndexBuilder(const std::string& path, std::uint64_t chunk_size, int nodes, int replicas,
                   std::uint64_t block_size = 0)
      : chunk_size_(chunk_size), block_size_(block_size), placement_(nodes, replicas) {
    writer_ = Must(block_size != 0 ? IndexWriter::Create(path, chunk_size, block_size)
                                   : IndexWriter::Create(path, chunk_size));
    for (int i = 0; i < nodes; ++i) {
      node_ids_.push_back(
          Must(writer_->AddNode(std::string("n").append(std::to_string(i)),
                                "http://127.0.0.1:" + std::to_string(8000 + i) + "/")));
    }
  }

  IndexWriter& writer() { return *writer_; }

  std::uint64_t Dir(std::uint64_t parent, const std::string& name, std::uint32_t mode = 0755) {
    Entry e;
    e.parent = parent;
    e.name = name;
    e.type = EntryType::kDirectory;
    e.mode = mode;
    e.mtime_ns = 1'700'000'000'000'000'000;
    ++stats_.directories;
    return Must(writer_->AddEntry(e));
  }

  std::uint64_t File(std::uint64_t parent, const std::string& name, const std::string& content) {
    Entry e;
    e.parent = parent;
    e.name = name;
    e.type = EntryType::kFile;
    e.mode = 0644;
    e.size = content.size();
    e.mtime_ns = 1'700'000'000'000'000'123;
    const std::uint64_t id = Must(writer_->AddEntry(e));
    std::vector<Extent>& extents = extents_[id];
    for (std::uint64_t offset = 0; offset < content.size(); offset += chunk_size_) {
      const std::string piece = content.substr(offset, chunk_size_);
      const Digest digest = Sha256(piece.data(), piece.size());
      const IndexWriter::AddedChunk chunk =
          block_size_ != 0
              ? Must(writer_->AddChunk(
                    digest, piece.size(),
                    HashChunk({reinterpret_cast<const std::uint8_t*>(piece.data()), piece.size()},
                              block_size_)
                        .blocks))
              : Must(writer_->AddChunk(digest, piece.size()));
      if (chunk.is_new) {
        ++stats_.chunks;
        stats_.chunk_bytes += piece.size();
        for (int node : placement_.Place(piece.size())) {
          Must(writer_->AddReplica(chunk.id, node_ids_[node]));
        }
      } else {
        ++reused_chunks_;
      }
      Must(writer_->AddExtent(id, offset, chunk.id));
      extents.push_back({offset, piece.size(), chunk.id, digest});
    }
    ++stats_.files;
    stats_.bytes += content.size();
    return id;
  }

  std::uint64_t Symlink(std::uint64_t parent, const std::string& name, const std::string& target) {
    Entry e;
    e.parent = parent;
    e.name = name;
    e.type = EntryType::kSymlink;
    e.mode = 0777;
    e.target = target;
    return Must(writer_->AddEntry(e));
  }

  void Finish() { Must(writer_->Finish(stats_)); }

  const IndexStats& stats() const { return stats_; }
  int reused_chunks() const { return reused_chunks_; }
  const std::vector<std::int64_t>& node_ids() const { return node_ids_; }
  // Extents of a file added with File(), in offset order.
  const std::vector<Extent>& extents(std::uint64_t file) { return extents_[file]; }

 private:
  std::uint64_t chunk_size_;
  std::uint64_t block_size_;
  Placement placement_;
  std::unique_ptr<IndexWriter> writer_;
  std::vector<std::int64_t> node_ids_;
  IndexStats stats_;
  int reused_chunks_ = 0;
  std::map<std::uint64_t, std::vector<Extent>> extents_;
};

}  // namespace ckptfs::index::testing
