#include "trainers/lm_task.h"

#include <fnmatch.h>
#include <glob.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "data/bpe_train.h"
#include "data/corpus.h"
#include "data/safetensors_tensor.h"
#include "data/token_shard.h"
#include "kernels/cross_entropy.h"
#include "trainers/checkpoint.h"
#include "trainers/models.h"
#include "trainers/run_checkpoint.h"
#include "trainers/trainer.h"

namespace kiln {

namespace fs = std::filesystem;

std::vector<std::string> glob_files(const std::string& pattern) {
  std::vector<std::string> out;
  if (pattern.empty()) return out;
  glob_t g{};
  const int rc = ::glob(pattern.c_str(), GLOB_ERR, nullptr, &g);
  if (rc == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i)
      if (fs::is_regular_file(g.gl_pathv[i])) out.emplace_back(g.gl_pathv[i]);
  globfree(&g);
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

bool has_tokenizer(const std::string& dir) {
  return fs::exists(fs::path(dir) / "encoder.json") && fs::exists(fs::path(dir) / "vocab.bpe");
}

// The directory a shard glob's files live in (no wildcards allowed there),
// after checking that the files prepare_token_data writes match the glob.
std::string shard_dir(const std::string& pattern, const std::string& key, const std::string& split) {
  const fs::path p(pattern);
  const std::string dir = p.parent_path().empty() ? "." : p.parent_path().string();
  const std::string example = split + "_000000.bin";
  const std::string suggest = (fs::path(dir) / (split + "_*.bin")).string();
  KILN_INPUT_CHECK(dir.find_first_of("*?[") == std::string::npos,
                   key << ": '" << pattern << "' has wildcards in its directory; to have shards built there, give "
                       << "one directory and a file pattern such as " << suggest);
  KILN_INPUT_CHECK(::fnmatch(p.filename().c_str(), example.c_str(), 0) == 0,
                   key << ": '" << pattern << "' would not match the shards kiln builds (" << example
                       << ", ...); use a pattern such as " << suggest);
  return dir;
}

// Sequential (T+1)-token windows in the shards: Σ floor((n - 1) / T).
int64_t sequential_windows(const std::vector<std::string>& paths, int64_t T) {
  int64_t w = 0;
  for (const std::string& p : paths) {
    const auto n = static_cast<int64_t>(TokenShard(p).size());
    if (n >= 1) w += (n - 1) / T;
  }
  return w;
}

}  // namespace

namespace {

void build_token_data(const TrainConfig& cfg) {
  const DataConfig& d = cfg.data;
  const bool have_tok = d.tokenizer.empty() || has_tokenizer(d.tokenizer);
  const bool have_train = !glob_files(d.train_shards).empty();
  const bool have_val = d.val_shards.empty() || !glob_files(d.val_shards).empty();
  if (have_tok && have_train && have_val) return;

  if (d.text_files.empty()) {
    KILN_INPUT_CHECK(have_tok, "data.tokenizer: '" << d.tokenizer << "' holds no encoder.json and vocab.bpe; point it "
                                                   << "at a tokenizer (kiln tokenizer train) or set data.text_files "
                                                   << "to have one trained");
    const std::string& missing = have_train ? d.val_shards : d.train_shards;
    throw InputError(std::string(have_train ? "data.val_shards" : "data.train_shards") + ": no file matches '" +
                     missing + "'; make shards with kiln data prepare, or set data.text_files (e.g. [" +
                     kFortunesDir + "]) to have them built");
  }
  KILN_INPUT_CHECK(!d.tokenizer.empty(), "data.tokenizer: needed to build token shards from data.text_files");
  const int64_t V = cfg.model.gpt.vocab_size;
  KILN_INPUT_CHECK(have_tok || (V >= 257 && V <= 65536),
                   "model.gpt.vocab_size: " << V << " cannot be a trained BPE vocabulary for uint16 token shards "
                                            << "(257..65536)");
  const std::string dir = shard_dir(d.train_shards, "data.train_shards", "train");
  if (!d.val_shards.empty()) {
    const std::string vdir = shard_dir(d.val_shards, "data.val_shards", "val");
    KILN_INPUT_CHECK(fs::path(vdir).lexically_normal() == fs::path(dir).lexically_normal(),
                     "data.val_shards: '" << d.val_shards << "' is not in the directory of data.train_shards ('"
                                          << dir << "'), where the shards are built");
  }

  if (!have_tok) {
    const auto t0 = std::chrono::steady_clock::now();
    std::fprintf(stderr, "kiln: data.tokenizer %s is missing: training a %lld-token BPE on %s%s (once)\n",
                 d.tokenizer.c_str(), static_cast<long long>(V), d.text_files.front().c_str(),
                 d.text_files.size() > 1 ? " and the other text_files" : "");
    const std::string text = join_documents(read_documents(d.text_files));
    KILN_INPUT_CHECK(!text.empty(), "data.text_files: no text in " << d.text_files.front());
    BpeTrainStats st;
    const Tokenizer tok = train_bpe(text, static_cast<int>(V), {kEndOfText}, &st);
    tok.save(d.tokenizer);
    std::fprintf(stderr, "kiln: trained a %d-token BPE on %zu bytes in %.1f s: %s\n", tok.vocab_size(), text.size(),
                 seconds_since(t0), d.tokenizer.c_str());
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::fprintf(stderr, "kiln: token shards missing%s: tokenizing data.text_files into %s (once)\n",
               have_tok ? "" : " or stale", dir.c_str());
  const PrepareStats st = prepare_token_data(d.text_files, d.tokenizer, dir, d.val_fraction);
  std::fprintf(stderr, "kiln: wrote %lld train and %lld val tokens (%lld documents) in %.1f s\n",
               static_cast<long long>(st.train_tokens), static_cast<long long>(st.val_tokens),
               static_cast<long long>(st.documents), seconds_since(t0));
  KILN_INPUT_CHECK(!glob_files(d.train_shards).empty(),
                   "data.train_shards: '" << d.train_shards << "' matches none of the shards written to " << dir);
}

}  // namespace

void ensure_token_data(const TrainConfig& cfg, Communicator* comm) {
  if (!comm || comm->world() == 1) {
    build_token_data(cfg);
    return;
  }
  // Rank 0 builds (or finds everything there); the others wait at the
  // barrier, which dist.timeout_s bounds. An error on rank 0 ends the job
  // (the trainer aborts it), so nobody waits out the timeout.
  if (comm->is_root()) build_token_data(cfg);
  comm->barrier("token data built by rank 0");
}

// --- the task ------------------------------------------------------------------------

LanguageModelTask::LanguageModelTask(const TrainConfig& cfg, const TaskContext& ctx)
    : cfg_(cfg), ctx_(ctx), B_(ctx.plan.micro), rng_(std::make_shared<nn::RngStream>()) {
  rng_->seed = cfg.seed;
  ensure_token_data(cfg, ctx_.comm);
  train_paths_ = glob_files(cfg.data.train_shards);
  KILN_INPUT_CHECK(!train_paths_.empty(), "data.train_shards: no file matches '" << cfg.data.train_shards << "'");
  val_paths_ = glob_files(cfg.data.val_shards);
  if (!cfg.data.tokenizer.empty()) tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::load(cfg.data.tokenizer));

