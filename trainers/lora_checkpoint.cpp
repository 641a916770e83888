#include "trainers/lora_checkpoint.h"

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <sstream>

#include "runtime/error.h"
#include "trainers/models.h"
#include "trainers/run_checkpoint.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

constexpr const char* kLoraMetaKey = "kiln_lora";
constexpr const char* kLoraMetaValue = "adapter";
// A's draws get their own Philox key, apart from the base's initialization
// stream (cfg.seed), so adding adapters never shifts another draw.
constexpr uint64_t kLoraSeedSalt = 0x4c6f5241ull;  // "LoRA"

struct Fnv64 {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) {
      h ^= b[i];
      h *= 0x100000001b3ull;
    }
  }
};

std::vector<NamedTensor> adapter_tensors(nn::Module& model) {
  std::vector<NamedTensor> out;
  for (nn::Parameter* p : model.parameters())
    if (nn::is_lora_parameter(p->name)) out.emplace_back(p->name, p->value);
  return out;
}

std::string mb(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f MB", bytes / 1e6);
  return buf;
}

}  // namespace

nn::LoraOptions lora_options(const TrainConfig& cfg) {
  nn::LoraOptions o;
  o.rank = cfg.lora.rank;
  o.alpha = static_cast<float>(cfg.lora.alpha);
  o.dropout = static_cast<float>(cfg.lora.dropout);
  return o;
}

std::string lora_base_hash(nn::Module& model) {
  Fnv64 f;
  for (nn::Parameter* p : model.parameters()) {
    if (nn::is_lora_parameter(p->name)) continue;
    f.add(p->name.data(), p->name.size() + 1);  // with the terminating NUL: names never run together
    const std::vector<int64_t> shape = p->value.shape().vec();
    f.add(shape.data(), shape.size() * sizeof(int64_t));
    const std::vector<float> v = p->value.to_vector();  // fp32 on the host
    f.add(v.data(), v.size() * sizeof(float));
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, f.h);
  return buf;
}

std::unique_ptr<LoraRun> setup_lora(const TrainConfig& cfg, nn::Module& model, nn::RngStream& rng) {
  KILN_INPUT_CHECK(!cfg.model.init_from.empty(),
                   "lora.enabled: needs model.init_from (the base the adapters train on)");
  auto run = std::make_unique<LoraRun>();
  run->options = lora_options(cfg);
  run->alpha = cfg.lora.alpha;
  run->dropout = cfg.lora.dropout;
  run->targets = cfg.lora.targets;
  run->base.init_from = cfg.model.init_from;
  run->base.model_type = cfg.model.type;
  std::error_code ec;
  if (fs::is_directory(cfg.model.init_from, ec)) {
    // The checkpoint apply_init_from loaded (its newest valid one), so a
    // base run that saves again later does not change what this run names.
    const std::optional<std::string> ck = find_latest_valid_checkpoint(cfg.model.init_from);
    KILN_INPUT_CHECK(ck.has_value(), "model.init_from: '" << cfg.model.init_from << "' holds no valid checkpoint");
    run->base.path = fs::absolute(*ck).lexically_normal().string();
  } else {
    run->base.path = fs::absolute(cfg.model.init_from).lexically_normal().string();
  }
  run->base.hash = lora_base_hash(model);
  // The Dropout of each adapter draws from the task's stream, which outlives
  // the model: a non-owning handle on it.
  std::shared_ptr<nn::RngStream> handle(std::shared_ptr<nn::RngStream>(), &rng);
  run->attachment = nn::attach_lora(model, cfg.lora.targets, run->options, handle, cfg.seed ^ kLoraSeedSalt);
  return run;
}

std::string describe_lora(const LoraRun& run, nn::Module& model, int64_t state_bytes) {
  const int64_t trainable = model.num_trainable_parameters(), total = model.num_parameters();
  std::ostringstream targets;
  for (size_t i = 0; i < run.targets.size(); ++i) targets << (i ? ", " : "") << run.targets[i];
  // The optimizer keeps the same state per parameter whatever it updates, so
  // full fine-tuning would hold state_bytes · total / trainable.
  const double per_param = trainable > 0 ? static_cast<double>(state_bytes) / static_cast<double>(trainable) : 0;
  const double full = per_param * static_cast<double>(total);
  char share[32];
  std::snprintf(share, sizeof share, "%.2f%%", 100.0 * static_cast<double>(trainable) / static_cast<double>(total));
  std::ostringstream os;
  os << "lora: " << run.attachment.adapted.size() << " adapters (r " << run.options.rank << ", alpha "
     << run.options.alpha << ", scale " << run.options.alpha / static_cast<float>(run.options.rank) << ", dropout "
     << run.options.dropout << ") on " << targets.str() << "; " << trainable << " trainable of " << total
     << " parameters (" << share << "); optimizer state " << mb(static_cast<double>(state_bytes)) << " instead of "
     << mb(full) << " for full fine-tuning (" << mb(full - static_cast<double>(state_bytes)) << " saved); base "
     << run.base.path << " (hash " << run.base.hash << ")";
  return os.str();
}

