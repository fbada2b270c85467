// Status: the outcome of an operation that can fail, cheap to copy and to return.
//
// Every fallible function inside ckptfs returns a Status (or a Result<T>, see result.h). errno
// values are turned into a Status right where the system call fails (ErrnoStatus) and back into
// an errno only at the FUSE boundary (fs/errno_map.h). The codes say what the caller may do next:
// Unavailable is worth retrying elsewhere, DataLoss means the bytes were wrong, and so on.
// Thread safety: a Status is a value; distinct objects may be used from any thread.
#pragma once

#include <string>
#include <string_view>
#include <utility>

namespace ckptfs {

enum class StatusCode {
  kOk = 0,
  kNotFound,            // The thing asked for does not exist.
  kInvalidArgument,     // The caller's input (an option, an index, a path) is malformed.
  kFailedPrecondition,  // The system is not in a state where the call can work.
  kUnavailable,         // A transient failure (network, node down): another replica may work.
  kDeadlineExceeded,    // The time allowed for the operation ran out.
  kDataLoss,            // Bytes were wrong or short: digest mismatch, truncated body.
  kPermissionDenied,    // The OS refused access.
  kReadOnly,            // A write to something read-only.
  kResourceExhausted,   // Out of memory, disk space or another bounded resource.
  kInternal,            // A bug or an unexpected library failure.
};

// Returns a short lowercase name for a code, e.g. "unavailable".
std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "unavailable: connection refused" style, or "ok".
  std::string ToString() const;

  // Returns a copy whose message is "context: message"; the code is kept.
  Status WithContext(std::string_view context) const;

  // Lets a caller that cannot act on an error say so explicitly.
  void IgnoreError() const {}

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status NotFoundError(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status InvalidArgumentError(std::string m) {
  return {StatusCode::kInvalidArgument, std::move(m)};
}
inline Status FailedPreconditionError(std::string m) {
  return {StatusCode::kFailedPrecondition, std::move(m)};
}
inline Status UnavailableError(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status DeadlineExceededError(std::string m) {
  return {StatusCode::kDeadlineExceeded, std::move(m)};
}
inline Status DataLossError(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status InternalError(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
inline Status ReadOnlyError(std::string m) { return {StatusCode::kReadOnly, std::move(m)}; }

// Turns an errno value from a failed system call into a Status whose message is
// "context: strerror(errno)". The code follows the errno (ENOENT → NotFound, EACCES →
// PermissionDenied, ENOSPC → ResourceExhausted, EROFS → ReadOnly, ...).
Status ErrnoStatus(int err, std::string_view context);

}  // namespace ckptfs

// Returns from the enclosing function when `expr` yields a non-OK Status.
#define CKPTFS_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::ckptfs::Status ckptfs_status_ = (expr);        \
    if (!ckptfs_status_.ok()) return ckptfs_status_; \
  } while (0)
