// SetThreadName, read back from /proc/self/task/<tid>/comm as top, perf and gdb see it.
#include "common/thread_name.h"

#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <thread>

namespace ckptfs {
namespace {

// The name the kernel holds for the thread that calls this.
std::string OwnThreadName() {
  const long tid = syscall(SYS_gettid);
  std::ifstream comm("/proc/self/task/" + std::to_string(tid) + "/comm");
  std::string name;
  std::getline(comm, name);
  return name;
}

std::string NameInNewThread(std::string_view name) {
  std::string seen;
  std::thread([&] {
    SetThreadName(name);
    seen = OwnThreadName();
  }).join();
  return seen;
}

TEST(SetThreadName, NamesTheCallingThreadOnly) {
  const std::string before = OwnThreadName();
  EXPECT_EQ(NameInNewThread("ckptfs-prefetch"), "ckptfs-prefetch");
  EXPECT_EQ(OwnThreadName(), before);
}

TEST(SetThreadName, KeepsTheFirstFifteenBytes) {
  EXPECT_EQ(NameInNewThread("ckptfs-a-name-too-long"), "ckptfs-a-name-t");
}

}  // namespace
}  // namespace ckptfs
