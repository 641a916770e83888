// GPT token + learned position embedding (kernels/embedding.h):
//
//   out (B, T, C) = wte (Vp, C)[tokens (B, T)] + wpe (T_max, C)[pos0 + t]
//
// or, with position ids set (packed sequences, where each example's
// positions restart at 0), wpe[positions (B, T)] instead of wpe[pos0 + t]:
// two row lookups and an add (kernels/embedding.h's lookup pair), the same
// fp32 sum as the fused kernel.
//
// The token table has Vp = vocabulary padded up (GPT: to a multiple of 128)
// rows; ids must lie in [0, V). Rows [V, Vp) are never looked up; they exist
// so a tied LM head (logits = x · wteᵀ) produces Vp columns with tensor-core
// friendly sizes, and they start at zero. The table is a public Parameter so
// that head can read it and add its own gradient into wte.grad.
//
// Out-of-range ids are an InputError naming the id and its position, on the
// CPU and on the GPU (there the kernel records the first bad position in a
// status word, checked right after the launch: one host sync per forward,
// which a caller that validates ids on the host can turn off).
#pragma once

#include "nn/module.h"

namespace kiln::nn {

class Embedding : public Module {
 public:
  /// Tables drawn from N(0, std²) with Philox (seed, offset); padding rows
  /// zero. Parameter names "wte.weight" and "wpe.weight" (Hugging Face
  /// GPT-2's); both are weight-decayed 2-D matrices.
  Embedding(int64_t vocab, int64_t padded_vocab, int64_t max_positions, int64_t C, float std, uint64_t seed,
            uint64_t offset);

  /// tokens (B, T) int32 on the module's device -> (B, T, C) in the compute dtype.
  Tensor forward(const Tensor& tokens) override { return forward_at(tokens, 0); }
  /// Positions start at pos0 (decoding with a KV cache): pos0 + T <= max_positions.
  Tensor forward_at(const Tensor& tokens, int64_t pos0);
  /// dout (B, T, C) -> undefined (tokens have no gradient); dwte, dwpe += ...
  /// Only after a forward with pos0 = 0.
  Tensor backward(const Tensor& dout) override;
  std::string describe() const override;

  /// Position ids for the following forwards (and their backward): int32
  /// (B, T) on the module's device, matching the tokens' shape, each in
  /// [0, max_positions). Shared, not copied. An undefined tensor clears them
  /// (positions pos0 + t again). Not with pos0 > 0 (decoding).
  void set_positions(const Tensor& positions) { positions_ = positions; }
  const Tensor& positions() const { return positions_; }

  Parameter& wte() { return *wte_; }
  Parameter& wpe() { return *wpe_; }
  /// GPU: check the status word after each forward (default on). Callers
  /// that check the ids on the host first can skip the sync; bad ids then
  /// give zero rows silently.
  void set_device_id_check(bool on) { device_check_ = on; }
  int64_t vocab() const { return V_; }
  int64_t padded_vocab() const { return Vp_; }
  /// Philox counter offset after the init draws (for the next consumer).
  uint64_t next_offset() const { return next_offset_; }

 private:
  void forward_positions(const Tensor& tokens, const Tensor& wte, const Tensor& wpe, Tensor& out);
  void backward_positions(const Tensor& dout);

  int64_t V_, Vp_, Tmax_, C_;
  Parameter* wte_ = nullptr;
  Parameter* wpe_ = nullptr;
  uint64_t next_offset_ = 0;
  Tensor tokens_;  // (B, T) saved for backward
  Tensor positions_;        // (B, T) int32 position ids, or undefined (pos0 + t)
  Tensor positions_saved_;  // the ids forward used, for backward
  int64_t pos0_ = 0;
  Tensor status_;  // GPU: int32 status word of the id range check
  bool device_check_ = true;
  Tensor scratch_grad_;  // the gradient of a frozen table when the other trains
};

}  // namespace kiln::nn
