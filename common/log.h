// Logging: one line per event, to stderr in the foreground or to syslog once a mount daemonized.
//
// The sink is chosen once by main (SetLogToSyslog) before threads start; lines are written whole
// with one write(2), so lines from different threads never interleave.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string_view>

#include "common/clock.h"

namespace ckptfs {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

// Lines below `level` are dropped. Default: kInfo.
void SetLogLevel(LogLevel level);
// Sends lines to syslog under `ident` instead of stderr.
void SetLogToSyslog(const char* ident);

void Log(LogLevel level, std::string_view message);
inline void LogDebug(std::string_view m) { Log(LogLevel::kDebug, m); }
inline void LogInfo(std::string_view m) { Log(LogLevel::kInfo, m); }
inline void LogWarning(std::string_view m) { Log(LogLevel::kWarning, m); }
inline void LogError(std::string_view m) { Log(LogLevel::kError, m); }

// A message that may repeat for every chunk read (a cache write on a disk that other files keep
// full) reaches the log at most once per `interval`; the next one that does says how many were
// left out, which the stats count in full anyway. Thread safe.
class ThrottledLog {
 public:
  ThrottledLog(LogLevel level, Clock* clock, Duration interval = std::chrono::minutes(1))
      : level_(level), clock_(clock), interval_(interval) {}
  void Log(std::string_view message);

 private:
  const LogLevel level_;
  Clock* const clock_;
  const Duration interval_;
  std::mutex mu_;
  std::optional<TimePoint> last_;  // GUARDED_BY(mu_): when a line last got through.
  std::uint64_t left_out_ = 0;     // GUARDED_BY(mu_): since then.
};

}  // namespace ckptfs
