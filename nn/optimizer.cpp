#include "nn/optimizer.h"

#include <algorithm>
#include <cmath>

#include "kernels/norm.h"
#include "kernels/optimizer.h"
#include "runtime/dispatch.h"

namespace kiln::nn {

namespace {

// Frozen parameters have no gradient and get no state: an optimizer handed
// a whole model's parameters() updates only the trainable ones.
std::vector<Parameter*> only_trainable(std::vector<Parameter*> params) {
  params.erase(std::remove_if(params.begin(), params.end(), [](const Parameter* p) { return !p->trainable; }),
               params.end());
  return params;
}

}  // namespace

Optimizer::Optimizer(std::vector<Parameter*> params, const OptimizerOptions& opt)
    : params_(only_trainable(std::move(params))), opt_(opt) {
  for (Parameter* p : params_) {
    const bool need_m = opt_.kind == OptimizerKind::adamw || opt_.momentum != 0.0;
    m_.push_back(need_m ? Tensor::zeros(p->value.shape(), p->value.dtype(), p->value.device(), p->name + ".m")
                        : Tensor());
    v_.push_back(opt_.kind == OptimizerKind::adamw
                     ? Tensor::zeros(p->value.shape(), p->value.dtype(), p->value.device(), p->name + ".v")
                     : Tensor());
  }
  steps_ = Tensor::zeros({1}, DType::i32, params_.empty() ? Device::cpu() : params_[0]->value.device(), "optimizer.steps");
}

int64_t Optimizer::steps() const { return steps_.to(Device::cpu()).data<int32_t>()[0]; }

namespace {

template <typename T>
std::vector<OptimizerTensorT<T>> descriptors(const std::vector<Parameter*>& params, const std::vector<Tensor>& m,
                                             const std::vector<Tensor>& v, const OptimizerOptions& opt) {
  std::vector<OptimizerTensorT<T>> d(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    Parameter* p = params[i];
    d[i].param = p->value.data<T>();
    d[i].grad = p->grad.data<T>();
    d[i].m = m[i].defined() ? m[i].data<T>() : nullptr;
    d[i].v = v[i].defined() ? v[i].data<T>() : nullptr;
    d[i].param_bf16 = p->lowp.defined() ? p->lowp.data<bf16>() : nullptr;
    d[i].n = p->value.numel();
    const bool decay = p->decay || !opt.no_decay_on_bias_and_norm;
    d[i].weight_decay = decay ? static_cast<float>(opt.weight_decay) : 0.0f;
  }
  return d;
}

}  // namespace

void Optimizer::step(double lr, float grad_scale) {
  StepInputs in;
  in.grad_scale = grad_scale;
  step(lr, in);
}

void Optimizer::step(double lr, const StepInputs& in) {
  if (params_.empty()) return;
  const Tensor& first = params_[0]->value;
  for (const Tensor* t : {&in.scale, &in.skip})
    KILN_CHECK(!t->defined() || (t->dtype() == DType::f32 && t->numel() == 1 && t->device() == first.device()),
               "optimizer: step input '" << t->name() << "' must be one f32 on " << first.device().str());
  const float* scale_ptr = in.scale.defined() ? in.scale.data<float>() : nullptr;
  const float* skip_ptr = in.skip.defined() ? in.skip.data<float>() : nullptr;
  AdamWConfig a;
  a.lr = static_cast<float>(lr);
  a.beta1 = static_cast<float>(opt_.beta1);
  a.beta2 = static_cast<float>(opt_.beta2);
  a.eps = static_cast<float>(opt_.eps);
  a.step_counter = steps_.data<int32_t>();
  a.grad_scale = in.grad_scale;
  a.grad_scale_ptr = scale_ptr;
  a.skip = skip_ptr;
  SgdConfig s;
  s.lr = static_cast<float>(lr);
  s.momentum = static_cast<float>(opt_.momentum);
  s.nesterov = opt_.nesterov;
  s.grad_scale = in.grad_scale;
  s.grad_scale_ptr = scale_ptr;
  s.skip = skip_ptr;
  s.step_counter = a.step_counter;
  const bool adamw = opt_.kind == OptimizerKind::adamw;
  dispatch(
      first,
      [&](auto tag) {
        using T = decltype(tag);
        auto d = descriptors<T>(params_, m_, v_, opt_);
        if (adamw) adamw_step_cpu<T>(d.data(), static_cast<int64_t>(d.size()), a);
        else sgd_step_cpu<T>(d.data(), static_cast<int64_t>(d.size()), s);
      },
      [&](auto tag, cudaStream_t stream) {
        using T = decltype(tag);
        if constexpr (std::is_same_v<T, float>) {
          auto d = descriptors<float>(params_, m_, v_, opt_);
          if (adamw) adamw_step(d.data(), static_cast<int64_t>(d.size()), a, stream);
          else sgd_step(d.data(), static_cast<int64_t>(d.size()), s, stream);
        } else {
          KILN_CHECK(false, "optimizer: master weights must be f32 on CUDA, '" << first.name() << "' is bf16");
        }
      });
}

std::vector<std::pair<std::string, Tensor>> Optimizer::state() const {
  std::vector<std::pair<std::string, Tensor>> out;
  const bool adamw = opt_.kind == OptimizerKind::adamw;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (m_[i].defined()) out.emplace_back(params_[i]->name + (adamw ? ".exp_avg" : ".momentum_buffer"), m_[i]);
    if (v_[i].defined()) out.emplace_back(params_[i]->name + ".exp_avg_sq", v_[i]);
  }
  return out;
}

