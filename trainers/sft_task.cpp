#include "trainers/sft_task.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <algorithm>
#include <map>
#include <thread>

#include "data/cmudict.h"
#include "data/sampler.h"
#include "runtime/error.h"
#include "runtime/process_info.h"

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

void ensure_sft_data(const TrainConfig& cfg) {
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
    if (!cmudict_splits_ready(dir.string())) {
      const ProcessInfo& pi = process_info();
      const auto t0 = std::chrono::steady_clock::now();
      if (pi.is_root()) {
        std::fprintf(stderr, "kiln: SFT splits missing in %s: building them from %s (once)\n", dir.c_str(),
                     d.cmudict.c_str());
        const CmudictSplitStats st = build_cmudict_splits(d.cmudict, dir.string(), CmudictSplitOptions{});
        std::fprintf(stderr,
                     "kiln: wrote %lld/%lld/%lld words (%lld/%lld/%lld entries) to train/val/test in %.1f s\n",
                     static_cast<long long>(st.words[0]), static_cast<long long>(st.words[1]),
                     static_cast<long long>(st.words[2]), static_cast<long long>(st.entries[0]),
                     static_cast<long long>(st.entries[1]), static_cast<long long>(st.entries[2]),
                     seconds_since(t0));
      } else {
        while (!cmudict_splits_ready(dir.string())) {
          KILN_INPUT_CHECK(seconds_since(t0) < static_cast<double>(cfg.dist.timeout_s),
                           "rank " << pi.rank << ": rank 0 did not build the SFT splits in " << dir.string()
                                   << " within " << cfg.dist.timeout_s << " s (dist.timeout_s)");
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
        }
      }
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
  ExactMatch em;
  nn::GenerateOptions g;
  g.max_new_tokens = max_new_tokens;
  g.temperature = 0.0f;  // greedy
  g.stop_token = data.eos();
  for (const int64_t i : sft_exact_match_examples(data, max_examples, seed)) {
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

}  // namespace kiln
