// CurlTransport against a real nginx on 127.0.0.1 (and, for timeouts, a socket that never
// answers). Time is measured only to bound how long a failure may take, generously.
#include "netfetch/curl_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "netfetch/global_init.h"
#include "tests/support/fake_clock.h"
#include "tests/support/nginx_server.h"
#include "tests/support/status_testing.h"
#include "tests/support/temp_dir.h"

namespace ckptfs {
namespace {

using namespace std::chrono_literals;

constexpr Duration kTimeout = 10s;

// CurlTransport requires libcurl's global set-up before any thread starts, as main does it.
class CurlEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    Status init = netfetch::GlobalInit();
    ASSERT_TRUE(init.ok()) << init.ToString();
  }
  void TearDown() override { netfetch::GlobalCleanup(); }
};
[[maybe_unused]] ::testing::Environment* const kCurlEnvironment =
    ::testing::AddGlobalTestEnvironment(new CurlEnvironment);

std::vector<std::uint8_t> RandomBytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<std::uint8_t> bytes(n);
  for (auto& b : bytes) b = static_cast<std::uint8_t>(gen());
  return bytes;
}

std::vector<std::uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A TCP socket listening on 127.0.0.1 at a port of the kernel's choosing, with `backlog`; -1 when
// any step fails. `*addr` is told the address.
int ListenOnLoopback(int backlog, sockaddr_in* addr) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  *addr = sockaddr_in{};
  addr->sin_family = AF_INET;
  addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(*addr);
  if (fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(addr), sizeof(*addr)) == 0 &&
      ::listen(fd, backlog) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(addr), &len) == 0) {
    return fd;
  }
  if (fd >= 0) ::close(fd);
  return -1;
}

// A TCP socket on 127.0.0.1 that listens but is never accepted or read: the kernel completes
// the handshake, so a client connects, sends its request and then waits for an answer forever.
class SilentServer {
 public:
  SilentServer() {
    sockaddr_in addr{};
    fd_ = ListenOnLoopback(16, &addr);
    if (fd_ >= 0) port_ = ntohs(addr.sin_port);
  }
  ~SilentServer() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return port_ != 0; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// A TCP socket on 127.0.0.1 whose accept queue is full and never drained: the kernel drops the
// SYNs of further connections, which stay in SYN-SENT as those to a host that is down or cut off
// by the network. (A SilentServer completes the handshake; this one never does.)
class UnreachableServer {
 public:
  UnreachableServer() {
    sockaddr_in addr{};
    fd_ = ListenOnLoopback(0, &addr);
    if (fd_ < 0) return;
    // A backlog of 0 queues one connection; two fill it whatever the kernel rounds it to.
    for (int i = 0; i < 2; ++i) {
      const int filler = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      if (filler < 0) return;
      fillers_.push_back(filler);
      if (::connect(filler, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 &&
          errno != EINPROGRESS) {
        return;
      }
    }
    port_ = ntohs(addr.sin_port);
  }
  ~UnreachableServer() {
    for (int filler : fillers_) ::close(filler);
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return port_ != 0; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  int fd_ = -1;
  std::vector<int> fillers_;
  int port_ = 0;
};

// What a OneShotServer sends: `bytes`, after a pause.
struct Piece {
  std::chrono::milliseconds pause{0};
  std::string bytes;
};

// A server on 127.0.0.1 that answers one request, whatever it asks for, with `response` (a whole
// HTTP response, "Connection: close"), then closes. Stands in for a server that ignores Range,
// which nginx never is. Given pieces, it sends them in turn, each after its pause, and then
// closes, or with `hold_open` keeps the connection open and silent until it is destroyed: a
// server that is slow, or stops in the middle of a body.
class OneShotServer {
 public:
  explicit OneShotServer(std::string response)
      : OneShotServer({Piece{std::chrono::milliseconds(0), std::move(response)}}, false) {}
  OneShotServer(std::vector<Piece> pieces, bool hold_open)
      : pieces_(std::move(pieces)), hold_open_(hold_open) {
    sockaddr_in addr{};
    fd_ = ListenOnLoopback(4, &addr);
    if (fd_ >= 0) {
      port_ = ntohs(addr.sin_port);
      thread_ = std::thread([this] { Serve(); });
    }
  }
  ~OneShotServer() {
    if (thread_.joinable()) {
      {
        std::lock_guard lock(mu_);
        stopping_ = true;
      }
      cv_.notify_all();
      ::shutdown(fd_, SHUT_RDWR);  // Wakes accept() if no request came.
      thread_.join();
    }
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return port_ != 0; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  // Waits until the server has answered; returns the request it received (headers only).
  // REQUIRES: not hold_open.
  std::string WaitForRequest() {
    if (thread_.joinable()) thread_.join();
    return request_;
  }

 private:
  void Serve() {
    int conn = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) return;
    char buffer[4096];
    while (request_.find("\r\n\r\n") == std::string::npos) {
      ssize_t n = ::read(conn, buffer, sizeof(buffer));
      if (n <= 0) break;
      request_.append(buffer, static_cast<std::size_t>(n));
    }
    for (const Piece& piece : pieces_) {
      if (Stopped(piece.pause)) break;
      for (std::size_t done = 0; done < piece.bytes.size();) {
        ssize_t n = ::write(conn, piece.bytes.data() + done, piece.bytes.size() - done);
        if (n <= 0) break;
        done += static_cast<std::size_t>(n);
      }
    }
    if (hold_open_) Stopped(std::chrono::hours(1));
    ::close(conn);
  }
  // Waits up to `d`; true if the server is being destroyed.
  bool Stopped(std::chrono::milliseconds d) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, d, [this] { return stopping_; });
  }

