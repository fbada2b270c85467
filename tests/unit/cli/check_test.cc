// cli::Check against a ScriptedTransport that a publish by PUT filled: each kind of bad replica
// found, counted per node and listed a few at a time.
#include "cli/check.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "cli/publish.h"
#include "common/digest.h"
#include "common/file_io.h"
#include "index/types.h"
#include "tests/support/fake_clock.h"
#include "tests/support/pattern_bytes.h"
#include "tests/support/scripted_transport.h"
#include "tests/support/status_testing.h"
#include "tests/support/temp_dir.h"

namespace ckptfs {
namespace {

using cli::CheckOptions;
using cli::CheckReport;
using testing::PatternBytes;
using testing::ScriptedResponse;

constexpr std::uint64_t kChunk = 64 << 10;
constexpr int kChunks = 6;
const char* const kNodes[] = {"http://127.0.0.1:1", "http://127.0.0.1:2"};

class Check : public ::testing::Test {
 protected:
  // Publishes one file of kChunks distinct chunks to two nodes (both hold every chunk).
  void SetUp() override {
    content_ = PatternBytes(kChunks * kChunk, 21);
    std::filesystem::create_directories(temp_.Path("src"));
    std::ofstream(temp_.Path("src/w.bin"), std::ios::binary)
        .write(reinterpret_cast<const char*>(content_.data()),
               static_cast<std::streamsize>(content_.size()));
    cli::PublishOptions publish;
    publish.source_dir = temp_.Path("src");
    publish.index_path = temp_.Path("index.db");
    publish.chunk_size = kChunk;
    publish.nodes = {{"n1", kNodes[0]}, {"n2", kNodes[1]}};
    std::ostringstream ignored;
    CKPTFS_ASSERT_OK(cli::Publish(publish, transport_, clock_, ignored));
  }

  std::string Url(int node, int chunk) const {
    const Digest d = Sha256(content_.data() + chunk * kChunk, kChunk);
    return std::string(kNodes[node]) + "/" + index::ChunkObjectPath(d);
  }

  Result<CheckReport> Run(bool verify = false) {
    output_.str("");
    CheckOptions options;
    options.index_path = temp_.Path("index.db");
    options.verify = verify;
    return cli::Check(options, transport_, output_);
  }

  int Lines(const std::string& text) const {
    int n = 0;
    for (std::string::size_type at = 0; (at = output_.str().find(text, at)) != std::string::npos;
         ++at) {
      ++n;
    }
    return n;
  }

  testing::TempDir temp_;
  testing::FakeClock clock_;
  testing::ScriptedTransport transport_{&clock_};
  std::vector<std::uint8_t> content_;
  std::ostringstream output_;
};

TEST_F(Check, EveryReplicaThereIsOk) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(CheckReport report, Run());
  EXPECT_EQ(report.chunks, static_cast<std::uint64_t>(kChunks));
  EXPECT_EQ(report.all.ok, 2u * kChunks);
  EXPECT_EQ(report.all.bad(), 0u);
  EXPECT_EQ(report.chunks_without_good_replica, 0u);
  ASSERT_EQ(report.per_node.size(), 2u);
  EXPECT_EQ(report.per_node[1].ok, static_cast<std::uint64_t>(kChunks));
  EXPECT_NE(output_.str().find("checked 6 chunks, 12 replicas (HEAD and size): 12 ok"),
            std::string::npos)
      << output_.str();
}

TEST_F(Check, AnIndexPinnedToAnotherSha256IsRefusedBeforeAnyRequest) {
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::vector<std::uint8_t> bytes,
                              ReadWholeFile(temp_.Path("index.db")));
  CheckOptions options;
  options.index_path = temp_.Path("index.db");
  options.index_sha256 = Sha256("another version", 15);
  const int publish_calls = transport_.TotalCalls();
  Result<CheckReport> refused = cli::Check(options, transport_, output_);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition)
      << refused.status().ToString();
  EXPECT_EQ(transport_.TotalCalls(), publish_calls);

  options.index_sha256 = Sha256(bytes.data(), bytes.size());
  CKPTFS_ASSERT_OK_AND_ASSIGN(CheckReport report, cli::Check(options, transport_, output_));
  EXPECT_EQ(report.all.ok, 2u * kChunks);
}

