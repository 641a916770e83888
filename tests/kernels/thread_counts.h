// Checks that a CPU op's results do not depend on the CPU pool's thread count
// (runtime/parallel.h): run at 1 thread, then at 2 and 3 threads, and compare
// every output bit for bit.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "runtime/parallel.h"

namespace kiln::test {

/// Restores the pool's thread count when it goes out of scope.
struct PoolThreadsGuard {
  int before = cpu_pool_threads();
  ~PoolThreadsGuard() { set_cpu_pool_threads(before); }
};

/// fn() computes the op from fixed inputs and returns its outputs (as one
/// vector of float or double). Bit patterns are compared, so NaN == NaN.
template <typename Fn>
::testing::AssertionResult same_at_thread_counts(Fn&& fn, const std::string& what) {
  PoolThreadsGuard guard;
  set_cpu_pool_threads(1);
  const auto one = fn();
  for (int threads : {2, 3}) {
    set_cpu_pool_threads(threads);
    const auto many = fn();
    if (many.size() != one.size())
      return ::testing::AssertionFailure() << what << ": " << many.size() << " outputs at " << threads
                                           << " threads, " << one.size() << " at 1";
    for (size_t i = 0; i < one.size(); ++i)
      if (std::memcmp(&one[i], &many[i], sizeof(one[i])) != 0)
        return ::testing::AssertionFailure() << what << ": output " << i << " is " << many[i] << " at " << threads
                                             << " threads, " << one[i] << " at 1";
  }
  return ::testing::AssertionSuccess();
}

}  // namespace kiln::test
