#include "trainers/loss_stats.h"

#include "kernels/loss_stats.h"
#include "runtime/dispatch.h"
#include "runtime/stream.h"

namespace kiln {

LossStats::LossStats(Device device, int64_t rows) : device_(device), rows_(rows) {
  KILN_CHECK(rows >= 1, "LossStats: " << rows << " rows");
  sums_ = Tensor::zeros({rows, 2}, DType::f64, device, "loss_stats");
}

void LossStats::select(int64_t r) {
  KILN_CHECK(r >= 0 && r < rows_, "LossStats: row " << r << " of " << rows_);
  row_ = r;
}

namespace {

void check_targets(const Tensor& targets, int64_t n, Device d, const char* who) {
  KILN_CHECK(targets.dtype() == DType::i32 && targets.numel() == n && targets.device() == d,
             who << ": targets '" << targets.name() << "' must be " << n << " int32 values on " << d.str());
}

}  // namespace

void LossStats::add_losses(const Tensor& losses, const Tensor& targets) {
  const int64_t n = losses.numel();
  check_targets(targets, n, device_, "LossStats::add_losses");
  double* acc = sums_.data<double>() + 2 * row_;
  dispatch(
      losses,
      [&](auto tag) {
        using T = decltype(tag);
        loss_sum_add_cpu<T>(acc, losses.data<T>(), targets.data<int32_t>(), n);
      },
      [&](auto tag, cudaStream_t s) {
        using T = decltype(tag);
        if constexpr (std::is_same_v<T, float>) {
          loss_sum_add(acc, losses.data<float>(), targets.data<int32_t>(), n, s);
        } else {
          KILN_CHECK(false, "LossStats::add_losses: losses '" << losses.name() << "' must be f32 on the GPU");
        }
      });
}

void LossStats::add_correct(const Tensor& logits, const Tensor& targets, int64_t V) {
  KILN_CHECK(logits.ndim() >= 1, "LossStats::add_correct: logits '" << logits.name() << "' need a class dimension");
  const int64_t Vp = logits.size(-1);
  const int64_t n = Vp ? logits.numel() / Vp : 0;
  check_targets(targets, n, device_, "LossStats::add_correct");
  double* acc = sums_.data<double>() + 2 * row_ + 1;
  dispatch(
      logits,
      [&](auto tag) {
        using T = decltype(tag);
        correct_count_add_cpu<T>(acc, logits.data<T>(), targets.data<int32_t>(), n, V, Vp);
      },
      [&](auto tag, cudaStream_t s) {
        using T = decltype(tag);
        correct_count_add(acc, logits.data<T>(), targets.data<int32_t>(), n, V, Vp, s);
      });
}

void LossStats::zero() { sums_.zero_(); }

std::vector<double> LossStats::read() const { return sums_.to_vector_f64(); }

}  // namespace kiln
