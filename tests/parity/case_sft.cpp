// Parity case for SFT (the masked, packed loss): the tiny GPT of case_gpt.cpp
// trained on one packed batch of prompt/completion examples, as the SFT task
// feeds it: rows from kiln's own SFT pipeline (SftDataset -> SftLoader, first
// fit), segment ids and restarting positions handed to Gpt::set_packing, and
// the loss on completion tokens only (-100 elsewhere), averaged over them.
// tests/parity/torch_sft.py runs every example alone in PyTorch (positions
// from 0, no mask needed), builds its own targets from the prompt/completion
// split, and puts the per-example logits back where kiln packed them.
//
//   tokenizer: bytes only (no merges) + <|endoftext|> = 257 ids, padded to 384
//   examples (prompt | completion + EOS; length = ids - 1):
//     "ab:" " xy"   6 positions, 4 carry loss
//     "c:"  " z"    4 positions, 3
//     "hello:" " hi" 9 positions, 4
//     "q:"  " rst"  6 positions, 5
//   first fit into B = 2 rows of T = 16: row 0 = examples 0, 1, 3 (full,
//   three segments), row 1 = example 2 + 7 padding positions (a segment of
//   their own, positions restarting at 0). 16 loss tokens: the loss's
//   1/count is exact in float (kiln's cross-entropy scale is a float even in f64).
#include <algorithm>

#include "data/sft_dataset.h"
#include "data/sft_loader.h"
#include "data/tokenizer.h"
#include "nn/gpt.h"
#include "runtime/error.h"
#include "tests/parity/parity_case.h"

namespace kiln::parity {
namespace {

constexpr int64_t kRows = 2, kSeq = 16;

struct Packed {
  SftBatch batch;             // (kRows, kSeq) tokens, targets, segments, positions
  nlohmann::json examples;    // per example: prompt ids, completion ids (EOS last)
  nlohmann::json rows;        // per row: the example indices in window order
  int32_t pad_id = 0;
};

// The batch the SFT task would train on, through kiln's own data pipeline.
Packed packed_batch() {
  const Tokenizer tok = Tokenizer::from_merges({});  // 256 byte ids + <|endoftext|>
  std::vector<SftRecord> records;
  for (auto [p, c] : std::vector<std::pair<const char*, const char*>>{
           {"ab:", " xy"}, {"c:", " z"}, {"hello:", " hi"}, {"q:", " rst"}}) {
    SftRecord r;
    r.prompt = p;
    r.completion = c;
    records.push_back(r);
  }
  SftDataOptions o;
  o.max_len = kSeq;
  const SftDataset data = SftDataset::from_records(records, "parity sft", tok, o);
  SftLoaderOptions lo;
  lo.batch = kRows;
  lo.seq_len = kSeq;
  lo.pack = true;
  lo.shuffle = false;  // rows in the order first fit opened them
  lo.pad_id = tok.eot_id();
  SftLoader loader(data, lo);
  KILN_CHECK(loader.rows_per_epoch() == kRows, "parity sft: the examples pack into " << loader.rows_per_epoch()
                                                                                    << " rows, the case expects " << kRows);
  Packed out;
  loader.read_step(0, &out.batch);
  KILN_CHECK(out.batch.loss_tokens == 16, "parity sft: " << out.batch.loss_tokens << " loss tokens, the case expects 16");
  out.pad_id = lo.pad_id;
  out.examples = nlohmann::json::array();
  for (int64_t i = 0; i < data.size(); ++i) {
    const int32_t* ids = data.ids(i);
    const int64_t n = data.length(i) + 1, prompt = data.prompt_len(i);
    out.examples.push_back({{"prompt", std::vector<int32_t>(ids, ids + prompt)},
                            {"completion", std::vector<int32_t>(ids + prompt, ids + n)}});
  }
  out.rows = out.batch.row_examples;
  return out;
}

Case sft_case() {
  Case c;
  c.name = "sft";
  c.torch_model = "sft";
  nn::GptOptions o;
  o.vocab_size = 257;
  o.block_size = kSeq;
  o.n_layer = 2;
  o.n_head = 2;  // head dim 16: 1/sqrt(16) is exact in float
  o.n_embd = 32;
  o.dropout = 0.0f;
  o.bias = true;
  o.seed = 5;
  const int64_t Vp = nn::padded_vocab_size(o.vocab_size);
  c.build = [o, Vp] {
    const Packed p = packed_batch();
    Built b;
    b.model = std::make_unique<nn::Gpt>(o, std::make_shared<nn::RngStream>());
    b.config = {{"vocab_size", o.vocab_size}, {"padded_vocab_size", Vp}, {"block_size", o.block_size},
                {"n_layer", o.n_layer},       {"n_head", o.n_head},       {"n_embd", o.n_embd},
                {"bias", o.bias},             {"seq_len", kSeq},          {"pad_id", p.pad_id},
                {"examples", p.examples},     {"rows", p.rows}};
    return b;
  };
  c.batch = [o] {
    const Packed p = packed_batch();
    Batch b;
    b.input = Tensor::from_vector(p.batch.tokens, {kRows, kSeq}, Device::cpu());  // (B, T) int32
    b.targets = p.batch.targets;  // (B·T): completion tokens only, -100 elsewhere
    b.classes = o.vocab_size;
    return b;
  };
  c.prepare = [](nn::Module& m, const Device& device) {
    const Packed p = packed_batch();
    Tensor seg = Tensor::from_vector(p.batch.segments, {kRows, kSeq}, Device::cpu());   // (B, T) int32
    Tensor pos = Tensor::from_vector(p.batch.positions, {kRows, kSeq}, Device::cpu());  // (B, T) int32
    dynamic_cast<nn::Gpt&>(m).set_packing(seg.to(device), pos.to(device));
  };
  c.init_noise = 0.1f;
  c.fix_param = [o](const nn::Parameter& p, std::vector<float>& v) {
    if (p.name == "wte.weight") std::fill(v.begin() + o.vocab_size * o.n_embd, v.end(), 0.0f);  // padded rows
  };
  adamw_ten_steps(c, 0.1, 0.95);
  c.max_norm = 1.5;
  return c;
}

KILN_PARITY_CASE(sft_case);

}  // namespace
}  // namespace kiln::parity
