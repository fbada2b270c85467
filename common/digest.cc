#include "common/digest.h"

#include <openssl/evp.h>

#include <cstdlib>
#include <cstring>

namespace ckptfs {

namespace {
constexpr char kHexDigits[] = "0123456789abcdef";

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

std::string Digest::Hex() const {
  std::string out(kDigestSize * 2, '0');
  for (std::size_t i = 0; i < kDigestSize; ++i) {
    out[2 * i] = kHexDigits[bytes[i] >> 4];
    out[2 * i + 1] = kHexDigits[bytes[i] & 0xf];
  }
  return out;
}

std::optional<Digest> Digest::FromHex(std::string_view hex) {
  if (hex.size() != kDigestSize * 2) return std::nullopt;
  Digest d;
  for (std::size_t i = 0; i < kDigestSize; ++i) {
    int hi = HexValue(hex[2 * i]);
    int lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    d.bytes[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return d;
}

std::optional<Digest> Digest::FromBytes(std::span<const std::uint8_t> raw) {
  if (raw.size() != kDigestSize) return std::nullopt;
  Digest d;
  std::memcpy(d.bytes.data(), raw.data(), kDigestSize);
  return d;
}

struct Sha256Hasher::Ctx {
  EVP_MD_CTX* md = nullptr;
};

Sha256Hasher::Sha256Hasher() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  // Allocation failure of a few hundred bytes at start-up is not something to limp on from.
  if (ctx_->md == nullptr || EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) != 1) std::abort();
}

Sha256Hasher::~Sha256Hasher() { EVP_MD_CTX_free(ctx_->md); }

void Sha256Hasher::Update(const void* data, std::size_t len) {
  EVP_DigestUpdate(ctx_->md, data, len);
}

Digest Sha256Hasher::Finish() {
  Digest d;
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx_->md, d.bytes.data(), &len);
  EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr);
  return d;
}

Digest Sha256(const void* data, std::size_t len) {
  Sha256Hasher h;
  h.Update(data, len);
  return h.Finish();
}

}  // namespace ckptfs
