// MLP: Linear → activation (→ Dropout) for each hidden width, then a Linear
// to the outputs. The first Linear skips its input gradient (nothing upstream
// needs it), which saves a third of that layer's backward.
#pragma once

#include <memory>
#include <vector>

#include "nn/rng.h"
#include "nn/sequential.h"

namespace kiln::nn {

enum class ActivationKind { relu, gelu };

struct MlpOptions {
  int64_t in = 784;
  std::vector<int64_t> hidden = {256, 128};
  int64_t out = 10;
  ActivationKind activation = ActivationKind::relu;
  float dropout = 0.0f;
  uint64_t seed = 0;  ///< weight init stream
};

/// Parameter names: "layers.<i>.weight" / "layers.<i>.bias".
class Mlp : public Module {
 public:
  Mlp(const MlpOptions& o, std::shared_ptr<RngStream> rng);
  Tensor forward(const Tensor& x) override;   // (B, in) or (B, H, W, C) with H·W·C = in -> (B, out)
  Tensor backward(const Tensor& dy) override; // (B, out) -> undefined (input grad not needed)
  std::string describe() const override;
  /// 2 · Σ in·out per example forward; backward twice that minus the first
  /// layer's input gradient.
  double train_flops_per_example() const;

 private:
  MlpOptions o_;
  Sequential layers_;
};

}  // namespace kiln::nn
