// ReadDenier: makes every read of chosen files fail with EPERM while their opens succeed, as a
// file on a disk with a bad sector does (there it is EIO). It is a fanotify group whose
// permission events for reads of the marked files a thread of its own answers FAN_DENY. Needs
// CAP_SYS_ADMIN, as the test suite (root) has. Thread safety: one owner.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/fanotify.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

namespace ckptfs::testing {

class ReadDenier {
 public:
  ReadDenier() {
    group_ = ::fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK, O_RDONLY);
    if (group_ < 0) {
      throw std::runtime_error(std::string("fanotify_init (needs root): ") + std::strerror(errno));
    }
    answerer_ = std::thread([this] { Answer(); });
  }
  ~ReadDenier() {
    stop_ = true;
    answerer_.join();
    ::close(group_);  // Pending events are allowed when the group goes.
  }
  ReadDenier(const ReadDenier&) = delete;
  ReadDenier& operator=(const ReadDenier&) = delete;

  // From now on every read of `path` (the file it names now) fails; opening it still works.
  void Deny(const std::string& path) {
    if (::fanotify_mark(group_, FAN_MARK_ADD, FAN_ACCESS_PERM, AT_FDCWD, path.c_str()) != 0) {
      throw std::runtime_error("fanotify_mark " + path + ": " + std::strerror(errno));
    }
  }
  // Reads denied so far.
  int denied() const { return denied_.load(); }

 private:
  void Answer() {
    alignas(fanotify_event_metadata) char buffer[4096];
    while (!stop_) {
      pollfd p{group_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const ssize_t n = ::read(group_, buffer, sizeof(buffer));
      if (n <= 0) continue;
      auto* event = reinterpret_cast<fanotify_event_metadata*>(buffer);
      for (ssize_t left = n; FAN_EVENT_OK(event, left); event = FAN_EVENT_NEXT(event, left)) {
        if (event->fd < 0) continue;
        const fanotify_response response{event->fd, FAN_DENY};
        if (::write(group_, &response, sizeof(response)) == sizeof(response)) ++denied_;
        ::close(event->fd);
      }
    }
  }

  int group_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<int> denied_{0};
  std::thread answerer_;
};

}  // namespace ckptfs::testing
