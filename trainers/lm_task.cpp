#include "trainers/lm_task.h"

#include <fnmatch.h>
#include <glob.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <thread>

#include "data/bpe_train.h"
#include "data/corpus.h"
#include "data/safetensors_tensor.h"
#include "data/token_shard.h"
#include "nn/gpt_io.h"
#include "runtime/process_info.h"
#include "trainers/checkpoint.h"
#include "trainers/trainer.h"

namespace kiln {

namespace fs = std::filesystem;

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

void ensure_token_data(const TrainConfig& cfg) {
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

  const ProcessInfo& pi = process_info();
  if (!pi.is_root()) {
    // Rank 0 builds; wait for its prepare.json (written last) and the files.
    const auto t0 = std::chrono::steady_clock::now();
    while (!(fs::exists(fs::path(dir) / "prepare.json") && has_tokenizer(d.tokenizer) &&
             !glob_files(d.train_shards).empty())) {
      KILN_INPUT_CHECK(seconds_since(t0) < static_cast<double>(cfg.dist.timeout_s),
                       "rank " << pi.rank << ": rank 0 did not build the token data in " << dir << " within "
                               << cfg.dist.timeout_s << " s (dist.timeout_s)");
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return;
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

// --- the task ------------------------------------------------------------------------

LanguageModelTask::LanguageModelTask(const TrainConfig& cfg, Device device)
    : cfg_(cfg),
      device_(device),
      T_(cfg.model.gpt.block_size),
      B_(cfg.train.batch_size),
      V_(cfg.model.gpt.vocab_size),
      rng_(std::make_shared<nn::RngStream>()) {
  KILN_INPUT_CHECK(cfg.model.type == ModelType::gpt, "data.type tokens: model.type must be gpt");
  rng_->seed = cfg.seed;
  ensure_token_data(cfg);
  train_paths_ = glob_files(cfg.data.train_shards);
  KILN_INPUT_CHECK(!train_paths_.empty(), "data.train_shards: no file matches '" << cfg.data.train_shards << "'");
  val_paths_ = glob_files(cfg.data.val_shards);

  const ProcessInfo& pi = process_info();
  // The loader reads a whole step (B x grad_accum windows per rank) at once
  // and micro-batches take slices of it: epochs then end on step boundaries,
  // and any split of a global batch into processes x micro-batches sees the
  // same windows in the same steps (the loader's rank blocks tile the global
  // batch in order, as the slices do).
  accum_ = plan_batch(cfg, pi.world).accum;
  TokenLoaderOptions lo;
  lo.batch = B_ * accum_;
  lo.seq_len = T_;
  lo.shuffle = cfg.data.shuffle;
  lo.seed = cfg.seed;
  lo.rank = pi.rank;
  lo.world = pi.world;
  lo.vocab_size = V_;  // every shard's ids checked once, when it is opened
  train_ = std::make_unique<TokenLoader>(train_paths_, lo);
  if (!val_paths_.empty()) val_windows_ = sequential_windows(val_paths_, T_);

  if (!cfg.data.tokenizer.empty()) {
    tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::load(cfg.data.tokenizer));
    KILN_INPUT_CHECK(tokenizer_->vocab_size() <= V_, "model.gpt.vocab_size: " << V_ << " is smaller than the "
                                                                             << tokenizer_->vocab_size()
                                                                             << " tokens of " << cfg.data.tokenizer);
  }
  model_ = std::make_unique<nn::Gpt>(gpt_options(cfg), rng_);
  // Batches are checked on the host (check_ids) before upload: spare the GPU
  // the per-step sync of the embedding's own check.
  model_->embedding().set_device_id_check(false);
  if (!cfg.model.init_from.empty()) {
    nn::import_gpt_safetensors(*model_, cfg.model.init_from);
    std::fprintf(stderr, "kiln: initialized the GPT from %s\n", cfg.model.init_from.c_str());
  }
  flops_per_sequence_ = static_cast<double>(T_) * model_->train_flops_per_token(T_);
  x_.resize(static_cast<size_t>(B_ * accum_ * T_));
  y_.resize(x_.size());
}

bool LanguageModelTask::has_split(Split s) const {
  switch (s) {
    case Split::train: return true;
    case Split::val: return val_windows_ >= process_info().world;
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

void LanguageModelTask::check_ids(const std::vector<int32_t>& ids, const char* what) const {
  for (size_t i = 0; i < ids.size(); ++i)
    KILN_INPUT_CHECK(ids[i] < V_, what << ": token id " << ids[i] << " is outside the model's vocabulary of " << V_
                                       << " (model.gpt.vocab_size); were the shards made with another tokenizer?");
}

Tensor LanguageModelTask::upload(const std::vector<int32_t>& ids, int64_t B) const {
  Tensor t = Tensor::from_vector(ids, {B, T_}, device_);  // (B, T)
  t.set_name("tokens");
  return t;
}

TaskStats LanguageModelTask::train_micro_batch(float loss_scale) {
  if (micro_ == 0) {
    train_->next(x_.data(), y_.data());  // the step's B·accum windows
    check_ids(x_, "data.train_shards");
    check_ids(y_, "data.train_shards");
  }
  const size_t n = static_cast<size_t>(B_ * T_), first = static_cast<size_t>(micro_) * n;
  const std::vector<int32_t> x(x_.begin() + first, x_.begin() + first + n), y(y_.begin() + first, y_.begin() + first + n);
  micro_ = (micro_ + 1) % accum_;
  Tensor logits = model_->forward(upload(x, B_));  // (B, T, Vp)
  const nn::LossSum ls = loss_.forward_backward(logits, y, V_, loss_scale);
  model_->backward(logits);  // logits now hold dL/dlogits
  TaskStats st;
  st.loss_sum = ls.sum;
  st.loss_count = ls.count;
  st.samples = B_;
  st.tokens = B_ * T_;
  return st;
}

TaskStats LanguageModelTask::evaluate(Split split, int64_t max_batches) {
  TaskStats st;
  if (!has_split(split)) return st;
  const std::vector<std::string>& paths = split == Split::val ? val_paths_ : train_paths_;
  const int64_t windows = split == Split::val ? val_windows_ : sequential_windows(train_paths_, T_);
  const ProcessInfo& pi = process_info();
  // Evaluation batches may be smaller than training ones when the split is small.
  const int64_t eb = std::min<int64_t>(B_, windows / pi.world);
  if (eb < 1) return st;
  TokenLoaderOptions lo;
  lo.batch = eb;
  lo.seq_len = T_;
  lo.shuffle = false;
  lo.seed = cfg_.seed;
  lo.rank = pi.rank;
  lo.world = pi.world;
  lo.vocab_size = V_;
  TokenLoader loader(paths, lo);
  int64_t steps = loader.steps_per_epoch();
  if (max_batches > 0) steps = std::min(steps, max_batches);
  std::vector<int32_t> x(static_cast<size_t>(eb * T_)), y(x.size());
  const char* what = split == Split::val ? "data.val_shards" : "data.train_shards";
  for (int64_t s = 0; s < steps; ++s) {
    loader.next(x.data(), y.data());
    check_ids(x, what);
    check_ids(y, what);
    Tensor logits = model_->forward(upload(x, eb));
    const nn::LossSum ls = loss_.forward(logits, y, V_);
    st.loss_sum += ls.sum;
    st.loss_count += ls.count;
    st.samples += eb;
    st.tokens += eb * T_;
  }
  return st;
}

nlohmann::json LanguageModelTask::data_state() const {
  // Checkpoints fall on step boundaries, so micro_ is 0 there.
  const LoaderPosition p = train_->position();
  return {{"epoch", p.epoch}, {"step", p.step}, {"fingerprint", p.fingerprint}, {"micro", micro_}};
}

void LanguageModelTask::restore_data_state(const nlohmann::json& j) {
  KILN_INPUT_CHECK(j.is_object() && j.contains("epoch") && j.contains("step") && j.contains("fingerprint"),
                   "checkpoint state.json: 'data' must hold epoch, step and fingerprint (token loader position)");
  LoaderPosition p;
  p.epoch = j.at("epoch").get<uint64_t>();
  p.step = j.at("step").get<uint64_t>();
  p.fingerprint = j.at("fingerprint").get<uint64_t>();
  train_->set_position(p);
  micro_ = 0;
  KILN_INPUT_CHECK(j.value("micro", int64_t{0}) == 0, "checkpoint state.json: saved in the middle of a step");
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
  return tokenizer_->decode(model_->generate({eot >= 0 ? eot : 0}, g));
}

// --- loading a trained GPT -------------------------------------------------------------

LoadedGpt load_gpt_checkpoint(const std::string& path, const std::vector<std::string>& overrides) {
  KILN_INPUT_CHECK(fs::is_directory(path), "'" << path << "' is not a run or checkpoint directory");
  std::string ckpt = path, run_dir;
  if (fs::exists(fs::path(path) / kCheckpointManifest)) {
    run_dir = fs::path(path).lexically_normal().parent_path().parent_path().string();  // RUN/checkpoints/step_N
    if (run_dir.empty()) run_dir = ".";
  } else {
    run_dir = path;
    std::optional<std::string> latest = find_latest_valid_checkpoint(path);
    KILN_INPUT_CHECK(latest.has_value(), "'" << path << "' holds no valid checkpoint (looked in "
                                              << checkpoints_root(path) << ")");
    ckpt = *latest;
  }
  const std::string cfg_path = (fs::path(run_dir) / "config.yaml").string();
  KILN_INPUT_CHECK(fs::exists(cfg_path), "'" << cfg_path << "' is missing: the run's config.yaml says what model "
                                             << "the checkpoint holds");
  LoadedGpt out;
  out.cfg = load_config(cfg_path, overrides);
  KILN_INPUT_CHECK(out.cfg.model.type == ModelType::gpt, cfg_path << ": model.type is not gpt");
  out.checkpoint = ckpt;
  out.device = resolve_device(out.cfg.device, process_info().local_rank, /*announce=*/false);
  set_current_device(out.device);
  const DType compute =
      out.cfg.precision == Precision::bf16 && out.device.is_cuda() ? DType::bf16 : DType::f32;
  out.rng = std::make_shared<nn::RngStream>();
  out.rng->seed = out.cfg.seed;
  out.model = std::make_unique<nn::Gpt>(gpt_options(out.cfg), out.rng);
  out.model->to(out.device, DType::f32, compute);
  Checkpoint ck = load_checkpoint(ckpt);
  for (nn::Parameter* p : out.model->parameters()) {
    load_into(ck.weights, p->name, p->value);
    if (p->lowp.defined()) p->lowp.copy_from(p->value.cast(DType::bf16));
  }
  out.model->eval();
  return out;
}

}  // namespace kiln
