// Parity case for LoRA (nn/lora.h): the GPT case's tiny GPT-2 with rank-4
// adapters (alpha 8, scale 2) on all eight block projections, the base
// frozen. PyTorch (torch_lora.py) builds GPT-2 from torch_gpt.py and wraps
// each Conv1D in its own LoRA layer (base + scale · B(A x), written from the
// paper, not from kiln), so the comparison covers: logits, loss, the 16
// adapter gradients (and no gradient for anything else), 10 AdamW steps on
// the adapters only, the final weights (the frozen base unchanged bit for
// bit), and the merged model kiln exports (W += scale · B·A, in Hugging Face
// GPT-2's layout) against torch's own merge and its logits.
//
// Every parameter, B included, gets the case noise, so B ≠ 0 from the start
// and dA is not zero at the first step.
#include <algorithm>

#include "nn/gpt.h"
#include "nn/gpt_io.h"
#include "nn/lora.h"
#include "tests/parity/parity_case.h"

namespace kiln::parity {
namespace {

constexpr int64_t kBatch = 2, kSeq = 10;

Case lora_case() {
  Case c;
  c.name = "lora";
  c.torch_model = "lora";
  nn::GptOptions o;
  o.vocab_size = 61;
  o.block_size = 16;
  o.n_layer = 2;
  o.n_head = 2;
  o.n_embd = 32;
  o.dropout = 0.0f;
  o.bias = true;
  o.seed = 3;
  nn::LoraOptions lo;
  lo.rank = 4;
  lo.alpha = 8.0f;
  const int64_t Vp = nn::padded_vocab_size(o.vocab_size);
  c.build = [o, lo, Vp] {
    Built b;
    auto gpt = std::make_unique<nn::Gpt>(o, std::make_shared<nn::RngStream>());
    const nn::LoraAttachment at = nn::attach_lora(*gpt, {"all-linear"}, lo, std::make_shared<nn::RngStream>(), 17);
    b.model = std::move(gpt);
    b.config = {{"vocab_size", o.vocab_size}, {"padded_vocab_size", Vp}, {"block_size", o.block_size},
                {"n_layer", o.n_layer},       {"n_head", o.n_head},       {"n_embd", o.n_embd},
                {"bias", o.bias},             {"lora_rank", lo.rank},     {"lora_alpha", lo.alpha},
                {"lora_targets", at.adapted}};
    return b;
  };
  c.batch = [o] {
    Batch b;
    Tensor u = Tensor::empty({kBatch * (kSeq + 1)}, DType::f32, Device::cpu());
    u.uniform_(/*seed=*/93, 0, 0.0f, 1.0f);
    std::vector<int32_t> ids;
    for (float v : u.to_vector())
      ids.push_back(std::min<int32_t>(static_cast<int32_t>(v * o.vocab_size), o.vocab_size - 1));
    std::vector<int32_t> x;
    for (int64_t i = 0; i < kBatch; ++i)
      for (int64_t t = 0; t < kSeq; ++t) {
        x.push_back(ids[static_cast<size_t>(i * (kSeq + 1) + t)]);
        b.targets.push_back(ids[static_cast<size_t>(i * (kSeq + 1) + t + 1)]);  // next token
      }
    // 16 counted rows: the loss's 1/rows is exact in float.
    for (int64_t r : {int64_t{1}, int64_t{4}, kSeq + 2, kSeq + 8}) b.targets[static_cast<size_t>(r)] = -100;
    b.input = Tensor::from_vector(x, {kBatch, kSeq}, Device::cpu());  // (B, T) int32
    b.classes = o.vocab_size;
    return b;
  };
  c.init_noise = 0.1f;
  c.fix_param = [o](const nn::Parameter& p, std::vector<float>& v) {
    if (p.name == "wte.weight") std::fill(v.begin() + o.vocab_size * o.n_embd, v.end(), 0.0f);  // padded rows
  };
  adamw_ten_steps(c, 0.1, 0.95);  // decay on the adapters (2-D); a frozen tensor must not decay
  c.max_norm = 1.0;
  c.after_training = [](nn::Module& m, DType master, const std::string& dir, nlohmann::json& extra) {
    if (master != DType::f32) return;  // kiln export --merge folds fp32 masters
    auto& gpt = dynamic_cast<nn::Gpt&>(m);
    nn::merge_lora(gpt);
    nn::export_gpt_safetensors(gpt, dir + "/merged.safetensors");
    nn::unmerge_lora(gpt);
    extra["merged"] = "merged.safetensors";
  };
  return c;
}

KILN_PARITY_CASE(lora_case);

}  // namespace
}  // namespace kiln::parity
