// The model registry (trainers/models.h): each built-in model is a builder
// (its config section → its nn options) and one line in kBuiltin below.
#include "trainers/models.h"

#include <cmath>
#include <filesystem>
#include <mutex>
#include <set>

#include "data/safetensors.h"
#include "data/safetensors_tensor.h"
#include "nn/cnn.h"
#include "nn/gpt.h"
#include "nn/gpt_io.h"
#include "nn/mlp.h"
#include "nn/resnet.h"
#include "nn/vit.h"
#include "runtime/device.h"
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

BuiltModel build_mlp(const TrainConfig& cfg, const DataShape& shape, std::shared_ptr<nn::RngStream> rng) {
  const MlpConfig& c = cfg.model.mlp;
  nn::MlpOptions o;
  o.in = shape.image.pixels();
  o.hidden = c.hidden;
  o.out = shape.image.classes;
  o.activation = c.activation == Activation::gelu ? nn::ActivationKind::gelu : nn::ActivationKind::relu;
  o.dropout = static_cast<float>(c.dropout);
  o.seed = cfg.seed;
  auto m = std::make_unique<nn::Mlp>(o, std::move(rng));
  BuiltModel b;
  b.train_flops_per_example = m->train_flops_per_example();
  b.module = std::move(m);
  return b;
}

BuiltModel build_cnn(const TrainConfig& cfg, const DataShape& shape, std::shared_ptr<nn::RngStream> rng) {
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
  auto m = std::make_unique<nn::Cnn>(o, std::move(rng));
  BuiltModel b;
  b.train_flops_per_example = m->train_flops_per_example();
  b.module = std::move(m);
  return b;
}

BuiltModel build_resnet(const TrainConfig& cfg, const DataShape& shape, std::shared_ptr<nn::RngStream>) {
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
  auto m = std::make_unique<nn::ResNet>(o);
  BuiltModel b;
  b.train_flops_per_example = m->train_flops_per_example();
  b.module = std::move(m);
  return b;
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

BuiltModel build_vit(const TrainConfig& cfg, const DataShape& shape, std::shared_ptr<nn::RngStream> rng) {
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
  auto m = std::make_unique<nn::Vit>(o, std::move(rng));
  BuiltModel b;
  b.train_flops_per_example = m->train_flops_per_example();
  b.module = std::move(m);
  return b;
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
      {"mlp", ModelInput::images, build_mlp, nullptr},
      {"gpt", ModelInput::tokens, build_gpt, gpt_init_from},
      {"vit", ModelInput::images, build_vit, nullptr},
      {"cnn", ModelInput::images, build_cnn, nullptr},
      {"resnet", ModelInput::images, build_resnet, nullptr},
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
  BuiltModel b = spec->build(cfg, shape, std::move(rng));
  KILN_CHECK(b.module, "model.type " << cfg.model.type << ": the factory built no module");
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
