#include "trainers/sft_task.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <algorithm>
#include <map>

#include "data/cmudict.h"
#include "data/sampler.h"
#include "kernels/attention_mask.h"
#include "kernels/cross_entropy.h"
#include "runtime/error.h"
#include "trainers/loss_stats.h"
#include "trainers/models.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

bool same_path(const std::string& a, const fs::path& b) {
  return fs::path(a).lexically_normal() == b.lexically_normal();
}

}  // namespace

SftDataOptions sft_data_options(const TrainConfig& cfg) {
  SftDataOptions o;
  o.tmpl.prompt = cfg.sft.prompt_template;
  o.max_len = cfg.sft.max_len;
  o.overflow = cfg.sft.overflow == "drop" ? SftOverflow::drop : SftOverflow::truncate;
  o.skip_bad_lines = cfg.data.skip_bad_lines;
  return o;
}

std::string sft_split_path(const TrainConfig& cfg, Split s) {
  switch (s) {
    case Split::train: return cfg.data.path;
    case Split::val: return cfg.data.val_path;
    case Split::test: return cfg.data.test_path;
  }
  return "";
}

std::string sft_tokenizer_dir(const TrainConfig& cfg) {
  if (!cfg.data.tokenizer.empty()) return cfg.data.tokenizer;
  const std::string& from = cfg.model.init_from;
  const fs::path run_cfg = fs::path(from) / "config.yaml";
  std::error_code ec;
  KILN_INPUT_CHECK(!from.empty() && fs::is_regular_file(run_cfg, ec),
                   "data.tokenizer: needed for data.type sft (or set model.init_from to a kiln run directory, whose "
                   "config.yaml names its tokenizer)");
  const TrainConfig base = load_config(run_cfg.string());
  KILN_INPUT_CHECK(!base.data.tokenizer.empty(), "data.tokenizer: not set, and the run model.init_from names ("
                                                     << run_cfg.string() << ") has no data.tokenizer either");
  return base.data.tokenizer;
}

namespace {

void build_cmudict_if_missing(const TrainConfig& cfg) {
  const DataConfig& d = cfg.data;
  const fs::path dir = fs::path(d.path).parent_path().empty() ? fs::path(".") : fs::path(d.path).parent_path();
  if (cmudict_splits_ready(dir.string())) return;
  const auto t0 = std::chrono::steady_clock::now();
  std::fprintf(stderr, "kiln: SFT splits missing in %s: building them from %s (once)\n", dir.c_str(),
               d.cmudict.c_str());
  const CmudictSplitStats st = build_cmudict_splits(d.cmudict, dir.string(), CmudictSplitOptions{});
  std::fprintf(stderr, "kiln: wrote %lld/%lld/%lld words (%lld/%lld/%lld entries) to train/val/test in %.1f s\n",
               static_cast<long long>(st.words[0]), static_cast<long long>(st.words[1]),
               static_cast<long long>(st.words[2]), static_cast<long long>(st.entries[0]),
               static_cast<long long>(st.entries[1]), static_cast<long long>(st.entries[2]), seconds_since(t0));
}

}  // namespace

void ensure_sft_data(const TrainConfig& cfg, Communicator* comm) {
  const DataConfig& d = cfg.data;
  std::error_code ec;
  if (!d.cmudict.empty()) {
    const fs::path dir = fs::path(d.path).parent_path().empty() ? fs::path(".") : fs::path(d.path).parent_path();
    KILN_INPUT_CHECK(fs::path(d.path).filename() == "train.jsonl",
                     "data.path: '" << d.path << "' must be DIR/train.jsonl for data.cmudict to build the splits there");
    KILN_INPUT_CHECK(d.val_path.empty() || same_path(d.val_path, dir / "val.jsonl"),
                     "data.val_path: '" << d.val_path << "' must be " << (dir / "val.jsonl").string()
                                        << " (beside data.path) for data.cmudict to build it");
    KILN_INPUT_CHECK(d.test_path.empty() || same_path(d.test_path, dir / "test.jsonl"),
                     "data.test_path: '" << d.test_path << "' must be " << (dir / "test.jsonl").string()
                                         << " (beside data.path) for data.cmudict to build it");
    // Rank 0 builds; the others wait at the barrier (dist.timeout_s bounds
    // it, and an error on rank 0 ends the job).
    if (!comm || comm->world() == 1) {
      build_cmudict_if_missing(cfg);
    } else {
      if (comm->is_root()) build_cmudict_if_missing(cfg);
      comm->barrier("SFT splits built by rank 0");
    }
  }
  const char* hint = d.cmudict.empty() ? " (set data.cmudict to build the CMU dictionary splits there, or write it "
                                         "with kiln data cmudict)"
                                       : "";
  KILN_INPUT_CHECK(fs::is_regular_file(d.path, ec), "data.path: '" << d.path << "' does not exist" << hint);
  KILN_INPUT_CHECK(d.val_path.empty() || fs::is_regular_file(d.val_path, ec),
                   "data.val_path: '" << d.val_path << "' does not exist" << hint);
  KILN_INPUT_CHECK(d.test_path.empty() || fs::is_regular_file(d.test_path, ec),
                   "data.test_path: '" << d.test_path << "' does not exist" << hint);
}

