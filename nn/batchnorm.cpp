#include "nn/batchnorm.h"

#include <sstream>
#include <utility>

#include "kernels/activation.h"
#include "kernels/batchnorm.h"
#include "runtime/dispatch.h"

namespace kiln::nn {

BatchNorm2d::BatchNorm2d(const BatchNormOptions& o) : o_(o) {
  KILN_CHECK(o.channels > 0, "BatchNorm2d: channels = " << o.channels << " must be positive");
  KILN_CHECK(o.eps > 0.0f, "BatchNorm2d: eps = " << o.eps << " must be positive");
  KILN_CHECK(o.momentum >= 0.0f && o.momentum <= 1.0f, "BatchNorm2d: momentum = " << o.momentum << " must be in [0, 1]");
  const Shape c{o.channels};
  weight_ = &register_parameter("weight", Tensor::full(c, 1.0, DType::f32, Device::cpu()), /*decay=*/false);
  bias_ = &register_parameter("bias", Tensor::zeros(c, DType::f32, Device::cpu()), /*decay=*/false);
  running_mean_ = &register_buffer("running_mean", Tensor::zeros(c, DType::f32, Device::cpu()));
  running_var_ = &register_buffer("running_var", Tensor::full(c, 1.0, DType::f32, Device::cpu()));
  on_device_change();
}

std::string BatchNorm2d::describe() const {
  std::ostringstream os;
  os << "BatchNorm2d(" << o_.channels << ", eps " << o_.eps << ", momentum " << o_.momentum << ")";
  return os.str();
}

void BatchNorm2d::on_device_change() {
  // Statistics live in the master dtype: f32, or f64 in the gradient checks
  // (the CPU reference then runs in double throughout).
  const DType master = weight_->value.dtype();
  const Device dev = weight_->value.device();
  for (Buffer* b : {running_mean_, running_var_}) {
    if (b->value.dtype() != master) {
      const std::string name = b->value.name();
      b->value = b->value.cast(master);
      b->value.set_name(name);
    }
  }
  mean_sum_ = Tensor::zeros({o_.channels}, master, dev, "batchnorm.mean_sum");
  var_sum_ = Tensor::zeros({o_.channels}, master, dev, "batchnorm.var_sum");
  pending_ = 0;
}

Tensor BatchNorm2d::forward(const Tensor& x) {
  const int64_t C = o_.channels;
  KILN_CHECK(x.ndim() >= 1 && x.size(-1) == C,
             describe() << ": input '" << x.name() << "' has shape " << x.shape().str() << ", expected (..., " << C << ")");
  const int64_t rows = x.numel() / C;
  const DType sd = weight_->value.dtype();  // statistics dtype
  const Device dev = x.device();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), dev, "batchnorm.out");
  const Tensor& w = weight_->value;
  const Tensor& b = bias_->value;
  const Tensor& rm = running_mean_->value;
  const Tensor& rv = running_var_->value;
  if (!training()) {
    x_ = Tensor();
    dispatch(
        x, [&](auto tag) { using T = decltype(tag);
          batchnorm_forward_eval_cpu<T>(y.data<T>(), x.data<T>(), rm.data<T>(), rv.data<T>(), w.data<T>(),
                                        b.data<T>(), rows, C, o_.eps); },
        [&](auto tag, cudaStream_t s) { using T = decltype(tag);
          batchnorm_forward_eval(y.data<T>(), x.data<T>(), rm.data<float>(), rv.data<float>(), w.data<float>(),
                                 b.data<float>(), rows, C, o_.eps, s); });
    return y;
  }
  KILN_CHECK(rows > 1, describe() << ": training needs more than one value per channel, got input "
                                  << x.shape().str());
  x_ = x;
  mean_ = Tensor::empty({C}, sd, dev, "batchnorm.mean");
  rstd_ = Tensor::empty({C}, sd, dev, "batchnorm.rstd");
  Tensor var = Tensor::empty({C}, sd, dev, "batchnorm.var_unbiased");
  dispatch(
      x, [&](auto tag) { using T = decltype(tag);
        batchnorm_forward_train_cpu<T>(y.data<T>(), mean_.data<T>(), rstd_.data<T>(), var.data<T>(), x.data<T>(),
                                       w.data<T>(), b.data<T>(), rows, C, o_.eps); },
      [&](auto tag, cudaStream_t s) { using T = decltype(tag);
        Tensor scratch = Tensor::empty({batchnorm_scratch_floats(rows, C)}, DType::f32, dev, "batchnorm.scratch");
        batchnorm_forward_train(y.data<T>(), mean_.data<float>(), rstd_.data<float>(), var.data<float>(),
                                scratch.data<float>(), x.data<T>(), w.data<float>(), b.data<float>(), rows, C,
                                o_.eps, s); });
  // Running statistics: now (PyTorch's rule) or summed for the step's one update.
  dispatch(
      mean_, [&](auto tag) { using T = decltype(tag);
        if (deferred_) {
          residual_add_cpu<T>(mean_sum_.data<T>(), mean_sum_.data<T>(), mean_.data<T>(), C);
          residual_add_cpu<T>(var_sum_.data<T>(), var_sum_.data<T>(), var.data<T>(), C);
        } else {
          batchnorm_update_running_cpu<T>(rm.data<T>(), rv.data<T>(), mean_.data<T>(), var.data<T>(), C,
                                          o_.momentum, 1.0f);
        } },
      [&](auto tag, cudaStream_t s) {
        if (deferred_) {
          residual_add(mean_sum_.data<float>(), mean_sum_.data<float>(), mean_.data<float>(), C, s);
          residual_add(var_sum_.data<float>(), var_sum_.data<float>(), var.data<float>(), C, s);
        } else {
          batchnorm_update_running(rm.data<float>(), rv.data<float>(), mean_.data<float>(), var.data<float>(), C,
                                   o_.momentum, 1.0f, s);
        } });
  if (deferred_) ++pending_;
  return y;
}

