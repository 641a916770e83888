#include "nn/gpt_io.h"

#include <cstdlib>
#include <set>

#include "nn/lora.h"
#include "runtime/error.h"

namespace kiln::nn {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// (rows, cols) row-major -> (cols, rows).
std::vector<float> transposed(const std::vector<float>& v, int64_t rows, int64_t cols) {
  std::vector<float> t(v.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[static_cast<size_t>(c * rows + r)] = v[static_cast<size_t>(r * cols + c)];
  return t;
}

// The shape a parameter has in the HF file.
std::vector<int64_t> hf_shape(const Parameter& p, int64_t V) {
  std::vector<int64_t> s = p.value.shape().vec();
  if (p.name == "wte.weight") s[0] = V;
  if (is_conv1d_weight(p.name)) std::swap(s[0], s[1]);
  return s;
}

std::string shape_str(const std::vector<int64_t>& s) { return Shape(s).str(); }

// Buffers and tied copies a HF GPT-2 file may hold that have no kiln parameter.
bool ignorable(const std::string& name) {
  return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias") || name == "lm_head.weight";
}

std::string strip_prefix(const std::string& name) {
  static const std::string p = "transformer.";
  return name.compare(0, p.size(), p) == 0 ? name.substr(p.size()) : name;
}

}  // namespace

bool is_conv1d_weight(const std::string& name) {
  return ends_with(name, ".attn.c_attn.weight") || ends_with(name, ".attn.c_proj.weight") ||
         ends_with(name, ".mlp.c_fc.weight") || ends_with(name, ".mlp.c_proj.weight");
}

std::vector<NamedTensor> gpt_to_hf(Gpt& model) {
  const int64_t V = model.vocab_size();
  std::vector<NamedTensor> out;
  for (Parameter* p : model.parameters()) {
    if (is_lora_parameter(p->name)) continue;  // LoRA adapters export in PEFT's format (kiln export --adapter)
    std::vector<float> v = p->value.to_vector();  // fp32 on the host
    const std::vector<int64_t> s = p->value.shape().vec();
    if (p->name == "wte.weight") v.resize(static_cast<size_t>(V * s[1]));  // drop the padding rows
    if (is_conv1d_weight(p->name)) v = transposed(v, s[0], s[1]);          // (out, in) -> (in, out)
    out.emplace_back(p->name, Tensor::from_vector(v, Shape(hf_shape(*p, V)), DType::f32, Device::cpu()));
  }
  return out;
}

void export_gpt_safetensors(Gpt& model, const std::string& path) {
  const GptOptions& o = model.options();
  std::map<std::string, std::string> meta = {{"format", "pt"},
                                             {"model_type", "gpt2"},
                                             {"vocab_size", std::to_string(o.vocab_size)},
                                             {"n_positions", std::to_string(o.block_size)},
                                             {"n_embd", std::to_string(o.n_embd)},
                                             {"n_layer", std::to_string(o.n_layer)},
                                             {"n_head", std::to_string(o.n_head)}};
  write_named_tensors(path, gpt_to_hf(model), meta);
}

void import_gpt_safetensors(Gpt& model, const SafetensorsFile& file) {
  const int64_t V = model.vocab_size();
  // File name -> kiln name, with the "transformer." spelling accepted.
  std::map<std::string, std::string> by_name;
  for (const auto& kv : file.tensors) {
    const std::string n = strip_prefix(kv.first);
    KILN_INPUT_CHECK(!by_name.count(n), file.path << ": tensors '" << by_name[n] << "' and '" << kv.first
                                                  << "' are the same parameter");
    by_name[n] = kv.first;
  }
  std::set<std::string> used;
  for (Parameter* p : model.parameters()) {
    auto it = by_name.find(p->name);
    KILN_INPUT_CHECK(it != by_name.end(), file.path << ": no tensor '" << p->name
                                                    << "' (is this a GPT-2 of another architecture?)");
    const StTensor& st = file.tensors.at(it->second);
    const std::vector<int64_t> want = hf_shape(*p, V);
    KILN_INPUT_CHECK(st.shape == want, file.path << ": tensor '" << it->second << "' has shape "
                                                 << shape_str(st.shape) << ", the model (" << model.describe()
                                                 << ") expects " << shape_str(want));
    used.insert(it->first);
    const std::string what = file.path + ": tensor '" + it->second + "'";
    std::vector<float> v = to_tensor(st, Device::cpu(), what).to_vector();
    if (is_conv1d_weight(p->name)) v = transposed(v, want[0], want[1]);  // (in, out) -> (out, in)
    if (p->name == "wte.weight") v.resize(static_cast<size_t>(p->value.numel()), 0.0f);  // zero padding rows
    Tensor host = Tensor::from_vector(v, p->value.shape(), DType::f32, Device::cpu());
    p->value.copy_from(p->value.dtype() == DType::f32 ? host : host.cast(p->value.dtype()));
    p->refresh_lowp();
  }
  for (const auto& kv : by_name) {
    if (used.count(kv.first)) continue;
    if (kv.first == "lm_head.weight") {
      const std::vector<int64_t> want = {V, model.options().n_embd};
      KILN_INPUT_CHECK(file.tensors.at(kv.second).shape == want,
                       file.path << ": lm_head.weight has shape " << shape_str(file.tensors.at(kv.second).shape)
                                 << ", expected the tied wte's " << shape_str(want));
      continue;
    }
    KILN_INPUT_CHECK(ignorable(kv.first), file.path << ": tensor '" << kv.second << "' matches no parameter of "
                                                    << model.describe());
  }
}

void import_gpt_safetensors(Gpt& model, const std::string& path) {
  import_gpt_safetensors(model, read_safetensors(path));
}

GptOptions gpt_options_from_hf(const SafetensorsFile& file) {
  auto find = [&](const std::string& n) -> const StTensor* {
    for (const std::string& k : {n, "transformer." + n}) {
      auto it = file.tensors.find(k);
      if (it != file.tensors.end()) return &it->second;
    }
    return nullptr;
  };
  const StTensor* wte = find("wte.weight");
  const StTensor* wpe = find("wpe.weight");
  KILN_INPUT_CHECK(wte && wpe && wte->shape.size() == 2 && wpe->shape.size() == 2 && wte->shape[1] == wpe->shape[1],
                   file.path << ": not a GPT-2 file (needs 2-D wte.weight and wpe.weight of one width)");
  GptOptions o;
  o.vocab_size = wte->shape[0];
  o.block_size = wpe->shape[0];
  o.n_embd = wte->shape[1];
  o.n_layer = 0;
  while (find("h." + std::to_string(o.n_layer) + ".ln_1.weight")) ++o.n_layer;
  KILN_INPUT_CHECK(o.n_layer > 0, file.path << ": no transformer blocks (h.0.ln_1.weight)");
  o.bias = find("ln_f.bias") != nullptr;
  auto meta = file.metadata.find("n_head");
  if (meta != file.metadata.end()) {
    o.n_head = std::atoll(meta->second.c_str());
  } else {
    o.n_head = o.n_embd / 64;  // GPT-2's head dimension in every size
  }
  KILN_INPUT_CHECK(o.n_head > 0 && o.n_embd % o.n_head == 0,
                   file.path << ": " << o.n_head << " heads do not divide the width " << o.n_embd);
  return o;
}

}  // namespace kiln::nn