SftLoaderOptions sft_loader_options(const TrainConfig& cfg, const SftDataset& data, Split s, int64_t batch, int rank,
                                    int world) {
  SftLoaderOptions o;
  o.batch = batch;
  o.seq_len = cfg.sft.max_len;
  o.pack = cfg.data.pack;
  o.shuffle = s == Split::train && cfg.data.shuffle;
  o.seed = cfg.seed;
  o.rank = rank;
  o.world = world;
  o.pad_id = data.eos();
  return o;
}

std::vector<int64_t> sft_exact_match_examples(const SftDataset& data, int64_t max_examples, uint64_t seed) {
  std::vector<int64_t> firsts;
  std::map<std::vector<int32_t>, int64_t> seen;  // prompt ids -> first example
  for (int64_t i = 0; i < data.size(); ++i) {
    std::vector<int32_t> key(data.ids(i), data.ids(i) + data.prompt_len(i));
    if (seen.emplace(std::move(key), i).second) firsts.push_back(i);
  }
  const auto n = static_cast<int64_t>(firsts.size());
  if (max_examples <= 0 || n <= max_examples) return firsts;
  const std::vector<int64_t> perm = seeded_permutation(n, seed, 0);
  std::vector<int64_t> pick(perm.begin(), perm.begin() + max_examples);
  std::sort(pick.begin(), pick.end());
  for (int64_t& p : pick) p = firsts[static_cast<size_t>(p)];
  return pick;
}

ExactMatch sft_exact_match(nn::Gpt& gpt, const SftDataset& data, const Tokenizer& tok, int64_t max_examples,
                           int64_t max_new_tokens, uint64_t seed, bool keep_predictions) {
  return sft_exact_match(gpt, data, tok, sft_exact_match_examples(data, max_examples, seed), max_new_tokens,
                         keep_predictions);
}

ExactMatch sft_exact_match(nn::Gpt& gpt, const SftDataset& data, const Tokenizer& tok,
                           const std::vector<int64_t>& examples, int64_t max_new_tokens, bool keep_predictions) {
  ExactMatch em;
  nn::GenerateOptions g;
  g.max_new_tokens = max_new_tokens;
  g.temperature = 0.0f;  // greedy
  g.stop_token = data.eos();
  for (const int64_t i : examples) {
    const std::vector<int32_t> prompt(data.ids(i), data.ids(i) + data.prompt_len(i));
    std::vector<int32_t> out = gpt.generate(prompt, g);
    SftPrediction p;
    p.example = i;
    p.stopped = !out.empty() && out.back() == data.eos();
    if (p.stopped) out.pop_back();
    p.output = tok.decode(out);
    const std::vector<std::string>& answers = data.record(i).answers;
    p.correct = p.stopped && std::find(answers.begin(), answers.end(), p.output) != answers.end();
    em.correct += p.correct;
    ++em.total;
    if (keep_predictions) em.predictions.push_back(std::move(p));
  }
  return em;
}


// --- the task ------------------------------------------------------------------------