TEST_F(Check, MissingWrongSizeAndUnreachableReplicasAreToldApart) {
  transport_.SetResponse(Url(1, 0), ScriptedResponse::Error(NotFoundError("HTTP 404")));
  transport_.SetResponse(Url(1, 1), ScriptedResponse::Body(PatternBytes(kChunk / 2, 1)));
  transport_.SetResponse(Url(0, 2), ScriptedResponse::Error(UnavailableError("refused")));
  CKPTFS_ASSERT_OK_AND_ASSIGN(CheckReport report, Run());
  EXPECT_EQ(report.per_node[1].missing, 1u);
  EXPECT_EQ(report.per_node[1].wrong_size, 1u);
  EXPECT_EQ(report.per_node[0].unreachable, 1u);
  EXPECT_EQ(report.all.ok, 2u * kChunks - 3);
  EXPECT_EQ(report.chunks_without_good_replica, 0u) << "each chunk kept one good replica";
  EXPECT_EQ(Lines("node n2: missing: "), 1) << output_.str();
  EXPECT_EQ(Lines("node n2: wrong size: " + Url(1, 1) + " has 32768 bytes"), 1) << output_.str();
  EXPECT_EQ(Lines("node n1: unreachable: "), 1) << output_.str();
}

TEST_F(Check, AReplicaWithOtherBytesIsFoundOnlyByVerify) {
  transport_.SetResponse(Url(0, 3), ScriptedResponse::Body(PatternBytes(kChunk, 99)));
  CKPTFS_ASSERT_OK_AND_ASSIGN(CheckReport heads, Run());
  EXPECT_EQ(heads.all.bad(), 0u) << "the size is right";
  CKPTFS_ASSERT_OK_AND_ASSIGN(CheckReport verified, Run(/*verify=*/true));
  EXPECT_EQ(verified.per_node[0].corrupt, 1u);
  EXPECT_EQ(verified.all.ok, 2u * kChunks - 1);
  EXPECT_EQ(Lines("node n1: corrupt: " + Url(0, 3) + " has SHA-256 "), 1) << output_.str();
}

TEST_F(Check, ANodeThatDoesNotDoHeadIsCheckedWithGets) {
  for (int chunk = 0; chunk < kChunks; ++chunk) {
    transport_.SetHeadResponse(Url(0, chunk),
                               ScriptedResponse::Error(FailedPreconditionError("HTTP 405")));
  }
  transport_.SetResponse(Url(0, 3), ScriptedResponse::Body(PatternBytes(kChunk, 99)));
  transport_.SetResponse(Url(0, 4), ScriptedResponse::Error(NotFoundError("HTTP 404")));
  const int published_n1 = transport_.Calls(Url(0, 0));
  const int published_n2 = transport_.Calls(Url(1, 0));
  CKPTFS_ASSERT_OK_AND_ASSIGN(CheckReport report, Run());
  EXPECT_EQ(report.per_node[0].ok, static_cast<std::uint64_t>(kChunks - 2)) << output_.str();
  EXPECT_EQ(report.per_node[0].corrupt, 1u) << "its bytes were fetched, so they were checked";
  EXPECT_EQ(report.per_node[0].missing, 1u) << "a 404 to the GET: " << output_.str();
  EXPECT_EQ(report.per_node[1].ok, static_cast<std::uint64_t>(kChunks));
  EXPECT_EQ(transport_.Calls(Url(0, 0)), published_n1 + 1) << "node n1's replica was not GET";
  EXPECT_EQ(transport_.Calls(Url(1, 0)), published_n2) << "node n2 answers HEAD: no GET";
}

TEST_F(Check, AChunkWithNoGoodReplicaIsCounted) {
  for (int node = 0; node < 2; ++node) {
    transport_.SetResponse(Url(node, 4), ScriptedResponse::Error(NotFoundError("HTTP 404")));
  }
  CKPTFS_ASSERT_OK_AND_ASSIGN(CheckReport report, Run());
  EXPECT_EQ(report.chunks_without_good_replica, 1u);
  EXPECT_NE(output_.str().find("chunks with no good replica: 1"), std::string::npos);
}

