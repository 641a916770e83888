#include "nn/loss.h"

#include "kernels/cross_entropy.h"
#include "runtime/dispatch.h"

namespace kiln::nn {

namespace {

struct Rows {
  int64_t rows, Vp, V;
};

Rows check_logits(const Tensor& logits, const std::vector<int32_t>& targets, int64_t V) {
  KILN_CHECK(logits.ndim() >= 1, "cross-entropy: logits '" << logits.name() << "' must have a class dimension");
  const int64_t Vp = logits.size(-1);
  const int64_t rows = Vp ? logits.numel() / Vp : 0;
  if (V == 0) V = Vp;
  KILN_CHECK(V >= 1 && V <= Vp, "cross-entropy: " << V << " classes but logits rows of " << Vp);
  KILN_CHECK(static_cast<int64_t>(targets.size()) == rows,
             "cross-entropy: " << targets.size() << " targets for " << rows << " rows of logits '" << logits.name() << "'");
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t t = targets[static_cast<size_t>(r)];
    KILN_CHECK(t == kIgnoreIndex || (t >= 0 && t < V),
               "cross-entropy: target " << t << " in row " << r << " is outside [0, " << V << ")");
  }
  return {rows, Vp, V};
}

LossSum sum_losses(const Tensor& losses, const std::vector<int32_t>& targets) {
  const std::vector<double> l = losses.to_vector_f64();
  LossSum s;
  for (size_t r = 0; r < l.size(); ++r) {
    if (targets[r] == kIgnoreIndex) continue;
    s.sum += l[r];
    ++s.count;
  }
  return s;
}

Tensor upload_targets(const std::vector<int32_t>& targets, Device d) {
  return Tensor::from_vector(targets, {static_cast<int64_t>(targets.size())}, d);
}

}  // namespace

CrossEntropyLoss::CrossEntropyLoss(float label_smoothing) : label_smoothing_(label_smoothing) {
  KILN_CHECK(label_smoothing >= 0.0f && label_smoothing < 1.0f,
             "cross-entropy: label_smoothing = " << label_smoothing << " must be in [0, 1)");
}

LossSum CrossEntropyLoss::forward_backward(Tensor& logits, const std::vector<int32_t>& targets, int64_t V,
                                           float grad_scale) {
  const Rows r = check_logits(logits, targets, V);
  const int64_t valid = cross_entropy_count_valid(targets.data(), r.rows);
  const float scale = grad_scale * cross_entropy_mean_scale(valid);
  const DType loss_dtype = logits.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor losses = Tensor::empty({r.rows}, loss_dtype, logits.device(), "cross_entropy.losses");
  dispatch(
      logits,
      [&](auto tag) {
        using T = decltype(tag);
        cross_entropy_forward_backward_cpu<T>(logits.data<T>(), losses.data<T>(), targets.data(), r.rows, r.V, r.Vp,
                                              scale, kIgnoreIndex, label_smoothing_);
      },
      [&](auto tag, cudaStream_t s) {
        using T = decltype(tag);
        Tensor t = upload_targets(targets, logits.device());
        cross_entropy_forward_backward(logits.data<T>(), losses.data<float>(), t.data<int32_t>(), r.rows, r.V, r.Vp,
                                       scale, s, kIgnoreIndex, label_smoothing_);
      });
  return sum_losses(losses, targets);
}

LossSum CrossEntropyLoss::forward(const Tensor& logits, const std::vector<int32_t>& targets, int64_t V) {
  const Rows r = check_logits(logits, targets, V);
  const DType loss_dtype = logits.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor losses = Tensor::empty({r.rows}, loss_dtype, logits.device(), "cross_entropy.losses");
  dispatch(
      logits,
      [&](auto tag) {
        using T = decltype(tag);
        cross_entropy_forward_cpu<T>(losses.data<T>(), logits.data<T>(), targets.data(), r.rows, r.V, r.Vp,
                                     kIgnoreIndex, label_smoothing_);
      },
      [&](auto tag, cudaStream_t s) {
        using T = decltype(tag);
        Tensor t = upload_targets(targets, logits.device());
        cross_entropy_forward(losses.data<float>(), logits.data<T>(), t.data<int32_t>(), r.rows, r.V, r.Vp, s,
                              kIgnoreIndex, label_smoothing_);
      });
  return sum_losses(losses, targets);
}

namespace {

Rows check_rows(const Tensor& logits, const Tensor& targets, int64_t V) {
  KILN_CHECK(logits.ndim() >= 1, "cross-entropy: logits '" << logits.name() << "' must have a class dimension");
  const int64_t Vp = logits.size(-1);
  const int64_t rows = Vp ? logits.numel() / Vp : 0;
  if (V == 0) V = Vp;
  KILN_CHECK(V >= 1 && V <= Vp, "cross-entropy: " << V << " classes but logits rows of " << Vp);
  KILN_CHECK(targets.dtype() == DType::i32 && targets.numel() == rows && targets.device() == logits.device(),
             "cross-entropy: targets '" << targets.name() << "' must be " << rows << " int32 values on "
                                        << logits.device().str());
  return {rows, Vp, V};
}

}  // namespace

Tensor CrossEntropyLoss::forward_backward_rows(Tensor& logits, const Tensor& targets, int64_t V, float grad_scale) {
  const Rows r = check_rows(logits, targets, V);
  const DType loss_dtype = logits.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor losses = Tensor::empty({r.rows}, loss_dtype, logits.device(), "cross_entropy.losses");
  dispatch(
      logits,
      [&](auto tag) {
        using T = decltype(tag);
        cross_entropy_forward_backward_cpu<T>(logits.data<T>(), losses.data<T>(), targets.data<int32_t>(), r.rows,
                                              r.V, r.Vp, grad_scale, kIgnoreIndex, label_smoothing_);
      },
      [&](auto tag, cudaStream_t s) {
        using T = decltype(tag);
        cross_entropy_forward_backward(logits.data<T>(), losses.data<float>(), targets.data<int32_t>(), r.rows, r.V,
                                       r.Vp, grad_scale, s, kIgnoreIndex, label_smoothing_);
      });
  return losses;
}

Tensor CrossEntropyLoss::forward_rows(const Tensor& logits, const Tensor& targets, int64_t V) {
  const Rows r = check_rows(logits, targets, V);
  const DType loss_dtype = logits.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor losses = Tensor::empty({r.rows}, loss_dtype, logits.device(), "cross_entropy.losses");
  dispatch(
      logits,
      [&](auto tag) {
        using T = decltype(tag);
        cross_entropy_forward_cpu<T>(losses.data<T>(), logits.data<T>(), targets.data<int32_t>(), r.rows, r.V, r.Vp,
                                     kIgnoreIndex, label_smoothing_);
      },
      [&](auto tag, cudaStream_t s) {
        using T = decltype(tag);
        cross_entropy_forward(losses.data<float>(), logits.data<T>(), targets.data<int32_t>(), r.rows, r.V, r.Vp, s,
                              kIgnoreIndex, label_smoothing_);
      });
  return losses;
}

std::vector<int32_t> argmax_rows(const Tensor& logits, int64_t V) {
  const int64_t Vp = logits.size(-1);
  const int64_t rows = Vp ? logits.numel() / Vp : 0;
  if (V == 0) V = Vp;
  const std::vector<float> v = logits.to_vector();
  std::vector<int32_t> out(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = v.data() + r * Vp;
    int32_t best = 0;
    for (int64_t c = 1; c < V; ++c)
      if (row[c] > row[best]) best = static_cast<int32_t>(c);
    out[static_cast<size_t>(r)] = best;
  }
  return out;
}

}  // namespace kiln::nn
