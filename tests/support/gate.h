// Gate: holds the first call that passes it until the test opens it, so that a test can keep a
// request "in flight" while it looks at the code under test.
#pragma once

#include <future>

namespace ckptfs::testing {

class Gate {
 public:
  // Called by the held call (once): tells WaitArrived, then waits for Open.
  void Pass() {
    arrived_.set_value();
    opened_.wait();
  }
  void WaitArrived() { arrived_.get_future().wait(); }
  void Open() { open_.set_value(); }

 private:
  std::promise<void> arrived_;
  std::promise<void> open_;
  std::shared_future<void> opened_ = open_.get_future().share();
};

}  // namespace ckptfs::testing
