#include "trainers/lora_export.h"

#include <filesystem>
#include <set>

#include "nn/gpt_io.h"
#include "nn/lora.h"
#include "runtime/atomic_file.h"
#include "runtime/error.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

// "h.0.attn.c_attn" -> "attn.c_attn"
std::string last_two_parts(const std::string& name) {
  const size_t b = name.rfind('.');
  if (b == std::string::npos || b == 0) return name;
  const size_t a = name.rfind('.', b - 1);
  return a == std::string::npos ? name : name.substr(a + 1);
}

// PEFT's module-name match for a list target: equal, or ending in "." + it.
bool peft_matches(const std::string& target, const std::string& module) {
  return module == target ||
         (module.size() > target.size() && module.compare(module.size() - target.size(), target.size(), target) == 0 &&
          module[module.size() - target.size() - 1] == '.');
}

}  // namespace

std::string peft_tensor_name(const std::string& kiln_name) { return "base_model.model.transformer." + kiln_name; }

std::vector<NamedTensor> peft_adapter_tensors(nn::Gpt& model) {
  std::vector<NamedTensor> out;
  for (nn::Parameter* p : model.parameters()) {
    if (!nn::is_lora_parameter(p->name)) continue;
    Tensor host = p->value.device().is_cpu() ? p->value : p->value.to(Device::cpu());
    if (host.dtype() != DType::f32) host = host.cast(DType::f32);
    out.emplace_back(peft_tensor_name(p->name), host);
  }
  return out;
}

nlohmann::json peft_adapter_config(nn::Gpt& model, const nlohmann::json& lora_info) {
  // The module names PEFT sees inside GPT2LMHeadModel: "transformer." + kiln's.
  std::vector<std::string> adapted, all;
  for (const auto& [name, lin] : nn::named_linears(model)) {
    all.push_back("transformer." + name);
    if (lin->adapter()) adapted.push_back("transformer." + name);
  }
  KILN_INPUT_CHECK(!adapted.empty(), "the model has no LoRA adapters to export");
  std::set<std::string> short_set;
  for (const std::string& n : adapted) short_set.insert(last_two_parts(n));
  // Short targets only when they select exactly the adapted layers.
  std::vector<std::string> matched;
  for (const std::string& m : all)
    for (const std::string& t : short_set)
      if (peft_matches(t, m)) {
        matched.push_back(m);
        break;
      }
  const bool short_ok = matched == adapted;
  const std::vector<std::string> targets = short_ok ? std::vector<std::string>(short_set.begin(), short_set.end())
                                                    : adapted;
  const nn::LoraAdapter* first = nn::named_adapters(model).front().second;
  nlohmann::json c;
  c["peft_type"] = "LORA";
  c["task_type"] = "CAUSAL_LM";
  c["base_model_name_or_path"] = lora_info.at("base").at("init_from").get<std::string>();
  c["r"] = first->rank();
  c["lora_alpha"] = lora_info.at("alpha");
  c["lora_dropout"] = lora_info.at("dropout");
  c["target_modules"] = targets;
  c["fan_in_fan_out"] = true;  // GPT-2's Conv1D layers store (in, out)
  c["bias"] = "none";
  c["inference_mode"] = true;
  c["init_lora_weights"] = true;
  c["use_rslora"] = false;
  c["use_dora"] = false;
  c["modules_to_save"] = nullptr;
  c["layers_to_transform"] = nullptr;
  c["layers_pattern"] = nullptr;
  c["rank_pattern"] = nlohmann::json::object();
  c["alpha_pattern"] = nlohmann::json::object();
  c["revision"] = nullptr;
  return c;
}

size_t export_peft_adapter(nn::Gpt& model, const nlohmann::json& lora_info, const std::string& dir) {
  const nlohmann::json config = peft_adapter_config(model, lora_info);
  const std::vector<NamedTensor> tensors = peft_adapter_tensors(model);
  fs::create_directories(dir);
  write_named_tensors((fs::path(dir) / "adapter_model.safetensors").string(), tensors, {{"format", "pt"}});
  write_file_atomic((fs::path(dir) / "adapter_config.json").string(), config.dump(2) + "\n");
  return tensors.size();
}

void export_merged_gpt(nn::Gpt& model, const std::string& path) {
  KILN_INPUT_CHECK(!nn::named_adapters(model).empty(), "--merge: the model has no LoRA adapters");
  nn::merge_lora(model);
  nn::export_gpt_safetensors(model, path);  // skips the (now folded) adapter tensors
}

}  // namespace kiln
