// parity_driver: kiln's side of the PyTorch parity tests (tests/parity/).
//
//   parity_driver --case NAME --dtype f32|f64|bf16 --out DIR
//   parity_driver --list
//
// Builds the case's tiny model with kiln's own init (plus the case's noise),
// then writes into DIR
//   init.safetensors    the initial weights (f32, kiln names and layouts)
//   batch.safetensors   "input" (as the case made it) and "targets" (int32)
//   logits.safetensors  "logits" of the first forward, "final_logits" after training
//   grads.safetensors   every trainable parameter's gradient after the first backward
//   final.safetensors   the weights after `schedule.total_steps` optimizer steps
//   case.json           the model config, optimizer, schedule, clip norm, and per
//                       step: lr, loss, grad_norm, clip_scale; each parameter's
//                       shape and decay flag; final_loss; the case's extra files
// Training runs on the one batch, as llm.c's check does: per step zero_grad,
// forward, cross-entropy (mean over non-ignored rows), backward, global norm,
// nn::clip_scale, Optimizer::step(schedule.lr(step), scale).
//
// dtypes: f32 (the CPU backend), f64 (the CPU backend in double, as the
// gradient checks run it: everything but the optimizer's float
// hyperparameters is double), bf16 (CUDA: bf16 compute on fp32 master weights;
// exit status 77 with the reason when no GPU is usable).
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "data/safetensors_tensor.h"
#include "nn/loss.h"
#include "nn/optimizer.h"
#include "runtime/device.h"
#include "runtime/error.h"
#include "tests/parity/parity_case.h"

