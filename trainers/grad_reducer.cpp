#include "trainers/grad_reducer.h"

#include <cmath>
#include <sstream>

namespace kiln {

namespace {

// Offsets inside a bucket are multiples of this many elements (256 bytes of
// fp32): every gradient view starts as aligned as a fresh allocation would,
// and ZeRO chunk boundaries keep float4 loads aligned.
constexpr int64_t kAlign = 64;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

}  // namespace

GradReducer::GradReducer(nn::Module& model, std::vector<nn::Parameter*> params, Communicator& comm,
                         const GradReducerOptions& opt)
    : model_(model), comm_(comm), opt_(opt), params_(std::move(params)) {
  KILN_CHECK(opt_.zero_stage == 0 || opt_.zero_stage == 1, "GradReducer: zero_stage " << opt_.zero_stage);
  KILN_CHECK(opt_.bucket_mb > 0, "GradReducer: bucket_mb " << opt_.bucket_mb);
  if (params_.empty()) return;
  const Device device = params_[0]->grad.device();
  const DType dtype = params_[0]->grad.dtype();
  for (nn::Parameter* p : params_)
    KILN_CHECK(p->trainable && p->grad.defined(), "GradReducer: parameter '" << p->name << "' is frozen (no gradient)");
  for (nn::Parameter* p : params_)
    KILN_CHECK(p->grad.device() == device && p->grad.dtype() == dtype,
               "GradReducer: gradient '" << p->name << "' is " << dtype_name(p->grad.dtype()) << " on "
                                         << p->grad.device().str() << ", the first one "
                                         << dtype_name(dtype) << " on " << device.str());
  const int world = comm_.world();
  const int64_t cap = std::max<int64_t>(
      1, static_cast<int64_t>(opt_.bucket_mb * 1024.0 * 1024.0) / static_cast<int64_t>(dtype_size(dtype)));
  const int64_t pad = opt_.zero_stage == 1 ? kAlign * world : kAlign;

  // Reverse registration order: the last layers' gradients are final first.
  slots_.reserve(params_.size());
  Bucket cur;
  int64_t used = 0;
  auto close = [&] {
    cur.numel = round_up(used, pad);
    buckets_.push_back(std::move(cur));
    cur = Bucket();
    used = 0;
  };
  for (size_t i = params_.size(); i-- > 0;) {
    nn::Parameter* p = params_[i];
    const int64_t n = p->grad.numel();
    int64_t start = round_up(used, kAlign);
    if (!cur.slots.empty() && start + n > cap) {
      close();
      start = 0;
    }
    Slot s;
    s.param = p;
    s.bucket = static_cast<int>(buckets_.size());
    s.offset = start;
    s.numel = n;
    KILN_CHECK(slot_of_.emplace(p, static_cast<int>(slots_.size())).second,
               "GradReducer: parameter '" << p->name << "' is listed twice");
    cur.slots.push_back(static_cast<int>(slots_.size()));
    slots_.push_back(s);
    used = start + n;
  }
  close();

  const int nb = static_cast<int>(buckets_.size());
  for (int b = 0; b < nb; ++b) {
    Bucket& bk = buckets_[b];
    bk.grad = Tensor::zeros({bk.numel}, dtype, device, "grad_bucket." + std::to_string(b));
    for (int si : bk.slots) {
      Slot& s = slots_[si];
      nn::Parameter* p = s.param;
      Tensor v = bk.grad.view(s.offset, p->grad.shape());
      if (s.numel > 0) v.copy_from(p->grad);
      v.set_name(p->name + ".grad");
      p->grad = v;
    }
    if (opt_.zero_stage == 1) {
      const int64_t c = chunk(bk), lo = c * comm_.rank(), hi = lo + c;
      bk.shard_grad = Tensor::zeros({c}, dtype, device, "grad_shard." + std::to_string(b));
      bk.values = Tensor::zeros({bk.numel}, params_[0]->value.dtype(), device, "param_bucket." + std::to_string(b));
      for (int si : bk.slots) {
        const Slot& s = slots_[si];
        const int64_t a = std::max(s.offset, lo), e = std::min(s.offset + s.numel, hi);
        if (e <= a) continue;
        Segment seg;
        seg.slot = si;
        seg.begin = a - s.offset;
        seg.len = e - a;
        auto sp = std::make_unique<nn::Parameter>();
        sp->name = s.param->name + "@" + std::to_string(seg.begin);
        sp->value = bk.values.view(a, {seg.len});
        sp->value.set_name(sp->name);
        sp->grad = bk.shard_grad.view(a - lo, {seg.len});
        sp->grad.set_name(sp->name + ".grad");
        sp->decay = s.param->decay;
        segments_.push_back(seg);
        opt_params_.push_back(sp.get());
        segment_params_.push_back(std::move(sp));
      }
    }
  }
  if (opt_.zero_stage == 0) opt_params_ = params_;
  model_.set_grad_ready_hook([this](nn::Parameter& p) { on_grad_ready(p); });
}

GradReducer::~GradReducer() {
  model_.set_grad_ready_hook(nullptr);
  for (Bucket& b : buckets_) {
    try {
      if (b.handle) b.handle->wait();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "kiln: warning: %s\n", e.what());
    }
  }
}

