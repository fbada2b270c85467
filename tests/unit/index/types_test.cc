#include "index/types.h"

#include <gtest/gtest.h>

#include <string>

namespace ckptfs::index {
namespace {

TEST(IndexTypes, IsValidNameAcceptsOrdinaryNames) {
  EXPECT_TRUE(IsValidName("model.safetensors"));
  EXPECT_TRUE(IsValidName("..."));
  EXPECT_TRUE(IsValidName(".hidden"));
  EXPECT_TRUE(IsValidName("a b"));
}

TEST(IndexTypes, IsValidNameRejectsEmptyDotsSlashAndNul) {
  EXPECT_FALSE(IsValidName(""));
  EXPECT_FALSE(IsValidName("."));
  EXPECT_FALSE(IsValidName(".."));
  EXPECT_FALSE(IsValidName("a/b"));
  EXPECT_FALSE(IsValidName("/"));
  EXPECT_FALSE(IsValidName(std::string("a\0b", 3)));
}

TEST(IndexTypes, ChunkObjectPathUsesFirstTwoHexDigitsAsDirectory) {
  const Digest digest = Sha256("abc", 3);
  EXPECT_EQ(ChunkObjectPath(digest),
            "chunks/ba/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

}  // namespace
}  // namespace ckptfs::index
