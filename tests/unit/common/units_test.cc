#include "common/units.h"

#include <gtest/gtest.h>

#include "common/digest.h"

namespace ckptfs {
namespace {

TEST(ParseSize, AcceptsBinarySuffixes) {
  EXPECT_EQ(ParseSize("4096").value(), 4096u);
  EXPECT_EQ(ParseSize("4K").value(), 4096u);
  EXPECT_EQ(ParseSize("4MiB").value(), 4u << 20);
  EXPECT_EQ(ParseSize("10G").value(), 10ull << 30);
  EXPECT_EQ(ParseSize("1t").value(), 1ull << 40);
}

TEST(ParseSize, RejectsGarbage) {
  EXPECT_FALSE(ParseSize("").ok());
  EXPECT_FALSE(ParseSize("ten").ok());
  EXPECT_FALSE(ParseSize("4X").ok());
  EXPECT_FALSE(ParseSize("4KX").ok());
  EXPECT_FALSE(ParseSize("99999999999T").ok());
}

TEST(ParseSeconds, AcceptsPositiveDecimals) {
  EXPECT_DOUBLE_EQ(ParseSeconds("2.5").value(), 2.5);
  EXPECT_FALSE(ParseSeconds("0").ok());
  EXPECT_FALSE(ParseSeconds("-1").ok());
  EXPECT_FALSE(ParseSeconds("3s").ok());
}

TEST(Digest, MatchesKnownSha256AndRoundTripsHex) {
  Digest d = Sha256("abc", 3);
  EXPECT_EQ(d.Hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Digest::FromHex(d.Hex()).value(), d);
  EXPECT_FALSE(Digest::FromHex("abc").has_value());
  EXPECT_FALSE(Digest::FromHex(std::string(64, 'g')).has_value());
}

TEST(Sha256Hasher, StreamingEqualsOneShot) {
  Sha256Hasher h;
  h.Update("a", 1);
  h.Update("bc", 2);
  EXPECT_EQ(h.Finish(), Sha256("abc", 3));
}

}  // namespace
}  // namespace ckptfs
