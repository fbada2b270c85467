// Schema v1 of the index: the DDL the writer runs and the tables and columns the reader requires.
// docs/INDEX.md describes every table and meta key; keep the two in step.
// Internal to index/. Thread safety: constants only.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace ckptfs::index::schema {

// The whole schema, run by the writer inside its transaction.
extern const char* const kCreateSql;

// meta keys.
inline constexpr std::string_view kFormatKey = "format";
inline constexpr std::string_view kSchemaVersionKey = "schema_version";
inline constexpr std::string_view kHashKey = "hash";
inline constexpr std::string_view kChunkSizeKey = "chunk_size";
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

struct Table {
  std::string_view name;
  std::array<std::string_view, 8> columns;  // Unused slots are empty.
};

// Every table the reader queries, with the columns it uses. meta comes first: it is checked
// before the schema version, the others after it.
inline constexpr Table kRequiredTables[] = {
    {"meta", {"key", "value"}},
    {"nodes", {"id", "name", "url"}},
    {"entries", {"id", "parent", "name", "type", "mode", "size", "mtime_ns", "target"}},
    {"chunks", {"id", "digest", "size"}},
    {"extents", {"file", "offset", "chunk"}},
    {"replicas", {"chunk", "node"}},
};

}  // namespace ckptfs::index::schema
