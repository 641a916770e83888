// The model registry (trainers/models.h): each built-in model is a builder
// (its config section → its nn options) and one line in kBuiltin below.
#include "trainers/models.h"

#include <cmath>
#include <filesystem>
#include <mutex>
#include <set>
#include <sstream>

#include "data/safetensors.h"
#include "data/safetensors_tensor.h"
#include "nn/cnn.h"
#include "nn/gpt.h"
#include "nn/gpt_io.h"
#include "nn/mlp.h"
#include "nn/resnet.h"
#include "nn/vit.h"
#include "runtime/device.h"
#include "trainers/memory_estimate.h"
#include "trainers/run_checkpoint.h"

namespace kiln {

// --- builders ------------------------------------------------------------------

nn::GptOptions gpt_options(const TrainConfig& cfg) {
  const GptConfig& g = cfg.model.gpt;
  nn::GptOptions o;
  o.vocab_size = g.vocab_size;
  o.block_size = g.block_size;
  o.n_layer = g.n_layer;
  o.n_head = g.n_head;
  o.n_embd = g.n_embd;
  o.dropout = static_cast<float>(g.dropout);
  o.bias = g.bias;
  o.seed = cfg.seed;
  return o;
}

namespace {

// An image classifier's BuiltModel: the module and its FLOPs per image.
template <typename M>
BuiltModel image_model(std::unique_ptr<M> m) {
  BuiltModel b;
  b.train_flops_per_example = m->train_flops_per_example();
  b.module = std::move(m);
  return b;
}

nn::MlpOptions mlp_options(const TrainConfig& cfg, const DataShape& shape) {
  const MlpConfig& c = cfg.model.mlp;
  nn::MlpOptions o;
  o.in = shape.image.pixels();
  o.hidden = c.hidden;
  o.out = shape.image.classes;
  o.activation = c.activation == Activation::gelu ? nn::ActivationKind::gelu : nn::ActivationKind::relu;
  o.dropout = static_cast<float>(c.dropout);
  o.seed = cfg.seed;
  return o;
}

BuiltModel build_mlp(const TrainConfig& cfg, const DataShape& shape, std::shared_ptr<nn::RngStream> rng) {
  auto m = std::make_unique<nn::Mlp>(mlp_options(cfg, shape), std::move(rng));
  return image_model(std::move(m));
}

nn::CnnOptions cnn_options(const TrainConfig& cfg, const DataShape& shape) {
  const CnnConfig& c = cfg.model.cnn;
  nn::CnnOptions o;
  o.in_channels = shape.image.C;
  o.height = shape.image.H;
  o.width = shape.image.W;
  o.classes = shape.image.classes;
  o.channels = c.channels;
  o.blocks = c.blocks;
  o.kernel = c.kernel;
  o.pool = c.pool == "avg" ? nn::PoolKind::avg : nn::PoolKind::max;
  o.global_pool = c.head == "avgpool";
  o.hidden = c.hidden;
  o.dropout = static_cast<float>(c.dropout);
  o.bn_momentum = static_cast<float>(c.bn_momentum);
  o.seed = cfg.seed;
  return o;
}

BuiltModel build_cnn(const TrainConfig& cfg, const DataShape& shape, std::shared_ptr<nn::RngStream> rng) {
  auto m = std::make_unique<nn::Cnn>(cnn_options(cfg, shape), std::move(rng));
  return image_model(std::move(m));
}

nn::ResNetOptions resnet_options(const TrainConfig& cfg, const DataShape& shape) {
  const ResNetConfig& c = cfg.model.resnet;
  nn::ResNetOptions o;
  o.in_channels = shape.image.C;
  o.height = shape.image.H;
  o.width = shape.image.W;
  o.classes = shape.image.classes;
  o.channels = c.channels;
  o.blocks = c.blocks;
  o.zero_init_residual = c.zero_init_residual;
  o.bn_momentum = static_cast<float>(c.bn_momentum);
  o.seed = cfg.seed;
  return o;
}

BuiltModel build_resnet(const TrainConfig& cfg, const DataShape& shape, std::shared_ptr<nn::RngStream>) {
  auto m = std::make_unique<nn::ResNet>(resnet_options(cfg, shape));
  return image_model(std::move(m));
}

BuiltModel build_gpt(const TrainConfig& cfg, const DataShape& shape, std::shared_ptr<nn::RngStream> rng) {
  const int64_t V = cfg.model.gpt.vocab_size;
  KILN_INPUT_CHECK(shape.tokens.vocab <= V, "model.gpt.vocab_size: " << V << " is smaller than the tokenizer's "
                                                                     << shape.tokens.vocab << " tokens");
  auto m = std::make_unique<nn::Gpt>(gpt_options(cfg), std::move(rng));
  BuiltModel b;
  b.context = shape.tokens.context > 0 ? shape.tokens.context : cfg.model.gpt.block_size;
  KILN_INPUT_CHECK(b.context <= cfg.model.gpt.block_size,
                   "model.gpt.block_size: " << cfg.model.gpt.block_size << " is shorter than the " << b.context
                                            << "-token sequences of the data");
  b.vocab = V;
  b.train_flops_per_example = static_cast<double>(b.context) * m->train_flops_per_token(b.context);
  b.module = std::move(m);
  return b;
}

nn::VitOptions vit_options(const TrainConfig& cfg, const DataShape& shape) {
  const VitConfig& c = cfg.model.vit;
  nn::VitOptions o;
  o.image_h = shape.image.H;
  o.image_w = shape.image.W;
  o.channels = shape.image.C;
  o.classes = shape.image.classes;
  o.patch = c.patch;
  o.dim = c.dim;
  o.depth = c.depth;
  o.heads = c.heads;
  o.mlp_hidden = static_cast<int64_t>(std::lround(c.mlp_ratio * static_cast<double>(c.dim)));
  o.pool = c.pool == "mean" ? nn::VitPool::mean : nn::VitPool::cls;
  o.dropout = static_cast<float>(c.dropout);
  o.seed = cfg.seed;
  // Before anything is allocated: the patch must tile the data's images, and
  // a run that will use the GPU needs a head dimension its attention takes.
  const bool cuda = cfg.device == "cuda" || (cfg.device == "auto" && cuda_available());
  nn::check_vit_options(o, cuda, "model.vit.");
  return o;
}

BuiltModel build_vit(const TrainConfig& cfg, const DataShape& shape, std::shared_ptr<nn::RngStream> rng) {
  auto m = std::make_unique<nn::Vit>(vit_options(cfg, shape), std::move(rng));
  return image_model(std::move(m));
}

// --- size hooks (ModelSpec::size) --------------------------------------------------
// Each mirrors its model's constructor: the parameter count is exact (the
// registry test compares it with the built module's), the activations are the
// values the training forward keeps for backward, per example.

std::string int_list(const std::vector<int64_t>& v) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << "]";
  return os.str();
}

std::string batch_key(const TrainConfig& cfg) { return "train.batch_size=" + std::to_string(cfg.train.batch_size); }

// Parameters of a Linear(in, out) (weight + bias); doubles so that absurd
// sizes are reported rather than overflowed.
double linear_params(double in, double out, bool bias) { return in * out + (bias ? out : 0.0); }

// Pre-LN transformer block (ln_1, attention c_attn/c_proj, ln_2, MLP
// c_fc/c_proj) of width C and MLP hidden H.
double block_params(double C, double H, bool bias) {
  return 2 * (C + (bias ? C : 0)) + linear_params(C, 3 * C, bias) + linear_params(C, C, bias) +
         linear_params(C, H, bias) + linear_params(H, C, bias);
}
// Kept per token: ln_1 out, q/k/v, attention out (+ softmax statistics),
// residual, ln_2 out, c_fc out, GELU out, two dropout outputs.
double block_activations_per_token(double C, double H, double heads) { return 9 * C + 2 * H + heads; }

// Counts in doubles, stored as int64 when they fit (INT64_MAX otherwise:
// the bytes, computed from the double, are what the check reads).
int64_t clamp_count(double n) { return n < 9.2e18 ? static_cast<int64_t>(n) : INT64_MAX; }

ModelSize size_mlp(const TrainConfig& cfg, const DataShape& shape) {
  const nn::MlpOptions o = mlp_options(cfg, shape);
  ModelSize m;
  double params = 0, act = static_cast<double>(o.in);
  double width = static_cast<double>(o.in);
  for (int64_t h : o.hidden) {
    params += linear_params(width, static_cast<double>(h), true);
    act += static_cast<double>(h) * (o.dropout > 0 ? 3 : 2);  // Linear out, activation out, dropout out
    width = static_cast<double>(h);
  }
  params += linear_params(width, static_cast<double>(o.out), true);
  act += 2.0 * static_cast<double>(o.out);  // logits and their gradient
  m.parameters = clamp_count(params);
  m.activations_per_example = act;
  m.keys = "model.mlp.hidden=" + int_list(o.hidden) + " (on " + std::to_string(o.in) + " inputs, " +
           std::to_string(o.out) + " classes), " + batch_key(cfg);
  return m;
}

ModelSize size_gpt(const TrainConfig& cfg, const DataShape& shape) {
  const GptConfig& g = cfg.model.gpt;
  const double C = static_cast<double>(g.n_embd), L = static_cast<double>(g.n_layer);
  const double Vp = static_cast<double>(nn::padded_vocab_size(g.vocab_size));
  const double T = static_cast<double>(shape.tokens.context > 0 ? shape.tokens.context : g.block_size);
  ModelSize m;
  // wte (padded rows; the LM head shares it), wpe, the blocks, ln_f.
  const double params = Vp * C + static_cast<double>(g.block_size) * C + L * block_params(C, 4 * C, g.bias) +
                        C + (g.bias ? C : 0);
  m.parameters = clamp_count(params);
  // Per sequence: every block's tensors, the embedding output and ln_f's,
  // the logits and their gradient (padded width).
  m.activations_per_example =
      T * (L * block_activations_per_token(C, 4 * C, static_cast<double>(g.n_head)) + 2 * C + 2 * Vp);
  m.keys = "model.gpt.n_layer=" + std::to_string(g.n_layer) + ", model.gpt.n_embd=" + std::to_string(g.n_embd) +
           ", model.gpt.vocab_size=" + std::to_string(g.vocab_size) + ", model.gpt.block_size=" +
           std::to_string(g.block_size) + ", " + batch_key(cfg);
  return m;
}

ModelSize size_vit(const TrainConfig& cfg, const DataShape& shape) {
  const nn::VitOptions o = vit_options(cfg, shape);
  const double d = static_cast<double>(o.dim), h = static_cast<double>(o.mlp_hidden);
  const double patch_in = static_cast<double>(o.patch * o.patch * o.channels);
  const double N = static_cast<double>((o.image_h / o.patch) * (o.image_w / o.patch));
  const double tokens = N + (o.pool == nn::VitPool::cls ? 1 : 0);
  ModelSize m;
  const double params = linear_params(patch_in, d, true) + (o.pool == nn::VitPool::cls ? d : 0) + tokens * d +
                        static_cast<double>(o.depth) * block_params(d, h, o.bias) + d + (o.bias ? d : 0) +
                        linear_params(d, static_cast<double>(o.classes), true);
  m.parameters = clamp_count(params);
  m.activations_per_example =
      N * patch_in +
      tokens * (static_cast<double>(o.depth) * block_activations_per_token(d, h, static_cast<double>(o.heads)) + 2 * d) +
      2.0 * static_cast<double>(o.classes);
  m.keys = "model.vit.dim=" + std::to_string(o.dim) + ", model.vit.depth=" + std::to_string(o.depth) +
           ", model.vit.mlp_ratio=" + std::to_string(cfg.model.vit.mlp_ratio) + ", model.vit.patch=" +
           std::to_string(o.patch) + ", " + batch_key(cfg);
  return m;
}

ModelSize size_cnn(const TrainConfig& cfg, const DataShape& shape) {
  const nn::CnnOptions o = cnn_options(cfg, shape);
  ModelSize m;
  double params = 0, buffers = 0, act = 0;
  double c = static_cast<double>(o.in_channels);
  int64_t h = o.height, w = o.width;
  const double k2 = static_cast<double>(o.kernel * o.kernel);
  for (size_t st = 0; st < o.channels.size(); ++st) {
    for (int64_t b = 0; b < o.blocks[st]; ++b) {
      const double out = static_cast<double>(o.channels[st]);
      params += out * c * k2 + 2 * out;  // conv (no bias) + BatchNorm weight, bias
      buffers += 2 * out;                // running mean, variance
      act += 3.0 * static_cast<double>(h * w) * out;  // conv out, BN out, ReLU out
      c = out;
    }
    if (h >= 2 && w >= 2) {
      h /= 2;
      w /= 2;
      act += static_cast<double>(h * w) * c;
    }
  }
  double features = o.global_pool ? c : c * static_cast<double>(h * w);
  if (o.hidden > 0) {
    params += linear_params(features, static_cast<double>(o.hidden), true);
    act += 3.0 * static_cast<double>(o.hidden);
    features = static_cast<double>(o.hidden);
  }
  params += linear_params(features, static_cast<double>(o.classes), true);
  act += static_cast<double>(o.height * o.width * o.in_channels) + 2.0 * static_cast<double>(o.classes);
  m.parameters = clamp_count(params);
  m.buffers = clamp_count(buffers);
  m.activations_per_example = act;
  m.keys = "model.cnn.channels=" + int_list(o.channels) + ", model.cnn.blocks=" + int_list(o.blocks) +
           ", model.cnn.kernel=" + std::to_string(o.kernel) + ", model.cnn.hidden=" + std::to_string(o.hidden) +
           ", " + batch_key(cfg);
  return m;
}

ModelSize size_resnet(const TrainConfig& cfg, const DataShape& shape) {
  const nn::ResNetOptions o = resnet_options(cfg, shape);
  ModelSize m;
  double params = 0, buffers = 0, act = 0;
  int64_t h = o.height, w = o.width;
  auto conv_bn = [&](double in, double out, double k) {
    params += out * in * k * k + 2 * out;
    buffers += 2 * out;
  };
  double c = static_cast<double>(o.channels[0]);
  conv_bn(static_cast<double>(o.in_channels), c, 3);
  act += static_cast<double>(o.height * o.width * o.in_channels) + 3.0 * static_cast<double>(h * w) * c;
  for (size_t s = 0; s < o.channels.size(); ++s) {
    const double out = static_cast<double>(o.channels[s]);
    for (int64_t b = 0; b < o.blocks[s]; ++b) {
      const int64_t stride = (s > 0 && b == 0) ? 2 : 1;
      conv_bn(c, out, 3);
      conv_bn(out, out, 3);
      h = (h - 1) / stride + 1;
      w = (w - 1) / stride + 1;
      const bool projection = stride != 1 || c != out;
      if (projection) conv_bn(c, out, 1);
      // conv1, bn1, relu1, conv2, bn2, sum, relu2 (+ the projection's conv, bn)
      act += (projection ? 9.0 : 7.0) * static_cast<double>(h * w) * out;
      c = out;
    }
  }
  params += linear_params(c, static_cast<double>(o.classes), true);
  act += c + 2.0 * static_cast<double>(o.classes);
  m.parameters = clamp_count(params);
  m.buffers = clamp_count(buffers);
  m.activations_per_example = act;
  m.keys = "model.resnet.channels=" + int_list(o.channels) + ", model.resnet.blocks=" + int_list(o.blocks) + ", " +
           batch_key(cfg);
  return m;
}

// Hugging Face GPT-2 layout (Conv1D weights transposed, wte unpadded).
void gpt_init_from(nn::Module& model, const std::string& path) {
  auto* gpt = dynamic_cast<nn::Gpt*>(&model);
  KILN_CHECK(gpt, "model.init_from: the gpt entry built a " << model.describe());
  nn::import_gpt_safetensors(*gpt, path);
}

// The built-in models: one line each.
std::vector<ModelSpec> builtin_models() {
  return {
      {"mlp", ModelInput::images, build_mlp, nullptr, size_mlp},
      {"gpt", ModelInput::tokens, build_gpt, gpt_init_from, size_gpt},
      {"vit", ModelInput::images, build_vit, nullptr, size_vit},
      {"cnn", ModelInput::images, build_cnn, nullptr, size_cnn},
      {"resnet", ModelInput::images, build_resnet, nullptr, size_resnet},
  };
}

// --- the registry --------------------------------------------------------------------

struct Registry {
  std::mutex mu;
  std::vector<ModelSpec> specs = builtin_models();
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: static destructors may still look types up
  return *r;
}

}  // namespace

