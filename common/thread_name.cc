#include "common/thread_name.h"

#include <pthread.h>

#include <string>

namespace ckptfs {

void SetThreadName(std::string_view name) {
  constexpr std::size_t kMaxName = 15;  // TASK_COMM_LEN less the NUL.
  const std::string truncated(name.substr(0, kMaxName));
  pthread_setname_np(pthread_self(), truncated.c_str());
}

}  // namespace ckptfs
