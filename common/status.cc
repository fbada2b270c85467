#include "common/status.h"

#include <cerrno>
#include <cstring>

namespace ckptfs {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "ok";
    case StatusCode::kNotFound:
      return "not found";
    case StatusCode::kInvalidArgument:
      return "invalid argument";
    case StatusCode::kFailedPrecondition:
      return "failed precondition";
    case StatusCode::kUnavailable:
      return "unavailable";
    case StatusCode::kDeadlineExceeded:
      return "deadline exceeded";
    case StatusCode::kDataLoss:
      return "data loss";
    case StatusCode::kPermissionDenied:
      return "permission denied";
    case StatusCode::kReadOnly:
      return "read-only";
    case StatusCode::kResourceExhausted:
      return "resource exhausted";
    case StatusCode::kInternal:
      return "internal";
  }
  return "unknown";
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  return std::string(StatusCodeName(code_)) + ": " + message_;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  return Status(code_, std::string(context) + ": " + message_);
}

Status ErrnoStatus(int err, std::string_view context) {
  StatusCode code = StatusCode::kInternal;
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      code = StatusCode::kNotFound;
      break;
    case EACCES:
    case EPERM:
      code = StatusCode::kPermissionDenied;
      break;
    case ENOSPC:
    case EDQUOT:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
      code = StatusCode::kResourceExhausted;
      break;
    case EROFS:
      code = StatusCode::kReadOnly;
      break;
    case EINVAL:
    case EISDIR:
    case ENAMETOOLONG:
      code = StatusCode::kInvalidArgument;
      break;
    case EAGAIN:
    case EINTR:
    case EIO:
      code = StatusCode::kUnavailable;
      break;
    default:
      break;
  }
  return Status(code, std::string(context) + ": " + std::strerror(err));
}

}  // namespace ckptfs
