#include "trainers/step_guard.h"

#include <cmath>

#include "kernels/norm.h"
#include "runtime/stream.h"

namespace kiln {

StepGuard::StepGuard(Device device, double max_norm, bool sticky)
    : device_(device), max_norm_(max_norm), sticky_(sticky) {
  norm_ = Tensor::zeros({1}, DType::f32, device, "grad_norm");
  scale_ = Tensor::full({1}, 1.0, DType::f32, device);
  scale_.set_name("clip_scale");
  flag_ = Tensor::zeros({1}, DType::f32, device, "nonfinite_step");
  if (device.is_cuda()) partials_ = Tensor::zeros({kNormPartials}, DType::f32, device, "grad_norm.partials");
}

void StepGuard::begin_step() {
  if (!sticky_) flag_.zero_();
}

nn::StepInputs StepGuard::inputs() const {
  nn::StepInputs in;
  if (max_norm_ > 0) in.scale = scale_;
  in.skip = flag_;
  return in;
}

void StepGuard::compute(const std::vector<nn::Parameter*>& params, Communicator* shard_comm) {
  for (const nn::Parameter* p : params)
    KILN_CHECK(p->grad.defined() && p->grad.dtype() == DType::f32 && p->grad.device() == device_,
               "StepGuard: gradient of '" << p->name << "' must be f32 on " << device_.str());
  const bool sharded = shard_comm != nullptr;
  if (device_.is_cpu()) {
    std::vector<NormTensor> d;
    for (const nn::Parameter* p : params) d.push_back({p->grad.data<float>(), p->grad.numel()});
    float* norm = norm_.data<float>();
    float* scale = scale_.data<float>();
    float* flag = flag_.data<float>();
    if (!sharded) {
      global_norm_clip_cpu<float>(norm, max_norm_ > 0 ? scale : nullptr, flag, d.data(),
                                  static_cast<int64_t>(d.size()), max_norm_);
      return;
    }
    // The CPU runs synchronously anyway: sum the shards' squares on the host.
    const double local = d.empty() ? 0.0 : static_cast<double>(global_norm_cpu<float>(d.data(), static_cast<int64_t>(d.size())));
    std::vector<double> v = {local * local};
    shard_comm->all_reduce_values(v, ReduceOp::sum, "grad norm");
    const double r = std::sqrt(v[0]);
    *norm = static_cast<float>(r);
    if (max_norm_ > 0) *scale = nn::clip_scale(r, max_norm_);
    if (!std::isfinite(r)) *flag = 1.0f;
    return;
  }
#if KILN_WITH_CUDA
  cudaStream_t s = compute_stream(device_);
  std::vector<NormTensor> d;
  for (const nn::Parameter* p : params) d.push_back({p->grad.data<float>(), p->grad.numel()});
  const int64_t n = static_cast<int64_t>(d.size());
  float* scale = max_norm_ > 0 ? scale_.data<float>() : nullptr;
  float* partials = partials_.data<float>();
  global_norm_partials(partials, d.data(), n, s);
  // ZeRO-1: the partials of every rank's shard, added on the device
  // (stream-ordered; the handle's wait makes the compute stream wait).
  if (sharded) shard_comm->all_reduce(partials_, ReduceOp::sum, "grad norm partials");
  global_norm_finish(norm_.data<float>(), scale, flag_.data<float>(), partials, static_cast<float>(max_norm_), s);
#else
  KILN_CHECK(false, "StepGuard: " << device_.str() << " in a build without CUDA");
#endif
}

}  // namespace kiln
