#include "trainers/run_checkpoint.h"

#include <filesystem>
#include <optional>

#include "trainers/lora_checkpoint.h"

namespace kiln {

namespace fs = std::filesystem;

CheckpointSource resolve_checkpoint(const std::string& path, const std::vector<std::string>& overrides) {
  KILN_INPUT_CHECK(fs::is_directory(path), "'" << path << "' is not a run or checkpoint directory");
  CheckpointSource src;
  if (fs::exists(fs::path(path) / kCheckpointManifest)) {
    src.checkpoint = path;
    src.run_dir = fs::path(path).lexically_normal().parent_path().parent_path().string();  // RUN/checkpoints/step_N
    if (src.run_dir.empty()) src.run_dir = ".";
  } else {
    src.run_dir = path;
    std::optional<std::string> latest = find_latest_valid_checkpoint(path);
    KILN_INPUT_CHECK(latest.has_value(), "'" << path << "' holds no valid checkpoint (looked in "
                                              << checkpoints_root(path) << ")");
    src.checkpoint = *latest;
  }
  const std::string cfg_path = (fs::path(src.run_dir) / "config.yaml").string();
  KILN_INPUT_CHECK(fs::exists(cfg_path), "'" << cfg_path << "' is missing: the run's config.yaml says what model "
                                             << "the checkpoint holds");
  src.cfg = load_config(cfg_path, overrides);
  return src;
}

std::vector<NamedTensor> model_state(nn::Module& model) {
  std::vector<NamedTensor> out;
  for (nn::Parameter* p : model.parameters()) out.emplace_back(p->name, p->value);
  for (nn::Buffer* b : model.buffers()) out.emplace_back(b->name, b->value);
  return out;
}

void load_model_state(const Checkpoint& ck, nn::Module& model) {
  // A LoRA run's checkpoint: the base from where that run loaded it (hash
  // checked), then the adapters (trainers/lora_checkpoint.h).
  if (is_adapter_checkpoint(ck)) return load_adapter_checkpoint(ck, model);
  load_tensors(ck.weights, model_state(model), /*strict=*/true);
  model.refresh_lowp();
}

}  // namespace kiln
