#include "common/clock.h"

#include <thread>

namespace ckptfs {

TimePoint RealClock::Now() const { return std::chrono::steady_clock::now(); }

void RealClock::SleepFor(Duration d) {
  if (d > Duration::zero()) std::this_thread::sleep_for(d);
}

}  // namespace ckptfs