void register_model(ModelSpec spec) {
  KILN_CHECK(!spec.type.empty() && spec.build, "register_model: a model needs a type name and a factory");
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (const ModelSpec& s : r.specs)
    KILN_CHECK(s.type != spec.type, "register_model: model type '" << spec.type << "' is already registered");
  r.specs.push_back(std::move(spec));
}

const ModelSpec* find_model(const std::string& type) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (const ModelSpec& s : r.specs)
    if (s.type == type) return &s;
  return nullptr;
}

std::vector<std::string> registered_model_types() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<std::string> out;
  for (const ModelSpec& s : r.specs) out.push_back(s.type);
  return out;
}

ModelInput data_input(DatasetType type) {
  switch (type) {
    case DatasetType::fashion_mnist:
    case DatasetType::mnist:
    case DatasetType::idx:
      return ModelInput::images;
    case DatasetType::tokens:
    case DatasetType::sft:
      return ModelInput::tokens;
  }
  return ModelInput::images;
}

BuiltModel build_model(const TrainConfig& cfg, const DataShape& shape, std::shared_ptr<nn::RngStream> rng) {
  const ModelSpec* spec = find_model(cfg.model.type);
  KILN_INPUT_CHECK(spec, "model.type: '" << cfg.model.type << "' is not a registered model type");
  KILN_INPUT_CHECK(spec->input == data_input(cfg.data.type),
                   "model.type: " << cfg.model.type << " reads "
                                  << (spec->input == ModelInput::images ? "images" : "tokens")
                                  << ", which data.type does not provide");
  // A training run: its memory is checked before the factory allocates.
  const TrainingMemoryCheck* memory = TrainingMemoryCheck::active();
  if (memory && spec->size) memory->check(cfg, spec->size(cfg, shape));
  BuiltModel b = spec->build(cfg, shape, std::move(rng));
  KILN_CHECK(b.module, "model.type " << cfg.model.type << ": the factory built no module");
  if (memory && !spec->size) {
    // No hook: the parameters exist now, but gradients, optimizer state and
    // activations do not yet.
    ModelSize counted;
    counted.parameters = b.module->num_parameters();
    for (nn::Buffer* buf : b.module->buffers()) counted.buffers += buf->value.numel();
    counted.activations_known = false;
    counted.keys = "the model.type " + cfg.model.type + " section, train.batch_size=" +
                   std::to_string(cfg.train.batch_size);
    memory->check(cfg, counted);
  }
  return b;
}

