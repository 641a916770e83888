#include "nn/embedding.h"

#include <sstream>

#include "kernels/embedding.h"
#include "runtime/dispatch.h"

namespace kiln::nn {

Embedding::Embedding(int64_t vocab, int64_t padded_vocab, int64_t max_positions, int64_t C, float std,
                     uint64_t seed, uint64_t offset)
    : V_(vocab), Vp_(padded_vocab), Tmax_(max_positions), C_(C) {
  KILN_CHECK(vocab > 0 && padded_vocab >= vocab && max_positions > 0 && C > 0,
             "Embedding: bad sizes (vocab " << vocab << ", padded " << padded_vocab << ", positions "
                                            << max_positions << ", width " << C << ")");
  // Only the V real rows are drawn, so the stream (and the model) does not
  // depend on the padding.
  Tensor wte = Tensor::zeros({Vp_, C_}, DType::f32, Device::cpu());
  offset = wte.view(0, {V_, C_}).normal_(seed, offset, 0.0f, std);
  Tensor wpe = Tensor::empty({Tmax_, C_}, DType::f32, Device::cpu());
  next_offset_ = wpe.normal_(seed, offset, 0.0f, std);
  wte_ = &register_parameter("wte.weight", wte, /*decay=*/true);
  wpe_ = &register_parameter("wpe.weight", wpe, /*decay=*/true);
}

std::string Embedding::describe() const {
  std::ostringstream os;
  os << "Embedding(vocab " << V_;
  if (Vp_ != V_) os << " padded to " << Vp_;
  os << ", positions " << Tmax_ << ", width " << C_ << ")";
  return os.str();
}

Tensor Embedding::forward_at(const Tensor& tokens, int64_t pos0) {
  KILN_CHECK(tokens.ndim() == 2 && tokens.dtype() == DType::i32,
             describe() << ": tokens '" << tokens.name() << "' must be (B, T) int32, got " << tokens.shape().str()
                        << " " << dtype_name(tokens.dtype()));
  const int64_t B = tokens.size(0), T = tokens.size(1);
  KILN_INPUT_CHECK(pos0 >= 0 && pos0 + T <= Tmax_, describe() << ": positions " << pos0 << ".." << pos0 + T - 1
                                                              << " exceed the context length " << Tmax_);
  KILN_CHECK(tokens.device() == device(), describe() << ": tokens on " << tokens.device().str()
                                                     << " but the tables on " << device().str());
  const DType compute = compute_dtype();
  const Tensor& wte = wte_->in(compute);
  const Tensor& wpe = wpe_->in(compute);
  Tensor out = Tensor::empty({B, T, C_}, wte.dtype(), tokens.device(), "embedding.out");
  tokens_ = tokens;
  pos0_ = pos0;
  dispatch(
      out,
      [&](auto tag) {
        using F = decltype(tag);
        embedding_forward_cpu<F>(out.data<F>(), tokens.data<int32_t>(), wte.data<F>(), wpe.data<F>() + pos0 * C_, B,
                                 T, C_, V_);
      },
      [&](auto tag, cudaStream_t s) {
        using F = decltype(tag);
        if (!device_check_) {
          embedding_forward(out.data<F>(), tokens.data<int32_t>(), wte.data<F>(), wpe.data<F>() + pos0 * C_, B, T,
                            C_, V_, nullptr, s);
          return;
        }
        if (!status_.defined() || status_.device() != tokens.device())
          status_ = Tensor::empty({1}, DType::i32, tokens.device(), "embedding.status");
        embedding_status_reset(status_.data<int32_t>(), s);
        embedding_forward(out.data<F>(), tokens.data<int32_t>(), wte.data<F>(), wpe.data<F>() + pos0 * C_, B, T, C_,
                          V_, status_.data<int32_t>(), s);
        // One host sync per forward: bad ids are an error, not silent zeros.
        embedding_check_status(status_.data<int32_t>(), tokens.data<int32_t>(), V_, s, "embedding (token ids)");
      });
  return out;
}

Tensor Embedding::backward(const Tensor& dout) {
  KILN_CHECK(tokens_.defined(), describe() << ": backward before forward");
  KILN_CHECK(pos0_ == 0, describe() << ": backward after a forward at position " << pos0_ << " (decoding only)");
  const int64_t B = tokens_.size(0), T = tokens_.size(1);
  KILN_CHECK(dout.numel() == B * T * C_, describe() << ": gradient '" << dout.name() << "' has shape "
                                                    << dout.shape().str() << ", expected (" << B << ", " << T << ", "
                                                    << C_ << ")");
  if (!wte_->trainable && !wpe_->trainable) return Tensor();  // frozen tables: nothing to compute
  // The kernel writes both tables' gradients; a frozen one's go to scratch.
  auto grad_or_scratch = [&](Parameter& p) {
    if (p.trainable) return p.grad;
    if (!scratch_grad_.defined() || scratch_grad_.numel() < p.value.numel() || scratch_grad_.device() != p.value.device())
      scratch_grad_ = Tensor::zeros({p.value.numel()}, p.value.dtype(), p.value.device(), "embedding.frozen_grad");
    return scratch_grad_.view(0, p.value.shape());
  };
  Tensor dwte = grad_or_scratch(*wte_);
  Tensor dwpe = grad_or_scratch(*wpe_);
  dispatch(
      dout,
      [&](auto tag) {
        using F = decltype(tag);
        embedding_backward_cpu<F>(dwte.data<F>(), dwpe.data<F>(), dout.data<F>(), tokens_.data<int32_t>(), B, T, C_,
                                  V_);
      },
      [&](auto tag, cudaStream_t s) {
        using F = decltype(tag);
        const size_t bytes = embedding_backward_workspace_bytes(B * T, V_);
        Tensor ws = Tensor::empty({static_cast<int64_t>(bytes)}, DType::u8, dout.device(), "embedding.workspace");
        embedding_backward(dwte.data<float>(), dwpe.data<float>(), dout.data<F>(), tokens_.data<int32_t>(), B, T, C_,
                           V_, ws.raw(), bytes, nullptr, s);
      });
  // wte and wpe are final: a tied LM head adds its share into wte.grad before
  // this backward runs (the GPT's backward goes head first).
  grads_ready();
  return Tensor();
}

}  // namespace kiln::nn
