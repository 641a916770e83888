#include "tests/nn/module_check.h"

#include <gtest/gtest.h>

#include "tests/harness/gradcheck.h"
#include "tests/harness/harness.h"

namespace kiln::test {

InputFactory random_input(const Shape& shape, uint64_t seed) {
  return [shape, seed](Device d, DType t) {
    Tensor x = Tensor::empty(shape, DType::f32, Device::cpu(), "x");
    x.uniform_(seed, 0, -1.0f, 1.0f);
    Tensor y = t == DType::f32 ? x : x.cast(t);
    y = d.is_cpu() ? y : y.to(d);
    y.set_name("x");
    return y;
  };
}

namespace {

// Σ y ⊙ w in double.
double weighted_sum(const Tensor& y, const std::vector<double>& w) {
  std::vector<double> v = y.to_vector_f64();
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += v[i] * w[i];
  return s;
}

Tensor from_f64(const std::vector<double>& v, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::f64, Device::cpu());
  std::copy(v.begin(), v.end(), t.data<double>());
  return t;
}

}  // namespace

::testing::AssertionResult check_module_gradients(const ModuleFactory& make, const InputFactory& input,
                                                  const std::string& what, bool check_input_grad) {
  std::unique_ptr<nn::Module> m = make();
  m->to(Device::cpu(), DType::f64, DType::f64);
  Tensor x = input(Device::cpu(), DType::f64);
  const bool float_input = x.dtype() == DType::f64;
  Tensor y = m->forward(x);
  const std::vector<double> w = random_uniform_f64(static_cast<size_t>(y.numel()), 0x77, -1.0, 1.0);
  m->zero_grad();
  Tensor dx = m->backward(from_f64(w, y.shape()));

  GradCheckOptions opt;
  opt.step = 1e-6;
  opt.rtol = 1e-5;
  opt.atol = 1e-8;
  if (check_input_grad && float_input) {
    const std::vector<double> x0 = x.to_vector_f64();
    auto loss = [&](const std::vector<double>& xv) { return weighted_sum(m->forward(from_f64(xv, x.shape())), w); };
    auto r = check_gradient(loss, x0, dx.to_vector_f64(), what + " d/dinput", opt);
    if (!r) return r;
  }
  for (nn::Parameter* p : m->parameters()) {
    const std::vector<double> analytic = p->grad.to_vector_f64();
    const std::vector<double> p0 = p->value.to_vector_f64();
    auto loss = [&](const std::vector<double>& pv) {
      std::copy(pv.begin(), pv.end(), p->value.data<double>());
      const double l = weighted_sum(m->forward(x), w);
      std::copy(p0.begin(), p0.end(), p->value.data<double>());
      return l;
    };
    auto r = check_gradient(loss, p0, analytic, what + " d/d" + p->name, opt);
    if (!r) return r;
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult compare_cpu_cuda(const ModuleFactory& make, const InputFactory& input, DType gpu_dtype,
                                            const std::string& what, bool check_input_grad) {
  std::unique_ptr<nn::Module> cpu = make();
  std::unique_ptr<nn::Module> gpu = make();
  cpu->to(Device::cpu(), DType::f32, DType::f32);
  gpu->to(Device::cuda(0), DType::f32, gpu_dtype);
  Tensor xc = input(Device::cpu(), DType::f32);
  Tensor xg = input(Device::cuda(0), gpu_dtype);
  Tensor yc = cpu->forward(xc);
  Tensor yg = gpu->forward(xg);
  const Tolerance tol = tolerance_for(gpu_dtype);
  auto r = all_close(yg.to_vector(), yc.to_vector(), tol, what + " forward");
  if (!r) return r;
  const std::vector<float> w = random_uniform(static_cast<size_t>(yc.numel()), 0x99);
  Tensor wc = Tensor::from_vector(w, yc.shape(), DType::f32, Device::cpu());
  Tensor wg = Tensor::from_vector(w, yc.shape(), gpu_dtype, Device::cuda(0));
  cpu->zero_grad();
  gpu->zero_grad();
  Tensor dxc = cpu->backward(wc);
  Tensor dxg = gpu->backward(wg);
  if (check_input_grad && dxc.defined()) {
    r = all_close(dxg.to_vector(), dxc.to_vector(), tol, what + " dinput");
    if (!r) return r;
  }
  auto pc = cpu->parameters();
  auto pg = gpu->parameters();
  for (size_t i = 0; i < pc.size(); ++i) {
    // Gradients reduce over rows: allow for the longer sums in bf16.
    Tolerance gt = tol;
    gt.atol *= 4;
    r = all_close(pg[i]->grad.to_vector(), pc[i]->grad.to_vector(), gt, what + " d/d" + pc[i]->name);
    if (!r) return r;
  }
  return ::testing::AssertionSuccess();
}

}  // namespace kiln::test
