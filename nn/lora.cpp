#include "nn/lora.h"

#include <fnmatch.h>

#include <cmath>
#include <functional>
#include <sstream>

#include "kernels/activation.h"
#include "runtime/blas.h"
#include "runtime/dispatch.h"

namespace kiln::nn {

namespace {

std::vector<std::string> split_dots(const std::string& s) {
  std::vector<std::string> out;
  std::string part;
  std::istringstream is(s);
  while (std::getline(is, part, '.')) out.push_back(part);
  return out;
}

// A non-owning handle on the adapter's input (a Linear's saved input).
Tensor rows_view(const Tensor& t, int64_t cols) { return t.reshape({t.numel() / cols, cols}); }

}  // namespace

// --- LoraAdapter ----------------------------------------------------------------------

LoraAdapter::LoraAdapter(int64_t in, int64_t out, const LoraOptions& o, std::shared_ptr<RngStream> rng,
                         uint64_t seed, uint64_t offset, uint64_t* next_offset)
    : in_(in), out_(out), r_(o.rank), o_(o), scale_(0.0f), drop_(o.dropout, std::move(rng)) {
  KILN_CHECK(in > 0 && out > 0, "LoraAdapter(" << in << ", " << out << "): sizes must be positive");
  KILN_CHECK(o.rank >= 1, "LoraAdapter: rank " << o.rank << " must be at least 1");
  KILN_CHECK(o.alpha > 0.0f && std::isfinite(o.alpha), "LoraAdapter: alpha " << o.alpha << " must be positive");
  scale_ = o.alpha / static_cast<float>(o.rank);
  // PEFT: kaiming_uniform_(A, a=√5): gain √(2/(1+5)) times √(3/fan_in) = 1/√in.
  const float bound = 1.0f / std::sqrt(static_cast<float>(in));
  Tensor a = Tensor::empty({r_, in}, DType::f32, Device::cpu());
  const uint64_t next = a.uniform_(seed, offset, -bound, bound);
  if (next_offset) *next_offset = next;
  a_ = &register_parameter("lora_A.weight", a, /*decay=*/true);
  b_ = &register_parameter("lora_B.weight", Tensor::zeros({out, r_}, DType::f32, Device::cpu()), /*decay=*/true);
  register_module("lora_dropout", &drop_);
}

std::string LoraAdapter::describe() const {
  std::ostringstream os;
  os << "LoRA(r=" << r_ << ", alpha=" << o_.alpha << ", dropout=" << o_.dropout << ")";
  return os.str();
}

void LoraAdapter::forward_into(const Tensor& x, Tensor& y) {
  KILN_CHECK(!merged_, describe() << ": forward through a merged adapter (the Linear's weight holds it)");
  KILN_CHECK(x.ndim() == 2 && x.size(1) == in_ && y.ndim() == 2 && y.size(1) == out_ && y.size(0) == x.size(0),
             describe() << ": x " << x.shape().str() << ", y " << y.shape().str() << ", expected (rows, " << in_
                        << ") and (rows, " << out_ << ")");
  const int64_t rows = x.size(0);
  const Device dev = x.device();
  cudaStream_t stream = compute_stream(dev);
  masked_ = training() && o_.dropout > 0.0f;  // Dropout draws a mask exactly then
  xd_ = drop_.forward(x);                      // (rows, in)
  u_ = Tensor::empty({rows, r_}, x.dtype(), dev, "lora.u");
  const Tensor& A = a_->in(x.dtype());
  const Tensor& B = b_->in(x.dtype());

  // u (rows, r) = xd (rows, in) · Aᵀ (in, r)
  GemmArgs g1;
  g1.trans_b = true;
  g1.m = rows; g1.n = r_; g1.k = in_;
  g1.a = xd_.raw(); g1.lda = in_;
  g1.b = A.raw(); g1.ldb = in_;
  g1.c = u_.raw(); g1.ldc = r_;
  g1.in_dtype = x.dtype();
  g1.out_dtype = x.dtype();
  gemm(g1, dev, stream);

  // y (rows, out) += s · u (rows, r) · Bᵀ (r, out): fused into y, no temporary.
  GemmArgs g2;
  g2.trans_b = true;
  g2.m = rows; g2.n = out_; g2.k = r_;
  g2.alpha = scale_;
  g2.beta = 1.0f;
  g2.a = u_.raw(); g2.lda = r_;
  g2.b = B.raw(); g2.ldb = r_;
  g2.c = y.raw(); g2.ldc = out_;
  g2.in_dtype = x.dtype();
  g2.out_dtype = y.dtype();
  gemm(g2, dev, stream);
}

void LoraAdapter::backward_into(const Tensor& dy, Tensor* dx) {
  KILN_CHECK(u_.defined(), describe() << ": backward before forward");
  const int64_t rows = u_.size(0);
  KILN_CHECK(dy.numel() == rows * out_, describe() << ": gradient " << dy.shape().str() << ", expected " << rows
                                                   << " x " << out_);
  const Device dev = dy.device();
  cudaStream_t stream = compute_stream(dev);
  const DType t = dy.dtype();

  // dB (out, r) += s · dyᵀ (out, rows) · u (rows, r); fp32 master gradient.
  if (b_->trainable) {
    GemmArgs gb;
    gb.trans_a = true;
    gb.m = out_; gb.n = r_; gb.k = rows;
    gb.alpha = scale_;
    gb.beta = 1.0f;
    gb.a = dy.raw(); gb.lda = out_;
    gb.b = u_.raw(); gb.ldb = r_;
    gb.c = b_->grad.raw(); gb.ldc = r_;
    gb.in_dtype = t;
    gb.out_dtype = b_->grad.dtype();
    gemm(gb, dev, stream);
  }

  // du (rows, r) = s · dy (rows, out) · B (out, r)
  Tensor du = Tensor::empty({rows, r_}, t, dev, "lora.du");
  const Tensor& B = b_->in(t);
  GemmArgs gu;
  gu.m = rows; gu.n = r_; gu.k = out_;
  gu.alpha = scale_;
  gu.a = dy.raw(); gu.lda = out_;
  gu.b = B.raw(); gu.ldb = r_;
  gu.c = du.raw(); gu.ldc = r_;
  gu.in_dtype = t;
  gu.out_dtype = t;
  gemm(gu, dev, stream);

  // dA (r, in) += duᵀ (r, rows) · xd (rows, in)
  if (a_->trainable) {
    GemmArgs ga;
    ga.trans_a = true;
    ga.m = r_; ga.n = in_; ga.k = rows;
    ga.beta = 1.0f;
    ga.a = du.raw(); ga.lda = r_;
    ga.b = xd_.raw(); ga.ldb = in_;
    ga.c = a_->grad.raw(); ga.ldc = in_;
    ga.in_dtype = t;
    ga.out_dtype = a_->grad.dtype();
    gemm(ga, dev, stream);
  }
  grads_ready();  // dA and dB are final for this backward

  if (!dx || !dx->defined()) return;
  KILN_CHECK(dx->numel() == rows * in_ && dx->dtype() == t, describe() << ": dx " << dx->shape().str());
  // dx (rows, in) += du (rows, r) · A (r, in), through dropout's mask when
  // one was drawn (then via a temporary, since the mask applies to du·A alone).
  const Tensor& A = a_->in(t);
  const bool masked = masked_;
  Tensor target = masked ? Tensor::empty({rows, in_}, t, dev, "lora.dxd") : *dx;
  GemmArgs gx;
  gx.m = rows; gx.n = in_; gx.k = r_;
  gx.beta = masked ? 0.0f : 1.0f;
  gx.a = du.raw(); gx.lda = r_;
  gx.b = A.raw(); gx.ldb = in_;
  gx.c = target.raw(); gx.ldc = in_;
  gx.in_dtype = t;
  gx.out_dtype = t;
  gemm(gx, dev, stream);
  if (!masked) return;
  Tensor dxd = drop_.backward(target);  // (rows, in): zero where the mask dropped, /(1-p) elsewhere
  Tensor& out = *dx;
  const int64_t n = out.numel();
  dispatch(
      out, [&](auto tag) { using F = decltype(tag); residual_add_cpu<F>(out.data<F>(), out.data<F>(), dxd.data<F>(), n); },
      [&](auto tag, cudaStream_t s) {
        using F = decltype(tag);
        residual_add(out.data<F>(), out.data<F>(), dxd.data<F>(), n, s);
      });
}

Tensor LoraAdapter::forward(const Tensor& x) {
  KILN_CHECK(x.ndim() >= 1 && x.size(-1) == in_,
             describe() << ": input " << x.shape().str() << ", expected (..., " << in_ << ")");
  std::vector<int64_t> shape = x.shape().vec();
  shape.back() = out_;
  Tensor y = Tensor::zeros(Shape(shape), x.dtype(), x.device(), "lora.out");
  Tensor y2 = rows_view(y, out_);
  forward_into(rows_view(x, in_), y2);
  return y;
}

Tensor LoraAdapter::backward(const Tensor& dy) {
  KILN_CHECK(u_.defined(), describe() << ": backward before forward");
  std::vector<int64_t> shape = dy.shape().vec();
  shape.back() = in_;
  Tensor dx = Tensor::zeros(Shape(shape), dy.dtype(), dy.device(), "lora.dx");
  Tensor dx2 = rows_view(dx, in_);
  backward_into(rows_view(dy, out_), &dx2);
  return dx;
}

namespace {

// W (out, in) += sign · s · B (out, r) · A (r, in) in the master dtype.
void fold(Parameter& w, Parameter& a, Parameter& b, float scale) {
  const Tensor& W = w.value;
  KILN_CHECK(W.ndim() == 2 && W.size(0) == b.value.size(0) && W.size(1) == a.value.size(1),
             "LoRA merge: weight '" << w.name << "' " << W.shape().str() << " does not fit B "
                                    << b.value.shape().str() << " · A " << a.value.shape().str());
  GemmArgs g;
  g.m = W.size(0); g.n = W.size(1); g.k = a.value.size(0);
  g.alpha = scale;
  g.beta = 1.0f;
  g.a = b.value.raw(); g.lda = g.k;
  g.b = a.value.raw(); g.ldb = g.n;
  g.c = W.raw(); g.ldc = g.n;
  g.in_dtype = W.dtype();
  g.out_dtype = W.dtype();
  gemm(g, W.device(), compute_stream(W.device()));
  w.refresh_lowp();
}

}  // namespace

void LoraAdapter::merge(Parameter& weight) {
  KILN_CHECK(!merged_, "LoRA merge: the adapter of '" << weight.name << "' is merged already");
  fold(weight, *a_, *b_, scale_);
  merged_ = true;
}

void LoraAdapter::unmerge(Parameter& weight) {
  KILN_CHECK(merged_, "LoRA unmerge: the adapter of '" << weight.name << "' is not merged");
  fold(weight, *a_, *b_, -scale_);
  merged_ = false;
}

// --- finding and attaching ----------------------------------------------------------------

std::vector<std::pair<std::string, Linear*>> named_linears(Module& root) {
  std::vector<std::pair<std::string, Linear*>> out;
  std::function<void(Module&, const std::string&)> walk = [&](Module& m, const std::string& name) {
    if (auto* lin = dynamic_cast<Linear*>(&m)) {
      out.emplace_back(name, lin);
      return;  // a Linear's only child is its adapter
    }
    for (const auto& [child_name, child] : m.children()) {
      const std::string full = child_name.empty() ? name : (name.empty() ? child_name : name + "." + child_name);
      walk(*child, full);
    }
  };
  walk(root, "");
  return out;
}

bool lora_target_matches(const std::string& pattern, const std::string& name) {
  if (pattern == "all-linear") return true;
  const std::vector<std::string> p = split_dots(pattern), n = split_dots(name);
  if (p.empty() || p.size() > n.size()) return false;
  const size_t skip = n.size() - p.size();
  for (size_t i = 0; i < p.size(); ++i)
    if (fnmatch(p[i].c_str(), n[skip + i].c_str(), 0) != 0) return false;
  return true;
}

LoraAttachment attach_lora(Module& model, const std::vector<std::string>& patterns, const LoraOptions& o,
                           std::shared_ptr<RngStream> rng, uint64_t seed, const std::string& what) {
  KILN_INPUT_CHECK(!patterns.empty(), what << ": no target patterns");
  const auto linears = named_linears(model);
  for (const std::string& pat : patterns) {
    bool any = false;
    for (const auto& nl : linears) any = any || lora_target_matches(pat, nl.first);
    if (any) continue;
    std::ostringstream names;
    for (size_t i = 0; i < linears.size() && i < 8; ++i) names << (i ? ", " : "") << linears[i].first;
    if (linears.size() > 8) names << ", ... (" << linears.size() << " in all)";
    throw InputError(what + ": pattern '" + pat + "' matches no Linear layer of the model (its Linears: " +
                     (linears.empty() ? std::string("none") : names.str()) + ")");
  }
  // The base freezes before the adapters exist, so they stay trainable.
  model.set_trainable(false);
  LoraAttachment out;
  uint64_t offset = 0;
  for (const auto& [name, lin] : linears) {
    bool hit = false;
    for (const std::string& pat : patterns) hit = hit || lora_target_matches(pat, name);
    if (!hit) continue;
    KILN_INPUT_CHECK(lin->adapter() == nullptr, what << ": '" << name << "' has an adapter already");
    auto ad = std::make_unique<LoraAdapter>(lin->in_features(), lin->out_features(), o, rng, seed, offset, &offset);
    // Same device and dtypes as the base layer (whether or not the model has
    // been moved yet).
    ad->to(lin->weight().value.device(), lin->weight().value.dtype(), lin->compute_dtype());
    ad->train(lin->training());  // attached to a model in eval mode: no dropout
    out.adapter_parameters += ad->num_parameters();
    lin->attach_adapter(std::move(ad));
    out.adapted.push_back(name);
  }
  return out;
}

std::vector<std::pair<std::string, LoraAdapter*>> named_adapters(Module& model) {
  std::vector<std::pair<std::string, LoraAdapter*>> out;
  for (const auto& [name, lin] : named_linears(model))
    if (lin->adapter()) out.emplace_back(name, lin->adapter());
  return out;
}

void merge_lora(Module& model) {
  for (const auto& [name, lin] : named_linears(model))
    if (lin->adapter()) lin->adapter()->merge(lin->weight());
}

void unmerge_lora(Module& model) {
  for (const auto& [name, lin] : named_linears(model))
    if (lin->adapter()) lin->adapter()->unmerge(lin->weight());
}

bool is_lora_parameter(const std::string& name) {
  auto ends = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return ends(".lora_A.weight") || ends(".lora_B.weight") || name == "lora_A.weight" || name == "lora_B.weight";
}

}  // namespace kiln::nn
