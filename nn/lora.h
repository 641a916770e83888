// LoRA (Hu et al. 2021): a low-rank adapter beside a frozen Linear,
//
//   y = W x + b + s · B (A dropout(x)),   s = alpha / r
//   A (r, in)  Kaiming-uniform with a = √5 as PEFT does, i.e. U(±1/√in)
//   B (out, r) zero, so a fresh adapter changes nothing
//
// The adapter is a child of the Linear it adapts (Linear::attach_adapter),
// registered without a name part, so its parameters are
// "<linear>.lora_A.weight" and "<linear>.lora_B.weight" — the names PEFT
// gives them under its "base_model.model.transformer." prefix for GPT-2.
//
// Cost: two thin GEMMs forward (u = x·Aᵀ, then y += s·u·Bᵀ fused into y by
// beta = 1) and four backward; B·A (out × in) is never materialized, which
// at r = 8 and in = out = 768 is 2·r·(in + out) = 25K multiply-adds per row
// instead of in·out = 590K. The base weight gets no gradient: a frozen
// Linear computes only dx (through W), and the adapter adds its share of dx.
//
// Precision: A and B are fp32 master weights with bf16 copies under bf16
// compute, like every other parameter; dA and dB accumulate in fp32.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "nn/activation.h"
#include "nn/linear.h"
#include "nn/module.h"
#include "nn/rng.h"

namespace kiln::nn {

struct LoraOptions {
  int64_t rank = 8;
  float alpha = 16.0f;   ///< scale s = alpha / rank
  float dropout = 0.0f;  ///< on the adapter's input only (the base sees x)
};

/// The adapter of one Linear (in -> out). Used through the Linear it is
/// attached to; forward/backward alone compute the adapter's term only.
class LoraAdapter : public Module {
 public:
  /// A drawn from U(±1/√in) with Philox (seed, offset) — `next_offset`
  /// receives the first unused counter; B zero. Parameters on the CPU in
  /// fp32; the caller moves them (Module::to).
  LoraAdapter(int64_t in, int64_t out, const LoraOptions& o, std::shared_ptr<RngStream> rng, uint64_t seed,
              uint64_t offset, uint64_t* next_offset = nullptr);

  /// x (..., in) -> s · B (A dropout(x)) (..., out).
  Tensor forward(const Tensor& x) override;
  /// dy (..., out) -> the adapter's dx (..., in); dA, dB accumulated.
  Tensor backward(const Tensor& dy) override;
  std::string describe() const override;

  /// y (rows, out) += s · B (A dropout(x)), x (rows, in); both in the compute
  /// dtype. Keeps dropout(x) and u = A dropout(x) for backward.
  void forward_into(const Tensor& x, Tensor& y);
  /// dy (rows, out): dB += s·dyᵀ·u, dA += (s·dy·B)ᵀ·dropout(x); when `dx`
  /// (rows, in) is defined, dx += dropout'(s·dy·B·A).
  void backward_into(const Tensor& dy, Tensor* dx);

  /// W (out, in) += s · B·A on the master weights (then its bf16 copy); the
  /// Linear's forward then skips the adapter. Error if merged already.
  void merge(Parameter& weight);
  /// W -= s · B·A (restores W up to rounding). Error if not merged.
  void unmerge(Parameter& weight);
  bool merged() const { return merged_; }

  Parameter& lora_A() { return *a_; }
  Parameter& lora_B() { return *b_; }
  int64_t rank() const { return r_; }
  float scale() const { return scale_; }
  const LoraOptions& options() const { return o_; }

 private:
  int64_t in_, out_, r_;
  LoraOptions o_;
  float scale_;
  bool merged_ = false;
  bool masked_ = false;  // the last forward drew a dropout mask
  Parameter* a_ = nullptr;  // (r, in)
  Parameter* b_ = nullptr;  // (out, r)
  Dropout drop_;
  Tensor xd_;  // (rows, in)  dropout(x) of the last forward
  Tensor u_;   // (rows, r)   A·dropout(x)
};

/// Every Linear of a module tree with its full dotted name
/// ("h.0.attn.c_attn"), in registration order.
std::vector<std::pair<std::string, Linear*>> named_linears(Module& root);

/// Whether a Linear named `name` matches a target pattern: "all-linear"
/// matches every Linear; otherwise the pattern's dot-separated parts must
/// match the name's last parts, each by shell glob (fnmatch), so
/// "attn.c_attn" matches "h.3.attn.c_attn", "mlp.*" every MLP projection,
/// "c_proj" both attn.c_proj and mlp.c_proj.
bool lora_target_matches(const std::string& pattern, const std::string& name);

/// What attach_lora did.
struct LoraAttachment {
  std::vector<std::string> adapted;  ///< names of the Linears that got adapters
  int64_t adapter_parameters = 0;    ///< Σ r·(in + out)
};

/// Freezes every parameter of `model` (its base) and attaches a fresh
/// adapter to each Linear that some pattern matches. Adapters are placed on
/// the model's device and dtypes (so this may run before or after
/// Module::to); A draws from Philox (seed, running offset) in the order of
/// named_linears. InputError naming `what` and the pattern when a pattern
/// matches no Linear (listing the Linears there are), or when a Linear
/// already has an adapter.
LoraAttachment attach_lora(Module& model, const std::vector<std::string>& patterns, const LoraOptions& o,
                           std::shared_ptr<RngStream> rng, uint64_t seed, const std::string& what = "lora.targets");

/// Every attached adapter with the name of its Linear.
std::vector<std::pair<std::string, LoraAdapter*>> named_adapters(Module& model);

/// Folds every adapter into its Linear's weight (W += s·B·A); merged adapters
/// are skipped by forward until unmerged. Error if one is merged already.
void merge_lora(Module& model);
/// Undoes merge_lora (W -= s·B·A). Error if an adapter is not merged.
void unmerge_lora(Module& model);

/// True for an adapter parameter's name ("….lora_A.weight" / "….lora_B.weight").
bool is_lora_parameter(const std::string& name);

}  // namespace kiln::nn
