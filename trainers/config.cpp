// The TrainConfig schema: every key, its default, its allowed values and its
// doc line, in one place. A new key is one line here plus a struct member.
#include "trainers/config.h"

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "runtime/error.h"
#include "trainers/config_schema.h"
#include "trainers/models.h"

namespace kiln {

namespace {

using config::Locator;
using config::Schema;

constexpr int64_t kMaxInt = std::numeric_limits<int64_t>::max();

void declare(Schema& s) {
  auto top = s.root<TrainConfig>();
  top.string("name", &TrainConfig::name, "", "run name (default: the config file's name without .yaml)");
  top.integer("seed", &TrainConfig::seed, 1337, "seed for initialization, shuffling and dropout").range(0, kMaxInt);
  top.choice("device", &TrainConfig::device, {"auto", "cpu", "cuda"}, "auto",
             "where to train: auto picks a GPU when one exists");
  top.choice("precision", &TrainConfig::precision, {{"fp32", Precision::fp32}, {"bf16", Precision::bf16}}, "fp32",
             "activation/matmul precision on the GPU (master weights are always fp32)");
  top.string("output_dir", &TrainConfig::output_dir, "", "run directory (default: runs/<name>)");
  top.integer("threads", &TrainConfig::threads, 0,
              "CPU threads (0 = the CPUs this process may run on, shared by the processes of a node)")
      .range(0, 4096);

  // --- model ---
  auto model = top.section("model", &TrainConfig::model, "the network");
  // The choices are the model registry's types (trainers/models.h); models
  // registered later are added by train_config_schema().
  model.choice("type", &ModelConfig::type, registered_model_types(), "",
               "architecture (a registered model type); its own section below holds its options")
      .required();
  model.string("init_from", &ModelConfig::init_from, "",
               "weights to start from: a kiln run directory (its newest valid checkpoint; the model section and "
               "data.tokenizer then come from its config.yaml) or a safetensors file (empty = random init)");

  auto mlp = model.section("mlp", &ModelConfig::mlp, "multi-layer perceptron").when("model.type", {"mlp"});
  mlp.integers("hidden", &MlpConfig::hidden, {256, 128}, "hidden layer widths").range(1, 1 << 20).items(0, 64);
  mlp.choice("activation", &MlpConfig::activation, {{"relu", Activation::relu}, {"gelu", Activation::gelu}}, "relu",
             "activation between layers");
  mlp.number("dropout", &MlpConfig::dropout, 0.0, "dropout after each hidden activation").min(0.0).below(1.0);

  auto cnn = model.section("cnn", &ModelConfig::cnn, "plain convolutional network").when("model.type", {"cnn"});
  cnn.integers("channels", &CnnConfig::channels, {32, 64}, "channels of each stage").range(1, 65536).items(1, 16);
  cnn.integers("blocks", &CnnConfig::blocks, {1, 1}, "conv-BN-ReLU layers in each stage").range(1, 256).items(1, 16);
  cnn.integer("kernel", &CnnConfig::kernel, 3, "convolution window (odd; padded to keep the size)").range(1, 31);
  cnn.choice("pool", &CnnConfig::pool, {"max", "avg"}, "max", "2x2 pooling after each stage");
  cnn.choice("head", &CnnConfig::head, {"flatten", "avgpool"}, "flatten",
             "features into the head: all of them (flatten) or their global average per channel");
  cnn.integer("hidden", &CnnConfig::hidden, 0, "hidden Linear width in the head (0 = none)").range(0, 1 << 20);
  cnn.number("dropout", &CnnConfig::dropout, 0.0, "dropout before the last Linear (needs hidden)")
      .min(0.0)
      .below(1.0);
  cnn.number("bn_momentum", &CnnConfig::bn_momentum, 0.1, "BatchNorm running-statistics momentum").range(0.0, 1.0);

  auto resnet = model.section("resnet", &ModelConfig::resnet, "residual network").when("model.type", {"resnet"});
  resnet.integers("channels", &ResNetConfig::channels, {32, 64, 128}, "channels of each stage")
      .range(1, 65536)
      .items(1, 16);
  resnet.integers("blocks", &ResNetConfig::blocks, {2, 2, 2}, "residual blocks in each stage")
      .range(1, 256)
      .items(1, 16);
  resnet.boolean("zero_init_residual", &ResNetConfig::zero_init_residual, false,
                 "start each block's last BatchNorm weight at 0 (every block begins as the identity)");
  resnet.number("bn_momentum", &ResNetConfig::bn_momentum, 0.1, "BatchNorm running-statistics momentum")
      .range(0.0, 1.0);

  auto vit = model.section("vit", &ModelConfig::vit, "vision transformer").when("model.type", {"vit"});
  vit.integer("patch", &VitConfig::patch, 4, "patch side in pixels (must divide the image side)").range(1, 1024);
  vit.integer("dim", &VitConfig::dim, 64, "embedding width").range(1, 65536);
  vit.integer("depth", &VitConfig::depth, 6, "transformer blocks").range(1, 1024);
  vit.integer("heads", &VitConfig::heads, 4, "attention heads (must divide dim)").range(1, 1024);
  vit.number("mlp_ratio", &VitConfig::mlp_ratio, 4.0, "MLP hidden width as a multiple of dim").above(0.0).max(64.0);
  vit.choice("pool", &VitConfig::pool, {"cls", "mean"}, "cls",
             "classifier input: a learned class token (cls) or the mean of the patch tokens (mean)");
  vit.number("dropout", &VitConfig::dropout, 0.0, "dropout after the embedding and each attention/MLP projection")
      .min(0.0)
      .below(1.0);

  auto gpt = model.section("gpt", &ModelConfig::gpt, "GPT-2 style decoder").when("model.type", {"gpt"});
  gpt.integer("vocab_size", &GptConfig::vocab_size, 50257, "vocabulary size").range(1, 1 << 24);
  gpt.integer("block_size", &GptConfig::block_size, 1024, "context length in tokens").range(1, 1 << 20);
  gpt.integer("n_layer", &GptConfig::n_layer, 12, "transformer blocks").range(1, 1024);
  gpt.integer("n_head", &GptConfig::n_head, 12, "attention heads (must divide n_embd)").range(1, 1024);
  gpt.integer("n_embd", &GptConfig::n_embd, 768, "embedding width").range(1, 1 << 16);
  gpt.number("dropout", &GptConfig::dropout, 0.0, "dropout on embeddings, attention and MLP outputs")
      .min(0.0)
      .below(1.0);
  gpt.boolean("bias", &GptConfig::bias, true, "biases in Linear and LayerNorm layers");

  // --- data ---
  auto data = top.section("data", &TrainConfig::data, "the dataset");
  const std::vector<std::string> images = {"fashion_mnist", "mnist", "idx"};
  data.choice("type", &DataConfig::type,
              {{"fashion_mnist", DatasetType::fashion_mnist}, {"mnist", DatasetType::mnist},
               {"idx", DatasetType::idx}, {"tokens", DatasetType::tokens}, {"sft", DatasetType::sft}},
              "fashion_mnist", "dataset kind");
  data.string("path", &DataConfig::path, "",
              "IDX directory ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]) or SFT JSONL file")
      .when("data.type", {"fashion_mnist", "mnist", "idx", "sft"});
  data.number("val_fraction", &DataConfig::val_fraction, 0.1, "part of the training set held out for validation")
      .min(0.0)
      .below(1.0)
      .when("data.type", {"fashion_mnist", "mnist", "idx", "tokens"});  // sft: data.val_path
  data.boolean("normalize", &DataConfig::normalize, true, "standardize pixels: (x/255 - mean) / std")
      .when("data.type", images);
  data.number("mean", &DataConfig::mean, 0.2860, "pixel mean after scaling to [0, 1] (Fashion-MNIST's)")
      .range(0.0, 1.0)
      .when("data.type", images);
  data.number("std", &DataConfig::std, 0.3530, "pixel standard deviation after scaling to [0, 1] (Fashion-MNIST's)")
      .above(0.0)
      .max(1.0)
      .when("data.type", images);
  data.boolean("shuffle", &DataConfig::shuffle, true, "reshuffle the training set every epoch (seeded)");
  data.integer("num_workers", &DataConfig::num_workers, 1,
               "loader threads preparing the next step's batch while this one trains (0 = prepare it in the "
               "training thread; one thread is all a step-ahead loader uses)")
      .range(0, 1);
  data.string("train_shards", &DataConfig::train_shards, "", "glob of training token shards (llm.c .bin)")
      .when("data.type", {"tokens"});
  data.string("val_shards", &DataConfig::val_shards, "", "glob of validation token shards (llm.c .bin)")
      .when("data.type", {"tokens"});
  data.string("tokenizer", &DataConfig::tokenizer, "", "tokenizer directory (encoder.json + vocab.bpe)")
      .when("data.type", {"tokens", "sft"});
  data.strings("text_files", &DataConfig::text_files, {}, "text files to tokenize into the shards when missing")
      .when("data.type", {"tokens"});
  data.string("val_path", &DataConfig::val_path, "", "held-out JSONL for validation (sft)").when("data.type", {"sft"});
  data.string("test_path", &DataConfig::test_path, "", "held-out JSONL for testing (sft)").when("data.type", {"sft"});
  data.boolean("pack", &DataConfig::pack, true, "pack examples first-fit into full windows (false: one per row)")
      .when("data.type", {"sft"});
  data.boolean("skip_bad_lines", &DataConfig::skip_bad_lines, false,
               "count and skip JSONL lines that are not valid records instead of stopping")
      .when("data.type", {"sft"});
  data.string("cmudict", &DataConfig::cmudict, "",
              "CMU Pronouncing Dictionary to build data.path/val_path/test_path from when missing (kiln data cmudict)")
      .when("data.type", {"sft"});
  auto augment = data.section("augment", &DataConfig::augment, "training-set augmentation, on the device")
                     .when("data.type", images);
  augment.integer("crop_padding", &AugmentConfig::crop_padding, 0,
                  "random crop after zero padding by this many pixels on each side (0 = off)")
      .range(0, 64);
  augment.boolean("hflip", &AugmentConfig::hflip, false, "random horizontal flips (probability 1/2)");

  // --- optimizer ---
  auto optim = top.section("optim", &TrainConfig::optim, "the optimizer");
  optim.choice("type", &OptimConfig::type, {{"adamw", OptimizerType::adamw}, {"sgd", OptimizerType::sgd}}, "adamw",
               "optimizer");
  optim.number("lr", &OptimConfig::lr, 1e-3, "peak learning rate").above(0.0).max(10.0);
  optim.number("weight_decay", &OptimConfig::weight_decay, 0.0, "decoupled (adamw) or L2 (sgd) weight decay")
      .range(0.0, 10.0);
  optim.number("beta1", &OptimConfig::beta1, 0.9, "first-moment decay").min(0.0).below(1.0).when("optim.type",
                                                                                                 {"adamw"});
  optim.number("beta2", &OptimConfig::beta2, 0.999, "second-moment decay").min(0.0).below(1.0).when("optim.type",
                                                                                                    {"adamw"});
  optim.number("eps", &OptimConfig::eps, 1e-8, "denominator epsilon").above(0.0).max(1.0).when("optim.type",
                                                                                               {"adamw"});
  optim.number("momentum", &OptimConfig::momentum, 0.9, "momentum").min(0.0).below(1.0).when("optim.type", {"sgd"});
  optim.boolean("nesterov", &OptimConfig::nesterov, false, "Nesterov momentum").when("optim.type", {"sgd"});
  optim.number("grad_clip", &OptimConfig::grad_clip, 1.0, "clip the global gradient norm to this (0 = off)")
      .min(0.0)
      .max(1e6);
  optim.boolean("no_decay_on_bias_and_norm", &OptimConfig::no_decay_on_bias_and_norm, true,
                "no weight decay on biases and normalization weights");

  // --- learning-rate schedule ---
  auto sched = top.section("schedule", &TrainConfig::schedule, "the learning-rate schedule");
  sched.choice("type", &ScheduleSection::type,
               {{"constant", LrScheduleType::constant}, {"cosine", LrScheduleType::cosine},
                {"linear", LrScheduleType::linear}, {"step", LrScheduleType::step}},
               "cosine", "decay after warm-up");
  sched.integer("warmup_steps", &ScheduleSection::warmup_steps, 0, "linear warm-up steps").range(0, kMaxInt);
  sched.number("min_lr_ratio", &ScheduleSection::min_lr_ratio, 0.0, "final lr as a fraction of optim.lr")
      .range(0.0, 1.0)
      .when("schedule.type", {"cosine", "linear"});
  sched.integer("step_size", &ScheduleSection::step_size, 1000, "steps between decays")
      .range(1, kMaxInt)
      .when("schedule.type", {"step"});
  sched.number("gamma", &ScheduleSection::gamma, 0.1, "lr multiplier at each decay")
      .above(0.0)
      .max(1.0)
      .when("schedule.type", {"step"});

  // --- training loop ---
  auto train = top.section("train", &TrainConfig::train, "the training loop");
  train.integer("batch_size", &TrainSection::batch_size, 64, "micro-batch per process").range(1, 1 << 20);
  train.integer("grad_accum", &TrainSection::grad_accum, 1, "micro-batches per optimizer step").range(1, 1 << 16);
  train.integer("global_batch", &TrainSection::global_batch, 0,
                "samples per optimizer step over all processes (0 = batch_size x grad_accum x processes)")
      .range(0, int64_t{1} << 40);
  train.integer("epochs", &TrainSection::epochs, 1, "passes over the training set (0 = until max_steps)")
      .range(0, 1000000);
  train.integer("max_steps", &TrainSection::max_steps, 0, "optimizer steps (0 = until epochs); whichever ends first")
      .range(0, kMaxInt);
  train.integer("eval_every", &TrainSection::eval_every, 500, "evaluate every N steps (0 = only at the end)")
      .range(0, kMaxInt);
  train.integer("eval_batches", &TrainSection::eval_batches, 0, "batches per evaluation (0 = the whole split)")
      .range(0, kMaxInt);
  train.integer("log_every", &TrainSection::log_every, 50, "log a train line every N steps").range(1, kMaxInt);
  train.integer("checkpoint_every", &TrainSection::checkpoint_every, 0,
                "checkpoint every N steps (0 = only at the end)")
      .range(0, kMaxInt);
  train.integer("keep_last", &TrainSection::keep_last, 3, "checkpoints to keep (0 = all)").range(0, 1000000);
  train.string("resume", &TrainSection::resume, "none", "none, auto (newest valid checkpoint) or a checkpoint path");
  train.integer("sample_every", &TrainSection::sample_every, 0, "generate a text sample every N steps (0 = never)")
      .range(0, kMaxInt)
      .when("model.type", {"gpt"});
  train.number("label_smoothing", &TrainSection::label_smoothing, 0.0,
               "cross-entropy label smoothing (image classifiers; PyTorch's definition)")
      .min(0.0)
      .below(1.0)
      .when("data.type", images);
  train.boolean("deterministic", &TrainSection::deterministic, true,
                "bit-reproducible kernels and data order; every kiln kernel is, so false is rejected until a "
                "faster non-deterministic path exists");

  // --- data parallelism ---
  auto dist = top.section("dist", &TrainConfig::dist, "data parallelism (one process per GPU)");
  dist.integer("zero_stage", &DistConfig::zero_stage, 0, "0 = replicated optimizer state, 1 = sharded (ZeRO-1)")
      .range(0, 1);
  dist.number("bucket_mb", &DistConfig::bucket_mb, 25.0, "gradient all-reduce bucket size in MiB")
      .above(0.0)
      .max(4096.0);
  dist.choice("on_nonfinite", &DistConfig::on_nonfinite,
              {{"skip", NonfiniteAction::skip}, {"stop", NonfiniteAction::stop}}, "stop",
              "on a NaN/Inf loss or gradient: skip the step or stop the run");
  dist.integer("timeout_s", &DistConfig::timeout_s, 600, "collective timeout in seconds").range(1, 86400);

  // --- LoRA and SFT ---
  auto lora = top.section("lora", &TrainConfig::lora, "low-rank adapters (GPT only)").when("model.type", {"gpt"});
  lora.boolean("enabled", &LoraConfig::enabled, false,
               "train low-rank adapters on the frozen base model.init_from names (adapter-only checkpoints)");
  lora.integer("rank", &LoraConfig::rank, 8, "adapter rank").range(1, 4096);
  lora.number("alpha", &LoraConfig::alpha, 16.0, "adapter scale numerator (scale = alpha / rank)")
      .above(0.0)
      .max(1e6);
  lora.strings("targets", &LoraConfig::targets, {"attn.c_attn", "attn.c_proj"},
               "Linear layers that get adapters: name patterns matched against the names' last dotted parts, "
               "a shell glob per part (attn.c_attn, mlp.*, c_proj), or all-linear; one matching none is an error")
      .items(1, 64);
  lora.number("dropout", &LoraConfig::dropout, 0.0, "dropout on the adapter input").min(0.0).below(1.0);

  auto sft = top.section("sft", &TrainConfig::sft, "supervised fine-tuning (data.type sft)").when("data.type", {"sft"});
  sft.string("prompt_template", &SftConfig::prompt_template, "### Instruction:\n{prompt}\n\n### Response:\n",
             "text around each prompt; {prompt} marks where it goes");
  sft.integer("max_len", &SftConfig::max_len, 1024,
              "window length: positions an example may use (its tokens - 1); longer ones per sft.overflow")
      .range(1, 1 << 20);
  sft.choice("overflow", &SftConfig::overflow, {"truncate", "drop"}, "truncate",
             "an example longer than max_len: cut its prompt from the left, or drop it");
  sft.integer("eval_examples", &SftConfig::eval_examples, 200,
              "held-out prompts answered greedily for exact_match per evaluation (0 = none)")
      .range(0, kMaxInt);
  sft.integer("max_new_tokens", &SftConfig::max_new_tokens, 64, "most tokens generated per answer").range(1, 1 << 20);

  auto mfu = top.section("mfu", &TrainConfig::mfu, "model FLOPs utilization reporting");
  mfu.number("peak_tflops", &MfuConfig::peak_tflops, 0.0, "peak TFLOP/s to divide by (0 = the device's table value)")
      .range(0.0, 1e6);
}

std::string file_stem(const std::string& path) {
  std::string base = path.substr(path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/') + 1);
  for (const char* ext : {".yaml", ".yml"}) {
    const std::string e(ext);
    if (base.size() > e.size() && base.compare(base.size() - e.size(), e.size(), e) == 0) {
      base.resize(base.size() - e.size());
      break;
    }
  }
  return base;
}

// model.init_from naming a kiln run directory: the weights come from that
// run, so the model does too. model.type, the model.gpt architecture and
// data.tokenizer are taken from the run's config.yaml (model.gpt.dropout too,
// unless this config sets it: dropout is a training choice); a key this
// config gives that contradicts the run is an error naming the key. Other
// model types keep their own sections (the checkpoint's tensor names and
// shapes are checked when it is loaded).
void inherit_from_run(TrainConfig& c, const Locator& loc) {
  namespace fs = std::filesystem;
  const std::string& from = c.model.init_from;
  std::error_code ec;
  if (from.empty() || !fs::is_directory(from, ec)) return;
  const std::string path = (fs::path(from) / "config.yaml").string();
  if (!fs::is_regular_file(path, ec))
    loc.fail("model.init_from", "'" + from + "' is a directory without config.yaml (expected a kiln run directory "
                                             "or a safetensors file)");
  TrainConfig base;
  try {
    base = load_config(path);
  } catch (const InputError& e) {
    loc.fail("model.init_from", std::string("the run's config does not load: ") + e.what());
  }
  auto contradicts = [&](const std::string& key, const std::string& mine, const std::string& theirs) {
    loc.fail(key, mine + " contradicts " + theirs + " in " + path +
                      " (model.init_from); leave the key out to take the run's value");
  };
  if (c.model.type != base.model.type) contradicts("model.type", c.model.type, base.model.type);
  if (c.model.type != "gpt") return;
  GptConfig& g = c.model.gpt;
  const GptConfig& b = base.model.gpt;
  auto take = [&](const char* name, int64_t& mine, int64_t theirs) {
    const std::string key = std::string("model.gpt.") + name;
    if (loc.given(key) && mine != theirs) contradicts(key, std::to_string(mine), std::to_string(theirs));
    mine = theirs;
  };
  take("vocab_size", g.vocab_size, b.vocab_size);
  take("block_size", g.block_size, b.block_size);
  take("n_layer", g.n_layer, b.n_layer);
  take("n_head", g.n_head, b.n_head);
  take("n_embd", g.n_embd, b.n_embd);
  if (loc.given("model.gpt.bias") && g.bias != b.bias)
    contradicts("model.gpt.bias", g.bias ? "true" : "false", b.bias ? "true" : "false");
  g.bias = b.bias;
  if (!loc.given("model.gpt.dropout")) g.dropout = b.dropout;
  if (c.data.tokenizer.empty()) {
    c.data.tokenizer = base.data.tokenizer;
  } else if (!base.data.tokenizer.empty() &&
             fs::path(c.data.tokenizer).lexically_normal() != fs::path(base.data.tokenizer).lexically_normal()) {
    contradicts("data.tokenizer", "'" + c.data.tokenizer + "'", "'" + base.data.tokenizer + "'");
  }
}

/// Derived defaults and rules that involve more than one key.
void post_load(TrainConfig& c, const Locator& loc) {
  if (c.name.empty()) c.name = file_stem(loc.source());
  for (char ch : c.name) {
    const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                    ch == '_' || ch == '-' || ch == '.';
    if (!ok || c.name == "." || c.name == "..")
      loc.fail("name", "'" + c.name + "' is not a usable run name (letters, digits, '_', '-' and '.' only)");
  }
  if (c.name.empty()) loc.fail("name", "the run name is empty");
  if (c.output_dir.empty()) c.output_dir = "runs/" + c.name;
  inherit_from_run(c, loc);

  switch (c.data.type) {
    case DatasetType::fashion_mnist:
      if (c.data.path.empty()) c.data.path = kFashionMnistDir;
      break;
    case DatasetType::mnist:
    case DatasetType::idx:
    case DatasetType::sft:
      if (c.data.path.empty()) loc.fail("data.path", "required for this data.type (the dataset's location)");
      break;
    case DatasetType::tokens:
      if (c.data.train_shards.empty()) loc.fail("data.train_shards", "required for data.type tokens");
      break;
  }

  if (c.model.type == "cnn" || c.model.type == "resnet") {
    const std::string sec = "model." + c.model.type;
    const std::vector<int64_t>& channels = c.model.type == "cnn" ? c.model.cnn.channels : c.model.resnet.channels;
    const std::vector<int64_t>& blocks = c.model.type == "cnn" ? c.model.cnn.blocks : c.model.resnet.blocks;
    if (channels.size() != blocks.size())
      loc.fail(loc.given(sec + ".blocks") ? sec + ".blocks" : sec + ".channels",
               "channels has " + std::to_string(channels.size()) + " stages but blocks has " +
                   std::to_string(blocks.size()) + "; give one entry per stage in both");
  }
  if (c.model.type == "cnn") {
    if (c.model.cnn.kernel % 2 == 0)
      loc.fail("model.cnn.kernel", std::to_string(c.model.cnn.kernel) + " is even; the window must be odd");
    if (c.model.cnn.dropout > 0 && c.model.cnn.hidden == 0)
      loc.fail("model.cnn.dropout", "applies to the head's hidden layer; set model.cnn.hidden too");
  }
  if (c.model.type == "vit" && c.model.vit.dim % c.model.vit.heads != 0)
    loc.fail("model.vit.heads", std::to_string(c.model.vit.heads) + " heads do not divide dim " +
                                    std::to_string(c.model.vit.dim));
  if (c.model.type == "gpt" && c.model.gpt.n_embd % c.model.gpt.n_head != 0)
    loc.fail("model.gpt.n_head", std::to_string(c.model.gpt.n_head) + " heads do not divide n_embd " +
                                     std::to_string(c.model.gpt.n_embd));

  // Image data needs a model that reads images, token data one that reads tokens.
  if (const ModelSpec* spec = find_model(c.model.type); spec && spec->input != data_input(c.data.type)) {
    const ModelInput want = data_input(c.data.type);
    std::string fits;
    for (const std::string& t : registered_model_types())
      if (find_model(t)->input == want) fits += (fits.empty() ? "" : ", ") + t;
    const std::string kind = want == ModelInput::tokens ? "token" : "image";
    loc.fail("data.type", kind + " data needs " + (want == ModelInput::tokens ? "a " : "an ") + kind +
                              " model (model.type " + fits + "), not " + c.model.type);
  }
  if (c.data.type == DatasetType::sft) {
    if (c.sft.prompt_template.find("{prompt}") == std::string::npos)
      loc.fail("sft.prompt_template", "must contain {prompt}");
    if (c.sft.max_len > c.model.gpt.block_size)
      loc.fail("sft.max_len", std::to_string(c.sft.max_len) + " exceeds model.gpt.block_size " +
                                  std::to_string(c.model.gpt.block_size));
  }

  if (c.train.epochs == 0 && c.train.max_steps == 0)
    loc.fail(loc.given("train.max_steps") ? "train.max_steps" : "train.epochs",
             "epochs and max_steps are both 0; set one of them to bound the run");
  if (c.train.global_batch != 0 && c.train.global_batch % c.train.batch_size != 0)
    loc.fail("train.global_batch", std::to_string(c.train.global_batch) + " is not a multiple of train.batch_size " +
                                       std::to_string(c.train.batch_size));
  if (c.train.resume.empty()) loc.fail("train.resume", "empty; use none, auto or a checkpoint path");

  // Keys whose feature is not built yet: rejected, never silently ignored.
  if (!c.train.deterministic)
    loc.fail("train.deterministic", "false is not implemented: every kiln kernel is deterministic and there is no "
                                    "faster non-deterministic path yet (leave it at true)");
  // LoRA adapts a base: its adapter-only checkpoints name the base they need.
  if (c.lora.enabled && c.model.init_from.empty())
    loc.fail("lora.enabled", "needs model.init_from (the base model the adapters train on)");
}

}  // namespace

const config::Schema& train_config_schema() {
  static Schema* schema = [] {
    auto* s = new Schema();
    declare(*s);
    return s;
  }();
  // A model registered after the schema was built (a test's, a tool's) joins
  // model.type's choices here, before the config that names it is read.
  const std::vector<std::string> types = registered_model_types();
  const config::Field* type = schema->find_field("model.type");
  if (type->choices != types) const_cast<config::Field*>(type)->choices = types;
  return *schema;
}

TrainConfig parse_config(const std::string& yaml_text, const std::string& source,
                         const std::vector<std::string>& overrides) {
  TrainConfig c;
  train_config_schema().load_text(&c, yaml_text, source, overrides, [](void* root, const Locator& loc) {
    post_load(*static_cast<TrainConfig*>(root), loc);
  });
  return c;
}

TrainConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw InputError(path + ": is a directory, not a config file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": cannot open config file (" + std::strerror(errno) + ")");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw InputError(path + ": error while reading config file");
  return parse_config(text.str(), path, overrides);
}

std::string to_yaml(const TrainConfig& c, bool docs) { return train_config_schema().to_yaml(&c, docs); }

bool operator==(const TrainConfig& a, const TrainConfig& b) { return train_config_schema().equal(&a, &b); }

std::string config_reference() { return train_config_schema().reference(); }

}  // namespace kiln
