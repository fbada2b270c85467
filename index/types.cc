#include "index/types.h"

#include <algorithm>

#include "index/schema.h"

namespace ckptfs::index {

bool IsValidName(const std::string& name) {
  if (name.empty() || name == "." || name == "..") return false;
  return name.find('/') == std::string::npos && name.find('\0') == std::string::npos;
}

bool IsValidBlockSize(std::uint64_t block_size, std::uint64_t chunk_size) {
  const bool power_of_two = block_size != 0 && (block_size & (block_size - 1)) == 0;
  return power_of_two && block_size >= schema::kMinBlockSize && block_size <= chunk_size;
}

ChunkDigests HashChunk(std::span<const std::uint8_t> bytes, std::uint64_t block_size) {
  ChunkDigests out;
  out.blocks.reserve(BlockCount(bytes.size(), block_size));
  Sha256Hasher chunk;
  Sha256Hasher block;
  for (std::size_t offset = 0; offset < bytes.size(); offset += block_size) {
    const std::size_t n = std::min<std::uint64_t>(block_size, bytes.size() - offset);
    block.Update(bytes.data() + offset, n);
    out.blocks.push_back(block.Finish());
    chunk.Update(bytes.data() + offset, n);
  }
  out.chunk = chunk.Finish();
  return out;
}

std::string ChunkObjectPath(const Digest& digest) {
  const std::string hex = digest.Hex();
  return "chunks/" + hex.substr(0, 2) + "/" + hex;
}

}  // namespace ckptfs::index