std::string GradReducer::describe() const {
  int64_t n = 0;
  for (const Slot& s : slots_) n += s.numel;
  const double bytes = params_.empty() ? 0.0 : static_cast<double>(n) * dtype_size(params_[0]->grad.dtype());
  std::ostringstream os;
  os << buckets_.size() << " gradient bucket" << (buckets_.size() == 1 ? "" : "s") << " (" << format_bytes(bytes)
     << ", dist.bucket_mb " << opt_.bucket_mb << "), ";
  if (opt_.zero_stage == 1) os << "ZeRO-1: reduce-scatter + all-gather, optimizer state sharded 1/" << comm_.world();
  else os << "all-reduce, optimizer state replicated";
  return os.str();
}

void GradReducer::arm() {
  KILN_CHECK(!armed_, "GradReducer::arm() twice without finish()");
  armed_ = true;
  next_launch_ = 0;
  for (Slot& s : slots_) s.seen = 0;
  for (Bucket& b : buckets_) {
    b.waiting = 0;
    b.can_launch_early = calibrated_;
    for (int si : b.slots) {
      if (slots_[si].expected > 0) ++b.waiting;
      else b.can_launch_early = false;  // a silent module: only finish() knows it is done
    }
    b.ready = false;
    b.handle.reset();
  }
}

void GradReducer::on_grad_ready(nn::Parameter& p) {
  if (!armed_) return;  // an earlier micro-batch: gradients keep accumulating locally
  auto it = slot_of_.find(&p);
  if (it == slot_of_.end()) return;
  Slot& s = slots_[it->second];
  ++s.seen;
  if (!calibrated_ || s.seen != s.expected) return;
  Bucket& b = buckets_[s.bucket];
  if (--b.waiting == 0 && b.can_launch_early) {
    b.ready = true;
    launch_ready_in_order();
  }
}

void GradReducer::launch_ready_in_order() {
  while (next_launch_ < static_cast<int>(buckets_.size()) && buckets_[next_launch_].ready) launch(next_launch_++);
}

void GradReducer::launch(int b) {
  Bucket& bk = buckets_[b];
  const std::string what = "grad bucket " + std::to_string(b + 1) + "/" + std::to_string(buckets_.size());
  if (opt_.zero_stage == 1) bk.handle = comm_.reduce_scatter_async(bk.grad, bk.shard_grad, ReduceOp::avg, what);
  else bk.handle = comm_.all_reduce_async(bk.grad, ReduceOp::avg, what);
}

void GradReducer::finish() {
  KILN_CHECK(armed_, "GradReducer::finish() without arm() before the last backward");
  if (!calibrated_) {
    for (Slot& s : slots_) s.expected = s.seen;
    calibrated_ = true;
  } else {
    for (const Slot& s : slots_)
      KILN_CHECK(s.seen <= s.expected,
                 "data parallel: the gradient of '" << s.param->name << "' was signalled final " << s.seen
                                                    << " times in this backward, " << s.expected
                                                    << " in the first one; its bucket may have been reduced before "
                                                       "backward finished it (the model's backward must be the same "
                                                       "every step)");
  }
  for (Bucket& b : buckets_) b.ready = true;
  launch_ready_in_order();
  for (Bucket& b : buckets_) {
    if (b.handle) b.handle->wait();
    b.handle.reset();
  }
  armed_ = false;
}

void GradReducer::before_step() {
  if (opt_.zero_stage == 0) return;
  for (size_t i = 0; i < segments_.size(); ++i) {
    const Segment& seg = segments_[i];
    const nn::Parameter* p = slots_[seg.slot].param;
    segment_params_[i]->value.copy_from(p->value.view(seg.begin, {seg.len}));
  }
}

void GradReducer::after_step() {
  if (opt_.zero_stage == 0) return;
  const int nb = static_cast<int>(buckets_.size());
  for (int b = 0; b < nb; ++b) {
    Bucket& bk = buckets_[b];
    const int64_t c = chunk(bk);
    bk.handle = comm_.all_gather_async(bk.values.view(c * comm_.rank(), {c}), bk.values,
                                       "param bucket " + std::to_string(b + 1) + "/" + std::to_string(nb));
  }
  for (Bucket& bk : buckets_) {
    bk.handle->wait();
    bk.handle.reset();
    for (int si : bk.slots) {
      nn::Parameter* p = slots_[si].param;
      if (slots_[si].numel == 0) continue;
      p->value.copy_from(bk.values.view(slots_[si].offset, p->value.shape()));
      p->refresh_lowp();
    }
  }
}