Tensor BatchNorm2d::backward(const Tensor& dy) {
  KILN_CHECK(x_.defined(), describe() << ": backward needs a training-mode forward first");
  check_same(dy, x_, "BatchNorm2d.backward");
  const int64_t C = o_.channels, rows = x_.numel() / C;
  const Device dev = dy.device();
  const DType sd = weight_->value.dtype();
  // The kernel adds its sums to dw/db; they start at zero here and are
  // added to the gradients afterwards (one rounding per micro-batch: grad +
  // fresh, the sum an all-reduce over ranks makes, so grad_accum 2 in one
  // process equals two processes bit for bit). Frozen parameters have no
  // gradient: their sums stay in the scratch.
  Tensor dw = Tensor::zeros({C}, sd, dev, "batchnorm.dw_micro");
  Tensor db = Tensor::zeros({C}, sd, dev, "batchnorm.db_micro");
  Tensor dx = Tensor::empty(x_.shape(), dy.dtype(), dev, "batchnorm.dx");
  const Tensor& w = weight_->value;
  dispatch(
      dy, [&](auto tag) { using T = decltype(tag);
        batchnorm_backward_cpu<T>(dx.data<T>(), dw.data<T>(), db.data<T>(), dy.data<T>(), x_.data<T>(), w.data<T>(),
                                  mean_.data<T>(), rstd_.data<T>(), rows, C); },
      [&](auto tag, cudaStream_t s) { using T = decltype(tag);
        Tensor scratch = Tensor::empty({batchnorm_scratch_floats(rows, C)}, DType::f32, dev, "batchnorm.scratch");
        batchnorm_backward(dx.data<T>(), dw.data<float>(), db.data<float>(), scratch.data<float>(), dy.data<T>(),
                           x_.data<T>(), w.data<float>(), mean_.data<float>(), rstd_.data<float>(), rows, C, s); });
  for (const auto& pf : {std::pair<Parameter*, Tensor*>{weight_, &dw}, {bias_, &db}}) {
    Parameter* p = pf.first;
    Tensor* fresh = pf.second;  // a plain variable: C++17 lambdas cannot capture structured bindings (clang)
    if (!p->grad.defined()) continue;
    Tensor& g = p->grad;
    dispatch(
        g, [&](auto tag) { using T = decltype(tag);
          residual_add_cpu<T>(g.data<T>(), g.data<T>(), fresh->data<T>(), C); },
        [&](auto tag, cudaStream_t s) { using T = decltype(tag);
          residual_add(g.data<T>(), g.data<T>(), fresh->data<T>(), C, s); });
  }
  grads_ready();
  return dx;
}