TEST_F(Check, ANodeThatIsDownIsListedAFewLinesAndCountedWhole) {
  for (int chunk = 0; chunk < kChunks; ++chunk) {
    transport_.SetResponse(Url(1, chunk), ScriptedResponse::Error(UnavailableError("refused")));
  }
  CKPTFS_ASSERT_OK_AND_ASSIGN(CheckReport report, Run());
  EXPECT_EQ(report.per_node[1].unreachable, static_cast<std::uint64_t>(kChunks));
  EXPECT_EQ(Lines("node n2: unreachable: "), 5) << output_.str();
  EXPECT_NE(output_.str().find("node n2 (http://127.0.0.1:2): 0 ok, 0 missing, 0 wrong size, "
                               "0 corrupt, 6 unreachable"),
            std::string::npos)
      << output_.str();
}

TEST_F(Check, ANodeCanBeAskedAtAnotherUrl) {
  // n2's objects, where another network reaches that node; its URL in the index fails.
  const std::string other = "http://10.0.0.2:8080/";
  for (int chunk = 0; chunk < kChunks; ++chunk) {
    std::vector<std::uint8_t> body(kChunk);
    CKPTFS_ASSERT_OK(transport_.Get(Url(1, chunk), body, std::chrono::seconds(1)));
    const std::string path = Url(1, chunk).substr(std::string(kNodes[1]).size() + 1);
    transport_.SetResponse(other + path, ScriptedResponse::Body(std::move(body)));
    transport_.SetResponse(Url(1, chunk), ScriptedResponse::Error(UnavailableError("refused")));
  }
  CheckOptions options;
  options.index_path = temp_.Path("index.db");
  options.node_urls["n2"] = other;
  CKPTFS_ASSERT_OK_AND_ASSIGN(CheckReport report, cli::Check(options, transport_, output_));
  EXPECT_EQ(report.all.ok, 2u * kChunks) << output_.str();
  EXPECT_NE(output_.str().find("node n2 (http://10.0.0.2:8080): 6 ok"), std::string::npos)
      << output_.str();

  options.node_urls = {{"n9", other}};
  Result<CheckReport> unknown = cli::Check(options, transport_, output_);
  EXPECT_EQ(unknown.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.status().message().find("no node 'n9'"), std::string::npos);
  options.node_urls = {{"n2", "ftp://10.0.0.2/"}};
  EXPECT_EQ(cli::Check(options, transport_, output_).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(Check, AnIndexUrlIsDownloadedForTheCheckAndRemovedAfter) {
  std::ifstream in(temp_.Path("index.db"), std::ios::binary);
  std::vector<std::uint8_t> index((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
  const std::string url = "http://127.0.0.1:3/indexes/ckpt.ckptfs";
  transport_.SetResponse(url, ScriptedResponse::Body(std::move(index)));
  std::filesystem::create_directories(temp_.Path("tmp"));
  CheckOptions options;
  options.index_path = url;
  options.temp_dir = temp_.Path("tmp");
  CKPTFS_ASSERT_OK_AND_ASSIGN(CheckReport report, cli::Check(options, transport_, output_));
  EXPECT_EQ(report.all.ok, 2u * kChunks);
  EXPECT_TRUE(std::filesystem::is_empty(temp_.Path("tmp"))) << "the download was left behind";

  options.index_path = "http://127.0.0.1:3/indexes/missing.ckptfs";
  Result<CheckReport> missing = cli::Check(options, transport_, output_);
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("cannot download the index"), std::string::npos)
      << missing.status().ToString();
  EXPECT_TRUE(std::filesystem::is_empty(temp_.Path("tmp")));
}

TEST_F(Check, AnIndexThatCannotBeReadIsAnError) {
  CheckOptions options;
  options.index_path = temp_.Path("no-such-index.db");
  Result<CheckReport> report = cli::Check(options, transport_, output_);
  EXPECT_FALSE(report.ok());
  options.index_path = temp_.Path("index.db");
  options.jobs = 0;
  EXPECT_EQ(cli::Check(options, transport_, output_).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ckptfs
