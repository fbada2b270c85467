// TestChunk: pattern bytes with the ChunkRef an index would give them, for fetcher tests.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "common/digest.h"
#include "netfetch/fetcher.h"
#include "tests/support/pattern_bytes.h"

namespace ckptfs::testing {

struct TestChunk {
  std::vector<std::uint8_t> bytes;
  netfetch::ChunkRef ref;
};

// `size` pattern bytes from `seed` on `nodes`, with the digest of each block_size-byte block
// (none when block_size is 0, as in a v1 index).
inline TestChunk MakeTestChunk(std::uint32_t seed, std::vector<std::int64_t> nodes,
                               std::size_t size, std::uint64_t block_size) {
  TestChunk chunk;
  chunk.bytes = PatternBytes(size, seed);
  chunk.ref.digest = Sha256(chunk.bytes.data(), chunk.bytes.size());
  chunk.ref.size = size;
  chunk.ref.nodes = std::move(nodes);
  chunk.ref.block_size = block_size;
  for (std::size_t at = 0; block_size > 0 && at < size; at += block_size) {
    chunk.ref.blocks.push_back(Sha256(chunk.bytes.data() + at, std::min(block_size, size - at)));
  }
  return chunk;
}

// `bytes` with the byte at `at` flipped.
inline std::vector<std::uint8_t> CorruptedAt(std::vector<std::uint8_t> bytes, std::size_t at) {
  bytes[at] ^= 0x01;
  return bytes;
}

}  // namespace ckptfs::testing
