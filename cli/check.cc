#include "cli/check.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <utility>

#include "cli/local_index.h"
#include "cli/node_urls.h"
#include "common/buffer.h"
#include "common/digest.h"
#include "common/file_io.h"
#include "index/reader.h"
#include "index/types.h"

namespace ckptfs::cli {

namespace {

constexpr std::size_t kChunksPerPage = 1024;
constexpr auto kRequestTimeout = std::chrono::seconds(120);
// Bad replicas listed per node and kind; the rest are only counted. A node that is down makes
// every one of its replicas bad, and a thousand lines saying so help nobody.
constexpr std::uint64_t kLinesPerNodeAndKind = 5;

enum class Verdict { kOk, kMissing, kWrongSize, kCorrupt, kUnreachable };

// Indexed by Verdict.
constexpr const char* kVerdictNames[] = {"ok", "missing", "wrong size", "corrupt", "unreachable"};

const char* Describe(Verdict v) { return kVerdictNames[static_cast<int>(v)]; }

std::uint64_t& CountOf(ReplicaCounts& counts, Verdict v) {
  switch (v) {
    case Verdict::kOk:
      return counts.ok;
    case Verdict::kMissing:
      return counts.missing;
    case Verdict::kWrongSize:
      return counts.wrong_size;
    case Verdict::kCorrupt:
      return counts.corrupt;
    case Verdict::kUnreachable:
      break;
  }
  return counts.unreachable;
}

// One replica to check, and what was found.
struct ReplicaCheck {
  const index::ChunkRecord* chunk = nullptr;
  std::size_t in_page = 0;  // The chunk's position in its page.
  std::size_t node = 0;     // Position in the node list (IndexReader::nodes()).
  Verdict verdict = Verdict::kOk;
  std::string detail;  // Why it is bad.
};

class Checker {
 public:
  // `nodes`: the index's, in its order, with the URLs to ask them at.
  Checker(const CheckOptions& options, netfetch::Transport& transport,
          const index::IndexReader& index, const std::vector<netfetch::NodeEndpoint>& nodes,
          std::ostream& out)
      : options_(options), transport_(transport), index_(index), nodes_(nodes), out_(out) {
    for (std::size_t i = 0; i < nodes.size(); ++i) position_[nodes[i].id] = i;
    report_.per_node.resize(nodes.size());
    lines_.resize(nodes.size());
    buffers_.resize(static_cast<std::size_t>(std::max(options.jobs, 1)));
  }

  Result<CheckReport> Run() {
    std::int64_t after = 0;
    while (true) {
      CKPTFS_ASSIGN_OR_RETURN(std::vector<index::ChunkRecord> page,
                              index_.ChunksAfter(after, kChunksPerPage));
      if (page.empty()) break;
      CKPTFS_RETURN_IF_ERROR(CheckPage(page));
      after = page.back().id;
    }
    return report_;
  }

 private:
  Status CheckPage(const std::vector<index::ChunkRecord>& page) {
    std::vector<ReplicaCheck> checks;
    for (std::size_t i = 0; i < page.size(); ++i) {
      CKPTFS_ASSIGN_OR_RETURN(std::vector<std::int64_t> nodes, index_.Replicas(page[i].id));
      for (std::int64_t node : nodes) {
        checks.push_back({&page[i], i, position_.at(node), Verdict::kOk, {}});
      }
    }
    RunAll(checks);
    std::vector<bool> good(page.size(), false);
    for (const ReplicaCheck& check : checks) {
      Record(check);
      if (check.verdict == Verdict::kOk) good[check.in_page] = true;
    }
    report_.chunks += page.size();
    report_.chunks_without_good_replica += std::count(good.begin(), good.end(), false);
    return Status::Ok();
  }

  // Checks every replica of `checks`, options_.jobs at a time.
  void RunAll(std::vector<ReplicaCheck>& checks) {
    std::atomic<std::size_t> next{0};
    std::vector<std::jthread> workers;
    const int jobs = std::max(options_.jobs, 1);
    for (int w = 0; w < jobs; ++w) {
      workers.emplace_back([&, w] {
        std::optional<Buffer>& buffer = buffers_[static_cast<std::size_t>(w)];
        for (std::size_t i; (i = next.fetch_add(1)) < checks.size();) CheckOne(checks[i], buffer);
      });
    }
  }