std::string save_adapter_checkpoint(const std::string& run_dir, int64_t step, nn::Module& model, const LoraRun& run,
                                    const std::vector<NamedTensor>& optimizer_state, nlohmann::json state) {
  // The base is frozen: it must still be the weights the run started from,
  // bit for bit (a hash over every byte), or the adapters would not fit it.
  const std::string now = lora_base_hash(model);
  KILN_CHECK(now == run.base.hash, "LoRA: the frozen base changed during training (weights hash "
                                       << run.base.hash << " at the start, " << now << " now)");
  nlohmann::json info;
  info["rank"] = run.options.rank;
  info["alpha"] = run.alpha;
  info["dropout"] = run.dropout;
  info["targets"] = run.targets;
  info["adapted"] = run.attachment.adapted;
  info["base"] = {{"init_from", run.base.init_from},
                  {"path", run.base.path},
                  {"model_type", run.base.model_type},
                  {"hash", run.base.hash}};
  state["lora"] = info;
  return save_checkpoint(run_dir, step, adapter_tensors(model), optimizer_state, state,
                         {{kLoraMetaKey, kLoraMetaValue}});
}

bool is_adapter_checkpoint(const Checkpoint& ck) {
  auto it = ck.weights.metadata.find(kLoraMetaKey);
  return it != ck.weights.metadata.end() && it->second == kLoraMetaValue;
}

const nlohmann::json& adapter_checkpoint_info(const Checkpoint& ck) {
  KILN_INPUT_CHECK(ck.state.contains("lora") && ck.state["lora"].is_object(),
                   ck.dir << "/" << kCheckpointState << ": an adapter checkpoint without its \"lora\" entry");
  return ck.state["lora"];
}

void load_adapter_checkpoint(const Checkpoint& ck, nn::Module& model) {
  const nlohmann::json& info = adapter_checkpoint_info(ck);
  const std::string where = ck.dir + "/" + kCheckpointState;
  LoraBase base;
  std::vector<std::string> targets, adapted;
  nn::LoraOptions o;
  try {
    const nlohmann::json& b = info.at("base");
    base.init_from = b.at("init_from").get<std::string>();
    base.path = b.at("path").get<std::string>();
    base.model_type = b.at("model_type").get<std::string>();
    base.hash = b.at("hash").get<std::string>();
    targets = info.at("targets").get<std::vector<std::string>>();
    adapted = info.at("adapted").get<std::vector<std::string>>();
    o.rank = info.at("rank").get<int64_t>();
    o.alpha = static_cast<float>(info.at("alpha").get<double>());
    o.dropout = static_cast<float>(info.at("dropout").get<double>());
  } catch (const nlohmann::json::exception& e) {
    throw InputError(where + ": malformed \"lora\" entry (" + e.what() + ")");
  }

  const bool attached = !nn::named_adapters(model).empty();
  if (!attached) {
    // The base first, from exactly where the run loaded it.
    std::error_code ec;
    KILN_INPUT_CHECK(fs::exists(base.path, ec), ck.dir << " holds LoRA adapters for the base '" << base.path
                                                        << "' (model.init_from: " << base.init_from
                                                        << "), which does not exist");
    if (fs::is_directory(base.path, ec)) {
      load_model_state(load_checkpoint(base.path), model);
    } else {
      TrainConfig bc;
      bc.model.type = base.model_type;
      bc.model.init_from = base.path;
      apply_init_from(bc, model);
    }
  }
  const std::string hash = lora_base_hash(model);
  KILN_INPUT_CHECK(hash == base.hash, ck.dir << " holds LoRA adapters for a base with weights hash " << base.hash
                                             << " (" << base.path << "), but the base "
                                             << (attached ? "this run loaded from model.init_from" : "found there")
                                             << " hashes to " << hash
                                             << ": the base changed since the adapters were trained");
  if (!attached) {
    auto rng = std::make_shared<nn::RngStream>();  // dropout is off outside training
    nn::attach_lora(model, targets, o, rng, 0, where + ": lora.targets");
  }
  std::vector<std::string> have;
  for (const auto& [name, ad] : nn::named_adapters(model)) have.push_back(name);
  KILN_INPUT_CHECK(have == adapted, ck.dir << ": the adapters were trained on " << adapted.size()
                                           << " layers, this model has them on " << have.size()
                                           << " (lora.targets differs from the run that wrote it)");
  load_tensors(ck.weights, adapter_tensors(model), /*strict=*/true);
  model.refresh_lowp();
}

}  // namespace kiln
