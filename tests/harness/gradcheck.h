// Generic finite-difference gradient checker, in fp64 on the CPU.
//
// Use: write the op as a scalar function of its flattened input, L(x) =
// sum(f(x) ⊙ w) with fixed random weights w, and its analytic gradient as
// backward(dy = w). check_gradient compares that analytic gradient against
// central differences (L(x + h·e_i) - L(x - h·e_i)) / 2h for every i (or a
// random subset of `max_checks` indices for large inputs).
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

namespace kiln::test {

struct GradCheckOptions {
  double step = 1e-6;   ///< h
  double rtol = 1e-5;
  double atol = 1e-7;
  size_t max_checks = 2000;  ///< check at most this many coordinates (chosen at random, seeded)
};

::testing::AssertionResult check_gradient(const std::function<double(const std::vector<double>&)>& loss,
                                          const std::vector<double>& x,
                                          const std::vector<double>& analytic_grad,
                                          const std::string& what, GradCheckOptions opt = {});

}  // namespace kiln::test