SftTask::SftTask(const TrainConfig& cfg, const TaskContext& ctx)
    : cfg_(cfg), ctx_(ctx), B_(ctx.plan.micro), rng_(std::make_shared<nn::RngStream>()) {
  rng_->seed = cfg.seed;
  ensure_sft_data(cfg, ctx_.comm);
  tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::load(sft_tokenizer_dir(cfg)));
  const SftDataOptions dopt = sft_data_options(cfg);
  train_ = std::make_unique<SftDataset>(SftDataset::from_file(cfg.data.path, *tokenizer_, dopt));
  if (!cfg.data.val_path.empty())
    val_ = std::make_unique<SftDataset>(SftDataset::from_file(cfg.data.val_path, *tokenizer_, dopt));
  if (!cfg.data.test_path.empty())
    test_ = std::make_unique<SftDataset>(SftDataset::from_file(cfg.data.test_path, *tokenizer_, dopt));
  if (ctx_.is_root())
    for (const SftDataset* d : {train_.get(), val_.get(), test_.get()})
      if (d)
        for (const std::string& e : d->stats().parse.first_errors) std::fprintf(stderr, "kiln: skipped %s\n", e.c_str());

  DataShape shape;
  shape.tokens.vocab = tokenizer_->vocab_size();
  shape.tokens.context = cfg.sft.max_len;
  BuiltModel built = build_model(cfg, shape, rng_);
  model_ = std::move(built.module);
  gpt_ = dynamic_cast<nn::Gpt*>(model_.get());
  KILN_INPUT_CHECK(gpt_, "model.type: " << cfg.model.type << " is not a GPT; SFT fine-tunes GPT models");
  T_ = built.context;
  V_ = built.vocab;
  flops_per_row_ = built.train_flops_per_example;
  // Every id comes from the tokenizer, whose vocabulary build_model checked.
  gpt_->embedding().set_device_id_check(false);

  // A step's B x grad_accum rows are read at once and micro-batches take
  // slices of them, as the LM task does: any split of the global batch into
  // processes x micro-batches sees the same rows in the same steps.
  const int64_t rows = B_ * ctx_.plan.accum;
  train_loader_ = std::make_unique<SftLoader>(
      *train_, sft_loader_options(cfg, *train_, Split::train, rows, ctx_.rank, ctx_.world));
  train_loader_->check_trainable();
  std::vector<BatchArray> arrays = {{"tokens", DType::i32, {rows, T_}},
                                    {"targets", DType::i32, {rows, T_}},
                                    {"segments", DType::i32, {rows, T_}},
                                    {"positions", DType::i32, {rows, T_}}};
  loader_ = std::make_unique<StepLoader>(
      ctx_.device, std::move(arrays), [this](const std::vector<void*>& host) { return fill_step(host); },
      /*background=*/cfg.data.num_workers > 0);
}

const SftDataset* SftTask::dataset(Split s) const {
  switch (s) {
    case Split::train: return train_.get();
    case Split::val: return val_.get();
    case Split::test: return test_.get();
  }
  return nullptr;
}

bool SftTask::has_split(Split s) const {
  const SftDataset* d = dataset(s);
  return d != nullptr && d->size() > 0;
}

std::string SftTask::describe_data() const {
  std::ostringstream os;
  os << "sft: train " << cfg_.data.path << ": " << train_->stats().summary(cfg_.sft.max_len);
  if (val_) os << "; val " << val_->size() << " examples";
  if (test_) os << "; test " << test_->size() << " examples";
  const int64_t rows = train_loader_->rows_per_epoch();
  os << "; windows of " << T_ << ", " << (cfg_.data.pack ? "packed first-fit" : "one example per row") << ": " << rows
     << " rows per epoch ("
     << static_cast<int64_t>(100.0 * static_cast<double>(train_->stats().positions) /
                             static_cast<double>(std::max<int64_t>(1, rows * T_)) +
                             0.5)
     << " % of positions hold tokens); tokenizer " << sft_tokenizer_dir(cfg_) << " (" << tokenizer_->vocab_size()
     << " tokens)";
  return os.str();
}

StepLoader::Filled SftTask::fill_step(const std::vector<void*>& host) {
  StepLoader::Filled f;
  f.position = loader_position();
  SftBatch b;
  train_loader_->next(&b);
  std::copy(b.tokens.begin(), b.tokens.end(), static_cast<int32_t*>(host[0]));
  std::copy(b.targets.begin(), b.targets.end(), static_cast<int32_t*>(host[1]));
  std::copy(b.segments.begin(), b.segments.end(), static_cast<int32_t*>(host[2]));
  std::copy(b.positions.begin(), b.positions.end(), static_cast<int32_t*>(host[3]));
  // The CUDA kernels trust the ids; the loader makes them right, this checks.
  check_attention_segments(b.segments.data(), static_cast<int>(b.rows), static_cast<int>(T_), "sft batch");
  f.batch.examples = b.rows;
  f.batch.units = b.real_tokens;
  f.batch.loss_tokens = b.loss_tokens;
  return f;
}

StepBatch SftTask::begin_step() {
  step_ = &loader_->next();
  return step_->batch;
}

void SftTask::set_packing(const Tensor& segments, const Tensor& positions) {
  // Unpacked rows hold one example from position 0 with padding after it:
  // the plain causal GPT already keeps the padding out of the example.
  if (cfg_.data.pack) gpt_->set_packing(segments, positions);
  else gpt_->set_packing(Tensor(), Tensor());
}

