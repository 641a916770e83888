// One model's parity case: what the driver (parity_driver.cpp) needs to build
// a tiny kiln model, feed it one batch and train it 10 steps, so that
// tests/parity/parity.py can redo the same in an independent PyTorch model
// (tests/parity/torch_<torch_model>.py) and compare.
//
// Adding a model = one more case_<model>.cpp here (registered with
// KILN_PARITY_CASE) and one more torch_<model>.py; see README.md.
#pragma once

#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nn/module.h"
#include "nn/optimizer.h"
#include "nn/schedule.h"

namespace kiln::parity {

/// One batch on the host. The driver moves `input` to the model's device and
/// casts a floating input to the compute dtype (int32 token ids stay int32).
struct Batch {
  Tensor input;                  ///< e.g. (B, in) f32 features or (B, T) int32 tokens
  std::vector<int32_t> targets;  ///< one per logits row; -100 = ignored
  int64_t classes = 0;           ///< the loss's V: real columns of the logits (0 = all)
};

/// A freshly built model (f32 master weights on the host, kiln's own init)
/// and the architecture the PyTorch side needs to build the same one.
struct Built {
  std::unique_ptr<nn::Module> model;
  nlohmann::json config;  ///< passed to torch_<model>.py as case.json's "model"
};

struct Case {
  std::string name;         ///< ctest entry parity_<name>; --case <name>
  std::string torch_model;  ///< tests/parity/torch_<torch_model>.py implements it
  std::function<Built()> build;
  std::function<Batch()> batch;
  /// Every parameter gets N(0, init_noise²) added to kiln's init, so biases
  /// and LayerNorm weights are not 0 / 1 (weight decay on a zero bias would
  /// be invisible) and the model is far enough from linear that a wrong
  /// nonlinearity shows.
  float init_noise = 0.1f;
  /// Called on each parameter's host values after the noise (e.g. keep the
  /// GPT's padded vocabulary rows at zero, as in every real model).
  std::function<void(const nn::Parameter&, std::vector<float>&)> fix_param;
  /// Called once the model is on its device, before the first forward (the
  /// SFT case hands the GPT its packing: segment ids and positions).
  std::function<void(nn::Module&, const Device&)> prepare;
  nn::OptimizerOptions optim;
  nn::ScheduleConfig schedule;  ///< total_steps = the steps trained
  double max_norm = 1.0;        ///< gradient clipping; pick one that triggers
  /// After training (f32 and f64 runs): extra files for the PyTorch side,
  /// named in `extra` (GPT: the Hugging Face export of the final weights).
  std::function<void(nn::Module&, DType master, const std::string& dir, nlohmann::json& extra)> after_training;
};

/// The trajectory every case trains: 10 AdamW steps (beta1 0.9, eps 1e-8), lr
/// 1e-2 with 3 warm-up steps, then cosine to 0.1x. A case picks its weight
/// decay, beta2 and whether biases and norm weights decay (and may change
/// more after the call).
inline void adamw_ten_steps(Case& c, double weight_decay, double beta2, bool no_decay_on_bias_and_norm = true) {
  c.optim.kind = nn::OptimizerKind::adamw;
  c.optim.weight_decay = weight_decay;
  c.optim.beta1 = 0.9;
  c.optim.beta2 = beta2;
  c.optim.eps = 1e-8;
  c.optim.no_decay_on_bias_and_norm = no_decay_on_bias_and_norm;
  c.schedule.type = nn::ScheduleType::cosine;
  c.schedule.lr = 1e-2;
  c.schedule.warmup_steps = 3;
  c.schedule.total_steps = 10;
  c.schedule.min_lr_ratio = 0.1;
}

/// Adds a case to the registry (called by KILN_PARITY_CASE at start-up).
bool register_case(Case c);
/// Every registered case, in name order.
std::vector<const Case*> cases();

}  // namespace kiln::parity

/// KILN_PARITY_CASE(make): registers the Case returned by `make()` at start-up.
#define KILN_PARITY_CASE_CAT2(a, b) a##b
#define KILN_PARITY_CASE_CAT(a, b) KILN_PARITY_CASE_CAT2(a, b)
#define KILN_PARITY_CASE(make) \
  static const bool KILN_PARITY_CASE_CAT(kiln_parity_registered_, __LINE__) = ::kiln::parity::register_case(make())
