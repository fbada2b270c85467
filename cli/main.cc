// The ckptfs executable: wires the real objects together for each subcommand. Every error reaches
// the user as one line "ckptfs: ..." and a non-zero exit status.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/check.h"
#include "cli/gc.h"
#include "cli/mount.h"
#include "cli/mount_options.h"
#include "cli/mount_setup.h"
#include "cli/mount_table.h"
#include "cli/publish.h"
#include "cli/stats.h"
#include "cli/warmup.h"
#include "common/clock.h"
#include "common/digest.h"
#include "common/units.h"
#include "fs/cache_verify.h"
#include "fs/disk_cache.h"
#include "index/reader.h"
#include "netfetch/curl_transport.h"
#include "netfetch/global_init.h"

namespace ckptfs::cli {
namespace {

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

int Fail(const Status& status) {
  std::cerr << "ckptfs: " << status.message() << std::endl;
  return kExitError;
}

// What every command that talks to nodes takes: --http-headers FILE and --ca-file FILE.
struct NetworkArgs {
  std::string http_headers, ca_file;
};

void AddNetworkOptions(CLI::App* command, NetworkArgs& args) {
  command->add_option(
      "--http-headers", args.http_headers,
      "File of HTTP headers (\"Name: value\" lines, e.g. credentials) for every request");
  command->add_option("--ca-file", args.ca_file,
                      "PEM file of the certificate authorities to trust for https, instead of "
                      "the system's");
}

// A command's transport and what it uses; made in place by Open, then not moved.
struct Network {
  RealClock clock;
  netfetch::StoreAccess access;
  std::unique_ptr<netfetch::CurlTransport> transport;

