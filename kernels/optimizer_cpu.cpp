// CPU references for kernels/optimizer.h (T = float, double). The float
// instantiation is the CPU backend's optimizer; double serves the tests.
#include "kernels/optimizer.h"
#include "kernels/optimizer_math.h"

namespace kiln {

namespace {

template <typename T, typename Update>
void run_update(const OptimizerTensorT<T>* tensors, int64_t count, const Update& update, float scale) {
  for (int64_t k = 0; k < count; ++k) {
    const OptimizerTensorT<T>& t = tensors[k];
    const T wd = T(t.weight_decay);
    for (int64_t i = 0; i < t.n; ++i) {
      T p = t.param[i];
      const T g = t.grad[i] * T(scale);
      T m = t.m ? t.m[i] : T(0);
      T v = t.v ? t.v[i] : T(0);
      update(p, g, m, v, wd);
      t.param[i] = p;
      if (t.m) t.m[i] = m;
      if (t.v) t.v[i] = v;
      if (t.param_bf16) t.param_bf16[i] = float_to_bf16(static_cast<float>(p));
    }
  }
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