  DataShape shape;
  shape.tokens.vocab = tokenizer_ ? tokenizer_->vocab_size() : 0;
  BuiltModel built = build_model(cfg, shape, rng_);
  model_ = std::move(built.module);
  gpt_ = dynamic_cast<nn::Gpt*>(model_.get());
  KILN_INPUT_CHECK(gpt_, "model.type: " << cfg.model.type << " is not a GPT; token data trains GPT models");
  T_ = built.context;
  V_ = built.vocab;
  flops_per_sequence_ = built.train_flops_per_example;
  // The shards' ids are checked when the loader opens them: spare the GPU
  // the per-step sync of the embedding's own check.
  gpt_->embedding().set_device_id_check(false);

  // The loader reads a whole step (B x grad_accum windows per rank) at once
  // and micro-batches take slices of it: epochs then end on step boundaries,
  // and any split of a global batch into processes x micro-batches sees the
  // same windows in the same steps (the loader's rank blocks tile the global
  // batch in order, as the slices do).
  const int64_t accum = ctx_.plan.accum;
  TokenLoaderOptions lo;
  lo.batch = B_ * accum;
  lo.seq_len = T_;
  lo.shuffle = cfg.data.shuffle;
  lo.seed = cfg.seed;
  lo.rank = ctx_.rank;
  lo.world = ctx_.world;
  lo.vocab_size = V_;  // every shard's ids checked once, when it is opened
  train_ = std::make_unique<TokenLoader>(train_paths_, lo);
  if (!val_paths_.empty()) val_windows_ = sequential_windows(val_paths_, T_);