void Optimizer::load_state(const std::map<std::string, Tensor>& state, int64_t steps) {
  for (auto& [name, t] : this->state()) {
    auto it = state.find(name);
    KILN_INPUT_CHECK(it != state.end(), "optimizer state: tensor '" << name << "' is missing");
    KILN_INPUT_CHECK(it->second.shape() == t.shape(), "optimizer state: tensor '" << name << "' has shape "
                                                           << it->second.shape().str() << ", expected "
                                                           << t.shape().str());
    Tensor dst = t;  // shares storage with m_/v_
    dst.copy_from(it->second.dtype() == t.dtype() ? it->second : it->second.cast(t.dtype()));
  }
  KILN_INPUT_CHECK(steps >= 0 && steps <= INT32_MAX, "optimizer state: step count " << steps << " out of range");
  steps_.fill_(static_cast<double>(steps));
}

float clip_scale(double norm, double max_norm) {
  if (max_norm <= 0.0 || !std::isfinite(norm)) return 1.0f;
  return static_cast<float>(std::min(1.0, max_norm / (norm + 1e-6)));
}

}  // namespace kiln::nn

namespace kiln::nn {

double grad_norm(const std::vector<Parameter*>& all) {
  const std::vector<Parameter*> params = only_trainable(all);
  if (params.empty()) return 0.0;
  const Tensor& first = params[0]->grad;
  double result = 0.0;
  dispatch(
      first,
      [&](auto tag) {
        using T = decltype(tag);
        std::vector<NormTensorT<T>> d;
        for (Parameter* p : params) d.push_back({p->grad.template data<T>(), p->grad.numel()});
        result = static_cast<double>(global_norm_cpu<T>(d.data(), static_cast<int64_t>(d.size())));
      },
      [&](auto tag, cudaStream_t stream) {
        std::vector<NormTensor> d;
        for (Parameter* p : params) d.push_back({p->grad.template data<float>(), p->grad.numel()});
        // (norm, partials...) in one scratch tensor
        Tensor scratch = Tensor::empty({1 + kNormPartials}, DType::f32, first.device(), "grad_norm.scratch");
        float* base = scratch.data<float>();
        global_norm(base, d.data(), static_cast<int64_t>(d.size()), base + 1, stream);
        result = static_cast<double>(scratch.view(0, {1}).to_vector()[0]);
      });
  return result;
}

}  // namespace kiln::nn
