// Result<T>: either a value of type T or a non-OK Status explaining why there is none.
//
// The StatusOr of abseil, cut down to what ckptfs needs. Accessing value() of a Result that holds
// an error is a bug (it aborts). Thread safety: a value type, like T.
#pragma once

#include <cstdlib>
#include <optional>
#include <utility>

#include "common/status.h"

namespace ckptfs {

template <typename T>
class [[nodiscard]] Result {
 public:
  // REQUIRES: !status.ok()
  Result(Status status) : status_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (status_.ok()) status_ = Status(StatusCode::kInternal, "Result built from an OK status");
  }
  Result(T value) : value_(std::move(value)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }

  T& value() & {
    if (!ok()) std::abort();
    return *value_;
  }
  const T& value() const& {
    if (!ok()) std::abort();
    return *value_;
  }
  T&& value() && {
    if (!ok()) std::abort();
    return std::move(*value_);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace ckptfs

#define CKPTFS_CONCAT_INNER(a, b) a##b
#define CKPTFS_CONCAT(a, b) CKPTFS_CONCAT_INNER(a, b)
#define CKPTFS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()

// Declares or assigns `lhs` from a Result, returning its Status from the enclosing function on
// error: CKPTFS_ASSIGN_OR_RETURN(auto file, OpenFile(path));
#define CKPTFS_ASSIGN_OR_RETURN(lhs, expr) \
  CKPTFS_ASSIGN_OR_RETURN_IMPL(CKPTFS_CONCAT(ckptfs_result_, __LINE__), lhs, expr)
