#include "nn/gpt.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <tuple>

#include "runtime/blas.h"
#include "runtime/philox.h"
#include "runtime/stream.h"

namespace kiln::nn {

// --- GptBlock ------------------------------------------------------------------------

GptBlock::GptBlock(const GptOptions& o, std::shared_ptr<RngStream> rng)
    : TransformerBlock(o.n_embd, o.n_head, 4 * o.n_embd, /*causal=*/true, o.dropout, o.bias, std::move(rng), o.seed) {}

// --- Gpt -----------------------------------------------------------------------------

Gpt::Gpt(const GptOptions& o, std::shared_ptr<RngStream> rng)
    : o_(o),
      Vp_(padded_vocab_size(o.vocab_size)),
      rng_(rng),
      embed_(o.vocab_size, Vp_, o.block_size, o.n_embd, 0.02f, o.seed, 0),
      drop_(o.dropout, rng),
      ln_f_(o.n_embd, o.bias) {
  KILN_CHECK(o.n_layer >= 1 && o.n_head >= 1 && o.n_embd % o.n_head == 0,
             "Gpt: " << o.n_head << " heads must divide n_embd " << o.n_embd << " (n_layer " << o.n_layer << ")");
  register_module("", &embed_);  // wte.weight, wpe.weight at the top level
  register_module("drop", &drop_);
  for (int64_t l = 0; l < o.n_layer; ++l) {
    blocks_.push_back(std::make_unique<GptBlock>(o, rng));
    register_module("h." + std::to_string(l), blocks_.back().get());
  }
  register_module("ln_f", &ln_f_);
  init_weights();
}

std::string Gpt::describe() const {
  std::ostringstream os;
  os << "GPT(" << o_.n_layer << " layers, " << o_.n_head << " heads, width " << o_.n_embd << ", vocab "
     << o_.vocab_size << " padded to " << Vp_ << ", context " << o_.block_size << ")";
  return os.str();
}

void Gpt::init_weights() {
  const float std = 0.02f;
  const float proj_std = std / std::sqrt(2.0f * static_cast<float>(o_.n_layer));
  uint64_t off = embed_.next_offset();
  auto normal = [&](Parameter& p, float s) { off = p.value.normal_(o_.seed, off, 0.0f, s); };
  auto zero = [](Parameter* p) {
    if (p) p->value.zero_();
  };
  for (auto& b : blocks_) {
    normal(b->attn().c_attn().weight(), std);
    zero(b->attn().c_attn().bias());
    normal(b->attn().c_proj().weight(), proj_std);
    zero(b->attn().c_proj().bias());
    normal(b->mlp().c_fc().weight(), std);
    zero(b->mlp().c_fc().bias());
    normal(b->mlp().c_proj().weight(), proj_std);
    zero(b->mlp().c_proj().bias());
  }
}

int64_t Gpt::flops_parameters() {
  return num_parameters() - embed_.wpe().value.numel() - (Vp_ - o_.vocab_size) * o_.n_embd;
}

double Gpt::train_flops_per_token(int64_t T) {
  const double N = static_cast<double>(flops_parameters());
  const double L = static_cast<double>(o_.n_layer), H = static_cast<double>(o_.n_head);
  const double Q = static_cast<double>(o_.n_embd / o_.n_head);
  return 6.0 * N + 12.0 * L * H * Q * static_cast<double>(T);
}

Tensor Gpt::lm_head_forward(const Tensor& y) {
  // logits (rows, Vp) = y (rows, C) · wteᵀ (C, Vp)
  const int64_t rows = y.size(0), C = o_.n_embd;
  const Tensor& w = embed_.wte().in(y.dtype());
  Tensor logits = Tensor::empty({rows, Vp_}, y.dtype(), y.device(), "logits");
  GemmArgs g;
  g.trans_b = true;
  g.m = rows; g.n = Vp_; g.k = C;
  g.a = y.raw(); g.lda = C;
  g.b = w.raw(); g.ldb = C;
  g.c = logits.raw(); g.ldc = Vp_;
  g.in_dtype = y.dtype();
  g.out_dtype = y.dtype();
  gemm(g, y.device(), compute_stream(y.device()));
  return logits;
}

Tensor Gpt::run(const Tensor& tokens, int64_t pos0, bool cached, bool last_only) {
  KILN_CHECK(tokens.ndim() == 2, describe() << ": tokens must be (B, T), got " << tokens.shape().str());
  const int64_t B = tokens.size(0), T = tokens.size(1), C = o_.n_embd;
  KILN_INPUT_CHECK(T >= 1 && pos0 + T <= o_.block_size,
                   describe() << ": " << T << " tokens at position " << pos0 << " exceed the context length "
                              << o_.block_size);
  Tensor r = drop_.forward(embed_.forward_at(tokens, pos0));  // (B, T, C)
  Tensor y = blocks_[0]->ln_1().forward(r);
  for (size_t l = 0; l < blocks_.size(); ++l) {
    auto [r_mid, m] = blocks_[l]->forward_branches(r, y, cached, pos0);
    LayerNorm& next = l + 1 < blocks_.size() ? blocks_[l + 1]->ln_1() : ln_f_;
    std::tie(r, y) = next.forward_residual(r_mid, m);  // r = r_mid + m, y = next(r)
  }
  if (last_only) {
    KILN_CHECK(B == 1, describe() << ": last-position logits are for batch 1");
    y_ = y.view((T - 1) * C, {1, C});
    logits_shape_ = Shape({1, 1, Vp_});
  } else {
    y_ = y.reshape({B * T, C});
    logits_shape_ = Shape({B, T, Vp_});
  }
  return lm_head_forward(y_).reshape(logits_shape_);
}

Tensor Gpt::forward(const Tensor& tokens) { return run(tokens, 0, false, false); }

Tensor Gpt::backward(const Tensor& dlogits) {
  KILN_CHECK(y_.defined(), describe() << ": backward before forward");
  KILN_CHECK(dlogits.shape() == logits_shape_, describe() << ": gradient '" << dlogits.name() << "' has shape "
                                                          << dlogits.shape().str() << ", the logits "
                                                          << logits_shape_.str());
  const int64_t rows = y_.size(0), C = o_.n_embd;
  const Device dev = dlogits.device();
  cudaStream_t stream = compute_stream(dev);
  Parameter& wte = embed_.wte();
  // dwte (Vp, C) += dlogitsᵀ (Vp, rows) · y (rows, C): the head's share of
  // the tied table's gradient (the embedding adds its own below).
  if (wte.trainable) {
    GemmArgs gw;
    gw.trans_a = true;
    gw.m = Vp_; gw.n = C; gw.k = rows;
    gw.a = dlogits.raw(); gw.lda = Vp_;
    gw.b = y_.raw(); gw.ldb = C;
    gw.c = wte.grad.raw(); gw.ldc = C;
    gw.beta = 1.0f;
    gw.in_dtype = dlogits.dtype();
    gw.out_dtype = wte.grad.dtype();
    gemm(gw, dev, stream);
  }
  // dy (rows, C) = dlogits (rows, Vp) · wte (Vp, C)
  const Tensor& w = wte.in(dlogits.dtype());
  Tensor dy = Tensor::empty({logits_shape_[0], logits_shape_[1], C}, dlogits.dtype(), dev, "ln_f.dy");
  GemmArgs gx;
  gx.m = rows; gx.n = C; gx.k = Vp_;
  gx.a = dlogits.raw(); gx.lda = Vp_;
  gx.b = w.raw(); gx.ldb = C;
  gx.c = dy.raw(); gx.ldc = C;
  gx.in_dtype = dlogits.dtype();
  gx.out_dtype = dlogits.dtype();
  gemm(gx, dev, stream);

  Tensor dr = ln_f_.backward(dy);  // dL/d(final residual)
  for (size_t l = blocks_.size(); l-- > 0;) dr = blocks_[l]->backward(dr);
  embed_.backward(drop_.backward(dr));
  return Tensor();
}

// --- generation ----------------------------------------------------------------------

std::vector<float> Gpt::last_logits(const Tensor& logits) {
  // (…, Vp): copy the last row, keep the V real columns.
  Tensor row = logits.view(logits.numel() - Vp_, {Vp_});
  std::vector<float> v = row.to_vector();
  v.resize(static_cast<size_t>(o_.vocab_size));
  return v;
}

std::vector<float> Gpt::next_token_logits(const std::vector<int32_t>& context) {
  KILN_INPUT_CHECK(!context.empty(), "next_token_logits: empty context");
  set_packing(Tensor(), Tensor());  // one sequence
  const size_t n = std::min<size_t>(context.size(), static_cast<size_t>(o_.block_size));
  std::vector<int32_t> window(context.end() - static_cast<std::ptrdiff_t>(n), context.end());
  Tensor t = Tensor::from_vector(window, {1, static_cast<int64_t>(n)}, device());
  return last_logits(run(t, 0, false, true));
}

namespace {

// A uniform double in [0, 1) with 53 random bits from draw `i` of `seed`.
double uniform53(uint64_t seed, uint64_t i) {
  const Philox4 r = philox4x32(seed, i);
  const uint64_t hi = r.v[0] >> 5, lo = r.v[1] >> 6;  // 27 + 26 bits
  return static_cast<double>((hi << 26) | lo) * (1.0 / 9007199254740992.0);
}

// Picks the next token from V logits: greedy at temperature 0, else a draw
// from softmax(logits / temperature) restricted to the top k (ties at the
// k-th value are kept, so the choice never depends on sort stability).
int32_t pick_token(const std::vector<float>& logits, const GenerateOptions& o, uint64_t draw) {
  const int64_t V = static_cast<int64_t>(logits.size());
  if (o.temperature <= 0.0f) {
    int64_t best = 0;
    for (int64_t i = 1; i < V; ++i)
      if (logits[static_cast<size_t>(i)] > logits[static_cast<size_t>(best)]) best = i;
    return static_cast<int32_t>(best);
  }
  float threshold = -INFINITY;
  if (o.top_k > 0 && o.top_k < V) {
    std::vector<float> sorted = logits;
    std::nth_element(sorted.begin(), sorted.begin() + (o.top_k - 1), sorted.end(), std::greater<float>());
    threshold = sorted[static_cast<size_t>(o.top_k - 1)];
  }
  const float mx = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(static_cast<size_t>(V), 0.0);
  double total = 0;
  for (int64_t i = 0; i < V; ++i) {
    const float l = logits[static_cast<size_t>(i)];
    if (l < threshold) continue;
    p[static_cast<size_t>(i)] = std::exp(static_cast<double>(l - mx) / o.temperature);
    total += p[static_cast<size_t>(i)];
  }
  const double u = uniform53(o.seed, draw) * total;
  double acc = 0;
  int64_t last = 0;
  for (int64_t i = 0; i < V; ++i) {
    if (p[static_cast<size_t>(i)] == 0.0) continue;
    acc += p[static_cast<size_t>(i)];
    last = i;
    if (u < acc) return static_cast<int32_t>(i);
  }
  return static_cast<int32_t>(last);  // rounding left u just past the total
}

}  // namespace

void Gpt::set_packing(const Tensor& segments, const Tensor& positions) {
  for (auto& b : blocks_) b->attn().set_segment_ids(segments);
  embed_.set_positions(positions);
}

std::vector<int32_t> Gpt::generate(const std::vector<int32_t>& prompt, const GenerateOptions& o) {
  set_packing(Tensor(), Tensor());  // one sequence
  KILN_INPUT_CHECK(!prompt.empty(), "generate: the prompt is empty (start with <|endoftext|> for a fresh document)");
  for (size_t i = 0; i < prompt.size(); ++i)
    KILN_INPUT_CHECK(prompt[i] >= 0 && prompt[i] < o_.vocab_size,
                     "generate: prompt token " << prompt[i] << " at position " << i << " is outside the vocabulary [0, "
                                               << o_.vocab_size << ")");
  const bool was_training = training();
  eval();
  std::vector<int32_t> seq = prompt, out;
  const int64_t Tmax = o_.block_size;
  int64_t cached = 0;  // positions in the KV caches
  // (Re)fills the caches with the newest `keep` tokens.
  auto prefill = [&](int64_t keep) {
    std::vector<int32_t> window(seq.end() - keep, seq.end());
    Tensor t = Tensor::from_vector(window, {1, keep}, device());
    cached = keep;
    return last_logits(run(t, 0, true, true));
  };
  if (o.use_cache)
    for (auto& b : blocks_) b->attn().begin_cache(Tmax);
  try {
    std::vector<float> logits =
        o.use_cache ? prefill(std::min<int64_t>(static_cast<int64_t>(seq.size()), Tmax)) : next_token_logits(seq);
    for (int64_t i = 0; i < o.max_new_tokens; ++i) {
      if (i < o.min_new_tokens && o.stop_token >= 0 && o.stop_token < o_.vocab_size)
        logits[static_cast<size_t>(o.stop_token)] = -INFINITY;  // as Hugging Face's min_new_tokens
      const int32_t next = pick_token(logits, o, static_cast<uint64_t>(i));
      out.push_back(next);
      seq.push_back(next);
      if (next == o.stop_token || i + 1 == o.max_new_tokens) break;
      if (!o.use_cache) {
        logits = next_token_logits(seq);
      } else if (cached == Tmax) {
        // Full: restart from the newest half-context, so restarts (each
        // O(Tmax²/4)) come every Tmax/2 tokens: amortized O(Tmax) per token.
        logits = prefill(std::max<int64_t>(Tmax / 2, 1));
      } else {
        Tensor t = Tensor::from_vector(std::vector<int32_t>{next}, {1, 1}, device());
        logits = last_logits(run(t, cached, true, true));
        ++cached;
      }
    }
  } catch (...) {
    for (auto& b : blocks_) b->attn().end_cache();
    train(was_training);
    throw;
  }
  for (auto& b : blocks_) b->attn().end_cache();
  train(was_training);
  return out;
}

}  // namespace kiln::nn