void BatchNorm2d::apply_running_update(const std::function<void(Tensor&)>& sum_over_ranks, int ranks) {
  if (pending_ == 0) return;
  KILN_CHECK(ranks >= 1, describe() << ": apply_running_update with ranks = " << ranks);
  if (sum_over_ranks) {
    sum_over_ranks(mean_sum_);
    sum_over_ranks(var_sum_);
  }
  const float scale = 1.0f / static_cast<float>(pending_ * ranks);
  const int64_t C = o_.channels;
  Tensor& rm = running_mean_->value;
  Tensor& rv = running_var_->value;
  dispatch(
      rm, [&](auto tag) { using T = decltype(tag);
        batchnorm_update_running_cpu<T>(rm.data<T>(), rv.data<T>(), mean_sum_.data<T>(), var_sum_.data<T>(), C,
                                        o_.momentum, scale); },
      [&](auto tag, cudaStream_t s) {
        batchnorm_update_running(rm.data<float>(), rv.data<float>(), mean_sum_.data<float>(), var_sum_.data<float>(),
                                 C, o_.momentum, scale, s); });
  mean_sum_.zero_();
  var_sum_.zero_();
  pending_ = 0;
}

namespace {
void collect_bn(Module& m, std::vector<BatchNorm2d*>& out) {
  if (auto* bn = dynamic_cast<BatchNorm2d*>(&m)) out.push_back(bn);
  for (const auto& c : m.children()) collect_bn(*c.second, out);
}
}  // namespace

std::vector<BatchNorm2d*> batchnorm_layers(Module& m) {
  std::vector<BatchNorm2d*> out;
  collect_bn(m, out);
  return out;
}

void set_batchnorm_deferred(Module& m, bool on) {
  for (BatchNorm2d* bn : batchnorm_layers(m)) bn->set_deferred_running_update(on);
}

void update_batchnorm_running_stats(Module& m, const std::function<void(Tensor&)>& sum_over_ranks, int ranks) {
  std::vector<BatchNorm2d*> layers;
  int64_t total = 0;
  for (BatchNorm2d* bn : batchnorm_layers(m))
    if (bn->pending() > 0) {
      layers.push_back(bn);
      total += 2 * bn->options().channels;
    }
  if (layers.empty()) return;
  if (sum_over_ranks) {
    // One collective for the whole model: (Σ means, Σ variances) of every layer back to back.
    const Tensor& first = layers[0]->pending_mean_sum();
    Tensor flat = Tensor::empty({total}, first.dtype(), first.device(), "batchnorm.step_statistics");
    int64_t off = 0;
    for (BatchNorm2d* bn : layers)
      for (Tensor* t : {&bn->pending_mean_sum(), &bn->pending_var_sum()}) {
        flat.view(off, t->shape()).copy_from(*t);
        off += t->numel();
      }
    sum_over_ranks(flat);
    off = 0;
    for (BatchNorm2d* bn : layers)
      for (Tensor* t : {&bn->pending_mean_sum(), &bn->pending_var_sum()}) {
        t->copy_from(flat.view(off, t->shape()));
        off += t->numel();
      }
  }
  for (BatchNorm2d* bn : layers) bn->apply_running_update(nullptr, ranks);
}

}  // namespace kiln::nn
