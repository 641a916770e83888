#include "tests/harness/gradcheck.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "runtime/philox.h"

namespace kiln::test {

::testing::AssertionResult check_gradient(const std::function<double(const std::vector<double>&)>& loss,
                                          const std::vector<double>& x, const std::vector<double>& analytic,
                                          const std::string& what, GradCheckOptions opt) {
  if (analytic.size() != x.size())
    return ::testing::AssertionFailure() << what << ": analytic gradient has " << analytic.size()
                                         << " elements, input has " << x.size();
  std::vector<size_t> idx(x.size());
  std::iota(idx.begin(), idx.end(), size_t{0});
  if (idx.size() > opt.max_checks) {
    // seeded Fisher-Yates prefix: a reproducible random subset
    for (size_t i = 0; i < opt.max_checks; ++i) {
      const size_t j = i + static_cast<size_t>(philox_uniform(0x6772616463686bULL, 0, i) * (idx.size() - i));
      std::swap(idx[i], idx[std::min(j, idx.size() - 1)]);
    }
    idx.resize(opt.max_checks);
  }
  std::vector<double> xp = x;
  size_t bad = 0;
  std::ostringstream first;
  first.precision(12);
  for (size_t i : idx) {
    const double orig = xp[i];
    const double h = opt.step * std::max(1.0, std::fabs(orig));
    xp[i] = orig + h;
    const double lp = loss(xp);
    xp[i] = orig - h;
    const double lm = loss(xp);
    xp[i] = orig;
    const double numeric = (lp - lm) / (2 * h);
    const double err = std::fabs(numeric - analytic[i]);
    if (!(err <= opt.atol + opt.rtol * std::fabs(numeric))) {
      if (bad == 0)
        first << "first at [" << i << "]: analytic " << analytic[i] << ", finite difference " << numeric;
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << bad << " of " << idx.size()
                                       << " gradient entries disagree with finite differences; " << first.str();
}

}  // namespace kiln::test
