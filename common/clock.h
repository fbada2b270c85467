// Clock: the one way ckptfs code reads time and waits.
//
// Retry, backoff, deadlines and cache ages take a Clock* so that tests can run them with
// FakeClock (tests/support/fake_clock.h), whose SleepFor only advances time. RealClock uses the
// monotonic steady clock. Thread safety: implementations are safe to use from many threads.
#pragma once

#include <chrono>

namespace ckptfs {

using Duration = std::chrono::nanoseconds;
using TimePoint = std::chrono::steady_clock::time_point;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
  virtual void SleepFor(Duration d) = 0;
};

class RealClock final : public Clock {
 public:
  TimePoint Now() const override;
  void SleepFor(Duration d) override;
};

}  // namespace ckptfs