namespace kiln::parity {

namespace {

std::map<std::string, Case>& registry() {
  static std::map<std::string, Case> r;
  return r;
}

}  // namespace

bool register_case(Case c) {
  KILN_CHECK(!c.name.empty() && registry().count(c.name) == 0, "parity case '" << c.name << "' registered twice");
  const std::string name = c.name;
  registry().emplace(name, std::move(c));
  return true;
}

std::vector<const Case*> cases() {
  std::vector<const Case*> out;
  for (auto& [name, c] : registry()) out.push_back(&c);
  return out;
}

namespace {

constexpr int kSkipped = 77;  // ctest SKIP_RETURN_CODE

struct Run {
  DType master = DType::f32;
  DType compute = DType::f32;
  Device device = Device::cpu();
};

// Adds the case's N(0, σ²) to every parameter (host, f32), then its fix-up.
void perturb(nn::Module& m, const Case& c) {
  uint64_t offset = 0;
  for (nn::Parameter* p : m.parameters()) {
    std::vector<float> v = p->value.to_vector();
    if (c.init_noise > 0.0f) {
      Tensor noise = Tensor::empty(p->value.shape(), DType::f32, Device::cpu());
      offset = noise.normal_(/*seed=*/20261203, offset, 0.0f, c.init_noise);
      const std::vector<float> n = noise.to_vector();
      for (size_t i = 0; i < v.size(); ++i) v[i] += n[i];
    }
    if (c.fix_param) c.fix_param(*p, v);
    p->value.copy_from(Tensor::from_vector(v, p->value.shape(), p->value.dtype(), Device::cpu()));
  }
}

// Host tensor in the master dtype (bf16 logits are widened to f32).
Tensor for_file(const Tensor& t, DType master) {
  Tensor h = t.device().is_cpu() ? t : t.to(Device::cpu());
  return h.dtype() == master ? h.clone() : h.cast(master);
}

std::vector<NamedTensor> weights(nn::Module& m, DType master) {
  std::vector<NamedTensor> out;
  for (nn::Parameter* p : m.parameters()) out.emplace_back(p->name, for_file(p->value, master));
  return out;
}

const char* dtype_arg(DType t) { return t == DType::f64 ? "f64" : t == DType::bf16 ? "bf16" : "f32"; }

nlohmann::json optimizer_json(const nn::OptimizerOptions& o) {
  KILN_CHECK(o.kind == nn::OptimizerKind::adamw, "parity cases train with AdamW");
  return {{"type", "adamw"},
          {"weight_decay", o.weight_decay},
          {"beta1", o.beta1},
          {"beta2", o.beta2},
          {"eps", o.eps},
          {"no_decay_on_bias_and_norm", o.no_decay_on_bias_and_norm}};
}

nlohmann::json schedule_json(const nn::ScheduleConfig& s) {
  KILN_CHECK(s.type == nn::ScheduleType::cosine, "parity cases use the cosine schedule (warm-up + cosine)");
  return {{"type", "cosine"},
          {"lr", s.lr},
          {"warmup_steps", s.warmup_steps},
          {"total_steps", s.total_steps},
          {"min_lr_ratio", s.min_lr_ratio}};
}

int run_case(const Case& c, const Run& run, const std::string& dir) {
  std::filesystem::create_directories(dir);
  Built built = c.build();
  nn::Module& model = *built.model;
  perturb(model, c);
  write_named_tensors(dir + "/init.safetensors", weights(model, DType::f32));
  model.to(run.device, run.master, run.compute);
  if (c.prepare) c.prepare(model, run.device);

  Batch batch = c.batch();
  const int64_t rows = static_cast<int64_t>(batch.targets.size());
  write_named_tensors(dir + "/batch.safetensors",
                      {{"input", batch.input},
                       {"targets", Tensor::from_vector(batch.targets, {rows}, Device::cpu())}});
  Tensor x = batch.input.device() == run.device ? batch.input : batch.input.to(run.device);
  if (x.dtype() != DType::i32 && x.dtype() != run.compute) x = x.cast(run.compute);
  x.set_name("input");

  std::vector<nn::Parameter*> params = model.trainable_parameters();
  nn::Optimizer optimizer(params, c.optim);
  const nn::LrSchedule schedule(c.schedule);
  nn::CrossEntropyLoss ce;
  nlohmann::json steps = nlohmann::json::array();
  std::vector<NamedTensor> logits_out, grads_out;
  model.train();
  for (int64_t step = 0; step < c.schedule.total_steps; ++step) {
    model.zero_grad();
    Tensor logits = model.forward(x);  // (rows..., Vp)
    if (step == 0) logits_out.emplace_back("logits", for_file(logits, run.master));
    const nn::LossSum ls = ce.forward_backward(logits, batch.targets, batch.classes, 1.0f);
    model.backward(logits);  // logits now hold dL/dlogits
    if (step == 0)
      for (nn::Parameter* p : params) grads_out.emplace_back(p->name, for_file(p->grad, run.master));
    const double norm = nn::grad_norm(params);
    const double lr = schedule.lr(step);
    const float scale = nn::clip_scale(norm, c.max_norm);
    optimizer.step(lr, scale);
    steps.push_back({{"step", step},
                     {"lr", lr},
                     {"loss", ls.sum / static_cast<double>(ls.count)},
                     {"grad_norm", norm},
                     {"clip_scale", scale}});
  }
  model.eval();
  Tensor final_logits = model.forward(x);
  logits_out.emplace_back("final_logits", for_file(final_logits, run.master));
  const nn::LossSum final_ls = ce.forward(final_logits, batch.targets, batch.classes);

  write_named_tensors(dir + "/logits.safetensors", logits_out);
  write_named_tensors(dir + "/grads.safetensors", grads_out);
  write_named_tensors(dir + "/final.safetensors", weights(model, run.master));

  nlohmann::json extra = nlohmann::json::object();
  if (c.after_training) c.after_training(model, run.master, dir, extra);

  nlohmann::json plist = nlohmann::json::array();
  for (nn::Parameter* p : model.parameters())
    plist.push_back({{"name", p->name}, {"shape", p->value.shape().vec()}, {"decay", p->decay},
                     {"trainable", p->trainable}});
  nlohmann::json out = {{"case", c.name},
                        {"torch_model", c.torch_model},
                        {"dtype", dtype_arg(run.compute)},
                        {"master_dtype", dtype_arg(run.master)},
                        {"device", run.device.str()},
                        {"model", built.config},
                        {"classes", batch.classes},
                        {"optimizer", optimizer_json(c.optim)},
                        {"schedule", schedule_json(c.schedule)},
                        {"max_norm", c.max_norm},
                        {"params", plist},
                        {"steps", steps},
                        {"final_loss", final_ls.sum / static_cast<double>(final_ls.count)},
                        {"extra", extra}};
  std::ofstream f(dir + "/case.json");
  f << out.dump(1) << "\n";
  KILN_CHECK(f.good(), "parity_driver: cannot write " << dir << "/case.json");
  return 0;
}

int usage(const char* why) {
  if (why) std::fprintf(stderr, "parity_driver: %s\n", why);
  std::fprintf(stderr, "usage: parity_driver --case NAME --dtype f32|f64|bf16 --out DIR\n       parity_driver --list\n");
  return 2;
}

}  // namespace
}  // namespace kiln::parity

int main(int argc, char** argv) {
  using namespace kiln;
  using namespace kiln::parity;
  std::string name, dtype = "f32", out;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--list") {
      for (const Case* c : cases()) std::printf("%s torch_%s.py\n", c->name.c_str(), c->torch_model.c_str());
      return 0;
    }
    if (i + 1 >= argc) return usage(("missing value after " + a).c_str());
    if (a == "--case") name = argv[++i];
    else if (a == "--dtype") dtype = argv[++i];
    else if (a == "--out") out = argv[++i];
    else return usage(("unknown argument " + a).c_str());
  }
  if (name.empty() || out.empty()) return usage("needs --case and --out");
  const Case* found = nullptr;
  for (const Case* c : cases())
    if (c->name == name) found = c;
  if (!found) return usage(("no case '" + name + "' (see --list)").c_str());
  Run run;
  if (dtype == "f64") {
    run.master = run.compute = DType::f64;
  } else if (dtype == "bf16") {
    if (!cuda_available()) {
      std::printf("parity_driver: SKIPPED: bf16 parity needs a CUDA device: %s\n", cuda_unavailable_reason().c_str());
      return kSkipped;
    }
    run.device = Device::cuda(0);
    run.compute = DType::bf16;
  } else if (dtype != "f32") {
    return usage(("unknown dtype " + dtype).c_str());
  }
  try {
    return run_case(*found, run, out);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parity_driver: %s (%s): error: %s\n", name.c_str(), dtype.c_str(), e.what());
    return 1;
  }
}
