// TrainConfig: the one typed, validated config every recipe runs from (MLP,
// CNN/ResNet and ViT on images; GPT pretraining, SFT and LoRA on tokens).
//
// A YAML file (plus `key.sub=value` command-line overrides) is read once, at
// start-up, by load_config(); every problem is a kiln::InputError naming the
// file, line, column and key path, so the CLI can exit with status 2 before
// anything is allocated. The defaults, ranges and doc lines of every key live
// in one place, the schema in config.cpp; the struct members below carry no
// defaults of their own (a TrainConfig that did not come from load_config or
// parse_config holds zeros).
//
//   name: mlp_fashion
//   model: {type: mlp, mlp: {hidden: [256, 128]}}
//   optim: {lr: 0.001}
//   train: {batch_size: 128, epochs: 10}
//
// Sections that belong to one model or data type (model.gpt, sft, ...) and
// fields that belong to one optimizer or schedule (optim.momentum,
// schedule.gamma) are errors when given for another type, and to_yaml()
// leaves them out.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

namespace config {
class Schema;
}

enum class Precision { fp32, bf16 };
enum class Activation { relu, gelu };
enum class DatasetType { fashion_mnist, mnist, idx, tokens, sft };
enum class OptimizerType { adamw, sgd };
enum class LrScheduleType { constant, cosine, linear, step };
enum class NonfiniteAction { skip, stop };

struct MlpConfig {
  std::vector<int64_t> hidden;  ///< hidden layer widths, input to output
  Activation activation{};
  double dropout = 0;
};

/// Plain CNN (nn/cnn.h): one stage per entry of `channels`, `blocks[i]`
/// conv-BN-ReLU layers in stage i, each stage followed by 2x2 pooling.
struct CnnConfig {
  std::vector<int64_t> channels;
  std::vector<int64_t> blocks;
  int64_t kernel = 0;     ///< odd convolution window
  std::string pool;       ///< "max" or "avg" (after each stage)
  std::string head;       ///< "flatten" or "avgpool" (global average) before the Linear head
  int64_t hidden = 0;     ///< hidden Linear width in the head (0 = none)
  double dropout = 0;     ///< before the last Linear (with hidden)
  double bn_momentum = 0;
};

/// ResNet (nn/resnet.h): one stage per entry of `channels`, `blocks[i]`
/// basic blocks in stage i (stride 2 and a projection at each later stage).
struct ResNetConfig {
  std::vector<int64_t> channels;
  std::vector<int64_t> blocks;
  bool zero_init_residual = false;  ///< each block's last BatchNorm starts at weight 0
  double bn_momentum = 0;
};

/// Training-set augmentation for image data (kernels/augment.h).
struct AugmentConfig {
  int64_t crop_padding = 0;  ///< random crop after zero padding by this many pixels (0 = off)
  bool hflip = false;        ///< random horizontal flips
};

struct VitConfig {
  int64_t patch = 0;  ///< square patch side in pixels
  int64_t dim = 0;    ///< embedding width
  int64_t depth = 0;  ///< transformer blocks
  int64_t heads = 0;
  double mlp_ratio = 0;  ///< MLP hidden width = mlp_ratio · dim
  std::string pool;      ///< "cls" (class token) or "mean" (average of the patch tokens)
  double dropout = 0;    ///< after the token embedding and each block's attention and MLP projections
};

struct GptConfig {
  int64_t vocab_size = 0;
  int64_t block_size = 0;  ///< context length
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_embd = 0;
  double dropout = 0;
  bool bias = false;  ///< biases in Linear and LayerNorm layers (GPT-2 has them)
};

struct ModelConfig {
  std::string type;       ///< a registered model type (trainers/models.h): "mlp", "gpt", ...
  std::string init_from;  ///< safetensors weights to start from ("" = random init)
  MlpConfig mlp;
  CnnConfig cnn;
  ResNetConfig resnet;
  VitConfig vit;
  GptConfig gpt;
};

struct DataConfig {
  DatasetType type{};
  std::string path;  ///< IDX directory (image types) or JSONL file (sft); resolved
  double val_fraction = 0;
  bool normalize = false;
  double mean = 0, std = 0;  ///< normalization of pixels scaled to [0, 1]
  bool shuffle = false;
  int num_workers = 0;  ///< loader threads preparing the next step (0 or 1)
  std::string train_shards;  ///< glob of token shards (tokens)
  std::string val_shards;    ///< glob of token shards (tokens)
  std::string tokenizer;     ///< tokenizer directory (tokens, sft)
  std::vector<std::string> text_files;  ///< text to build token shards from (tokens)
  std::string val_path, test_path;      ///< held-out JSONL files (sft)
  bool pack = false;                    ///< pack examples first-fit into windows (sft)
  bool skip_bad_lines = false;          ///< count and skip bad JSONL lines instead of stopping (sft)
  std::string cmudict;                  ///< CMU dictionary to build the sft splits from when missing
  AugmentConfig augment;                ///< image data: training-set augmentation
};

