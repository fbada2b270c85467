// Digest: the SHA-256 of a chunk, the name under which it is stored and cached.
//
// Sha256Hasher wraps OpenSSL's EVP interface for streaming input. Thread safety: a Digest is a
// value; a Sha256Hasher is used by one thread at a time.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace ckptfs {

inline constexpr std::size_t kDigestSize = 32;

struct Digest {
  std::array<std::uint8_t, kDigestSize> bytes{};

  // 64 lowercase hex digits.
  std::string Hex() const;
  // Parses 64 hex digits (either case); nullopt otherwise.
  static std::optional<Digest> FromHex(std::string_view hex);
  // Copies exactly kDigestSize bytes; nullopt for any other length.
  static std::optional<Digest> FromBytes(std::span<const std::uint8_t> raw);

  friend bool operator==(const Digest&, const Digest&) = default;
  friend auto operator<=>(const Digest&, const Digest&) = default;
};

struct DigestHash {
  std::size_t operator()(const Digest& d) const {
    std::size_t h;
    static_assert(sizeof(h) <= kDigestSize);
    __builtin_memcpy(&h, d.bytes.data(), sizeof(h));
    return h;
  }
};

class Sha256Hasher {
 public:
  Sha256Hasher();
  ~Sha256Hasher();
  Sha256Hasher(const Sha256Hasher&) = delete;
  Sha256Hasher& operator=(const Sha256Hasher&) = delete;

  void Update(const void* data, std::size_t len);
  // Returns the digest of everything passed to Update and resets for new input.
  Digest Finish();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

// SHA-256 of one buffer.
Digest Sha256(const void* data, std::size_t len);

}  // namespace ckptfs
