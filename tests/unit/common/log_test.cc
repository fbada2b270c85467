// ThrottledLog against a fake clock, its lines caught on stderr (the sink before daemonizing).
#include "common/log.h"

#include <gtest/gtest.h>

#include <string>

#include "tests/support/fake_clock.h"

namespace ckptfs {
namespace {

using namespace std::chrono_literals;
using testing::FakeClock;

// What `log_some` wrote to stderr.
template <typename LogSome>
std::string StderrOf(LogSome log_some) {
  ::testing::internal::CaptureStderr();
  log_some();
  return ::testing::internal::GetCapturedStderr();
}

TEST(ThrottledLog, LogsTheFirstThenAtMostOneAnIntervalSayingHowManyWereLeftOut) {
  FakeClock clock;
  ThrottledLog log(LogLevel::kWarning, &clock, 60s);
  EXPECT_EQ(StderrOf([&] { log.Log("disk full 1"); }), "ckptfs: warning: disk full 1\n");
  EXPECT_EQ(StderrOf([&] {
              for (int i = 2; i <= 4; ++i) {
                clock.Advance(10s);
                log.Log("disk full " + std::to_string(i));
              }
            }),
            "");
  clock.Advance(30s);  // 60 s after the first line.
  EXPECT_EQ(StderrOf([&] { log.Log("disk full 5"); }),
            "ckptfs: warning: disk full 5 (3 more like it left out of the log since the last)\n");
  clock.Advance(59s);
  EXPECT_EQ(StderrOf([&] { log.Log("disk full 6"); }), "");
  clock.Advance(1s);
  EXPECT_EQ(StderrOf([&] { log.Log("disk full 7"); }),
            "ckptfs: warning: disk full 7 (1 more like it left out of the log since the last)\n");
  clock.Advance(61s);
  EXPECT_EQ(StderrOf([&] { log.Log("disk full 8"); }), "ckptfs: warning: disk full 8\n");
}

TEST(ThrottledLog, KeepsTheLogLevel) {
  FakeClock clock;
  ThrottledLog log(LogLevel::kDebug, &clock);
  EXPECT_EQ(StderrOf([&] { log.Log("not shown at the default level"); }), "");
}

}  // namespace
}  // namespace ckptfs
