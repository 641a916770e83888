// Loss and accuracy sums on the device (kernels/loss_stats.h): the CPU
// references against hand-written loops over every standard size (ignored
// targets, ties, the first V of Vp columns), batches adding onto a running
// total; the CUDA kernels against the references, bit for bit on integer
// counts and to double rounding on sums, and deterministic.
#include "kernels/loss_stats.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "runtime/error.h"
#include "tests/harness/harness.h"

namespace kiln {
namespace {

using test::random_uniform;

struct Batch {
  int64_t rows = 0, V = 0, Vp = 0;
  std::vector<float> logits, losses;
  std::vector<int32_t> targets;
};

// Every 5th target ignored; some rows with a tie at their maximum.
Batch make_batch(int64_t rows, int64_t V, int64_t Vp, uint64_t seed) {
  Batch b;
  b.rows = rows;
  b.V = V;
  b.Vp = Vp;
  b.logits = random_uniform(rows * Vp, seed, -3.0f, 3.0f);
  b.losses = random_uniform(rows, seed + 1, 0.0f, 5.0f);
  for (int64_t r = 0; r < rows; ++r) {
    b.targets.push_back(r % 5 == 4 ? kIgnoreIndex : static_cast<int32_t>((r * 7) % V));
    if (r % 3 == 0 && V > 1) b.logits[r * Vp + 1] = b.logits[r * Vp];  // a tie: the first column wins
    for (int64_t c = V; c < Vp; ++c) b.logits[r * Vp + c] = 100.0f;     // padding is never read
  }
  return b;
}

double want_loss(const Batch& b) {
  double s = 0;
  for (int64_t r = 0; r < b.rows; ++r)
    if (b.targets[r] != kIgnoreIndex) s += b.losses[r];
  return s;
}

double want_correct(const Batch& b) {
  int64_t n = 0;
  for (int64_t r = 0; r < b.rows; ++r) {
    if (b.targets[r] == kIgnoreIndex) continue;
    int64_t best = 0;
    for (int64_t c = 1; c < b.V; ++c)
      if (b.logits[r * b.Vp + c] > b.logits[r * b.Vp + best]) best = c;
    n += best == b.targets[r];
  }
  return static_cast<double>(n);
}

TEST(LossStatsCpu, MatchesLoopsAndAddsOntoTheTotal) {
  for (int64_t rows : test::standard_sizes()) {
    const Batch b = make_batch(rows, 10, 12, 10 + rows);
    double acc[2] = {1.5, 2.0};  // a running total the batch adds onto
    loss_sum_add_cpu(&acc[0], b.losses.data(), b.targets.data(), rows);
    correct_count_add_cpu(&acc[1], b.logits.data(), b.targets.data(), rows, b.V, b.Vp);
    EXPECT_EQ(acc[0], 1.5 + want_loss(b)) << rows;
    EXPECT_EQ(acc[1], 2.0 + want_correct(b)) << rows;
  }
  const std::vector<double> l = {1.0, 2.0, 4.0};
  const std::vector<int32_t> t = {0, kIgnoreIndex, 1};
  double acc = 0;
  loss_sum_add_cpu(&acc, l.data(), t.data(), 3);
  EXPECT_EQ(acc, 5.0);
  EXPECT_THROW(correct_count_add_cpu(&acc, l.data(), t.data(), 1, 4, 3), Error);  // V > Vp
}

TEST(LossStatsGpu, MatchesCpuAndIsDeterministic) {
  KILN_REQUIRE_GPU();
#if KILN_WITH_CUDA
  for (int64_t rows : test::standard_sizes()) {
    const Batch b = make_batch(rows, 10, 16, 30 + rows);
    test::DeviceBuffer<float> logits(b.logits), losses(b.losses);
    test::DeviceBuffer<int32_t> targets(b.targets);
    test::DeviceBuffer<double> acc(std::vector<double>{0.0, 0.0});
    loss_sum_add(acc.get(), losses.get(), targets.get(), rows, nullptr);
    correct_count_add(acc.get() + 1, logits.get(), targets.get(), rows, b.V, b.Vp, nullptr);
    const std::vector<double> got = acc.to_host();
    EXPECT_NEAR(got[0], want_loss(b), 1e-12 * (1 + want_loss(b))) << rows;
    EXPECT_EQ(got[1], want_correct(b)) << rows;
    loss_sum_add(acc.get(), losses.get(), targets.get(), rows, nullptr);
    EXPECT_EQ(acc.to_host()[0], got[0] + got[0]) << "the same batch again, the same bits: " << rows;
    // bf16 logits: the argmax of the rounded values.
    std::vector<bf16> lb(b.logits.size());
    Batch rounded = b;
    for (size_t i = 0; i < lb.size(); ++i) {
      lb[i] = float_to_bf16(b.logits[i]);
      rounded.logits[i] = bf16_to_float(lb[i]);
    }
    test::DeviceBuffer<bf16> dlb(lb);
    test::DeviceBuffer<double> acc2(std::vector<double>{0.0});
    correct_count_add(acc2.get(), dlb.get(), targets.get(), rows, b.V, b.Vp, nullptr);
    EXPECT_EQ(acc2.to_host()[0], want_correct(rounded)) << rows;
  }
#endif
}

}  // namespace
}  // namespace kiln