std::vector<std::string> GradReducer::state_suffixes(const nn::OptimizerOptions& o) {
  // Mirrors nn::Optimizer::state(): AdamW keeps two moments, SGD a momentum
  // buffer only when momentum is on.
  if (o.kind == nn::OptimizerKind::adamw) return {".exp_avg", ".exp_avg_sq"};
  if (o.momentum != 0.0) return {".momentum_buffer"};
  return {};
}

std::vector<std::pair<std::string, Shape>> GradReducer::state_layout(const nn::OptimizerOptions& o) const {
  std::vector<std::pair<std::string, Shape>> out;
  for (nn::Parameter* p : params_)
    for (const std::string& suf : state_suffixes(o)) out.emplace_back(p->name + suf, p->value.shape());
  return out;
}

std::vector<std::pair<std::string, Tensor>> GradReducer::gather_state(const nn::Optimizer& opt,
                                                                      const nn::OptimizerOptions& o) {
  if (opt_.zero_stage == 0) return opt.state();
  std::map<std::string, Tensor> local;
  for (auto& [name, t] : opt.state()) local[name] = t;
  const std::vector<std::string> suffixes = state_suffixes(o);
  // flat[suffix][bucket]: the bucket's layout, this rank's chunk filled in,
  // then all-gathered so every rank holds every chunk.
  std::vector<std::vector<Tensor>> flat(suffixes.size());
  for (size_t k = 0; k < suffixes.size(); ++k) {
    for (size_t b = 0; b < buckets_.size(); ++b)
      flat[k].push_back(Tensor::zeros({buckets_[b].numel}, buckets_[b].values.dtype(), buckets_[b].values.device(),
                                      "state_bucket"));
    for (size_t i = 0; i < segments_.size(); ++i) {
      const Segment& seg = segments_[i];
      const Slot& s = slots_[seg.slot];
      auto it = local.find(segment_params_[i]->name + suffixes[k]);
      KILN_CHECK(it != local.end(), "ZeRO-1: optimizer state '" << segment_params_[i]->name << suffixes[k]
                                                                 << "' is missing");
      flat[k][static_cast<size_t>(s.bucket)].view(s.offset + seg.begin, {seg.len}).copy_from(it->second);
    }
    std::vector<std::unique_ptr<CommHandle>> handles;
    for (size_t b = 0; b < buckets_.size(); ++b) {
      const int64_t c = chunk(buckets_[b]);
      handles.push_back(comm_.all_gather_async(flat[k][b].view(c * comm_.rank(), {c}), flat[k][b],
                                               "optimizer state" + suffixes[k] + " bucket " + std::to_string(b + 1)));
    }
    for (auto& h : handles) h->wait();
  }
  std::vector<std::pair<std::string, Tensor>> out;
  for (nn::Parameter* p : params_) {
    const Slot& s = slots_[static_cast<size_t>(slot_of_.at(p))];
    for (size_t k = 0; k < suffixes.size(); ++k) {
      Tensor t = flat[k][static_cast<size_t>(s.bucket)].view(s.offset, p->value.shape()).clone();
      t.set_name(p->name + suffixes[k]);
      out.emplace_back(p->name + suffixes[k], t);
    }
  }
  return out;
}

void GradReducer::load_state(nn::Optimizer& opt, const std::map<std::string, Tensor>& full, int64_t steps) {
  if (opt_.zero_stage == 0) {
    opt.load_state(full, steps);
    return;
  }
  std::map<std::string, size_t> segment_of;
  for (size_t i = 0; i < segments_.size(); ++i) segment_of[segment_params_[i]->name] = i;
  std::map<std::string, Tensor> mine;
  for (auto& [name, t] : opt.state()) {
    // "layers.0.weight@128.exp_avg" -> segment "layers.0.weight@128", suffix ".exp_avg"
    const size_t dot = name.find('.', name.rfind('@'));
    const size_t i = segment_of.at(name.substr(0, dot));
    const std::string suffix = name.substr(dot);
    const Segment& seg = segments_[i];
    const nn::Parameter* p = slots_[static_cast<size_t>(seg.slot)].param;
    auto it = full.find(p->name + suffix);
    KILN_INPUT_CHECK(it != full.end(), "optimizer state: tensor '" << p->name << suffix << "' is missing");
    KILN_INPUT_CHECK(it->second.numel() == p->value.numel(),
                     "optimizer state: tensor '" << p->name << suffix << "' has shape " << it->second.shape().str()
                                                 << ", expected " << p->value.shape().str());
    mine[name] = it->second.view(seg.begin, {seg.len});
  }
  opt.load_state(mine, steps);
}

}  // namespace kiln
