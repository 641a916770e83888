// Parity case for the GPT (nn/gpt.h): a tiny GPT-2 with biases, the tied LM
// head over a padded vocabulary (61 -> 128 rows), dropout 0.
//
//   V 61, context 16, 2 layers, 2 heads of 16 (1/sqrt(16) is exact in float,
//   so the f64 run is not limited by kiln's float attention scale), width 32;
//   one batch of 2 x 10 tokens (T < context: wpe rows 10..15 get no gradient)
//   with four ignored targets (-100), so the loss is a mean over 16 rows.
// After training, the final weights are exported as Hugging Face GPT-2
// safetensors (nn::export_gpt_safetensors, what `kiln export` writes) and
// torch_gpt.py loads that file by HF names and Conv1D layout.
#include <algorithm>

#include "nn/gpt.h"
#include "nn/gpt_io.h"
#include "tests/parity/parity_case.h"

namespace kiln::parity {
namespace {

// 2 x 10 tokens with 4 ignored targets: 16 counted rows, so the loss's
// 1/rows is exact in float (kiln's cross-entropy scale is float even in f64).
constexpr int64_t kBatch = 2, kSeq = 10;

Case gpt_case() {
  Case c;
  c.name = "gpt";
  c.torch_model = "gpt";
  nn::GptOptions o;
  o.vocab_size = 61;
  o.block_size = 16;
  o.n_layer = 2;
  o.n_head = 2;
  o.n_embd = 32;
  o.dropout = 0.0f;
  o.bias = true;
  o.seed = 3;
  const int64_t Vp = nn::padded_vocab_size(o.vocab_size);
  c.build = [o, Vp] {
    Built b;
    b.model = std::make_unique<nn::Gpt>(o, std::make_shared<nn::RngStream>());
    b.config = {{"vocab_size", o.vocab_size}, {"padded_vocab_size", Vp}, {"block_size", o.block_size},
                {"n_layer", o.n_layer},       {"n_head", o.n_head},       {"n_embd", o.n_embd},
                {"bias", o.bias}};
    return b;
  };
  c.batch = [o] {
    Batch b;
    Tensor u = Tensor::empty({kBatch * (kSeq + 1)}, DType::f32, Device::cpu());
    u.uniform_(/*seed=*/91, 0, 0.0f, 1.0f);
    std::vector<int32_t> ids;
    for (float v : u.to_vector())
      ids.push_back(std::min<int32_t>(static_cast<int32_t>(v * o.vocab_size), o.vocab_size - 1));
    std::vector<int32_t> x;
    for (int64_t i = 0; i < kBatch; ++i)
      for (int64_t t = 0; t < kSeq; ++t) {
        x.push_back(ids[static_cast<size_t>(i * (kSeq + 1) + t)]);
        b.targets.push_back(ids[static_cast<size_t>(i * (kSeq + 1) + t + 1)]);  // next token
      }
    for (int64_t r : {int64_t{0}, int64_t{3}, kSeq + 1, kSeq + 7}) b.targets[static_cast<size_t>(r)] = -100;  // ignored (as SFT prompts)
    b.input = Tensor::from_vector(x, {kBatch, kSeq}, Device::cpu());  // (B, T) int32
    b.classes = o.vocab_size;
    return b;
  };
  c.init_noise = 0.1f;
  c.fix_param = [o](const nn::Parameter& p, std::vector<float>& v) {
    if (p.name == "wte.weight") std::fill(v.begin() + o.vocab_size * o.n_embd, v.end(), 0.0f);  // padded rows
  };
  adamw_ten_steps(c, 0.1, 0.95);
  c.max_norm = 1.5;  // norms run 3.6..1.0 over the 10 steps: the first six clip
  c.after_training = [](nn::Module& m, DType master, const std::string& dir, nlohmann::json& extra) {
    if (master != DType::f32) return;  // the export is of fp32 masters (what users train and export)
    nn::export_gpt_safetensors(dynamic_cast<nn::Gpt&>(m), dir + "/hf_export.safetensors");
    extra["hf_export"] = "hf_export.safetensors";
  };
  return c;
}

KILN_PARITY_CASE(gpt_case);

}  // namespace
}  // namespace kiln::parity