struct OptimConfig {
  OptimizerType type{};
  double lr = 0;
  double weight_decay = 0;
  double beta1 = 0, beta2 = 0, eps = 0;  ///< adamw
  double momentum = 0;                   ///< sgd
  bool nesterov = false;                 ///< sgd
  double grad_clip = 0;                  ///< max global gradient norm (0 = off)
  bool no_decay_on_bias_and_norm = false;
};

struct ScheduleSection {
  LrScheduleType type{};
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0;  ///< cosine, linear
  int64_t step_size = 0;    ///< step
  double gamma = 0;         ///< step
};

struct TrainSection {
  int64_t batch_size = 0;    ///< micro-batch per process
  int64_t grad_accum = 0;    ///< micro-batches per optimizer step
  int64_t global_batch = 0;  ///< samples per optimizer step over all processes (0 = derived)
  int64_t epochs = 0;        ///< 0 = no epoch limit (max_steps bounds the run)
  int64_t max_steps = 0;     ///< 0 = no step limit (epochs bound the run)
  int64_t eval_every = 0;
  int64_t eval_batches = 0;
  int64_t log_every = 0;
  int64_t checkpoint_every = 0;
  int64_t keep_last = 0;
  std::string resume;  ///< "none", "auto" or a checkpoint path
  int64_t sample_every = 0;
  bool deterministic = false;
  double label_smoothing = 0;  ///< image classifiers: cross-entropy label smoothing
};

struct DistConfig {
  int zero_stage = 0;
  double bucket_mb = 0;
  NonfiniteAction on_nonfinite{};
  int64_t timeout_s = 0;
};

struct LoraConfig {
  bool enabled = false;
  int64_t rank = 0;
  double alpha = 0;
  std::vector<std::string> targets;  ///< Linear name patterns that get adapters (nn::lora_target_matches)
  double dropout = 0;
};

struct SftConfig {
  std::string prompt_template;  ///< must contain "{prompt}"
  int64_t max_len = 0;
  std::string overflow;         ///< "truncate" (the prompt's left) or "drop" examples longer than max_len
  int64_t eval_examples = 0;    ///< held-out prompts answered by generation per evaluation (0 = none)
  int64_t max_new_tokens = 0;   ///< generation limit per answer
};

struct MfuConfig {
  double peak_tflops = 0;  ///< 0 = the device's table value
};

struct TrainConfig {
  std::string name;
  uint64_t seed = 0;
  std::string device;  ///< "auto", "cpu" or "cuda" (see resolve_device)
  Precision precision{};
  std::string output_dir;
  int threads = 0;  ///< CPU threads, 0 = all cores
  ModelConfig model;
  DataConfig data;
  OptimConfig optim;
  ScheduleSection schedule;
  TrainSection train;
  DistConfig dist;
  LoraConfig lora;
  SftConfig sft;
  MfuConfig mfu;
};

/// Where `data.type: fashion_mnist` looks when `data.path` is empty (Debian's
/// dataset-fashion-mnist).
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

/// Reads the YAML file at `path`, applies `overrides` ("key.sub=value", value
/// parsed as YAML) and checks everything. Derived defaults: `name` is the
/// file's stem, `output_dir` is runs/<name>, an empty `data.path` for
/// fashion_mnist is kFashionMnistDir. Throws kiln::InputError.
TrainConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});

/// Same, from YAML text; `source` names it in messages and its stem is the
/// default `name`.
TrainConfig parse_config(const std::string& yaml_text, const std::string& source,
                         const std::vector<std::string>& overrides = {});

/// The resolved config as YAML: every field that applies to the chosen types,
/// defaults filled in, each with its doc line as a comment. Loading it back
/// gives an equal config.
std::string to_yaml(const TrainConfig& c, bool docs = true);

/// Field-by-field equality (over every schema field).
bool operator==(const TrainConfig& a, const TrainConfig& b);
inline bool operator!=(const TrainConfig& a, const TrainConfig& b) { return !(a == b); }

/// Every key with its type, default, allowed values and doc (for
/// `kiln validate --keys` and the docs).
std::string config_reference();

/// The schema itself (for tests and tools).
const config::Schema& train_config_schema();

}  // namespace kiln
