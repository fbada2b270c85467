// Assertions on Status and Result<T> that print the error when they fail:
//   CKPTFS_ASSERT_OK(cache->Insert(digest, bytes));
//   CKPTFS_ASSERT_OK_AND_ASSIGN(auto fd, cache->OpenChunk(digest, size));
#pragma once

#include <gtest/gtest.h>

#include <utility>

#include "common/result.h"
#include "common/status.h"

namespace ckptfs::testing {

inline const Status& StatusOf(const Status& status) { return status; }
template <typename T>
const Status& StatusOf(const Result<T>& result) {
  return result.status();
}

}  // namespace ckptfs::testing

#define CKPTFS_EXPECT_OK(expr)                                                         \
  do {                                                                                 \
    const auto& ckptfs_expect_ok_ = (expr);                                            \
    EXPECT_TRUE(::ckptfs::testing::StatusOf(ckptfs_expect_ok_).ok())                   \
        << #expr << ": " << ::ckptfs::testing::StatusOf(ckptfs_expect_ok_).ToString(); \
  } while (0)

#define CKPTFS_ASSERT_OK(expr)                                                         \
  do {                                                                                 \
    const auto& ckptfs_assert_ok_ = (expr);                                            \
    ASSERT_TRUE(::ckptfs::testing::StatusOf(ckptfs_assert_ok_).ok())                   \
        << #expr << ": " << ::ckptfs::testing::StatusOf(ckptfs_assert_ok_).ToString(); \
  } while (0)

#define CKPTFS_ASSERT_OK_AND_ASSIGN_IMPL(tmp, lhs, expr)             \
  auto tmp = (expr);                                                 \
  ASSERT_TRUE(tmp.ok()) << #expr << ": " << tmp.status().ToString(); \
  lhs = std::move(tmp).value()

// Declares or assigns `lhs` from a Result, failing the test (and returning) on an error.
#define CKPTFS_ASSERT_OK_AND_ASSIGN(lhs, expr) \
  CKPTFS_ASSERT_OK_AND_ASSIGN_IMPL(CKPTFS_CONCAT(ckptfs_assert_result_, __LINE__), lhs, expr)
