#include "common/log.h"

#include <syslog.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <utility>

namespace ckptfs {

namespace {
// Process-wide by nature (there is one stderr and one syslog); set once by main.
std::atomic<LogLevel> g_level{LogLevel::kInfo};
std::atomic<bool> g_syslog{false};

std::string_view LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "?";
}

int SyslogPriority(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return LOG_DEBUG;
    case LogLevel::kInfo:
      return LOG_INFO;
    case LogLevel::kWarning:
      return LOG_WARNING;
    case LogLevel::kError:
      return LOG_ERR;
  }
  return LOG_INFO;
}
}  // namespace

void SetLogLevel(LogLevel level) { g_level = level; }

void SetLogToSyslog(const char* ident) {
  openlog(ident, LOG_PID, LOG_DAEMON);
  g_syslog = true;
}

void Log(LogLevel level, std::string_view message) {
  if (level < g_level.load(std::memory_order_relaxed)) return;
  if (g_syslog.load(std::memory_order_relaxed)) {
    syslog(SyslogPriority(level), "%.*s", static_cast<int>(message.size()), message.data());
    return;
  }
  std::string line = "ckptfs: ";
  line += LevelName(level);
  line += ": ";
  line += message;
  line += '\n';
  ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

void ThrottledLog::Log(std::string_view message) {
  std::uint64_t left_out = 0;
  {
    std::lock_guard lock(mu_);
    const TimePoint now = clock_->Now();
    if (last_.has_value() && now - *last_ < interval_) {
      ++left_out_;
      return;
    }
    last_ = now;
    left_out = std::exchange(left_out_, 0);
  }
  if (left_out == 0) {
    ckptfs::Log(level_, message);
    return;
  }
  ckptfs::Log(level_, std::string(message) + " (" + std::to_string(left_out) +
                          " more like it left out of the log since the last)");
}

}  // namespace ckptfs