  // `buffer`: the worker's, made at its first GET.
  void CheckOne(ReplicaCheck& check, std::optional<Buffer>& buffer) const {
    const index::ChunkRecord& chunk = *check.chunk;
    const std::string url = nodes_[check.node].url + "/" + index::ChunkObjectPath(chunk.digest);
    Result<std::uint64_t> size = transport_.Head(url, kRequestTimeout);
    // A server that refuses HEAD is asked with GET, and then its bytes are checked too.
    if (size.status().code() != StatusCode::kFailedPrecondition) {
      if (!size.ok()) {
        const bool gone = size.status().code() == StatusCode::kNotFound;
        check.verdict = gone ? Verdict::kMissing : Verdict::kUnreachable;
        check.detail = size.status().message();
        return;
      }
      if (*size != chunk.size) {
        check.verdict = Verdict::kWrongSize;
        check.detail = url + " has " + std::to_string(*size) + " bytes, the index says " +
                       std::to_string(chunk.size);
        return;
      }
      if (!options_.verify) return;
    }
    if (!buffer) buffer.emplace(index_.chunk_size());
    Status got = transport_.Get(url, {buffer->data(), chunk.size}, kRequestTimeout);
    if (!got.ok()) {
      check.verdict = got.code() == StatusCode::kDataLoss   ? Verdict::kWrongSize
                      : got.code() == StatusCode::kNotFound ? Verdict::kMissing
                                                            : Verdict::kUnreachable;
      check.detail = got.message();
      return;
    }
    const Digest sha = Sha256(buffer->data(), chunk.size);
    if (sha != chunk.digest) {
      check.verdict = Verdict::kCorrupt;
      check.detail = url + " has SHA-256 " + sha.Hex();
    }
  }

  void Record(const ReplicaCheck& check) {
    ++CountOf(report_.per_node[check.node], check.verdict);
    ++CountOf(report_.all, check.verdict);
    if (check.verdict == Verdict::kOk) return;
    std::uint64_t& listed = lines_[check.node][check.verdict];
    if (++listed > kLinesPerNodeAndKind) return;
    out_ << "node " << nodes_[check.node].name << ": " << Describe(check.verdict) << ": "
         << check.detail << "\n";
  }

  const CheckOptions& options_;
  netfetch::Transport& transport_;
  const index::IndexReader& index_;
  const std::vector<netfetch::NodeEndpoint>& nodes_;
  std::ostream& out_;
  std::map<std::int64_t, std::size_t> position_;         // Node id → position in nodes_.
  std::vector<std::optional<Buffer>> buffers_;           // One per worker, made when needed.
  std::vector<std::map<Verdict, std::uint64_t>> lines_;  // Per node: bad lines printed.
  CheckReport report_;
};

void PrintCounts(const ReplicaCounts& c, std::ostream& out) {
  out << c.ok << " ok, " << c.missing << " missing, " << c.wrong_size << " wrong size, "
      << c.corrupt << " corrupt, " << c.unreachable << " unreachable";
}

void PrintSummary(const CheckOptions& options, const std::vector<netfetch::NodeEndpoint>& nodes,
                  const CheckReport& report, std::ostream& out) {
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    out << "node " << nodes[i].name << " (" << nodes[i].url << "): ";
    PrintCounts(report.per_node[i], out);
    out << "\n";
  }
  out << "checked " << report.chunks << " chunks, " << report.all.total() << " replicas ("
      << (options.verify ? "GET and SHA-256" : "HEAD and size") << "): ";
  PrintCounts(report.all, out);
  out << "\n"
      << "chunks with no good replica: " << report.chunks_without_good_replica << "\n";
}

}  // namespace

Result<CheckReport> Check(const CheckOptions& options, netfetch::Transport& transport,
                          std::ostream& out) {
  if (options.jobs < 1) return InvalidArgumentError("--jobs must be at least 1");
  LocalIndexes local(transport, options.temp_dir, "ckptfs-check");
  CKPTFS_ASSIGN_OR_RETURN(const std::string path, local.Get(options.index_path));
  CKPTFS_ASSIGN_OR_RETURN(std::unique_ptr<index::IndexReader> index,
                          index::IndexReader::Open(path, options.index_sha256));
  std::vector<netfetch::NodeEndpoint> nodes;
  for (const index::Node& node : index->nodes()) nodes.push_back({node.id, node.name, node.url});
  CKPTFS_RETURN_IF_ERROR(OverrideNodeUrls(options.node_urls, "--node ", nodes));
  Checker checker(options, transport, *index, nodes, out);
  CKPTFS_ASSIGN_OR_RETURN(CheckReport report, checker.Run());
  PrintSummary(options, nodes, report, out);
  return report;
}

}  // namespace ckptfs::cli
