// Schema v2 of the index (and v1, which readers still open): the DDL the writer runs and the
// tables and columns the reader requires. docs/INDEX.md describes every table and meta key; keep
// the two in step.
// Internal to index/. Thread safety: constants only.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace ckptfs::index::schema {

// The schema, run by the writer inside its transaction: v1 is kCreateSqlV1 (indexes as older
// ckptfs wrote them, for writers made without a block size); v2 is v1 plus kCreateBlocksSql.
extern const char* const kCreateSqlV1;
extern const char* const kCreateBlocksSql;

// meta keys.
inline constexpr std::string_view kFormatKey = "format";
inline constexpr std::string_view kSchemaVersionKey = "schema_version";
inline constexpr std::string_view kHashKey = "hash";
inline constexpr std::string_view kChunkSizeKey = "chunk_size";
inline constexpr std::string_view kBlockSizeKey = "block_size";  // v2.
inline constexpr std::string_view kCreatedByKey = "created_by";
inline constexpr std::string_view kFilesKey = "files";
inline constexpr std::string_view kDirectoriesKey = "directories";
inline constexpr std::string_view kBytesKey = "bytes";
inline constexpr std::string_view kChunksKey = "chunks";
inline constexpr std::string_view kChunkBytesKey = "chunk_bytes";

// meta values.
inline constexpr std::string_view kFormat = "ckptfs";
inline constexpr std::string_view kHash = "sha256";

// Largest chunk_size an index may declare. Readers allocate chunk-sized buffers, so an untrusted
// index must not be able to ask for absurd ones; 1 GiB is far above any sensible chunk.
inline constexpr std::uint64_t kMaxChunkSize = std::uint64_t{1} << 30;

// block_size (v2) is a power of two from kMinBlockSize to the index's chunk_size.
inline constexpr std::uint64_t kMinBlockSize = 4096;

// The first schema version with block digests (meta block_size, the blocks table).
inline constexpr int kFirstVersionWithBlocks = 2;

struct Table {
  std::string_view name;
  std::array<std::string_view, 8> columns;  // Unused slots are empty.
};

// Every table the reader queries, with the columns it uses in every version. meta comes first: it
// is checked before the schema version, the others after it. Tables added by a later version are
// in kTablesSinceV2.
inline constexpr Table kRequiredTables[] = {
    {"meta", {"key", "value"}},
    {"nodes", {"id", "name", "url"}},
    {"entries", {"id", "parent", "name", "type", "mode", "size", "mtime_ns", "target"}},
    {"chunks", {"id", "digest", "size"}},
    {"extents", {"file", "offset", "chunk"}},
    {"replicas", {"chunk", "node"}},
};

// Required from schema version 2 on. The block digests of a chunk live in their own table rather
// than in a chunks column: a 4 MiB chunk with 64 KiB blocks has 2 KiB of them, which would leave
// one chunks row per 4 KiB page, and ValidateFile and ExtentsInRange, which scan chunks, would
// read a page per chunk. Without them a chunks row is ~50 bytes.
inline constexpr Table kTablesSinceV2[] = {
    {"blocks", {"chunk", "digests"}},
};

}  // namespace ckptfs::index::schema
