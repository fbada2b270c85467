// `ckptfs gc`: removes from store directories the chunk objects no index still needs.
//
// Publishing a new checkpoint to the same nodes adds the chunks it does not share with the
// ones before, and nothing ever takes the old ones away. Given the store directories a publish
// wrote with --store (the directories the nodes serve) and every index that is still mounted
// anywhere, this finds the objects none of those indexes lists, and removes them with `remove`
// (without it, it only reports what it would remove). Index URLs are downloaded for the run. An
// object younger than `min_age` stays whatever it is: a publish writes its objects before its
// index, and marks an object it finds already there as new, so that a gc that runs meanwhile leaves
// what that index will need. A publish by PUT cannot mark objects; the leases of store_leases.h
// keep it and a removing gc apart, and keep what it found for `min_age`. Leftovers of an
// interrupted publish (NAME.tmp.PID) older than `min_age` go too; anything else in a store is left
// alone.
//
// Objects are taken one prefix directory (chunks/XX) at a time and looked up in the indexes,
// so memory stays bounded whatever the size of the stores or of the indexes.
#pragma once

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "common/digest.h"
#include "common/result.h"
#include "netfetch/transport.h"

namespace ckptfs::cli {

struct GcOptions {
  std::vector<std::string> index_paths;  // Every index still in use: files or http(s) URLs.
  // Empty, or the SHA-256 each of index_paths must have, in the same order (--index-sha256):
  // gc reads nothing of a store while another version of an index is there.
  std::vector<Digest> index_sha256s;
  // Where index URLs are downloaded to (and removed after); empty: $TMPDIR, else /tmp.
  std::string temp_dir;
  std::vector<std::string> stores;  // Store directories, as given to publish --store.
  std::chrono::seconds min_age{std::chrono::hours(1)};
  bool remove = false;  // Remove what no index needs; false: only report it.
  // The time objects' ages are measured from (their mtime); tests set it.
  std::chrono::system_clock::time_point now = std::chrono::system_clock::now();
};

struct GcReport {
  std::uint64_t kept_objects = 0, kept_bytes = 0;
  std::uint64_t unneeded_objects = 0, unneeded_bytes = 0;  // Removed with `remove`.
  std::uint64_t recent_files = 0;  // Objects or leftovers no index needs, younger than min_age.
  std::uint64_t temp_files = 0;    // Leftovers of an interrupted publish, removed with remove.
  std::uint64_t other_files = 0;   // Not an object of a store: left alone.
};

// Collects as described above, printing a summary per store and in all to `out`. Errors: an
// index that cannot be read or a store that is not a directory (then nothing is removed
// anywhere), or a file that cannot be removed (then what was removed before stays removed).
Result<GcReport> CollectGarbage(const GcOptions& options, netfetch::Transport& transport,
                                std::ostream& out);

}  // namespace ckptfs::cli
