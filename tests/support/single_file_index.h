// WriteSingleFileIndex: an index holding one file, "model.bin" under the root, cut into
// fixed-size chunks the way `ckptfs publish` cuts files, with every chunk on every given node.
// AddWrittenFile adds one such file to an index a test writes itself (several files, directories).
// The index is schema v2 with block digests (block size kTestBlockSize, or the largest power of
// two up to the chunk size when that is smaller); chunks smaller than 4 KiB give a v1 index,
// which has no block digests.
//
// Returns what it wrote (the file's id and each chunk's offset, bytes, digest and block digests)
// so that tests can serve the chunks from a fake fetcher or from real nginx roots and compare
// what they read.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/digest.h"
#include "common/result.h"
#include "index/types.h"
#include "index/writer.h"
#include "tests/support/pattern_bytes.h"

namespace ckptfs::testing {

// Small, so that test chunks of 64 KiB have several blocks.
inline constexpr std::uint64_t kTestBlockSize = 16 << 10;

struct WrittenChunk {
  std::uint64_t offset = 0;
  std::vector<std::uint8_t> bytes;
  Digest digest;
  std::vector<Digest> blocks;  // Empty in a v1 index.
};

struct WrittenFile {
  std::uint64_t id = 0;
  std::uint64_t block_size = 0;  // 0: a v1 index.
  std::vector<std::uint8_t> content;
  std::vector<WrittenChunk> chunks;  // In offset order.
};

// Adds `content` to an index being written as the regular file `name` under `parent`: its entry,
// its chunks cut the way publish cuts them (with block digests when block_size is not 0) with a
// replica on each of `node_ids`, and its extents. Adds the file's figures to `stats`.
inline Result<WrittenFile> AddWrittenFile(index::IndexWriter& writer, std::uint64_t parent,
                                          const std::string& name,
                                          std::vector<std::uint8_t> content,
                                          std::uint64_t chunk_size, std::uint64_t block_size,
                                          const std::vector<std::int64_t>& node_ids,
                                          index::IndexStats& stats) {
  index::Entry entry;
  entry.parent = parent;
  entry.name = name;
  entry.type = index::EntryType::kFile;
  entry.mode = 0644;
  entry.size = content.size();
  WrittenFile file;
  file.block_size = block_size;
  CKPTFS_ASSIGN_OR_RETURN(file.id, writer.AddEntry(entry));
  stats.files++;
  stats.bytes += content.size();
  for (std::uint64_t offset = 0; offset < content.size(); offset += chunk_size) {
    std::uint64_t end = std::min<std::uint64_t>(content.size(), offset + chunk_size);
    WrittenChunk chunk{offset, {content.begin() + offset, content.begin() + end}, {}, {}};
    chunk.digest = Sha256(chunk.bytes.data(), chunk.bytes.size());
    index::IndexWriter::AddedChunk added;
    if (block_size != 0) {
      index::ChunkDigests digests = index::HashChunk(chunk.bytes, block_size);
      chunk.blocks = std::move(digests.blocks);
      CKPTFS_ASSIGN_OR_RETURN(added,
                              writer.AddChunk(chunk.digest, chunk.bytes.size(), chunk.blocks));
    } else {
      CKPTFS_ASSIGN_OR_RETURN(added, writer.AddChunk(chunk.digest, chunk.bytes.size()));
    }
    if (added.is_new) {
      stats.chunks++;
      stats.chunk_bytes += chunk.bytes.size();
      for (std::int64_t node : node_ids) CKPTFS_RETURN_IF_ERROR(writer.AddReplica(added.id, node));
    }
    CKPTFS_RETURN_IF_ERROR(writer.AddExtent(file.id, offset, added.id));
    file.chunks.push_back(std::move(chunk));
  }
  file.content = std::move(content);
  return file;
}

inline Result<WrittenFile> WriteSingleFileIndex(
    const std::string& path, std::vector<std::uint8_t> content, std::uint64_t chunk_size,
    const std::vector<std::pair<std::string, std::string>>& nodes,
    std::uint64_t block_size = kTestBlockSize) {
  while (block_size > chunk_size) block_size /= 2;
  if (block_size < 4096) block_size = 0;
  std::unique_ptr<index::IndexWriter> writer;
  if (block_size != 0) {
    CKPTFS_ASSIGN_OR_RETURN(writer, index::IndexWriter::Create(path, chunk_size, block_size));
  } else {
    CKPTFS_ASSIGN_OR_RETURN(writer, index::IndexWriter::Create(path, chunk_size));
  }
  std::vector<std::int64_t> node_ids;
  for (const auto& [name, url] : nodes) {
    CKPTFS_ASSIGN_OR_RETURN(std::int64_t id, writer->AddNode(name, url));
    node_ids.push_back(id);
  }
  index::IndexStats stats{.directories = 1};
  CKPTFS_ASSIGN_OR_RETURN(WrittenFile file,
                          AddWrittenFile(*writer, index::kRootId, "model.bin", std::move(content),
                                         chunk_size, block_size, node_ids, stats));
  CKPTFS_RETURN_IF_ERROR(writer->Finish(stats));
  return file;
}

// Writes `bytes` as the object of `digest` under a node's document root:
// <root>/chunks/<hh>/<64 hex>.
inline Status WriteChunkObject(const std::string& root, const Digest& digest,
                               std::span<const std::uint8_t> bytes) {
  std::filesystem::path object = std::filesystem::path(root) / index::ChunkObjectPath(digest);
  std::error_code error;
  std::filesystem::create_directories(object.parent_path(), error);
  if (error)
    return InternalError("mkdir " + object.parent_path().string() + ": " + error.message());
  std::ofstream out(object, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return InternalError("cannot write " + object.string());
  return Status::Ok();
}

}  // namespace ckptfs::testing