  Status Open(const NetworkArgs& args) {
    CKPTFS_ASSIGN_OR_RETURN(access, netfetch::OpenStoreAccess(args.http_headers, "--http-headers",
                                                              args.ca_file, "--ca-file", &clock));
    transport = std::make_unique<netfetch::CurlTransport>(access.options);
    return Status::Ok();
  }
};

struct PublishArgs {
  std::string source, output, chunk_size = "4M", block_size = "64K";
  NetworkArgs network;
  std::vector<std::string> nodes, stores;
  int replicas = 0;
  int uploads = 8;
};

Result<PublishOptions> ToPublishOptions(const PublishArgs& args) {
  PublishOptions options;
  options.source_dir = args.source;
  options.index_path = args.output;
  options.replicas = args.replicas;
  options.uploads = args.uploads;
  CKPTFS_ASSIGN_OR_RETURN(options.chunk_size, ParseSize(args.chunk_size));
  Result<std::uint64_t> block_size = ParseSize(args.block_size);
  if (!block_size.ok()) return block_size.status().WithContext("--block-size");
  options.block_size = *block_size;
  for (const std::string& node : args.nodes) {
    CKPTFS_ASSIGN_OR_RETURN(auto kv, SplitAssignment(node, "--node"));
    options.nodes.push_back({kv.first, kv.second});
  }
  for (const std::string& store : args.stores) {
    CKPTFS_ASSIGN_OR_RETURN(auto kv, SplitAssignment(store, "--store"));
    options.stores[kv.first] = kv.second;
  }
  if (args.replicas < 0) return InvalidArgumentError("--replicas must be at least 1");
  return options;
}

int RunPublish(const PublishArgs& args) {
  Result<PublishOptions> options = ToPublishOptions(args);
  if (!options.ok()) return Fail(options.status());
  Network network;
  if (Status opened = network.Open(args.network); !opened.ok()) return Fail(opened);
  if (::isatty(STDERR_FILENO) == 1) options->progress = &std::cerr;
  Status status = Publish(*options, *network.transport, network.clock, std::cout);
  return status.ok() ? 0 : Fail(status);
}

// Exit status 1 when any replica is bad, after the report: a script can act on it.
int RunCheck(CheckOptions options, const std::vector<std::string>& nodes,
             const std::string& index_sha256, const NetworkArgs& network_args) {
  if (!index_sha256.empty()) {
    Result<Digest> digest = ParseIndexSha256(index_sha256, "--index-sha256");
    if (!digest.ok()) return Fail(digest.status());
    options.index_sha256 = *digest;
  }
  for (const std::string& node : nodes) {
    Result<std::pair<std::string, std::string>> kv = SplitAssignment(node, "--node");
    if (!kv.ok()) return Fail(kv.status());
    options.node_urls[kv->first] = kv->second;
  }
  Network network;
  if (Status opened = network.Open(network_args); !opened.ok()) return Fail(opened);
  Result<CheckReport> report = Check(options, *network.transport, std::cout);
  if (!report.ok()) return Fail(report.status());
  return report->all.bad() == 0 ? 0 : kExitError;
}

int RunGc(GcOptions options, double min_age_seconds, const std::vector<std::string>& sha256s,
          const NetworkArgs& network_args) {
  for (const std::string& hex : sha256s) {
    Result<Digest> digest = ParseIndexSha256(hex, "--index-sha256");
    if (!digest.ok()) return Fail(digest.status());
    options.index_sha256s.push_back(*digest);
  }
  constexpr double kCentury = 100 * 365.25 * 24 * 3600;  // Beyond it: everything is recent.
  options.min_age =
      std::chrono::seconds(static_cast<std::int64_t>(std::min(min_age_seconds, kCentury)));
  Network network;
  if (Status opened = network.Open(network_args); !opened.ok()) return Fail(opened);
  Result<GcReport> report = CollectGarbage(options, *network.transport, std::cout);
  return report.ok() ? 0 : Fail(report.status());
}

int RunMount(const std::string& index, const std::string& mountpoint, bool foreground,
             const std::vector<std::string>& option_lists, OptionSource source) {
  MountOptions options;
  options.index = index;
  options.mountpoint = mountpoint;
  options.foreground = foreground;
  for (const std::string& list : option_lists) {
    Status applied = ApplyMountOptionList(list, options, source);
    if (!applied.ok()) return Fail(applied);
  }
  Status status = Mount(options);
  return status.ok() ? 0 : Fail(status);
}

// The summary line, then one line per chunk that failed (the first few). Exit status 1 when any
// failed.
int PrintWarmup(const std::string& cache_dir, const WarmupReport& r) {
  const double seconds = std::chrono::duration<double>(r.elapsed).count();
  std::cout << "warmed " << r.chunks << " chunks (" << FormatSize(r.bytes) << ") into " << cache_dir
            << ": " << r.fetched_chunks << " fetched";
  if (r.fetched_bytes > 0 && seconds > 0) {
    std::cout << " (" << FormatSize(r.fetched_bytes) << " in " << std::fixed << std::setprecision(1)
              << seconds << " s, "
              << FormatSize(static_cast<std::uint64_t>(r.fetched_bytes / seconds)) << "/s)";
  }
  std::cout << ", " << r.cached_chunks << " already cached";
  if (r.failed_chunks > 0) std::cout << ", " << r.failed_chunks << " failed";
  std::cout << std::endl;
  for (const std::string& failure : r.failures) std::cout << "failed " << failure << "\n";
  if (r.failed_chunks == 0) return 0;
  return Fail(UnavailableError(std::to_string(r.failed_chunks) +
                               " chunks could not be fetched; the next warmup or mount asks "
                               "for them again"));
}

// ckptfs warmup: the mount's own set-up (cache directory, index, nodes; mount options), then
// Warmup instead of a mount.
int RunWarmup(const std::string& index, const std::vector<std::string>& option_lists,
              WarmupOptions warmup) {
  MountOptions options;
  options.index = index;
  for (const std::string& list : option_lists) {
    Status applied = ApplyMountOptionList(list, options);
    if (!applied.ok()) return Fail(applied);
  }
  RealClock clock;
  Result<std::string> cache_dir = ChooseCacheDir(options);
  if (!cache_dir.ok()) return Fail(cache_dir.status());
  Result<std::unique_ptr<fs::DiskCache>> cache =
      fs::DiskCache::Open({*cache_dir, options.cache_size, &clock});
  if (!cache.ok()) return Fail(cache.status());
  Result<netfetch::StoreAccess> access = netfetch::OpenStoreAccess(
      options.http_headers, "http_headers", options.ca_file, "ca_file", &clock);
  if (!access.ok()) return Fail(access.status());
  netfetch::CurlTransport transport(access->options);
  Result<std::unique_ptr<index::IndexReader>> reader = OpenIndex(options, *cache_dir, transport);
  if (!reader.ok()) return Fail(reader.status());
  Result<std::vector<netfetch::NodeEndpoint>> endpoints = Endpoints(**reader, options);
  if (!endpoints.ok()) return Fail(endpoints.status());
  netfetch::RetryingFetcher fetcher(std::move(*endpoints), &transport, &clock,
                                    RetryOptionsFor(options));
  warmup.chunk_timeout = options.timeout;
  if (::isatty(STDERR_FILENO) == 1) warmup.progress = &std::cerr;
  Result<WarmupReport> report = Warmup(**reader, fetcher, **cache, clock, warmup);
  if (!report.ok()) return Fail(report.status());
  return PrintWarmup(*cache_dir, *report);
}

// One line per bad entry, then the totals. Exit status 1 while a bad entry is left.
int RunVerifyCache(fs::CacheVerifyOptions options) {
  if (options.dir.empty()) {
    Result<std::string> dir = DefaultCacheDir();
    if (!dir.ok()) return Fail(dir.status());
    options.dir = *dir;
  }
  const auto start = std::chrono::steady_clock::now();
  Result<fs::CacheVerifyReport> report = fs::VerifyCache(options);
  if (!report.ok()) return Fail(report.status());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::size_t left = 0;
  for (const fs::BadCacheEntry& bad : report->bad) {
    std::cout << "bad " << bad.path << ": " << bad.reason << (bad.removed ? " (removed)" : "")
              << "\n";
    if (!bad.removed) ++left;
  }
  std::cout << options.dir << ": " << report->entries << " entries, " << FormatSize(report->bytes)
            << ", hashed in " << std::fixed << std::setprecision(1) << seconds << " s; "
            << report->bad.size() << " bad";
  if (report->bad.size() > left) std::cout << ", " << report->bad.size() - left << " removed";
  if (left > 0 && !options.remove) std::cout << " (ckptfs verify-cache --delete removes them)";
  std::cout << std::endl;
  return left == 0 ? 0 : kExitError;
}

// How a mount is labelled in the Prometheus format: as the mount table names it
// (ResolveMountpoint), which is also how the mounts found without a mountpoint are named, so
// that one mount named twice ("/mnt/x", "/mnt/x/.", through a symlink) is recognised.
std::string MountLabel(const std::string& mountpoint) {
  const std::string normal = std::filesystem::path(mountpoint).lexically_normal().string();
  Result<std::string> resolved = ResolveMountpoint(normal);
  return resolved.ok() ? *resolved : normal;
}

// One mount's text as it is; or, with `prometheus`, every mount's in the Prometheus format, a
// mount that cannot be read shown as down (and its error on stderr, exit status 1).
int RunStats(std::vector<std::string> mountpoints, bool prometheus) {
  // For a collector run from cron, whatever is mounted now.
  if (prometheus && mountpoints.empty()) mountpoints = CurrentMountPointsOfType("fuse.ckptfs");
  if (!prometheus && mountpoints.size() != 1) {
    std::cerr << "ckptfs: stats takes one mountpoint, or several with --prometheus" << std::endl;
    return kExitUsage;
  }
  std::vector<MountStats> mounts;
  int rc = 0;
  for (const std::string& mountpoint : mountpoints) {
    // A mount named twice would give the same series twice, which a scraper refuses.
    const std::string label = MountLabel(mountpoint);
    if (std::any_of(mounts.begin(), mounts.end(),
                    [&](const MountStats& m) { return m.mountpoint == label; })) {
      continue;
    }
    mounts.push_back({label, ReadMountStats(mountpoint)});
    if (!mounts.back().text.ok()) rc = Fail(mounts.back().text.status());
  }
  if (!prometheus && rc != 0) return rc;
  std::cout << (prometheus ? FormatPrometheus(mounts) : *mounts.front().text) << std::flush;
  if (!std::cout) return Fail(InternalError("cannot write to standard output"));
  return rc;
}

// mount(8) runs "mount.ckptfs SPEC DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]" for fstab entries
// of type ckptfs. -f there means "fake" (do nothing), not foreground.
int MountHelperMain(int argc, char** argv) {
  std::vector<std::string> positional, option_lists;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if ((arg == "-o" || arg == "-t" || arg == "-N") && i + 1 < argc) {
      std::string value = argv[++i];
      if (arg == "-o") option_lists.push_back(value);
      if (arg == "-N") return Fail(InvalidArgumentError("mount namespaces (-N) are not supported"));
    } else if (arg == "-f") {
      return 0;
    } else if (arg == "-s" || arg == "-n" || arg == "-v") {
      continue;  // sloppy, no mtab, verbose: nothing to do.
    } else if (!arg.empty() && arg[0] == '-') {
      return Fail(InvalidArgumentError("mount.ckptfs: unknown flag " + arg));
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 2) {
    std::cerr << "usage: mount.ckptfs INDEX MOUNTPOINT [-o OPTIONS]" << std::endl;
    return kExitUsage;
  }
  Status init = netfetch::GlobalInit();
  if (!init.ok()) return Fail(init);
  int rc = RunMount(positional[0], positional[1], /*foreground=*/false, option_lists,
                    OptionSource::kMount8);
  netfetch::GlobalCleanup();
  return rc;
}

int Main(int argc, char** argv) {
  std::string self = argc > 0 ? argv[0] : "ckptfs";
  if (self.substr(self.rfind('/') + 1) == "mount.ckptfs") return MountHelperMain(argc, argv);

  CLI::App app{"ckptfs: publish a checkpoint directory to HTTP nodes and mount it lazily"};
  app.require_subcommand(1);
  app.set_version_flag("--version", CKPTFS_VERSION);

  PublishArgs publish;
  CLI::App* pub = app.add_subcommand("publish", "Chunk a directory onto nodes and write an index");
  pub->add_option("source", publish.source, "Directory to publish")->required();
  pub->add_option("-o,--output", publish.output,
                  "Index file to write, or an http(s) URL to PUT it to once all is stored")
      ->required();
  pub->add_option("--node", publish.nodes, "Node as NAME=URL (repeat for more nodes)")->required();
  pub->add_option("--store", publish.stores,
                  "NAME=DIR: write NAME's objects into DIR (what the node serves) instead of PUT");
  pub->add_option("--replicas", publish.replicas, "Copies of each chunk (default min(2, nodes))");
  pub->add_option("--chunk-size", publish.chunk_size, "Chunk size, e.g. 4M (default 4M)");
  pub->add_option("--block-size", publish.block_size,
                  "Size of the verified blocks within a chunk: a power of two from 4K to the "
                  "chunk size (default 64K)");
  pub->add_option("--uploads", publish.uploads,
                  "Objects stored at a time, over all nodes (default 8)");
  AddNetworkOptions(pub, publish.network);

  std::string index, mountpoint;
  bool foreground = false;
  std::vector<std::string> mount_opts;
  CLI::App* mnt = app.add_subcommand("mount", "Mount an index read-only");
  mnt->add_option("index", index, "Index file or http(s) URL")->required();
  mnt->add_option("mountpoint", mountpoint, "Directory to mount on")->required();
  mnt->add_flag("-f,--foreground", foreground, "Stay in the foreground");
  mnt->add_option("-o", mount_opts,
                  "Options: cache_dir=DIR, cache_size=SIZE, node.NAME=URL, timeout=SECONDS, "
                  "stall_timeout=SECONDS, fetchers=N, fetch_parts=N, readahead=SIZE, "
                  "dir_readahead=0|1, memory_cache=SIZE, index_cache=SIZE, "
                  "kernel_readahead=SIZE, http_headers=FILE, ca_file=FILE, index_sha256=HEX, "
                  "index_fallback, allow_other, debug, noexec");

  CheckOptions check_options;
  CLI::App* check = app.add_subcommand(
      "check", "Ask the nodes for every chunk replica an index lists; exit 1 if any is bad");
  check->add_option("index", check_options.index_path, "Index file or http(s) URL")->required();
  check->add_flag("--verify", check_options.verify,
                  "GET every replica and check its SHA-256, not only its size (HEAD)");
  check->add_option("--jobs", check_options.jobs, "Replicas checked at a time (default 8)");
  std::vector<std::string> check_nodes;
  check->add_option("--node", check_nodes,
                    "NAME=URL: ask node NAME at URL instead of the index's (repeat for more)");
  std::string check_sha256;
  check->add_option("--index-sha256", check_sha256,
                    "HEX: check only the index with this SHA-256 (as publish printed it)");
  NetworkArgs check_network;
  AddNetworkOptions(check, check_network);

  GcOptions gc_options;
  double gc_min_age = 3600;
  CLI::App* gc = app.add_subcommand(
      "gc", "Remove from store directories the chunk objects that none of the given indexes needs");
  gc->add_option("index", gc_options.index_paths, "Every index still in use (file or http(s) URL)")
      ->required();
  gc->add_option("--store", gc_options.stores,
                 "A store directory, as given to publish --store (repeat for more)")
      ->required();
  gc->add_flag("--delete", gc_options.remove, "Remove them; without it, only tell what it would");
  gc->add_option("--min-age", gc_min_age,
                 "Keep every file modified less than this many seconds ago (default 3600)")
      ->check(CLI::NonNegativeNumber);
  std::vector<std::string> gc_sha256s;
  gc->add_option("--index-sha256", gc_sha256s,
                 "HEX: the SHA-256 each index must have, one per index in their order (repeat)");
  NetworkArgs gc_network;
  AddNetworkOptions(gc, gc_network);

  std::vector<std::string> stats_mountpoints;
  bool stats_prometheus = false;
  CLI::App* stats = app.add_subcommand(
      "stats", "Print the runtime statistics of a mount (its root's user.ckptfs.stats attribute)");
  stats->add_option("mountpoint", stats_mountpoints, "Where the index is mounted");
  stats->add_flag("--prometheus", stats_prometheus,
                  "In the Prometheus text format, for one or more mounts (default: every "
                  "ckptfs mount)");

  std::string warmup_index;
  std::vector<std::string> warmup_option_lists;
  WarmupOptions warmup_options;
  CLI::App* warm = app.add_subcommand(
      "warmup",
      "Fetch an index's chunks (or those of some of its files) into the cache directory, "
      "verified, so that mounts read them from disk");
  warm->add_option("index", warmup_index, "Index file or http(s) URL")->required();
  warm->add_option("path", warmup_options.paths,
                   "Files or directories of the checkpoint, relative to its root (default: all)");
  warm->add_option("-o", warmup_option_lists,
                   "A mount's options: cache_dir=, cache_size=, node.NAME=, timeout=, "
                   "stall_timeout=, http_headers=, ca_file=, index_sha256=, index_fallback "
                   "apply; the others are accepted and change nothing");
  warm->add_option("--jobs", warmup_options.jobs, "Chunks fetched at a time (default 8)")
      ->check(CLI::Range(1, 64));

  fs::CacheVerifyOptions verify_options;
  CLI::App* verify = app.add_subcommand(
      "verify-cache",
      "Hash every whole chunk in a cache directory against its name; exit 1 if any is bad");
  verify->add_option("cache_dir", verify_options.dir,
                     "The cache directory (default: the one a mount by this user takes)");
  verify->add_flag("--delete", verify_options.remove,
                   "Remove the bad entries, so that mounts fetch those chunks again");
  verify_options.jobs = 2;
  verify->add_option("--jobs", verify_options.jobs, "Directories hashed at once (default 2)")
      ->check(CLI::Range(1, 64));

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "ckptfs: " << e.what() << " (see ckptfs --help)" << std::endl;
    return kExitUsage;
  }
  // Neither needs the network, so they come before libcurl's set-up.
  if (stats->parsed()) return RunStats(stats_mountpoints, stats_prometheus);
  if (verify->parsed()) return RunVerifyCache(std::move(verify_options));
  Status init = netfetch::GlobalInit();
  if (!init.ok()) return Fail(init);
  int rc = 0;
  if (pub->parsed()) {
    rc = RunPublish(publish);
  } else if (check->parsed()) {
    rc = RunCheck(check_options, check_nodes, check_sha256, check_network);
  } else if (gc->parsed()) {
    rc = RunGc(gc_options, gc_min_age, gc_sha256s, gc_network);
  } else if (warm->parsed()) {
    rc = RunWarmup(warmup_index, warmup_option_lists, std::move(warmup_options));
  } else {
    rc = RunMount(index, mountpoint, foreground, mount_opts, OptionSource::kCommandLine);
  }
  netfetch::GlobalCleanup();
  return rc;
}

}  // namespace
}  // namespace ckptfs::cli

// Errors travel as return values; an exception reaching here (out of memory while parsing, say)
// still ends with one line instead of std::terminate's abort.
int main(int argc, char** argv) {
  try {
    return ckptfs::cli::Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ckptfs: %s\n", e.what());
  } catch (...) {
    std::fputs("ckptfs: unexpected error\n", stderr);
  }
  return 1;
}