void SftTask::train_micro_batch(int64_t micro, float loss_scale, LossStats& stats) {
  KILN_CHECK(step_ && micro >= 0 && micro < ctx_.plan.accum, "train_micro_batch " << micro << " outside the step");
  const int64_t n = B_ * T_;
  const Tensor x = step_->arrays[0].view(micro * n, {B_, T_});
  const Tensor y = step_->arrays[1].view(micro * n, {n});
  set_packing(step_->arrays[2].view(micro * n, {B_, T_}), step_->arrays[3].view(micro * n, {B_, T_}));
  Tensor logits = model_->forward(x);  // (B, T, Vp)
  const Tensor losses = loss_.forward_backward_rows(logits, y, V_, loss_scale);
  stats.add_losses(losses, y);
  model_->backward(logits);  // logits now hold dL/dlogits
}

TaskStats SftTask::evaluate(Split split, int64_t max_batches) {
  TaskStats st;
  if (!has_split(split)) return st;
  const SftDataset& d = *dataset(split);
  SftLoader loader(d, sft_loader_options(cfg_, d, Split::val, B_, ctx_.rank, ctx_.world));  // file order
  int64_t steps = loader.steps_per_epoch(/*ragged=*/true);
  if (max_batches > 0) steps = std::min(steps, max_batches);
  LossStats sums(ctx_.device);
  SftBatch b;
  for (int64_t s = 0; s < steps; ++s) {
    loader.read_step(s, &b);
    const Tensor x = Tensor::from_vector(b.tokens, {B_, T_}, ctx_.device);
    const Tensor y = Tensor::from_vector(b.targets, {B_ * T_}, ctx_.device);
    set_packing(Tensor::from_vector(b.segments, {B_, T_}, ctx_.device),
                Tensor::from_vector(b.positions, {B_, T_}, ctx_.device));
    const Tensor logits = model_->forward(x);
    sums.add_losses(loss_.forward_rows(logits, y, V_), y);
    st.loss_count += b.loss_tokens;
    st.samples += b.examples;
    st.units += b.real_tokens;
  }
  st.loss_sum = sums.read()[0];
  gpt_->set_packing(Tensor(), Tensor());

  // Exact match by generation on held-out prompts, split over ranks.
  if (split != Split::train && cfg_.sft.eval_examples > 0) {
    const std::vector<int64_t> all = sft_exact_match_examples(d, cfg_.sft.eval_examples, cfg_.seed);
    std::vector<int64_t> mine;
    for (size_t i = static_cast<size_t>(ctx_.rank); i < all.size(); i += static_cast<size_t>(ctx_.world))
      mine.push_back(all[i]);
    const ExactMatch em = sft_exact_match(*gpt_, d, *tokenizer_, mine, cfg_.sft.max_new_tokens);
    st.exact_match_correct = em.correct;
    st.exact_match_total = em.total;
  }
  return st;
}

nlohmann::json SftTask::loader_position() const {
  const LoaderPosition p = train_loader_->position();
  return {{"epoch", p.epoch}, {"step", p.step}, {"fingerprint", p.fingerprint}, {"micro", 0}};
}

nlohmann::json SftTask::data_state() const {
  return loader_->position([this] { return loader_position(); });
}

void SftTask::restore_data_state(const nlohmann::json& j) {
  KILN_INPUT_CHECK(j.is_object() && j.contains("epoch") && j.contains("step") && j.contains("fingerprint"),
                   "checkpoint state.json: 'data' must hold epoch, step and fingerprint (SFT loader position)");
  KILN_INPUT_CHECK(j.value("micro", int64_t{0}) == 0, "checkpoint state.json: saved in the middle of a step");
  loader_->reset();
  LoaderPosition p;
  p.epoch = j.at("epoch").get<uint64_t>();
  p.step = j.at("step").get<uint64_t>();
  p.fingerprint = j.at("fingerprint").get<uint64_t>();
  train_loader_->set_position(p);
}

std::string SftTask::sample_text() {
  const SftDataset& d = val_ && val_->size() ? *val_ : *train_;
  const ExactMatch em = sft_exact_match(*gpt_, d, *tokenizer_, std::vector<int64_t>{0}, cfg_.sft.max_new_tokens,
                                        /*keep_predictions=*/true);
  const SftPrediction& p = em.predictions.front();
  return tokenizer_->decode(std::vector<int32_t>(d.ids(0), d.ids(0) + d.prompt_len(0))) + p.output +
         (p.stopped ? "<|endoftext|>" : "") + (p.correct ? "  (right)" : "  (wrong)");
}

}  // namespace kiln
