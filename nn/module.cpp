#include "nn/module.h"

#include <sstream>

namespace kiln::nn {

const Tensor& Parameter::in(DType compute) const {
  if (compute == DType::bf16) {
    KILN_CHECK(lowp.defined(), "parameter '" << name << "' has no bf16 copy; call Module::to(..., bf16)");
    return lowp;
  }
  return value;
}

void Parameter::refresh_lowp() {
  if (lowp.defined()) lowp.copy_from(value.cast(lowp.dtype()));
}

void Module::train(bool on) { set_training(on); }

void Module::set_training(bool on) {
  training_ = on;
  for (auto& c : children_) c.second->set_training(on);
}

Parameter& Module::register_parameter(const std::string& name, Tensor value, bool decay) {
  auto p = std::make_unique<Parameter>();
  p->name = name;
  p->value = std::move(value);
  p->value.set_name(name);
  p->grad = Tensor::zeros(p->value.shape(), p->value.dtype(), p->value.device(), name + ".grad");
  p->decay = decay;
  params_.push_back(std::move(p));
  local_names_.push_back(name);
  return *params_.back();
}

Buffer& Module::register_buffer(const std::string& name, Tensor value) {
  KILN_CHECK(value.defined(), "register_buffer('" << name << "'): undefined tensor");
  auto b = std::make_unique<Buffer>();
  b->name = name;
  b->value = std::move(value);
  b->value.set_name(name);
  buffers_.push_back(std::move(b));
  buffer_names_.push_back(name);
  return *buffers_.back();
}

void Module::register_module(const std::string& name, Module* child) {
  KILN_CHECK(child != nullptr, "register_module('" << name << "'): null module");
  children_.emplace_back(name, child);
}

void Module::collect(const std::string& prefix, std::vector<Parameter*>& out) {
  // Full names depend on where a module sits in the tree, so they are
  // recomputed from the local names on every walk.
  for (size_t i = 0; i < params_.size(); ++i) {
    Parameter* p = params_[i].get();
    const std::string full = prefix + local_names_[i];
    if (p->name != full) {
      p->name = full;
      p->value.set_name(full);
      p->grad.set_name(full + ".grad");
    }
    out.push_back(p);
  }
  // A child registered under "" contributes no name part: its parameters
  // read as the parent's own (GPT's embedding owns "wte.weight" and
  // "wpe.weight" at the top level, as in Hugging Face GPT-2).
  for (auto& c : children_) c.second->collect(c.first.empty() ? prefix : prefix + c.first + ".", out);
}

void Module::collect_buffers(const std::string& prefix, std::vector<Buffer*>& out) {
  for (size_t i = 0; i < buffers_.size(); ++i) {
    Buffer* b = buffers_[i].get();
    const std::string full = prefix + buffer_names_[i];
    if (b->name != full) {
      b->name = full;
      b->value.set_name(full);
    }
    out.push_back(b);
  }
  for (auto& c : children_) c.second->collect_buffers(c.first.empty() ? prefix : prefix + c.first + ".", out);
}

std::vector<Buffer*> Module::buffers() {
  std::vector<Buffer*> out;
  collect_buffers("", out);
  return out;
}

std::vector<Parameter*> Module::trainable_parameters() {
  std::vector<Parameter*> out;
  for (Parameter* p : parameters())
    if (p->trainable) out.push_back(p);
  return out;
}

int64_t Module::num_trainable_parameters() {
  int64_t n = 0;
  for (Parameter* p : parameters())
    if (p->trainable) n += p->value.numel();
  return n;
}

void Module::set_trainable(bool on) {
  for (Parameter* p : parameters()) {
    if (p->trainable == on) continue;
    p->trainable = on;
    p->grad = on ? Tensor::zeros(p->value.shape(), p->value.dtype(), p->value.device(), p->name + ".grad") : Tensor();
  }
}

void Module::refresh_lowp() {
  for (Parameter* p : parameters()) p->refresh_lowp();
}

std::vector<Parameter*> Module::parameters() {
  std::vector<Parameter*> out;
  collect("", out);
  return out;
}

int64_t Module::num_parameters() {
  int64_t n = 0;
  for (Parameter* p : parameters()) n += p->value.numel();
  return n;
}

void Module::zero_grad() {
  for (Parameter* p : parameters())
    if (p->trainable) p->grad.zero_();
}

void Module::to(Device device, DType master, DType compute) {
  for (Parameter* p : parameters()) {
    Tensor v = p->value.device() == device ? p->value : p->value.to(device);
    if (v.dtype() != master) v = v.cast(master);
    v.set_name(p->name);
    p->value = v;
    p->grad = p->trainable ? Tensor::zeros(v.shape(), master, device, p->name + ".grad") : Tensor();
    if (compute == DType::bf16) {
      p->lowp = v.cast(DType::bf16);
      p->lowp.set_name(p->name + ".bf16");
    } else {
      p->lowp = Tensor();
    }
  }
  for (Buffer* b : buffers()) {
    if (b->value.device() == device) continue;
    b->value = b->value.to(device);
    b->value.set_name(b->name);
  }
  set_placement(device, compute);
}

void Module::set_placement(Device d, DType compute) {
  device_ = d;
  compute_ = compute;
  on_device_change();
  for (auto& c : children_) c.second->set_placement(d, compute);
}

void Module::set_grad_ready_hook(GradReadyHook hook) {
  set_hook(hook ? std::make_shared<const GradReadyHook>(std::move(hook)) : nullptr);
}

void Module::set_hook(const std::shared_ptr<const GradReadyHook>& hook) {
  grad_hook_ = hook;
  for (auto& c : children_) c.second->set_hook(hook);
}

void Module::grads_ready() {
  if (!grad_hook_) return;
  for (auto& p : params_)
    if (p->trainable) (*grad_hook_)(*p);
}

std::string Module::summary() {
  std::ostringstream os;
  std::function<void(Module*, const std::string&, int)> walk = [&](Module* m, const std::string& name, int depth) {
    int64_t own = 0;
    for (auto& p : m->params_) own += p->value.numel();
    os << std::string(2 * depth, ' ') << (name.empty() ? "" : name + ": ") << m->describe();
    if (own) os << "  [" << own << " params]";
    os << "\n";
    for (auto& c : m->children_) walk(c.second, c.first, depth + 1);
  };
  walk(this, "", 0);
  os << "parameters: " << num_trainable_parameters() << " trainable / " << num_parameters() << " total\n";
  return os.str();
}

}  // namespace kiln::nn