  std::vector<BatchArray> arrays = {{"tokens", DType::i32, {B_ * accum, T_}}, {"targets", DType::i32, {B_ * accum, T_}}};
  loader_ = std::make_unique<StepLoader>(
      ctx_.device, std::move(arrays),
      [this](const std::vector<void*>& host) {
        return fill_step(static_cast<int32_t*>(host[0]), static_cast<int32_t*>(host[1]));
      },
      /*background=*/cfg.data.num_workers > 0);
}

bool LanguageModelTask::has_split(Split s) const {
  switch (s) {
    case Split::train: return true;
    case Split::val: return val_windows_ >= ctx_.world;
    case Split::test: return false;
  }
  return false;
}

std::string LanguageModelTask::describe_data() const {
  std::ostringstream os;
  os << train_->num_tokens() << " train tokens in " << train_paths_.size() << " shard(s) ("
     << train_->windows_per_epoch() << " sequences of " << T_ << " per epoch)";
  if (!val_paths_.empty()) os << ", " << val_windows_ * T_ << " val tokens in " << val_paths_.size() << " shard(s)";
  if (tokenizer_) os << "; tokenizer " << cfg_.data.tokenizer << " (" << tokenizer_->vocab_size() << " tokens)";
  return os.str();
}

StepLoader::Filled LanguageModelTask::fill_step(int32_t* x, int32_t* y) {
  StepLoader::Filled f;
  f.position = loader_position();
  train_->next(x, y);  // the step's B·accum windows
  const int64_t n = B_ * ctx_.plan.accum;
  f.batch.examples = n;
  f.batch.units = n * T_;
  f.batch.loss_tokens = cross_entropy_count_valid(y, n * T_);  // every position of a pretraining window
  return f;
}

StepBatch LanguageModelTask::begin_step() {
  step_ = &loader_->next();
  return step_->batch;
}

void LanguageModelTask::train_micro_batch(int64_t micro, float loss_scale, LossStats& stats) {
  KILN_CHECK(step_ && micro >= 0 && micro < ctx_.plan.accum, "train_micro_batch " << micro << " outside the step");
  const int64_t n = B_ * T_;
  const Tensor x = step_->arrays[0].view(micro * n, {B_, T_});
  const Tensor y = step_->arrays[1].view(micro * n, {n});
  Tensor logits = model_->forward(x);  // (B, T, Vp)
  const Tensor losses = loss_.forward_backward_rows(logits, y, V_, loss_scale);
  stats.add_losses(losses, y);
  model_->backward(logits);  // logits now hold dL/dlogits
}

TaskStats LanguageModelTask::evaluate(Split split, int64_t max_batches) {
  TaskStats st;
  if (!has_split(split)) return st;
  const std::vector<std::string>& paths = split == Split::val ? val_paths_ : train_paths_;
  const int64_t windows = split == Split::val ? val_windows_ : sequential_windows(train_paths_, T_);
  // Evaluation batches may be smaller than training ones when the split is small.
  const int64_t eb = std::min<int64_t>(B_, windows / ctx_.world);
  if (eb < 1) return st;
  TokenLoaderOptions lo;
  lo.batch = eb;
  lo.seq_len = T_;
  lo.shuffle = false;
  lo.seed = cfg_.seed;
  lo.rank = ctx_.rank;
  lo.world = ctx_.world;
  lo.vocab_size = V_;
  TokenLoader loader(paths, lo);
  int64_t steps = loader.steps_per_epoch();
  if (max_batches > 0) steps = std::min(steps, max_batches);
  LossStats sums(ctx_.device);
  std::vector<int32_t> x(static_cast<size_t>(eb * T_)), y(x.size());
  for (int64_t s = 0; s < steps; ++s) {
    loader.next(x.data(), y.data());
    const Tensor logits = model_->forward(Tensor::from_vector(x, {eb, T_}, ctx_.device));
    const Tensor targets = Tensor::from_vector(y, {eb * T_}, ctx_.device);
    sums.add_losses(loss_.forward_rows(logits, targets, V_), targets);
    st.loss_count += cross_entropy_count_valid(y.data(), eb * T_);
    st.samples += eb;
    st.units += eb * T_;
  }
  st.loss_sum = sums.read()[0];
  return st;
}

nlohmann::json loader_position_json(const LoaderPosition& p) {
  return {{"epoch", p.epoch}, {"step", p.step}, {"fingerprint", p.fingerprint}, {"micro", 0}};
}

LoaderPosition loader_position_from_json(const nlohmann::json& j, const std::string& what) {
  KILN_INPUT_CHECK(j.is_object() && j.contains("epoch") && j.contains("step") && j.contains("fingerprint"),
                   "checkpoint state.json: 'data' must hold epoch, step and fingerprint (" << what << " position)");
  KILN_INPUT_CHECK(j.value("micro", int64_t{0}) == 0, "checkpoint state.json: saved in the middle of a step");
  LoaderPosition p;
  p.epoch = j.at("epoch").get<uint64_t>();
  p.step = j.at("step").get<uint64_t>();
  p.fingerprint = j.at("fingerprint").get<uint64_t>();
  return p;
}

nlohmann::json LanguageModelTask::loader_position() const { return loader_position_json(train_->position()); }

nlohmann::json LanguageModelTask::data_state() const {
  // Checkpoints fall on step boundaries: the position is the next step's.
  return loader_->position([this] { return loader_position(); });
}

void LanguageModelTask::restore_data_state(const nlohmann::json& j) {
  const LoaderPosition p = loader_position_from_json(j, "token loader");
  loader_->reset();
  train_->set_position(p);
}

std::string LanguageModelTask::sample_text() {
  if (!tokenizer_) return "";
  const int32_t eot = tokenizer_->eot_id();
  nn::GenerateOptions g;
  g.max_new_tokens = 96;
  g.temperature = 0.8f;
  g.top_k = 40;
  g.seed = cfg_.seed;
  // No stop token: the log shows where the model ends documents
  // ("<|endoftext|>" in the text), which says something about it too.
  return tokenizer_->decode(gpt_->generate({eot >= 0 ? eot : 0}, g));
}

// --- loading a trained GPT -------------------------------------------------------------

LoadedGpt load_gpt_checkpoint(const std::string& path, const std::vector<std::string>& overrides) {
  CheckpointSource src = resolve_checkpoint(path, overrides);
  LoadedGpt out;
  out.cfg = src.cfg;
  out.checkpoint = src.checkpoint;
  KILN_INPUT_CHECK(find_model(out.cfg.model.type) && find_model(out.cfg.model.type)->input == ModelInput::tokens,
                   src.run_dir << "/config.yaml: model.type " << out.cfg.model.type << " is not a language model");
  out.device = resolve_device(out.cfg.device, /*local_rank=*/0, /*announce=*/false);
  set_current_device(out.device);
  const DType compute = out.cfg.precision == Precision::bf16 && out.device.is_cuda() ? DType::bf16 : DType::f32;
  out.rng = std::make_shared<nn::RngStream>();
  out.rng->seed = out.cfg.seed;
  BuiltModel built = build_model(out.cfg, DataShape{}, out.rng);
  auto* gpt = dynamic_cast<nn::Gpt*>(built.module.get());
  KILN_INPUT_CHECK(gpt, src.run_dir << "/config.yaml: model.type " << out.cfg.model.type << " is not a GPT");
  built.module.release();
  out.model.reset(gpt);
  out.model->to(out.device, DType::f32, compute);
  load_model_state(load_checkpoint(src.checkpoint), *out.model);
  out.model->eval();
  return out;
}

}  // namespace kiln