void load_weights_by_name(nn::Module& model, const std::string& path) {
  load_tensors(read_safetensors(path), model_state(model), /*strict=*/true);
  model.refresh_lowp();
}

void check_init_from(const TrainConfig& cfg) {
  const std::string& f = cfg.model.init_from;
  if (f.empty()) return;
  std::error_code ec;
  if (std::filesystem::is_directory(f, ec)) {  // a kiln run: its newest valid checkpoint
    KILN_INPUT_CHECK(find_latest_valid_checkpoint(f).has_value(),
                     "model.init_from: '" << f << "' holds no valid checkpoint (looked in " << checkpoints_root(f)
                                          << ")");
    return;
  }
  KILN_INPUT_CHECK(std::filesystem::is_regular_file(f, ec),
                   "model.init_from: '" << f << "' is neither a file (safetensors weights) nor a run directory");
}

void apply_init_from(const TrainConfig& cfg, nn::Module& model) {
  if (cfg.model.init_from.empty()) return;
  check_init_from(cfg);
  std::error_code ec;
  if (std::filesystem::is_directory(cfg.model.init_from, ec)) {
    // The run's own checkpoint: every parameter and buffer by its kiln name
    // (config.cpp gave this config the run's architecture).
    load_model_state(load_checkpoint(*find_latest_valid_checkpoint(cfg.model.init_from)), model);
    return;
  }
  const ModelSpec* spec = find_model(cfg.model.type);
  KILN_INPUT_CHECK(spec, "model.type: '" << cfg.model.type << "' is not a registered model type");
  if (spec->init_from) spec->init_from(model, cfg.model.init_from);
  else load_weights_by_name(model, cfg.model.init_from);
}

}  // namespace kiln
