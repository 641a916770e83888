// Parity cases for the MLP (nn/mlp.h): relu and gelu, dropout 0 (a dropout
// mask is kiln's own Philox stream; PyTorch cannot redraw it).
//
//   mlp_relu  13-24-17-7, relu; AdamW decays weights only (no_decay_on_bias_and_norm);
//             eps 1e-6, large enough that its placement shows in the final weights
//   mlp_gelu  the same with GELU (tanh form, nn/activation.h) and weight decay on
//             every tensor (no_decay_on_bias_and_norm = false)
#include "nn/mlp.h"
#include "tests/parity/parity_case.h"

namespace kiln::parity {
namespace {

// 8 rows: the loss's 1/rows is exact in float, which kiln's cross-entropy
// scale is even in f64 (so the f64 run is not limited to float precision).
constexpr int64_t kBatch = 8;

Case mlp_case(const std::string& name, nn::ActivationKind act, bool no_decay_on_bias) {
  Case c;
  c.name = name;
  c.torch_model = "mlp";
  nn::MlpOptions o;
  o.in = 13;
  o.hidden = {24, 17};
  o.out = 7;
  o.activation = act;
  o.dropout = 0.0f;
  o.seed = 5;
  c.build = [o] {
    Built b;
    b.model = std::make_unique<nn::Mlp>(o, std::make_shared<nn::RngStream>());
    b.config = {{"in", o.in},
                {"hidden", o.hidden},
                {"out", o.out},
                {"activation", o.activation == nn::ActivationKind::relu ? "relu" : "gelu_tanh"}};
    return b;
  };
  c.batch = [o] {
    Batch b;
    b.input = Tensor::empty({kBatch, o.in}, DType::f32, Device::cpu(), "input");  // (B, in)
    b.input.uniform_(/*seed=*/77, 0, -2.0f, 2.0f);
    Tensor u = Tensor::empty({kBatch}, DType::f32, Device::cpu());
    u.uniform_(/*seed=*/78, 0, 0.0f, 1.0f);
    for (float v : u.to_vector()) b.targets.push_back(std::min<int32_t>(static_cast<int32_t>(v * o.out), o.out - 1));
    b.classes = o.out;
    return b;
  };
  c.init_noise = 0.1f;
  adamw_ten_steps(c, 0.1, 0.95, no_decay_on_bias);
  c.optim.eps = act == nn::ActivationKind::relu ? 1e-6 : 1e-8;
  // Gradient norms run 0.72..0.81 (relu) and 0.61..0.77 (gelu) over the 10
  // steps: these clip some steps and not others.
  c.max_norm = act == nn::ActivationKind::relu ? 0.765 : 0.68;
  return c;
}

KILN_PARITY_CASE([] { return mlp_case("mlp_relu", nn::ActivationKind::relu, true); });
KILN_PARITY_CASE([] { return mlp_case("mlp_gelu", nn::ActivationKind::gelu, false); });

}  // namespace
}  // namespace kiln::parity