  const std::vector<Piece> pieces_;
  const bool hold_open_;
  std::string request_;  // Written by the thread before it ends; read after join.
  int fd_ = -1;
  int port_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // Guarded by mu_.
  std::thread thread_;
};

// One field of an access log line: "$request_method $uri $status $body_bytes_sent $connection
// $connection_requests".
struct AccessLine {
  std::string method, uri;
  int status = 0;
  long bytes = 0, connection = 0, connection_requests = 0;
};

AccessLine ParseAccessLine(const std::string& line) {
  AccessLine a;
  std::istringstream in(line);
  in >> a.method >> a.uri >> a.status >> a.bytes >> a.connection >> a.connection_requests;
  return a;
}

class CurlTransport : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(nginx_.Start()); }

  // Stores `bytes` under the server's root; returns its URL.
  std::string Serve(const std::string& path, const std::vector<std::uint8_t>& bytes) {
    const std::filesystem::path file = nginx_.root() + "/" + path;
    std::filesystem::create_directories(file.parent_path());
    std::ofstream out(file, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    return nginx_.url() + "/" + path;
  }

  testing::NginxServer nginx_;
  netfetch::CurlTransport transport_;
};

TEST_F(CurlTransport, GetReturnsTheExactBody) {
  // Larger than curl's receive buffer, so the body arrives in many callbacks.
  auto bytes = RandomBytes(3 * 1024 * 1024 + 17, 1);
  std::string url = Serve("chunks/ab/big", bytes);
  std::vector<std::uint8_t> dst(bytes.size());
  Status status = transport_.Get(url, dst, kTimeout);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(dst, bytes);
}

TEST_F(CurlTransport, MissingObjectIsNotFoundAndLeavesTheBufferAlone) {
  std::string url = nginx_.url() + "/chunks/00/missing";
  std::vector<std::uint8_t> dst(64, 0xaa);
  EXPECT_EQ(transport_.GetRange(url, 0, dst, kTimeout).code(), StatusCode::kNotFound);
  Status status = transport_.Get(url, dst, kTimeout);
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_NE(status.message().find("HTTP 404"), std::string::npos) << status.ToString();
  EXPECT_NE(status.message().find(url), std::string::npos) << status.ToString();
  EXPECT_EQ(dst, std::vector<std::uint8_t>(64, 0xaa)) << "the error page must not land in dst";
}

TEST_F(CurlTransport, ShorterBodyIsDataLoss) {
  std::string url = Serve("short", RandomBytes(100, 2));
  std::vector<std::uint8_t> dst(200);
  Status status = transport_.Get(url, dst, kTimeout);
  EXPECT_EQ(status.code(), StatusCode::kDataLoss);
  EXPECT_NE(status.message().find("short body: got 100 of 200 bytes"), std::string::npos)
      << status.ToString();
}

TEST_F(CurlTransport, LongerBodyIsDataLossAndTheTransportStaysUsable) {
  std::string url = Serve("long", RandomBytes(2 * 1024 * 1024, 3));
  std::vector<std::uint8_t> dst(1024 * 1024);
  Status status = transport_.Get(url, dst, kTimeout);
  EXPECT_EQ(status.code(), StatusCode::kDataLoss);
  EXPECT_NE(status.message().find("body longer than 1048576 bytes"), std::string::npos)
      << status.ToString();

  auto bytes = RandomBytes(1000, 4);
  std::string good = Serve("good", bytes);
  std::vector<std::uint8_t> small(bytes.size());
  ASSERT_TRUE(transport_.Get(good, small, kTimeout).ok());
  EXPECT_EQ(small, bytes);
}

TEST_F(CurlTransport, EmptyBodyIntoEmptyBufferIsFine) {
  std::string url = Serve("empty", {});
  std::vector<std::uint8_t> dst;
  EXPECT_TRUE(transport_.Get(url, dst, kTimeout).ok());
}

TEST_F(CurlTransport, ChunkGetDoesNotFollowRedirects) {
  Serve("target", RandomBytes(10, 5));
  std::vector<std::uint8_t> dst(10);
  Status status = transport_.Get(nginx_.url() + "/moved/target", dst, kTimeout);
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_NE(status.message().find("HTTP 302"), std::string::npos) << status.ToString();
}

TEST_F(CurlTransport, RefusedConnectionIsUnavailableQuickly) {
  std::string url = Serve("x", RandomBytes(10, 6));
  nginx_.Stop();
  std::vector<std::uint8_t> dst(10);
  auto start = std::chrono::steady_clock::now();
  Status status = transport_.Get(url, dst, kTimeout);
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status.ToString();
  EXPECT_NE(status.message().find(url), std::string::npos) << status.ToString();
  EXPECT_LT(took, 5s) << "a refused connection must not wait for the timeout";
}

TEST_F(CurlTransport, ServerThatStopsAndStartsAgainIsServedAgain) {
  auto bytes = RandomBytes(10, 7);
  std::string url = Serve("y", bytes);
  std::vector<std::uint8_t> dst(bytes.size());
  ASSERT_TRUE(transport_.Get(url, dst, kTimeout).ok());
  nginx_.Stop();
  EXPECT_FALSE(transport_.Get(url, dst, kTimeout).ok());
  ASSERT_TRUE(nginx_.Start());
  Status status = transport_.Get(url, dst, kTimeout);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(dst, bytes);
}

