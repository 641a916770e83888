#include "nn/mlp.h"

#include <sstream>

#include "nn/activation.h"
#include "nn/linear.h"

namespace kiln::nn {

Mlp::Mlp(const MlpOptions& o, std::shared_ptr<RngStream> rng) : o_(o) {
  int64_t width = o.in;
  // Each layer's init draws from its own counter range of the seed's stream.
  uint64_t offset = 0;
  std::vector<int64_t> dims = o.hidden;
  dims.push_back(o.out);
  for (size_t i = 0; i < dims.size(); ++i) {
    auto lin = std::make_unique<Linear>(width, dims[i], true, o.seed, offset);
    offset += static_cast<uint64_t>(width * dims[i] + dims[i]);
    if (i == 0) lin->set_needs_input_grad(false);
    layers_.add(std::move(lin));
    width = dims[i];
    if (i + 1 == dims.size()) break;
    if (o.activation == ActivationKind::relu) layers_.add(std::make_unique<ReLU>());
    else layers_.add(std::make_unique<GELU>());
    if (o.dropout > 0.0f) layers_.add(std::make_unique<Dropout>(o.dropout, rng));
  }
  register_module("layers", &layers_);
}

// Images arrive as (B, H, W, C) (NHWC, as a CNN reads them): the MLP sees
// each as one row of H·W·C values.
Tensor Mlp::forward(const Tensor& x) {
  if (x.ndim() <= 2 || x.size(0) == 0) return layers_.forward(x);
  return layers_.forward(x.reshape({x.size(0), x.numel() / x.size(0)}));  // (B, H·W·C)
}
Tensor Mlp::backward(const Tensor& dy) { return layers_.backward(dy); }

std::string Mlp::describe() const {
  std::ostringstream os;
  os << "MLP(" << o_.in;
  for (int64_t h : o_.hidden) os << "-" << h;
  os << "-" << o_.out << ")";
  return os.str();
}

double Mlp::train_flops_per_example() const {
  double fwd = 0, first = 0;
  int64_t width = o_.in;
  std::vector<int64_t> dims = o_.hidden;
  dims.push_back(o_.out);
  for (size_t i = 0; i < dims.size(); ++i) {
    const double f = 2.0 * static_cast<double>(width * dims[i]);
    if (i == 0) first = f;
    fwd += f;
    width = dims[i];
  }
  return 3.0 * fwd - first;
}

}  // namespace kiln::nn
