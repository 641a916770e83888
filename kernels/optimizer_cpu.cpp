// CPU references for kernels/optimizer.h (T = float, double). The float
// instantiation is the CPU backend's optimizer; double serves the tests.
//
// Threads: the tensors' elements, taken as one concatenated list, are split
// into contiguous ranges over the CPU pool (runtime/parallel.h). Every
// element's update depends on that element alone, so the results are the
// same at any thread count. The flag and the step counter are read and
// written once, on the calling thread, around the parallel region.
#include <algorithm>
#include <vector>

#include "kernels/optimizer.h"
#include "kernels/optimizer_math.h"
#include "runtime/parallel.h"

namespace kiln {

namespace {

// Elements per part below which another thread does not pay: an AdamW
// element moves 28 bytes (p, g, m, v in; p, m, v out), so 2^15 of them are
// ~1 MB, ~50 µs of memory traffic.
constexpr int64_t kPerPart = int64_t{1} << 15;

template <typename T, typename Update>
void update_span(const OptimizerTensorT<T>& t, int64_t i0, int64_t i1, const Update& update, T scale) {
  const T wd = T(t.weight_decay);
  for (int64_t i = i0; i < i1; ++i) {
    T p = t.param[i];
    const T g = t.grad[i] * scale;
    T m = t.m ? t.m[i] : T(0);
    T v = t.v ? t.v[i] : T(0);
    update(p, g, m, v, wd);
    t.param[i] = p;
    if (t.m) t.m[i] = m;
    if (t.v) t.v[i] = v;
    if (t.param_bf16) t.param_bf16[i] = float_to_bf16(static_cast<float>(p));
  }
}

template <typename T, typename Update>
void run_update(const OptimizerTensorT<T>* tensors, int64_t count, const Update& update, float scale) {
  // start[k] = elements before tensor k in the concatenated list.
  std::vector<int64_t> start(static_cast<size_t>(count) + 1, 0);
  for (int64_t k = 0; k < count; ++k) start[k + 1] = start[k] + tensors[k].n;
  const T s = T(scale);
  parallel_for(start[count], kPerPart, [&](int64_t lo, int64_t hi) {
    // The first tensor holding element lo, then every tensor up to hi.
    int64_t k = std::upper_bound(start.begin(), start.end(), lo) - start.begin() - 1;
    for (; k < count && start[k] < hi; ++k) {
      const int64_t i0 = std::max(lo, start[k]) - start[k], i1 = std::min(hi, start[k + 1]) - start[k];
      if (i0 < i1) update_span(tensors[k], i0, i1, update, s);
    }
  });
}

}  // namespace

template <typename T>
void adamw_step_cpu(const OptimizerTensorT<T>* tensors, int64_t count, const AdamWConfig& cfg) {
  check_optimizer_tensors(tensors, count, true, true, "adamw_step_cpu");
  if (skip_step(cfg.skip)) return;  // a non-finite step: nothing changes, the counter stays
  AdamWConfig c = cfg;
  if (cfg.step_counter) c.step = static_cast<int64_t>(*cfg.step_counter) + 1;
  check_adamw_config(c, "adamw_step_cpu");
  run_update(tensors, count, AdamWUpdate<T>::make(c), combined_grad_scale(c.grad_scale, c.grad_scale_ptr));
  if (cfg.step_counter) *cfg.step_counter = static_cast<int32_t>(c.step);
}

template <typename T>
void sgd_step_cpu(const OptimizerTensorT<T>* tensors, int64_t count, const SgdConfig& cfg) {
  check_sgd_config(cfg, "sgd_step_cpu");
  check_optimizer_tensors(tensors, count, cfg.momentum != 0.0f, false, "sgd_step_cpu");
  if (skip_step(cfg.skip)) return;
  run_update(tensors, count, SgdUpdate<T>::make(cfg), combined_grad_scale(cfg.grad_scale, cfg.grad_scale_ptr));
  if (cfg.step_counter) *cfg.step_counter += 1;
}

template void adamw_step_cpu<float>(const OptimizerTensorT<float>*, int64_t, const AdamWConfig&);
template void adamw_step_cpu<double>(const OptimizerTensorT<double>*, int64_t, const AdamWConfig&);
template void sgd_step_cpu<float>(const OptimizerTensorT<float>*, int64_t, const SgdConfig&);
template void sgd_step_cpu<double>(const OptimizerTensorT<double>*, int64_t, const SgdConfig&);

}  // namespace kiln
