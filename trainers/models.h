// The model registry: `model.type` → a factory that builds the nn::Module
// from the config and the shape of the data (design decision 10: a model is
// one file and one line).
//
// Adding a model is three pieces and no edit anywhere else:
//   1. its nn file (nn/<model>.{h,cpp}: the Module),
//   2. its schema section in trainers/config.cpp (model.<type>: its options,
//      `.when("model.type", {"<type>"})`) and the struct member in config.h,
//   3. one line in the table in trainers/models.cpp:
//        {"<type>", ModelInput::images, build_<type>},
//      with build_<type> (config section → the module's options) beside it.
// `model.type` is checked against this registry when a config is read (the
// choices `kiln keys` lists are the registered types), image data needs a
// ModelInput::images model and token data a ModelInput::tokens one, and the
// task builds whatever the registry gives it: no switch on type names
// anywhere else.
//
// Tests and tools may register a model at run time (register_model) before
// they read a config that uses it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nn/gpt.h"
#include "nn/module.h"
#include "nn/rng.h"
#include "trainers/config.h"

namespace kiln {

/// What a model reads.
enum class ModelInput {
  images,  ///< (B, H, W, C) pixels (NHWC; the MLP flattens them): classifiers
  tokens,  ///< (B, T) int32 token ids: language models
};

/// The image data an image model is built for (NHWC).
struct ImageShape {
  int64_t H = 0, W = 0, C = 0;
  int64_t classes = 0;
  int64_t pixels() const { return H * W * C; }  ///< values per image
};

/// The token data a language model is built for.
struct TokenShape {
  int64_t vocab = 0;    ///< the tokenizer's vocabulary (0 = no tokenizer: the model's own size stands)
  int64_t context = 0;  ///< sequence length wanted (0 = the model's own context)
};

/// What the data looks like; the field matching the model's input is set.
struct DataShape {
  ImageShape image;
  TokenShape tokens;
};

/// A freshly built model (random initialization, on the CPU, fp32).
struct BuiltModel {
  std::unique_ptr<nn::Module> module;
  /// Training FLOPs (forward + backward) per example, for MFU: per image, or
  /// per sequence of `context` tokens. 0 = unknown (no MFU reported).
  double train_flops_per_example = 0;
  int64_t context = 0;  ///< language models: tokens per sequence (T)
  int64_t vocab = 0;    ///< language models: real vocabulary (V; the logits may be padded wider)
};

/// Builds a model of one type. `rng` is the model's random stream (dropout);
/// initialization draws from `cfg.seed`. Throws InputError naming the config
/// key when the config and the data do not fit (e.g. a vocabulary smaller
/// than the tokenizer's).
using ModelFactory = std::function<BuiltModel(const TrainConfig& cfg, const DataShape& shape,
                                              std::shared_ptr<nn::RngStream> rng)>;

/// What a model of a config and data shape holds, worked out without
/// building it (trainers/memory_estimate.h turns it into bytes, and the
/// trainer refuses a model that cannot fit before allocating any of it).
struct ModelSize {
  int64_t parameters = 0;  ///< exactly the built module's num_parameters()
  int64_t buffers = 0;     ///< buffer elements (BatchNorm running statistics)
  /// Values the training forward keeps for backward, per example (an
  /// estimate: the tensors modules hold between forward and backward).
  double activations_per_example = 0;
  bool activations_known = true;
  /// The config keys that drive the size, with their values, for messages:
  /// "model.mlp.hidden=[1048576, 1048576], train.batch_size=32".
  std::string keys;
};

/// A model type's size hook (ModelSpec::size).
using ModelSizer = std::function<ModelSize(const TrainConfig& cfg, const DataShape& shape)>;

/// Loads `model.init_from` (a file path) into a freshly built model. Empty:
/// the default, load_weights_by_name.
using InitFromLoader = std::function<void(nn::Module& model, const std::string& path)>;

/// One registered model type.
struct ModelSpec {
  std::string type;      ///< the model.type value ("mlp", "gpt")
  ModelInput input = ModelInput::images;
  ModelFactory build;
  InitFromLoader init_from;  ///< empty: load_weights_by_name
  /// Size from the config alone, so a training run that cannot fit stops
  /// before the factory allocates. Empty: counted from the built module
  /// (activations unknown).
  ModelSizer size = {};  // (a default: registrations may leave it out)
};

/// Adds a model type (tests, tools; the built-in ones are in models.cpp's
/// table). Error if the type is already registered. Register before reading
/// a config that names it.
void register_model(ModelSpec spec);

/// The spec of a registered type, or nullptr.
const ModelSpec* find_model(const std::string& type);

/// Every registered type, in registration order (built-in ones first).
std::vector<std::string> registered_model_types();

/// Builds cfg.model.type for data of `shape`. InputError for an unknown type
/// (naming model.type) or a model/data mismatch. Under a
/// TrainingMemoryCheck (trainers/memory_estimate.h), first the model's
/// training memory is estimated and checked: InputError naming the keys when
/// it cannot fit.
BuiltModel build_model(const TrainConfig& cfg, const DataShape& shape, std::shared_ptr<nn::RngStream> rng);

/// What a data.type feeds a model (images for the IDX types, tokens for
/// token shards and SFT).
ModelInput data_input(DatasetType type);

/// Loads every parameter and buffer of `model` from a safetensors file by its
/// full name ("layers.0.weight"), shape checked, converting floating dtypes;
/// then refreshes bf16 copies. InputError naming the file and the tensor for
/// a missing, mis-shaped or unused tensor (a file of another model).
void load_weights_by_name(nn::Module& model, const std::string& path);

/// Applies cfg.model.init_from (when set) to a freshly built model of
/// cfg.model.type: the type's own loader (GPT: Hugging Face GPT-2 layout) or
/// load_weights_by_name. InputError naming model.init_from when the file does
/// not exist.
void apply_init_from(const TrainConfig& cfg, nn::Module& model);

/// The GPT a config's model.gpt section describes (seed = the config's seed).
nn::GptOptions gpt_options(const TrainConfig& cfg);

/// InputError naming model.init_from when it is set and no such file exists
/// (the trainer checks this before building data, so a typo stops at once).
void check_init_from(const TrainConfig& cfg);

}  // namespace kiln
