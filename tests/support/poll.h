// PollUntil: waits for a condition that another thread makes true, with a generous bound.
//
// For states a test cannot be notified of (a counter inside the code under test): the bound only
// keeps a broken test from hanging, it is never what the test measures.
#pragma once

#include <chrono>
#include <functional>
#include <thread>

namespace ckptfs::testing {

inline constexpr std::chrono::seconds kPollLimit{60};

// True once `condition()` holds; false when it still does not after `limit`.
inline bool PollUntil(const std::function<bool()>& condition,
                      std::chrono::steady_clock::duration limit = kPollLimit) {
  const auto give_up = std::chrono::steady_clock::now() + limit;
  while (!condition()) {
    if (std::chrono::steady_clock::now() >= give_up) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return true;
}

}  // namespace ckptfs::testing
