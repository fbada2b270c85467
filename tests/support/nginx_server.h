// NginxServer: a real nginx on 127.0.0.1 for tests, in a temporary directory of its own.
//
// Start() writes a config (single process, no daemon, every path inside the directory, WebDAV
// PUT on), picks a free port, forks/execs /usr/sbin/nginx and waits until it accepts
// connections. A missing nginx is a test failure with a clear message, never a skip. Stop() and
// the destructor end it (SIGTERM, then SIGKILL) and reap it; the destructor also removes the
// directory. After Stop(), Start() brings it back on the same port with the same files.
// The access log has one line per request:
//   "$request_method $uri $status $body_bytes_sent $connection $connection_requests"
// so tests can see which requests shared a connection. /moved/<path> answers with a 302 to
// /<path>, for redirect tests.
// Thread safety: none; drive one NginxServer from one thread, and call Start() from the test's
// main thread (nginx is tied to the starting thread's life, so a crashed test leaves no nginx).
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace ckptfs::testing {

class NginxServer {
 public:
  static constexpr const char* kBinary = "/usr/sbin/nginx";

  NginxServer() = default;
  ~NginxServer() {
    Stop();
    if (!dir_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }
  NginxServer(const NginxServer&) = delete;
  NginxServer& operator=(const NginxServer&) = delete;

  // Starts nginx; success once it accepts connections. Use as ASSERT_TRUE(server.Start()).
  [[nodiscard]] ::testing::AssertionResult Start() {
    if (pid_ > 0) return ::testing::AssertionSuccess();
    if (::access(kBinary, X_OK) != 0) {
      return ::testing::AssertionFailure()
             << "this test needs nginx, but " << kBinary
             << " is missing or not executable: install it with apt-get install nginx-light";
    }
    if (dir_.empty()) {
      if (auto made = MakeDirectories(); !made) return made;
    }
    const bool same_port = port_ != 0;
    constexpr int kPortTries = 5;
    ::testing::AssertionResult result = ::testing::AssertionFailure();
    for (int attempt = 0; attempt < kPortTries; ++attempt) {
      if (!same_port && (port_ = PickFreePort()) == 0) {
        return ::testing::AssertionFailure() << "cannot find a free port on 127.0.0.1";
      }
      const std::size_t log_offset = ErrorLog().size();
      if (auto written = WriteConfig(); !written) return written;
      result = LaunchAndWait();
      // Another process may have taken the port between our probe and nginx's bind.
      bool port_taken = ErrorLog().find("Address already in use", log_offset) != std::string::npos;
      if (result || same_port || !port_taken) return result;
    }
    return result;
  }

  // Ends nginx and waits for it; a no-op when it is not running.
  void Stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    if (!WaitForExit(std::chrono::seconds(5))) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
    pid_ = -1;
  }

  bool running() const { return pid_ > 0; }
  int port() const { return port_; }
  // "http://127.0.0.1:<port>", no trailing slash.
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  // The directory nginx serves; files written here are at url() + "/" + relative path.
  std::string root() const { return dir_ + "/www"; }
  const std::string& dir() const { return dir_; }

  // nginx writes a request's line just after it sent the answer, so the newest line may lag
  // the client by a moment; after Stop() the log is complete (nginx acts on SIGTERM only
  // between requests' events, never between sending an answer and logging it).
  std::vector<std::string> AccessLogLines() const {
    std::vector<std::string> lines;
    std::ifstream in(dir_ + "/access.log");
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }
  std::string ErrorLog() const { return ReadWhole(dir_ + "/error.log"); }

 private:
  static std::string ReadWhole(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
  }

  ::testing::AssertionResult MakeDirectories() {
    std::string pattern = (std::filesystem::temp_directory_path() / "ckptfs-nginx-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      return ::testing::AssertionFailure() << "mkdtemp " << pattern << ": " << std::strerror(errno);
    }
    dir_ = pattern;
    std::error_code error;
    for (const char* sub :
         {"www", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"}) {
      std::filesystem::create_directories(dir_ + "/" + sub, error);
      if (error) {
        return ::testing::AssertionFailure()
               << "mkdir " << dir_ << "/" << sub << ": " << error.message();
      }
    }
    return ::testing::AssertionSuccess();
  }

  // Binds 127.0.0.1:0 and reads back the port the kernel chose; 0 on failure.
  static int PickFreePort() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof(addr);
    int port = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port = ntohs(addr.sin_port);
    }
    ::close(fd);
    return port;
  }

  bool AcceptsConnections() const {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<std::uint16_t>(port_));
    bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    ::close(fd);
    return ok;
  }

  ::testing::AssertionResult WriteConfig() const {
    const std::string& d = dir_;
    std::ofstream conf(d + "/nginx.conf", std::ios::trunc);
    conf << "daemon off;\n"
         << "master_process off;\n"
         << "worker_processes 1;\n"
         << "pid " << d << "/nginx.pid;\n"
         << "error_log " << d << "/error.log;\n"
         << "events { worker_connections 1024; }\n"
         << "http {\n"
         << "  log_format ckptfs '$request_method $uri $status $body_bytes_sent $connection "
            "$connection_requests';\n"
         << "  access_log " << d << "/access.log ckptfs;\n"
         << "  client_body_temp_path " << d << "/tmp/body;\n"
         << "  proxy_temp_path " << d << "/tmp/proxy;\n"
         << "  fastcgi_temp_path " << d << "/tmp/fastcgi;\n"
         << "  uwsgi_temp_path " << d << "/tmp/uwsgi;\n"
         << "  scgi_temp_path " << d << "/tmp/scgi;\n"
         << "  server {\n"
         << "    listen 127.0.0.1:" << port_ << ";\n"
         << "    root " << d << "/www;\n"
         << "    dav_methods PUT DELETE;\n"
         << "    create_full_put_path on;\n"
         << "    client_max_body_size 0;\n"
         << "    client_body_temp_path " << d << "/tmp/body;\n"
         << "    location /moved/ { rewrite ^/moved/(.*)$ /$1 redirect; }\n"
         // Serves the same files, and takes PUTs, only with the test's credentials.
         << "    location /private/ {\n"
         << "      if ($http_authorization != \"Bearer sesame\") { return 401; }\n"
         << "      rewrite ^/private/(.*)$ /$1 break;\n"
         << "    }\n"
         // The same files and PUTs, but no DELETE, as with nginx's `dav_methods PUT`.
         << "    location /putonly/ {\n"
         << "      dav_methods PUT;\n"
         << "      rewrite ^/putonly/(.*)$ /$1 break;\n"
         << "    }\n"
         // Serves the same files to GET, and refuses HEAD as some servers do.
         << "    location /nohead/ {\n"
         << "      if ($request_method = HEAD) { return 405; }\n"
         << "      rewrite ^/nohead/(.*)$ /$1 break;\n"
         << "    }\n"
         << "  }\n"
         << "}\n";
    conf.close();
    if (!conf) return ::testing::AssertionFailure() << "cannot write " << d << "/nginx.conf";
    return ::testing::AssertionSuccess();
  }

  ::testing::AssertionResult LaunchAndWait() {
    // Everything the child needs is built before fork: after it, only async-signal-safe calls.
    const std::string prefix = dir_ + "/";
    const std::string conf = dir_ + "/nginx.conf";
    const std::string error_log = dir_ + "/error.log";
    const char* argv[] = {kBinary,      "-p", prefix.c_str(),    "-c",
                          conf.c_str(), "-e", error_log.c_str(), nullptr};
    const std::string output = dir_ + "/nginx.out";
    int out_fd = ::open(output.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (out_fd < 0)
      return ::testing::AssertionFailure() << "open " << output << ": " << std::strerror(errno);
    pid_t pid = ::fork();
    if (pid < 0) {
      ::close(out_fd);
      return ::testing::AssertionFailure() << "fork: " << std::strerror(errno);
    }
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::dup2(out_fd, STDOUT_FILENO);
      ::dup2(out_fd, STDERR_FILENO);
      ::execv(kBinary, const_cast<char* const*>(argv));
      ::_exit(127);
    }
    ::close(out_fd);
    pid_ = pid;
    return WaitUntilReady();
  }

  ::testing::AssertionResult WaitUntilReady() {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < give_up) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return ::testing::AssertionFailure() << "nginx exited during start-up (wait status "
                                             << status << ") on port " << port_ << "; error log:\n"
                                             << ErrorLog() << ReadWhole(dir_ + "/nginx.out");
      }
      if (AcceptsConnections()) return ::testing::AssertionSuccess();
      // Polling for readiness of a real daemon, not waiting for time to pass in a test.
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    Stop();
    return ::testing::AssertionFailure()
           << "nginx did not accept connections on 127.0.0.1:" << port_
           << " within 10 s; error log:\n"
           << ErrorLog();
  }

  bool WaitForExit(std::chrono::seconds limit) {
    const auto give_up = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < give_up) {
      int status = 0;
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_ || (r < 0 && errno == ECHILD)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }

  std::string dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace ckptfs::testing