TEST_F(CurlTransport, ServerThatNeverAnswersHitsTheTimeout) {
  SilentServer silent;
  ASSERT_TRUE(silent.ok());
  std::vector<std::uint8_t> dst(10);
  auto start = std::chrono::steady_clock::now();
  Status status = transport_.Get(silent.url() + "/chunks/00/x", dst, 1s);
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded) << status.ToString();
  EXPECT_LT(took, 10s);
}

TEST(CurlTransportLowSpeed, StalledTransferIsUnavailableBeforeTheTimeout) {
  netfetch::CurlOptions options;
  options.low_speed_bytes = 1024;
  options.low_speed_time = 1s;
  netfetch::CurlTransport transport(options);
  SilentServer silent;
  ASSERT_TRUE(silent.ok());
  std::vector<std::uint8_t> dst(10);
  auto start = std::chrono::steady_clock::now();
  Status status = transport.Get(silent.url() + "/x", dst, 60s);
  auto took = std::chrono::steady_clock::now() - start;
  // Too slow is the node's fault, worth another replica; the caller's time has not run out.
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status.ToString();
  EXPECT_LT(took, 20s);
}

// With a low-speed limit too long to matter, only the stall timeout can end these transfers.
netfetch::CurlOptions PatientOptions() {
  netfetch::CurlOptions options;
  options.low_speed_time = 30s;
  return options;
}

