#include "index/types.h"

namespace ckptfs::index {

bool IsValidName(const std::string& name) {
  if (name.empty() || name == "." || name == "..") return false;
  return name.find('/') == std::string::npos && name.find('\0') == std::string::npos;
}

std::string ChunkObjectPath(const Digest& digest) {
  const std::string hex = digest.Hex();
  return "chunks/" + hex.substr(0, 2) + "/" + hex;
}

}  // namespace ckptfs::index
