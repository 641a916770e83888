// The recipe table: which Task a config's data.type builds.
#include "trainers/image_task.h"
#include "trainers/lm_task.h"
#include "trainers/trainer.h"

namespace kiln {

std::unique_ptr<Task> make_task(const TrainConfig& cfg, Device device) {
  switch (cfg.data.type) {
    case DatasetType::fashion_mnist:
    case DatasetType::mnist:
    case DatasetType::idx:
      return std::make_unique<ImageClassificationTask>(cfg, device);
    case DatasetType::tokens:
      return std::make_unique<LanguageModelTask>(cfg, device);
    default:
      throw InputError("data.type: SFT data arrives with the SFT recipe; this kiln trains image and token tasks");
  }
}

}  // namespace kiln
