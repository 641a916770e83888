#include "nn/embedding.h"

#include <sstream>

#include "kernels/activation.h"
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
  positions_saved_ = positions_;
  if (positions_.defined()) {
    forward_positions(tokens, wte, wpe, out);
    return out;
  }
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

// out = wte[tokens] + wpe[positions], as two lookups and an add.
void Embedding::forward_positions(const Tensor& tokens, const Tensor& wte, const Tensor& wpe, Tensor& out) {
  const Tensor& pos = positions_;
  KILN_CHECK(pos.dtype() == DType::i32 && pos.shape() == tokens.shape() && pos.device() == tokens.device(),
             describe() << ": position ids '" << pos.name() << "' must be int32 " << tokens.shape().str() << " on "
                        << tokens.device().str() << ", got " << dtype_name(pos.dtype()) << " " << pos.shape().str()
                        << " on " << pos.device().str());
  KILN_CHECK(pos0_ == 0, describe() << ": position ids with a forward at position " << pos0_);
  const int64_t n = tokens.numel();
  Tensor tok_rows = Tensor::empty(out.shape(), out.dtype(), out.device(), "embedding.tokens");  // (B, T, C)
  Tensor pos_rows = Tensor::empty(out.shape(), out.dtype(), out.device(), "embedding.positions");
  dispatch(
      out,
      [&](auto tag) {
        using F = decltype(tag);
        embedding_lookup_forward_cpu<F>(tok_rows.data<F>(), tokens.data<int32_t>(), wte.data<F>(), n, C_, V_);
        embedding_lookup_forward_cpu<F>(pos_rows.data<F>(), pos.data<int32_t>(), wpe.data<F>(), n, C_, Tmax_);
        residual_add_cpu<F>(out.data<F>(), tok_rows.data<F>(), pos_rows.data<F>(), n * C_);
      },
      [&](auto tag, cudaStream_t s) {
        using F = decltype(tag);
        int32_t* status = nullptr;
        if (device_check_) {
          if (!status_.defined() || status_.device() != tokens.device())
            status_ = Tensor::empty({1}, DType::i32, tokens.device(), "embedding.status");
          status = status_.data<int32_t>();
          embedding_status_reset(status, s);
        }
        embedding_lookup_forward(tok_rows.data<F>(), tokens.data<int32_t>(), wte.data<F>(), n, C_, V_, status, s);
        if (status) embedding_check_status(status, tokens.data<int32_t>(), V_, s, "embedding (token ids)");
        // Position ids come from the loader, checked on the host.
        embedding_lookup_forward(pos_rows.data<F>(), pos.data<int32_t>(), wpe.data<F>(), n, C_, Tmax_, nullptr, s);
        residual_add(out.data<F>(), tok_rows.data<F>(), pos_rows.data<F>(), n * C_, s);
      });
}

// dwte += rows of dout by token, dwpe += rows of dout by position id.
void Embedding::backward_positions(const Tensor& dout) {
  const Tensor& pos = positions_saved_;
  const int64_t n = tokens_.numel();
  for (Parameter* p : {wte_, wpe_}) {
    if (!p->trainable) continue;
    const Tensor& ids = p == wte_ ? tokens_ : pos;
    const int64_t rows = p == wte_ ? V_ : Tmax_;
    dispatch(
        dout,
        [&](auto tag) {
          using F = decltype(tag);
          embedding_lookup_backward_cpu<F>(p->grad.data<F>(), dout.data<F>(), ids.data<int32_t>(), n, C_, rows);
        },
        [&](auto tag, cudaStream_t s) {
          using F = decltype(tag);
          const size_t bytes = embedding_backward_workspace_bytes(n, rows);
          Tensor ws = Tensor::empty({static_cast<int64_t>(bytes)}, DType::u8, dout.device(), "embedding.workspace");
          embedding_lookup_backward(p->grad.data<float>(), dout.data<F>(), ids.data<int32_t>(), n, C_, rows, ws.raw(),
                                    bytes, nullptr, s);
        });
  }
}

Tensor Embedding::backward(const Tensor& dout) {
  KILN_CHECK(tokens_.defined(), describe() << ": backward before forward");
  KILN_CHECK(pos0_ == 0, describe() << ": backward after a forward at position " << pos0_ << " (decoding only)");
  const int64_t B = tokens_.size(0), T = tokens_.size(1);
  KILN_CHECK(dout.numel() == B * T * C_, describe() << ": gradient '" << dout.name() << "' has shape "
                                                    << dout.shape().str() << ", expected (" << B << ", " << T << ", "
                                                    << C_ << ")");
  if (!wte_->trainable && !wpe_->trainable) return Tensor();  // frozen tables: nothing to compute
  if (positions_saved_.defined()) {
    backward_positions(dout);
    grads_ready();
    return Tensor();
  }
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
