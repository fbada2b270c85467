// FakeClock: a Clock whose time moves only when a test (or SleepFor) moves it.
//
// SleepFor advances the time instead of waiting, so retry and backoff logic runs instantly and
// deterministically. Thread safety: safe from many threads.
#pragma once

#include <mutex>

#include "common/clock.h"

namespace ckptfs::testing {

class FakeClock final : public Clock {
 public:
  TimePoint Now() const override {
    std::lock_guard lock(mu_);
    return now_;
  }
  void SleepFor(Duration d) override { Advance(d); }
  void Advance(Duration d) {
    std::lock_guard lock(mu_);
    if (d > Duration::zero()) now_ += d;
  }

 private:
  mutable std::mutex mu_;
  TimePoint now_{std::chrono::hours(1)};
};

}  // namespace ckptfs::testing