// Gets `url` into 10 bytes, expecting the transport to give the request up as Unavailable with
// `words` (lower case) in the message, whatever its case (the node's fault: worth another
// replica). Returns how long it took. curl words one timeout two ways ("Failed to connect ...
// Timeout was reached", "Connection timeout after ...") depending on where the timer fires.
Duration GivenUpAfter(netfetch::CurlTransport& transport, const std::string& url,
                      const netfetch::RequestLimits& limits, const std::string& words) {
  std::vector<std::uint8_t> dst(10);
  const auto start = std::chrono::steady_clock::now();
  Status status = transport.Get(url, dst, limits, {});
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status.ToString();
  std::string message = status.message();
  std::transform(message.begin(), message.end(), message.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  EXPECT_NE(message.find(words), std::string::npos) << status.ToString();
  return took;
}

TEST(CurlTransportStall, ServerThatNeverAnswersIsLeftAtTheStallTimeout) {
  netfetch::CurlTransport transport(PatientOptions());
  SilentServer silent;
  ASSERT_TRUE(silent.ok());
  EXPECT_LT(
      GivenUpAfter(transport, silent.url() + "/x", {60s, 300ms}, "nothing received for 300 ms"),
      10s);
}

TEST(CurlTransportUnreachable, ConnectionThatIsNeverAnsweredIsLeftAtTheConnectTimeout) {
  UnreachableServer unreachable;
  ASSERT_TRUE(unreachable.ok());
  netfetch::CurlOptions options = PatientOptions();
  options.connect_timeout = 500ms;
  netfetch::CurlTransport transport(options);
  // The caller's own time (60 s) has not run out.
  const Duration took = GivenUpAfter(transport, unreachable.url() + "/x", {60s}, "connect");
  EXPECT_GE(took, 400ms);
  EXPECT_LT(took, 10s);
}

TEST(CurlTransportStall, ConnectionThatIsNeverAnsweredIsLeftAtTheStallTimeout) {
  UnreachableServer unreachable;
  ASSERT_TRUE(unreachable.ok());
  netfetch::CurlOptions options = PatientOptions();
  options.connect_timeout = 30s;
  netfetch::CurlTransport transport(options);
  EXPECT_LT(GivenUpAfter(transport, unreachable.url() + "/x", {60s, 300ms},
                         "nothing received for 300 ms"),
            10s);
}

TEST(CurlTransportFirstByte, ServerThatDoesNotAnswerIsLeftAtTheFirstByteTimeout) {
  netfetch::CurlTransport transport(PatientOptions());
  for (bool connects : {true, false}) {
    SilentServer silent;
    UnreachableServer unreachable;
    ASSERT_TRUE(silent.ok() && unreachable.ok());
    const std::string url = (connects ? silent.url() : unreachable.url()) + "/x";
    netfetch::RequestLimits limits{60s, 5s};
    limits.first_byte_timeout = 200ms;
    EXPECT_LT(GivenUpAfter(transport, url, limits, "no answer within 200 ms"), 3s)
        << (connects ? "silent" : "unreachable");
  }
}

TEST(CurlTransportStall, HeadOfAServerThatNeverAnswersIsLeftAtTheStallTimeout) {
  netfetch::CurlTransport transport(PatientOptions());
  SilentServer silent;
  ASSERT_TRUE(silent.ok());
  const auto start = std::chrono::steady_clock::now();
  Result<std::uint64_t> size = transport.Head(silent.url() + "/x", {60s, 300ms});
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  ASSERT_EQ(size.status().code(), StatusCode::kUnavailable) << size.status().ToString();
  EXPECT_NE(size.status().message().find("nothing received for 300 ms"), std::string::npos)
      << size.status().ToString();
}

TEST(CurlTransportFirstByte, AnAnswerThatPausesAfterItBeganIsNotCutByIt) {
  // The status line and headers at once, then the body after 600 ms: longer than the
  // first-byte timeout, shorter than the stall timeout.
  OneShotServer server({{0ms, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"}, {600ms, "hello"}},
                       /*hold_open=*/false);
  ASSERT_TRUE(server.ok());
  netfetch::CurlTransport transport(PatientOptions());
  std::vector<std::uint8_t> dst(5);
  netfetch::RequestLimits limits{60s, 2s};
  limits.first_byte_timeout = 200ms;
  CKPTFS_ASSERT_OK(transport.Get(server.url() + "/x", dst, limits, {}));
  EXPECT_EQ(std::string(dst.begin(), dst.end()), "hello");
}

TEST(CurlTransportStall, BodyThatStopsIsLeftAtTheStallTimeoutWithWhatArrivedReported) {
  OneShotServer server(
      {{0ms, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + std::string(40, 'a')}},
      /*hold_open=*/true);
  ASSERT_TRUE(server.ok());
  netfetch::CurlTransport transport(PatientOptions());
  std::vector<std::uint8_t> dst(100);
  std::size_t reported = 0;
  auto start = std::chrono::steady_clock::now();
  Status status = transport.Get(server.url() + "/x", dst, netfetch::RequestLimits{60s, 300ms},
                                [&](std::size_t received) {
                                  reported = received;
                                  return true;
                                });
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status.ToString();
  EXPECT_NE(status.message().find("nothing received"), std::string::npos) << status.ToString();
  EXPECT_EQ(reported, 40u);
  EXPECT_LT(took, 10s);
}

TEST(CurlTransportStall, TransferThatKeepsMovingIsNotCutHoweverLongItTakes) {
  // One byte every 100 ms for 1.2 s: longer in all than the stall timeout, never silent as long.
  std::vector<Piece> pieces = {{0ms, "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"}};
  for (char c : std::string("abcdefghijkl")) pieces.push_back({100ms, std::string(1, c)});
  OneShotServer server(std::move(pieces), /*hold_open=*/false);
  ASSERT_TRUE(server.ok());
  netfetch::CurlTransport transport(PatientOptions());
  std::vector<std::uint8_t> dst(12);
  Status status = transport.Get(server.url() + "/x", dst, netfetch::RequestLimits{60s, 400ms}, {});
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(std::string(dst.begin(), dst.end()), "abcdefghijkl");
}

TEST_F(CurlTransport, NonPositiveTimeoutSendsNoRequest) {
  std::string url = Serve("z", RandomBytes(10, 8));
  std::vector<std::uint8_t> dst(10);
  EXPECT_EQ(transport_.Get(url, dst, Duration::zero()).code(), StatusCode::kDeadlineExceeded);
  nginx_.Stop();  // Makes the access log complete.
  EXPECT_TRUE(nginx_.AccessLogLines().empty());
}

TEST_F(CurlTransport, PutThenGetRoundTrips) {
  auto bytes = RandomBytes(1024 * 1024 + 3, 9);
  std::string url = nginx_.url() + "/chunks/cd/cdef";  // Directories created by nginx.
  Status put = transport_.Put(url, bytes, kTimeout);
  ASSERT_TRUE(put.ok()) << put.ToString() << "\n" << nginx_.ErrorLog();
  EXPECT_EQ(ReadFile(nginx_.root() + "/chunks/cd/cdef"), bytes);
  std::vector<std::uint8_t> dst(bytes.size());
  ASSERT_TRUE(transport_.Get(url, dst, kTimeout).ok());
  EXPECT_EQ(dst, bytes);

  auto replacement = RandomBytes(5, 10);
  ASSERT_TRUE(transport_.Put(url, replacement, kTimeout).ok()) << "overwrite (204) is success";
  EXPECT_EQ(ReadFile(nginx_.root() + "/chunks/cd/cdef"), replacement);
  ASSERT_TRUE(transport_.Put(nginx_.url() + "/empty-object", {}, kTimeout).ok());
  EXPECT_TRUE(std::filesystem::exists(nginx_.root() + "/empty-object"));
}

TEST_F(CurlTransport, PutThatTheServerRefusesIsUnavailable) {
  // nginx's WebDAV module does not PUT onto a collection ("/").
  Status status = transport_.Put(nginx_.url() + "/", RandomBytes(10, 11), kTimeout);
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_NE(status.message().find("HTTP "), std::string::npos) << status.ToString();
}

TEST_F(CurlTransport, HeadGivesTheSizeOfAnObjectOrNotFound) {
  auto bytes = RandomBytes(123'457, 13);
  std::string url = Serve("h", bytes);
  Result<std::uint64_t> size = transport_.Head(url, kTimeout);
  ASSERT_TRUE(size.ok()) << size.status().ToString();
  EXPECT_EQ(*size, bytes.size());
  Result<std::uint64_t> missing = transport_.Head(nginx_.url() + "/missing", kTimeout);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status().ToString();
  EXPECT_NE(missing.status().message().find("404"), std::string::npos);
  // The pooled handle asks for bodies again afterwards.
  std::vector<std::uint8_t> dst(bytes.size());
  ASSERT_TRUE(transport_.Get(url, dst, kTimeout).ok());
  EXPECT_EQ(dst, bytes);

  nginx_.Stop();
  std::vector<std::string> lines = nginx_.AccessLogLines();
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(ParseAccessLine(lines[0]).method, "HEAD");
  EXPECT_EQ(ParseAccessLine(lines[0]).bytes, 0) << "HEAD sent a body";
  EXPECT_EQ(ParseAccessLine(lines[1]).status, 404);
  EXPECT_EQ(ParseAccessLine(lines[2]).method, "GET");
  EXPECT_EQ(ParseAccessLine(lines[2]).connection, ParseAccessLine(lines[0]).connection)
      << "the connection was not kept";
}

TEST_F(CurlTransport, AgeIsTheServersTimeSinceTheObjectChanged) {
  const std::string url = Serve("aged", RandomBytes(100, 21));
  const std::string path = nginx_.root() + "/aged";
  const auto then = std::chrono::system_clock::now() - std::chrono::seconds(100);
  const timespec t{std::chrono::system_clock::to_time_t(then), 0};
  const timespec times[2] = {t, t};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  Result<std::chrono::seconds> age = transport_.Age(url, kTimeout);
  ASSERT_TRUE(age.ok()) << age.status().ToString();
  EXPECT_GE(age->count(), 99);
  EXPECT_LE(age->count(), 105);
  Result<std::chrono::seconds> missing = transport_.Age(nginx_.url() + "/missing", kTimeout);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status().ToString();
}

TEST_F(CurlTransport, DeleteRemovesAnObjectOrSaysWhyNot) {
  const std::string url = nginx_.url() + "/leases/x.publishing";
  ASSERT_TRUE(transport_.Put(url, RandomBytes(10, 22), kTimeout).ok());
  const std::string path = nginx_.root() + "/leases/x.publishing";
  ASSERT_TRUE(std::filesystem::exists(path));

  Status refused = transport_.Delete(nginx_.url() + "/putonly/leases/x.publishing", kTimeout);
  EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition) << refused.ToString();
  EXPECT_NE(refused.message().find("HTTP 405 from DELETE"), std::string::npos)
      << refused.ToString();
  EXPECT_TRUE(std::filesystem::exists(path));

  CKPTFS_EXPECT_OK(transport_.Delete(url, kTimeout));
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_EQ(transport_.Delete(url, kTimeout).code(), StatusCode::kNotFound);
  // The pooled handle is an ordinary GET again afterwards.
  const auto bytes = RandomBytes(1000, 23);
  const std::string other = Serve("after-delete", bytes);
  std::vector<std::uint8_t> dst(bytes.size());
  CKPTFS_EXPECT_OK(transport_.Get(other, dst, kTimeout));
  EXPECT_EQ(dst, bytes);
}

TEST_F(CurlTransport, HeadThatTheServerDoesNotDoIsAFailedPrecondition) {
  auto bytes = RandomBytes(1000, 15);
  Serve("h", bytes);
  const std::string url = nginx_.url() + "/nohead/h";
  Result<std::uint64_t> size = transport_.Head(url, kTimeout);
  EXPECT_EQ(size.status().code(), StatusCode::kFailedPrecondition) << size.status().ToString();
  EXPECT_NE(size.status().message().find("HTTP 405 from HEAD " + url), std::string::npos)
      << size.status().ToString();
  std::vector<std::uint8_t> dst(bytes.size());
  ASSERT_TRUE(transport_.Get(url, dst, kTimeout).ok()) << "the server serves GETs there";
  EXPECT_EQ(dst, bytes);
}

// A transport whose requests carry the headers of a header file, as http_headers= makes one.
class CurlTransportWithHeaders : public CurlTransport {
 protected:
  void SetUp() override {
    CurlTransport::SetUp();
    headers_path_ = nginx_.dir() + "/headers";
    std::ofstream(headers_path_) << "# for /private/\nAuthorization: Bearer sesame\n";
    Result<std::unique_ptr<netfetch::HeaderFile>> file =
        netfetch::HeaderFile::Open(headers_path_, &clock_);
    ASSERT_TRUE(file.ok()) << file.status().ToString();
    header_file_ = std::move(*file);
    netfetch::CurlOptions options;
    options.header_file = header_file_.get();
    with_headers_ = std::make_unique<netfetch::CurlTransport>(options);
  }

  testing::FakeClock clock_;
  std::string headers_path_;
  std::unique_ptr<netfetch::HeaderFile> header_file_;
  std::unique_ptr<netfetch::CurlTransport> with_headers_;
};

TEST_F(CurlTransportWithHeaders, EveryKindOfRequestCarriesThem) {
  auto bytes = RandomBytes(200 * 1024 + 5, 16);
  Serve("p", bytes);
  const std::string url = nginx_.url() + "/private/p";
  std::vector<std::uint8_t> dst(bytes.size());
  Status refused = transport_.Get(url, dst, kTimeout);
  EXPECT_EQ(refused.code(), StatusCode::kUnavailable);
  EXPECT_NE(refused.message().find("HTTP 401 from GET " + url), std::string::npos)
      << refused.ToString();

  ASSERT_TRUE(with_headers_->Get(url, dst, kTimeout).ok());
  EXPECT_EQ(dst, bytes);
  std::vector<std::uint8_t> part(1000);
  ASSERT_TRUE(with_headers_->GetRange(url, 70'000, part, kTimeout).ok());
  EXPECT_TRUE(std::equal(part.begin(), part.end(), bytes.begin() + 70'000));
  Result<std::uint64_t> size = with_headers_->Head(url, kTimeout);
  ASSERT_TRUE(size.ok()) << size.status().ToString();
  EXPECT_EQ(*size, bytes.size());
  auto put = RandomBytes(3000, 17);
  Status stored = with_headers_->Put(nginx_.url() + "/private/chunks/ab/q", put, kTimeout);
  ASSERT_TRUE(stored.ok()) << stored.ToString() << "\n" << nginx_.ErrorLog();
  EXPECT_EQ(ReadFile(nginx_.root() + "/chunks/ab/q"), put);

  // A conditional download sends its own header as well as the file's.
  const std::string path = nginx_.dir() + "/p.copy";
  Result<netfetch::FileFetch> first = with_headers_->GetToFile(url, path, kTimeout);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(ReadFile(path), bytes);
  ASSERT_FALSE(first->version.etag.empty());
  Result<netfetch::FileFetch> again =
      with_headers_->GetToFile(url, nginx_.dir() + "/p.again", kTimeout, first->version);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE(again->not_modified);
}

TEST_F(CurlTransportWithHeaders, ARewrittenFileReachesTheNextRequest) {
  Serve("p", RandomBytes(100, 18));
  const std::string url = nginx_.url() + "/private/p";
  std::vector<std::uint8_t> dst(100);
  ASSERT_TRUE(with_headers_->Get(url, dst, kTimeout).ok());
  std::ofstream(headers_path_ + ".new") << "Authorization: Bearer expired\n";
  std::filesystem::rename(headers_path_ + ".new", headers_path_);
  clock_.Advance(netfetch::HeaderFile::kDefaultRecheck);
  EXPECT_EQ(with_headers_->Get(url, dst, kTimeout).code(), StatusCode::kUnavailable)
      << "the expired token was not sent";
  std::ofstream(headers_path_ + ".new") << "Authorization: Bearer sesame\n";
  std::filesystem::rename(headers_path_ + ".new", headers_path_);
  clock_.Advance(netfetch::HeaderFile::kDefaultRecheck);
  EXPECT_TRUE(with_headers_->Get(url, dst, kTimeout).ok()) << "the renewed token was not sent";
}

TEST(CheckCaFile, TakesAFileWithACertificateAndGivesItAbsolute) {
  testing::TempDir dir;
  std::ofstream(dir.Path("ca.pem")) << "# our CA\n-----BEGIN CERTIFICATE-----\nMIIB\n"
                                       "-----END CERTIFICATE-----\n";
  std::ofstream(dir.Path("key.pem")) << "-----BEGIN PRIVATE KEY-----\nMIIB\n";
  const std::filesystem::path before = std::filesystem::current_path();
  std::filesystem::current_path(dir.path());
  Result<std::string> relative = netfetch::CheckCaFile("ca.pem");
  Result<std::string> key = netfetch::CheckCaFile("key.pem");
  std::filesystem::current_path(before);
  ASSERT_TRUE(relative.ok()) << relative.status().ToString();
  EXPECT_EQ(*relative, dir.Path("ca.pem"));
  EXPECT_EQ(key.status().code(), StatusCode::kInvalidArgument) << key.status().ToString();
  EXPECT_NE(key.status().message().find(dir.Path("key.pem") + " holds no PEM certificate"),
            std::string::npos)
      << key.status().ToString();
  Result<std::string> missing = netfetch::CheckCaFile(dir.Path("missing.pem"));
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status().ToString();
}

TEST_F(CurlTransport, HeadOfAServerThatIsGoneIsUnavailable) {
  std::string url = Serve("h", RandomBytes(10, 14));
  nginx_.Stop();
  Result<std::uint64_t> size = transport_.Head(url, kTimeout);
  EXPECT_EQ(size.status().code(), StatusCode::kUnavailable) << size.status().ToString();
  EXPECT_NE(size.status().message().find(url), std::string::npos) << size.status().ToString();
}

TEST_F(CurlTransport, GetToFileWritesTheBodyAndFollowsRedirects) {
  auto bytes = RandomBytes(700 * 1024, 12);
  Serve("index.db", bytes);
  const std::string path = nginx_.dir() + "/downloaded.db";
  {
    std::ofstream old(path);
    old << "old contents that are longer than nothing";
  }
  Result<netfetch::FileFetch> got =
      transport_.GetToFile(nginx_.url() + "/index.db", path, kTimeout);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_FALSE(got->not_modified);
  EXPECT_EQ(ReadFile(path), bytes);

  const std::string moved = nginx_.dir() + "/moved.db";
  got = transport_.GetToFile(nginx_.url() + "/moved/index.db", moved, kTimeout);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(ReadFile(moved), bytes);
}

TEST_F(CurlTransport, GetToFileFailsOnHttpErrorAndOnBadPath) {
  const std::string path = nginx_.dir() + "/missing.db";
  Status status = transport_.GetToFile(nginx_.url() + "/missing.db", path, kTimeout).status();
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_NE(status.message().find("HTTP 404"), std::string::npos) << status.ToString();
  EXPECT_EQ(std::filesystem::file_size(path), 0u) << "the error page is not the file";

  Serve("index.db", RandomBytes(10, 13));
  status =
      transport_.GetToFile(nginx_.url() + "/index.db", nginx_.dir() + "/no/such/dir/x", kTimeout)
          .status();
  EXPECT_EQ(status.code(), StatusCode::kNotFound) << status.ToString();
}

// Sets the served file's modification time to `seconds` after the epoch.
void SetServedTime(const std::string& path, std::int64_t seconds) {
  const timespec times[2] = {{seconds, 0}, {seconds, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0) << path;
}

// A copy from an earlier download is asked for again only if the server's file changed since:
// by its Last-Modified when that is all the caller has.
TEST_F(CurlTransport, GetToFileIfModifiedSinceGetsNothingForAnUnchangedFile) {
  const std::string url = Serve("index.db", RandomBytes(5000, 14));
  const std::string served = nginx_.root() + "/index.db";
  ASSERT_NO_FATAL_FAILURE(SetServedTime(served, 1700000000));
  const std::string path = nginx_.dir() + "/copy.db";
  CKPTFS_ASSERT_OK_AND_ASSIGN(netfetch::FileFetch first, transport_.GetToFile(url, path, kTimeout));
  EXPECT_EQ(first.version.last_modified, 1700000000) << "the server's Last-Modified";
  EXPECT_FALSE(first.version.etag.empty()) << "nginx names the version with an ETag too";

  CKPTFS_ASSERT_OK_AND_ASSIGN(
      netfetch::FileFetch again,
      transport_.GetToFile(url, path + ".2", kTimeout, {.etag = "", .last_modified = 1700000000}));
  EXPECT_TRUE(again.not_modified);
  EXPECT_FALSE(std::filesystem::exists(path + ".2")) << "a 304 leaves no file";

  // Changed on the server: the whole file again, with its new time.
  auto changed = RandomBytes(6000, 15);
  Serve("index.db", changed);
  ASSERT_NO_FATAL_FAILURE(SetServedTime(served, 1700000100));
  CKPTFS_ASSERT_OK_AND_ASSIGN(
      netfetch::FileFetch newer,
      transport_.GetToFile(url, path + ".3", kTimeout, {.etag = "", .last_modified = 1700000000}));
  EXPECT_FALSE(newer.not_modified);
  EXPECT_EQ(newer.version.last_modified, 1700000100);
  EXPECT_EQ(ReadFile(path + ".3"), changed);

  // The handle went back to the pool: a plain GET after a conditional one is unconditional.
  std::vector<std::uint8_t> dst(changed.size());
  CKPTFS_ASSERT_OK(transport_.Get(url, dst, kTimeout));
  EXPECT_EQ(dst, changed);
}

// With an ETag the match is exact: a file put back with an older time (a rollback that keeps
// times) is still a change, where "not modified since" would let the newer copy stand.
TEST_F(CurlTransport, GetToFileIfNoneMatchSeesAFilePutBackWithAnOlderTime) {
  const std::string url = Serve("index.db", RandomBytes(5000, 16));
  const std::string served = nginx_.root() + "/index.db";
  ASSERT_NO_FATAL_FAILURE(SetServedTime(served, 1700000200));
  const std::string path = nginx_.dir() + "/copy.db";
  CKPTFS_ASSERT_OK_AND_ASSIGN(netfetch::FileFetch first, transport_.GetToFile(url, path, kTimeout));
  CKPTFS_ASSERT_OK_AND_ASSIGN(netfetch::FileFetch same,
                              transport_.GetToFile(url, path + ".2", kTimeout, first.version));
  EXPECT_TRUE(same.not_modified);

  auto older = RandomBytes(5000, 17);
  Serve("index.db", older);
  ASSERT_NO_FATAL_FAILURE(SetServedTime(served, 1700000000));
  CKPTFS_ASSERT_OK_AND_ASSIGN(netfetch::FileFetch back,
                              transport_.GetToFile(url, path + ".3", kTimeout, first.version));
  EXPECT_FALSE(back.not_modified);
  EXPECT_EQ(ReadFile(path + ".3"), older);
  EXPECT_NE(back.version.etag, first.version.etag);
}

TEST_F(CurlTransport, GetTellsProgressTheRunningTotal) {
  auto bytes = RandomBytes(1024 * 1024 + 5, 20);
  std::string url = Serve("chunks/aa/progress", bytes);
  std::vector<std::uint8_t> dst(bytes.size());
  std::vector<std::size_t> totals;
  Status status = transport_.Get(url, dst, kTimeout, [&](std::size_t received) {
    // Everything reported has landed already.
    EXPECT_TRUE(std::equal(dst.begin(), dst.begin() + received, bytes.begin()));
    totals.push_back(received);
    return true;
  });
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(dst, bytes);
  ASSERT_GT(totals.size(), 1u) << "a megabyte arrives in several pieces";
  EXPECT_TRUE(std::is_sorted(totals.begin(), totals.end()));
  EXPECT_EQ(totals.back(), bytes.size());
}

TEST_F(CurlTransport, GetRangeReturnsExactlyTheRangeWith206) {
  auto bytes = RandomBytes(1024 * 1024, 21);
  std::string url = Serve("chunks/bb/range", bytes);
  constexpr std::size_t kOffset = 100'000;
  std::vector<std::uint8_t> dst(300'000);
  std::vector<std::size_t> totals;
  Status status = transport_.GetRange(url, kOffset, dst, kTimeout, [&](std::size_t received) {
    totals.push_back(received);
    return true;
  });
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(dst, std::vector<std::uint8_t>(bytes.begin() + kOffset,
                                           bytes.begin() + kOffset + dst.size()));
  ASSERT_FALSE(totals.empty());
  EXPECT_TRUE(std::is_sorted(totals.begin(), totals.end()));
  EXPECT_EQ(totals.back(), dst.size());

  // The last byte alone, without a progress callback.
  std::vector<std::uint8_t> last(1);
  ASSERT_TRUE(transport_.GetRange(url, bytes.size() - 1, last, kTimeout).ok());
  EXPECT_EQ(last[0], bytes.back());

  nginx_.Stop();
  std::vector<std::string> lines = nginx_.AccessLogLines();
  ASSERT_EQ(lines.size(), 2u);
  for (const std::string& line : lines) {
    AccessLine a = ParseAccessLine(line);
    EXPECT_EQ(a.status, 206) << line;
  }
  EXPECT_EQ(ParseAccessLine(lines[0]).bytes, 300'000) << "only the range was sent";
}

TEST_F(CurlTransport, GetRangePastTheEndIsAnError) {
  auto bytes = RandomBytes(1000, 22);
  std::string url = Serve("chunks/cc/short", bytes);
  std::vector<std::uint8_t> beyond(10, 0xaa);
  Status status = transport_.GetRange(url, 2000, beyond, kTimeout);
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status.ToString();
  EXPECT_NE(status.message().find("HTTP 416"), std::string::npos) << status.ToString();
  EXPECT_EQ(beyond, std::vector<std::uint8_t>(10, 0xaa));

  // A range that starts inside but ends past the end: nginx sends the bytes it has.
  std::vector<std::uint8_t> across(100);
  status = transport_.GetRange(url, 950, across, kTimeout);
  EXPECT_EQ(status.code(), StatusCode::kDataLoss) << status.ToString();
  EXPECT_NE(status.message().find("short body: got 50 of 100 bytes"), std::string::npos)
      << status.ToString();

  std::vector<std::uint8_t> none;
  EXPECT_EQ(transport_.GetRange(url, 0, none, kTimeout).code(), StatusCode::kInvalidArgument);
}

TEST(CurlTransportRange, ServerIgnoringRangeIsUnavailableAndDoesNotTouchDst) {
  const std::string body(5000, 'x');  // Longer than dst: it must not overrun it.
  OneShotServer server("HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) +
                       "\r\nConnection: close\r\n\r\n" + body);
  ASSERT_TRUE(server.ok());
  netfetch::CurlTransport transport;
  std::vector<std::uint8_t> dst(100, 0xaa);
  int progress_calls = 0;
  Status status =
      transport.GetRange(server.url() + "/chunks/00/x", 4096, dst, kTimeout, [&](std::size_t) {
        ++progress_calls;
        return true;
      });
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status.ToString();
  EXPECT_NE(status.message().find("ignored the Range header"), std::string::npos)
      << status.ToString();
  EXPECT_EQ(dst, std::vector<std::uint8_t>(100, 0xaa));
  EXPECT_EQ(progress_calls, 0);
}

TEST(CurlTransportRange, RangeHeaderNamesFirstAndLastByte) {
  OneShotServer server(
      "HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\n"
      "Content-Range: bytes 4096-4105/10000\r\nConnection: close\r\n\r\n"
      "0123456789");
  ASSERT_TRUE(server.ok());
  netfetch::CurlTransport transport;
  std::vector<std::uint8_t> dst(10);
  Status status = transport.GetRange(server.url() + "/chunks/00/x", 4096, dst, kTimeout);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(std::string(dst.begin(), dst.end()), "0123456789");
  EXPECT_NE(server.WaitForRequest().find("\r\nRange: bytes=4096-4105\r\n"), std::string::npos)
      << server.WaitForRequest();
}

TEST_F(CurlTransport, ProgressReturningFalseAbandonsTheTransfer) {
  auto bytes = RandomBytes(2 * 1024 * 1024, 23);
  std::string url = Serve("chunks/dd/abandon", bytes);
  std::vector<std::uint8_t> dst(bytes.size());
  std::size_t last = 0;
  int calls = 0;
  Status status = transport_.Get(url, dst, kTimeout, [&](std::size_t received) {
    last = received;
    return ++calls < 2;
  });
  EXPECT_EQ(status.code(), StatusCode::kDataLoss) << status.ToString();
  EXPECT_NE(status.message().find("abandoned by the caller"), std::string::npos)
      << status.ToString();
  EXPECT_EQ(calls, 2) << "no write after the callback said stop";
  EXPECT_LT(last, bytes.size());

  // The transport is still usable.
  std::vector<std::uint8_t> again(bytes.size());
  ASSERT_TRUE(transport_.Get(url, again, kTimeout).ok());
  EXPECT_EQ(again, bytes);
}

TEST_F(CurlTransport, ConcurrentGetsFromManyThreadsReuseConnections) {
  constexpr int kThreads = 8;
  constexpr int kGetsPerThread = 25;
  std::vector<std::vector<std::uint8_t>> objects;
  std::vector<std::string> urls;
  for (int i = 0; i < 4; ++i) {
    objects.push_back(RandomBytes(64 * 1024, 100 + i));
    urls.push_back(Serve("chunks/0" + std::to_string(i) + "/obj", objects.back()));
  }
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::uint8_t> dst(64 * 1024);
      for (int i = 0; i < kGetsPerThread; ++i) {
        const std::size_t k = (t + i) % objects.size();
        if (transport_.Get(urls[k], dst, kTimeout).ok() && dst == objects[k]) ++good;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(good.load(), kThreads * kGetsPerThread);

  nginx_.Stop();  // nginx logs a request just after answering it: stop it for the whole log.
  std::set<long> connections;
  long most_requests_on_one_connection = 0;
  int gets = 0;
  for (const std::string& line : nginx_.AccessLogLines()) {
    AccessLine a = ParseAccessLine(line);
    if (a.method != "GET") continue;
    ++gets;
    EXPECT_EQ(a.status, 200) << line;
    connections.insert(a.connection);
    most_requests_on_one_connection =
        std::max(most_requests_on_one_connection, a.connection_requests);
  }
  EXPECT_EQ(gets, kThreads * kGetsPerThread);
  // At most one handle per concurrent caller, each keeping its connection alive.
  EXPECT_LE(connections.size(), static_cast<std::size_t>(kThreads));
  EXPECT_GE(most_requests_on_one_connection, kGetsPerThread);
}

}  // namespace
}  // namespace ckptfs
