// Logging: one line per event, to stderr in the foreground or to syslog once a mount daemonized.
//
// The sink is chosen once by main (SetLogToSyslog) before threads start; lines are written whole
// with one write(2), so lines from different threads never interleave.
#pragma once

#include <string_view>

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

}  // namespace ckptfs
